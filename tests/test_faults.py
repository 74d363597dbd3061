"""Fault injection with real processes and real signals: nothing the user had is lost, nothing is
left behind, nothing is reported that did not happen. (The HTTP server faults are in
test_submission.py; self-matches in test_evaluation.py.)"""

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

BIN = os.path.dirname(sys.executable)


def _children(pid):
  """PIDs whose parent is `pid` and that run a multiprocessing spawn worker."""
  out = []
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat", encoding="utf-8") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      with open(f"/proc/{name}/cmdline", "rb") as f:
        cmd = f.read()
    except OSError:
      continue
    if ppid == pid and b"spawn_main" in cmd:
      out.append(int(name))
  return out


def _noise_people(root, people, photos, side, seed):
  """Identity folders of random-noise PNGs (Haar finds nothing: every photo is a full crop)."""
  rng = np.random.default_rng(seed)
  for person in range(people):
    folder = root / f"p{person:02d}"
    os.makedirs(folder)
    for i in range(photos):
      cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
def test_kill_9_of_ingest_takes_its_workers_with_it(tmp_path):
  _noise_people(tmp_path / "in", 40, 8, 360, seed=0)
  proc = subprocess.Popen(
    [
      os.path.join(BIN, "facetriplet-build-tfrecords"),
      f"--input={tmp_path / 'in'}",
      f"--output={tmp_path / 'out'}",
      "--detector=haar",
      "--workers=2",
      "--noprogress",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 60
    workers = []
    while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
      time.sleep(0.2)
      workers = _children(proc.pid)
    assert len(workers) == 2, "the tool never started its two workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
      time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers outlived the killed tool"
  finally:
    if proc.poll() is None:
      proc.kill()
    for w in _children(proc.pid):
      os.kill(w, signal.SIGKILL)
  # The killed run is resumable: the same command finishes and writes every photo.
  done = subprocess.run(
    [
      os.path.join(BIN, "facetriplet-build-tfrecords"),
      f"--input={tmp_path / 'in'}",
      f"--output={tmp_path / 'out'}",
      "--detector=haar",
      "--workers=2",
      "--noprogress",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "written 320" in done.stdout


def test_folder_replacement_keeps_old_or_new_and_cleans_up(tmp_path):
  from facetriplet import atomic  # pylint: disable=g-import-not-at-top

  target = tmp_path / "index"
  os.makedirs(target)
  (target / "a.npy").write_text("old")
  with atomic.atomic_path(str(target)) as tmp:
    os.makedirs(tmp)
    (tmp_path / os.path.basename(tmp) / "a.npy").write_text("new")
  assert (target / "a.npy").read_text() == "new"
  assert sorted(os.listdir(tmp_path)) == ["index"]
  # A run killed between "old aside" and "new in" (the fallback without an atomic swap): the
  # target is missing, the complete old folder sits aside, a half-written temp beside it.
  os.replace(target, tmp_path / ".index.tmp-999999.old")
  os.makedirs(tmp_path / ".index.tmp-999998")
  (tmp_path / ".index.tmp-999998" / "half").write_text("x")
  with atomic.atomic_path(str(target)) as tmp:  # the next run of the same step
    assert (target / "a.npy").read_text() == "new"  # put back before anything else happens
    assert sorted(os.listdir(tmp_path)) == ["index"]
    os.makedirs(tmp)
    (tmp_path / os.path.basename(tmp) / "a.npy").write_text("newer")
  assert (target / "a.npy").read_text() == "newer" and sorted(os.listdir(tmp_path)) == ["index"]


@pytest.mark.slow
def test_kill_9_during_index_replacement_never_loses_the_index(tmp_path):
  """A writer process replaces a folder in a loop; it is killed at random moments, and the
  target must always be a complete folder (old or new) and the leftovers go on the next run."""
  script = (
    "import os, sys\n"
    "from facetriplet import atomic\n"
    "target = sys.argv[1]\n"
    "i = 0\n"
    "while True:\n"
    "  i += 1\n"
    "  with atomic.atomic_path(target) as tmp:\n"
    "    os.makedirs(tmp)\n"
    "    for n in range(20):\n"
    "      open(os.path.join(tmp, f'{n}.bin'), 'w').write(str(i))\n"
  )
  target = tmp_path / "index"
  rng = np.random.default_rng(0)
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for seed in range(5):
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], env=env)
    time.sleep(0.5 + float(rng.uniform(0, 0.5)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from facetriplet import atomic  # pylint: disable=g-import-not-at-top

    atomic.recover(str(target))
    assert target.is_dir(), f"seed {seed}: the index folder is gone"
    values = {(target / f"{n}.bin").read_text() for n in range(20)}
    assert len(values) == 1, f"seed {seed}: a mix of two versions {values}"
    assert sorted(os.listdir(tmp_path)) == ["index"], os.listdir(tmp_path)


def test_missing_index_is_reported_as_a_missing_index(tmp_path):
  proc = subprocess.run(
    [
      os.path.join(BIN, "facetriplet-retrieve"),
      f"--index={tmp_path / 'gone'}",
      f"--queries={tmp_path}",
      f"--output={tmp_path / 'out'}",
      "--groupname=g",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert "index folder" in last and "does not exist" in last and "--model" not in last


def test_an_edited_or_swapped_export_is_refused(tmp_path):
  """Issue: the fingerprint was a string read from assets/facetriplet.json, never recomputed."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from facetriplet.search import embedder  # pylint: disable=g-import-not-at-top
  from facetriplet.errors import UserError  # pylint: disable=g-import-not-at-top
  from tests.training.test_export import make_export  # pylint: disable=g-import-not-at-top

  a = make_export(str(tmp_path / "a"), seed=0)
  b = make_export(str(tmp_path / "b"), seed=1)
  fp_a, fp_b = embedder.load_embedder(a).fingerprint, embedder.load_embedder(b).fingerprint
  assert fp_a != fp_b
  # B's weights inside A's folder (A's metadata): refused.
  swapped = str(tmp_path / "swapped")
  shutil.copytree(a, swapped)
  shutil.rmtree(os.path.join(swapped, "variables"))
  shutil.copytree(os.path.join(b, "variables"), os.path.join(swapped, "variables"))
  with pytest.raises(UserError, match="does not match its own fingerprint"):
    embedder.load_embedder(swapped)
  # A fake fingerprint written into the metadata (to pass an index built from B): refused.
  faked = str(tmp_path / "faked")
  shutil.copytree(a, faked)
  meta_path = os.path.join(faked, "assets", "facetriplet.json")
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  meta["fingerprint"] = fp_b
  with open(meta_path, "w", encoding="utf-8") as f:
    json.dump(meta, f)
  with pytest.raises(UserError, match=f"recorded {fp_b}"):
    embedder.load_embedder(faked)
  # Changing the crop settings changes what the export means: refused too.
  meta["fingerprint"] = fp_a
  meta["crop"]["crop_size"] = int(meta["crop"]["crop_size"]) + 8
  with open(meta_path, "w", encoding="utf-8") as f:
    json.dump(meta, f)
  with pytest.raises(UserError, match="does not match"):
    embedder.load_embedder(faked)


@pytest.mark.slow
def test_kill_9_of_training_then_rerun_finishes_like_a_clean_run(tmp_path):
  """Real SIGKILLs at a random moment after the first epoch (three seeds); each re-run of the same
  command continues from the backup and ends with the same epochs and steps as a clean run."""
  from tests import shard_helpers  # pylint: disable=g-import-not-at-top
  from facetriplet.training.workdir import read_metrics  # pylint: disable=g-import-not-at-top

  data = str(tmp_path / "data")
  shard_helpers.write_dataset(data, {"train": [4, 3, 2, 5, 3, 4], "val": [3, 2, 3]}, size=32)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="3")

  def command(workdir):
    return [
      sys.executable,
      os.path.join(repo, "tools", "train.py"),
      f"--config={os.path.join(repo, 'configs', 'default.py')}:smoke",
      f"--workdir={workdir}",
      f"--config.data.tfrecord_dir={data}",
      "--config.train.epochs=4",
      "--config.train.p=2",
    ]

  clean = subprocess.run(
    command(tmp_path / "clean"), env=env, capture_output=True, text=True, timeout=300
  )
  assert clean.returncode == 0, clean.stderr[-2000:]
  expected = [(r["epoch"], r["step"]) for r in read_metrics(str(tmp_path / "clean"))]
  rng = np.random.default_rng(0)
  for seed in range(3):
    workdir = tmp_path / f"killed{seed}"
    proc = subprocess.Popen(
      command(workdir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
      if len(read_metrics(str(workdir))) >= 2:  # epoch 0 and 1 are recorded
        break
      time.sleep(0.1)
    time.sleep(float(rng.uniform(0, 1.5)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(command(workdir), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [(r["epoch"], r["step"]) for r in read_metrics(str(workdir))] == expected, seed
    leftovers = [n for n in os.listdir(workdir / "checkpoints") if n.startswith(".")]
    assert not leftovers, leftovers


@pytest.mark.slow
def test_kill_9_during_export_keeps_the_previous_export(tmp_path):
  from facetriplet.search import embedder  # pylint: disable=g-import-not-at-top
  from tests.training.test_export import make_workdir  # pylint: disable=g-import-not-at-top

  workdir = make_workdir(str(tmp_path / "w"), kind="tiny")
  out = tmp_path / "exports" / "model"
  tool = [os.path.join(BIN, "facetriplet-export"), f"--workdir={workdir}", f"--export_dir={out}"]
  first = subprocess.run(tool, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  fingerprint = embedder.load_embedder(str(out)).fingerprint
  rng = np.random.default_rng(1)
  for seed in range(3):
    proc = subprocess.Popen(tool, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(float(rng.uniform(1.0, 6.0)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Whatever the moment, the export folder is complete and verifies.
    assert embedder.load_embedder(str(out)).fingerprint == fingerprint, seed
  again = subprocess.run(tool, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "exports")) == ["model"]  # no temp folder left behind


@pytest.mark.slow
def test_kill_9_of_ingest_at_random_points_then_rerun_equals_a_clean_run(tmp_path):
  _noise_people(tmp_path / "in", 30, 6, 300, seed=2)
  rng = np.random.default_rng(2)

  def tool(out):
    return [
      os.path.join(BIN, "facetriplet-build-tfrecords"),
      f"--input={tmp_path / 'in'}",
      f"--output={out}",
      "--detector=haar",
      "--workers=2",
      "--num_shards=4",
      "--noprogress",
    ]

  assert subprocess.run(tool(tmp_path / "clean"), capture_output=True, timeout=300).returncode == 0

  def shard_bytes(folder):
    return {
      n: (folder / n).read_bytes() for n in sorted(os.listdir(folder)) if n.endswith(".tfrecord")
    }

  clean = shard_bytes(tmp_path / "clean")
  for seed in range(3):
    out = tmp_path / f"killed{seed}"
    proc = subprocess.Popen(tool(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(float(rng.uniform(1.0, 5.0)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(tool(out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert shard_bytes(out) == clean, seed
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


@pytest.mark.slow
def test_kill_9_during_index_build_keeps_the_previous_index(tmp_path):
  from facetriplet.search.index import GalleryIndex  # pylint: disable=g-import-not-at-top
  from tests.training.test_export import make_export  # pylint: disable=g-import-not-at-top
  from tests.search.test_retrieval import write_image_set  # pylint: disable=g-import-not-at-top

  model = make_export(str(tmp_path / "m"), seed=0)
  rng = np.random.default_rng(3)
  write_image_set(str(tmp_path / "gallery"), rng, per_identity=20)
  index_dir = tmp_path / "indexes" / "gallery"
  tool = [
    os.path.join(BIN, "facetriplet-build-index"),
    f"--model={model}",
    f"--gallery={tmp_path / 'gallery'}",
    f"--index_dir={index_dir}",
    "--noprogress",
  ]
  first = subprocess.run(tool, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  size = len(GalleryIndex.load(str(index_dir)))
  for seed in range(3):
    proc = subprocess.Popen(tool, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(float(rng.uniform(1.0, 7.0)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(GalleryIndex.load(str(index_dir))) == size, seed  # complete, old or new
  again = subprocess.run(tool, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "indexes")) == ["gallery"]
