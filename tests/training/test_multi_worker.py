"""Multi-worker training for real: two worker processes on 127.0.0.1 (gRPC collectives, CPU) run
tests/training/multi_worker_main.py under MultiWorkerMirroredStrategy.

This process never makes a strategy (a MultiWorkerMirroredStrategy beside another strategy in one
process aborts): everything distributed happens in the children, which are killed in `finally`
and run under timeouts, so a hung collective fails the test instead of hanging it.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from facetriplet.training.workdir import read_metrics
from tests import shard_helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN = os.path.join(REPO, "tests", "training", "multi_worker_main.py")
TIMEOUT = 360  # seconds for one run of both workers (about 30 s on two free cores)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("mw_shards"))
  shard_helpers.write_dataset(
    directory, {"train": [4, 3, 2, 5, 1, 3, 4, 2, 3, 2], "val": [3, 2, 2, 1, 3]}, size=32, shards=2
  )
  return directory


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


class Cluster:
  """Two workers (task 0 is the chief) started with their own TF_CONFIG; logs in `out`."""

  def __init__(self, out, *args, extra=None):
    self.out = out
    os.makedirs(out, exist_ok=True)
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    self.procs, self.logs = [], []
    for index in range(2):
      env = dict(
        os.environ,
        PYTHONPATH=REPO,
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        TF_CONFIG=json.dumps(
          {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        ),
      )
      log = open(os.path.join(out, f"log.task{index}.txt"), "w", encoding="utf-8")
      self.logs.append(log)
      command = [sys.executable, MAIN, f"--out={out}", *args, *((extra or {}).get(index, []))]
      self.procs.append(
        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
      )

  def tail(self, index, chars=4000):
    with open(
      os.path.join(self.out, f"log.task{index}.txt"), encoding="utf-8", errors="replace"
    ) as f:
      return f.read()[-chars:]

  def wait(self, timeout=TIMEOUT):
    deadline = time.time() + timeout
    codes = []
    for index, proc in enumerate(self.procs):
      try:
        codes.append(proc.wait(timeout=max(1, deadline - time.time())))
      except subprocess.TimeoutExpired:
        pytest.fail(
          f"worker {index} still running after {timeout} s (a hung collective?):\n"
          + self.tail(index)
        )
    return codes

  def wait_for(self, paths, timeout=TIMEOUT):
    deadline = time.time() + timeout
    while not all(os.path.exists(p) for p in paths):
      for index, proc in enumerate(self.procs):
        if proc.poll() is not None:
          pytest.fail(f"worker {index} exited ({proc.returncode}) early:\n" + self.tail(index))
      if time.time() > deadline:
        pytest.fail(f"no {paths} after {timeout} s:\n" + self.tail(0) + self.tail(1))
      time.sleep(0.5)

  def kill(self):
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
    for proc in self.procs:
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        pass
    for log in self.logs:
      log.close()


def _variables(out, task, epoch):
  with np.load(os.path.join(out, f"weights.task{task}.epoch{epoch}.npz")) as f:
    return {k: f[k] for k in f.files}


def _assert_same_weights(out, epochs):
  """Both workers hold bit-identical weights and optimizer state after each of `epochs`, and
  training moves them.

  BatchNormalization's moving statistics are left out: Keras 3 makes them with
  `aggregation="none"`, so every replica keeps the statistics of its own sub-batches, on one
  machine as on several; the chief's (replica 0's) are the ones checkpointed.
  """
  for epoch in epochs:
    chief, worker = _variables(out, 0, epoch), _variables(out, 1, epoch)
    assert chief.keys() == worker.keys()
    compared = [k for k in chief if not (k.startswith("non_trainable/") and "/moving_" in k)]
    assert sum(k.startswith("trainable/") for k in compared) > 10
    assert any(k.startswith("optimizer/") and k.endswith("iteration") for k in compared), compared
    for key in compared:
      np.testing.assert_array_equal(chief[key], worker[key], err_msg=f"{key} after epoch {epoch}")
  if len(epochs) > 1:
    first, last = _variables(out, 0, epochs[0]), _variables(out, 0, epochs[-1])
    assert any(not np.array_equal(first[k], last[k]) for k in first if k.startswith("trainable/"))


def _files(root):
  return sorted(
    os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names
  )


def _assert_only_the_chief_wrote(workdir, out, chief_pids, worker_pid, epochs):
  files = _files(workdir)
  assert not [f for f in files if f.startswith("workertemp_")], files  # removed at the end
  for name in (
    "config.json",
    "manifest.json",
    "metrics.jsonl",
    "checkpoints/last.keras",
    "checkpoints/best.keras",
    "checkpoints/last.calibration.json",
    "logs/projector/sprite.png",
  ):
    assert name in files, (name, files)
  assert {f.split("/")[0] for f in files} == {
    "config.json",
    "manifest.json",
    "metrics.jsonl",
    "checkpoints",
    "backup",
    "logs",
  }, files
  # TensorBoard names every events file after the process that wrote it.
  events = [f for f in files if "tfevents" in f]
  assert events and all(any(f".{pid}." in f for pid in chief_pids) for f in events), (
    events,
    chief_pids,
  )
  # The other worker wrote the same kinds of files, into its own temporary folder.
  for epoch in epochs:
    with open(os.path.join(out, f"files.task1.epoch{epoch}.json"), encoding="utf-8") as f:
      worker_files = json.load(f)
    for name in ("config.json", "metrics.jsonl", "checkpoints/last.keras"):
      assert name in worker_files, worker_files
    assert any("tfevents" in f and f".{worker_pid}." in f for f in worker_files), worker_files


@pytest.mark.slow
def test_two_workers_train_in_step_and_only_the_chief_writes(data_dir, tmp_path):
  workdir, out = str(tmp_path / "run"), str(tmp_path / "out")
  cluster = Cluster(
    out, f"--data={data_dir}", f"--workdir={workdir}", "--epochs=2", "--check_batches=3"
  )
  try:
    codes = cluster.wait()
    assert codes == [0, 0], cluster.tail(0) + cluster.tail(1)
  finally:
    cluster.kill()

  # Identical global batches: each worker's replica gets its contiguous P*K chunk of the
  # batch one machine would train on, P whole identities of K photos each.
  with (
    np.load(os.path.join(out, "batches.task0.npz")) as f0,
    np.load(os.path.join(out, "batches.task1.npz")) as f1,
  ):
    for step in range(3):
      expected = f0[f"global{step}"]
      assert expected.shape == (8,) and len(set(expected.tolist())) == 4
      np.testing.assert_array_equal(expected, np.repeat(expected[::2], 2))  # runs of K=2
      np.testing.assert_array_equal(f0[f"chunk{step}"], expected[:4])
      np.testing.assert_array_equal(f1[f"chunk{step}"], expected[4:])

  _assert_same_weights(out, [1, 2])
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert [r["step"] for r in records] == [0, 2, 4]
  results = []
  for task in (0, 1):
    with open(os.path.join(out, f"result.task{task}.json"), encoding="utf-8") as f:
      results.append(json.load(f))
  assert [r["steps"] for r in results] == [4, 4]
  # The loss is all-reduced: every worker reports the mean over all replicas.
  assert results[0]["loss"] == results[1]["loss"] == records[-1]["loss"]
  assert results[0]["map@r"] == records[-1]["map@r"]
  _assert_only_the_chief_wrote(workdir, out, [cluster.procs[0].pid], cluster.procs[1].pid, [1, 2])


@pytest.mark.slow
def test_killed_worker_resumes_from_the_chiefs_backup(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  common = [f"--data={data_dir}", f"--workdir={workdir}", "--epochs=2"]
  # Run 1: after epoch 1 (and its backup) worker 1 stops; the chief goes on into epoch 2 and
  # waits for it in the first all-reduce. Worker 1 is killed: the chief notices (TensorFlow's
  # coordination service misses its heartbeats for --heartbeat_timeout_s) and stops by itself.
  first = str(tmp_path / "out1")
  cluster = Cluster(
    first, *common, "--pause_after=1", "--heartbeat_timeout_s=60", extra={1: ["--pause"]}
  )
  try:
    cluster.wait_for([os.path.join(first, f"epoch1.task{t}") for t in (0, 1)])
    time.sleep(2)  # the chief is now blocked in epoch 2's first step
    assert cluster.procs[0].poll() is None, cluster.tail(0)
    os.kill(cluster.procs[1].pid, signal.SIGKILL)
    killed = time.time()
    cluster.procs[1].wait(timeout=30)
    try:
      code = cluster.procs[0].wait(timeout=120)
      waited = time.time() - killed
    except subprocess.TimeoutExpired:
      pytest.fail("the chief still waits 120 s after its peer died:\n" + cluster.tail(0))
    assert code != 0 and "UnavailableError" in cluster.tail(0, 20000), cluster.tail(0)
    # train.heartbeat_timeout_s took effect. A worker beats about every half timeout, so the
    # chief stops between T/2 and T after the kill: with TensorFlow's default (10 s) in 15-20 s
    # here, with 60 s after 30 s or more (a 30 s timeout stopped it after 19.5 s in CI).
    assert waited > 27, f"the chief stopped {waited:.1f} s after the kill (timeout 60 s)"
  finally:
    cluster.kill()
  first_chief = cluster.procs[0].pid
  _assert_same_weights(first, [1])
  assert [r["epoch"] for r in read_metrics(workdir)] == [0, 1]
  with open(
    os.path.join(workdir, "backup", "phase2", "training_metadata.json"), encoding="utf-8"
  ) as f:
    assert json.load(f)["epoch"] == 1

  # A worker that cannot see the chief's backup (here: another workdir, as on a machine whose
  # disk the chief never wrote) would start from scratch while the chief resumes at epoch 2, and
  # the two would wait on each other forever: every worker stops with the same error instead.
  apart = str(tmp_path / "out_apart")
  cluster = Cluster(
    apart,
    f"--data={data_dir}",
    "--epochs=2",
    extra={0: [f"--workdir={workdir}"], 1: [f"--workdir={tmp_path / 'elsewhere'}"]},
  )
  try:
    codes = cluster.wait()
    assert codes[0] != 0 and codes[1] != 0, codes
    for index in (0, 1):
      assert "the workers disagree on the epoch restored" in cluster.tail(index, 20000), (
        cluster.tail(index)
      )
  finally:
    cluster.kill()
  assert [r["epoch"] for r in read_metrics(workdir)] == [0, 1]

  # Run 2: both restart (new ports) and continue from the chief's backup of epoch 1.
  second = str(tmp_path / "out2")
  cluster = Cluster(second, *common)
  try:
    codes = cluster.wait()
    assert codes == [0, 0], cluster.tail(0) + cluster.tail(1)
  finally:
    cluster.kill()
  assert not glob.glob(os.path.join(second, "weights.*.epoch1.npz"))  # epoch 1 not re-run
  _assert_same_weights(second, [2])
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert [r["step"] for r in records] == [0, 2, 4]  # as the uninterrupted run above
  for task in (0, 1):
    with open(os.path.join(second, f"result.task{task}.json"), encoding="utf-8") as f:
      result = json.load(f)
    assert result["steps"] == 4 and result["epoch"] == 2
  _assert_only_the_chief_wrote(
    workdir, second, [first_chief, cluster.procs[0].pid], cluster.procs[1].pid, [2]
  )
