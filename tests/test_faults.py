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


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
def test_kill_9_of_ingest_takes_its_workers_with_it(tmp_path):
  rng = np.random.default_rng(0)
  for person in range(40):
    folder = tmp_path / "in" / f"p{person:02d}"
    os.makedirs(folder)
    for i in range(8):
      cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (360, 360, 3), dtype=np.uint8))
  proc = subprocess.Popen(
      [os.path.join(BIN, "facetriplet-build-tfrecords"), f"--input={tmp_path / 'in'}",
       f"--output={tmp_path / 'out'}", "--detector=haar", "--workers=2", "--noprogress"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
      [os.path.join(BIN, "facetriplet-build-tfrecords"), f"--input={tmp_path / 'in'}",
       f"--output={tmp_path / 'out'}", "--detector=haar", "--workers=2", "--noprogress"],
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "written 320" in done.stdout
