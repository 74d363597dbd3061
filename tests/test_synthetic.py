"""Tests for facetriplet.synthetic and tools/make_demo_data.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facetriplet import metrics, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root):
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_dataset_is_deterministic_and_counts_are_right(tmp_path):
  counts = synthetic.make_face_dataset(str(tmp_path / "a"), 3, 2, size=64, seed=5)
  synthetic.make_face_dataset(str(tmp_path / "b"), 3, 2, size=64, seed=5)
  synthetic.make_face_dataset(str(tmp_path / "c"), 3, 2, size=64, seed=6)
  a, b, c = (_files(tmp_path / name) for name in "abc")
  assert counts == {"identities": 3, "images": 6}
  assert sorted(a) == sorted(f"person_{i:03d}/{n:03d}.jpg" for i in range(3) for n in range(2))
  assert a == b
  assert a.keys() == c.keys() and a != c
  image = Image.open(tmp_path / "a" / "person_000" / "000.jpg")
  assert image.size == (64, 64) and image.mode == "RGB"


def test_arrays_match_files_and_png(tmp_path):
  synthetic.make_face_dataset(str(tmp_path), 2, 2, size=48, seed=1, fmt="png")
  images, labels = synthetic.make_face_arrays(2, 2, size=48, seed=1, jpeg=False)
  assert images.shape == (4, 48, 48, 3) and images.dtype == np.uint8
  assert labels.tolist() == [0, 0, 1, 1]
  from_file = np.asarray(Image.open(tmp_path / "person_001" / "000.png"))
  np.testing.assert_array_equal(from_file, images[2])
  with pytest.raises(ValueError, match="jpg, png"):
    synthetic.make_face_dataset(str(tmp_path), 1, 1, fmt="gif")


def test_identity_is_learnable_but_not_trivial():
  """Same-identity photos are closer than different-identity ones in a crude face-colour feature
  (mean and spread of the central patch), yet raw-pixel nearest neighbour is far from perfect."""
  images, labels = synthetic.make_face_arrays(12, 5, size=64, seed=1)
  centre = images[:, 20:44, 20:44].reshape(len(images), -1, 3).astype(np.float64)
  feature = np.concatenate([centre.mean(1), centre.std(1)], axis=1)
  d = ((feature[:, None] - feature[None]) ** 2).sum(-1)
  same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
  assert d[same].mean() < 0.6 * d[labels[:, None] != labels[None]].mean()

  raw = images.reshape(len(images), -1).astype(np.float32)
  raw -= raw.mean(axis=1, keepdims=True)
  nn = metrics.retrieval_metrics(raw, labels, raw, labels, ks=(1,), leave_one_out=True)
  assert 1 / 12 < nn["top1"] < 0.7


def test_tool_writes_faces_and_rejects_bad_flags(tmp_path):
  tool = os.path.join(REPO, "tools", "make_demo_data.py")
  env = dict(os.environ, PYTHONPATH=REPO)
  done = subprocess.run(
    [sys.executable, tool, f"--output={tmp_path}", "--identities=2", "--photos=3", "--size=48"],
    capture_output=True,
    text=True,
    env=env,
    check=False,
  )
  assert done.returncode == 0, done.stderr
  assert "wrote 6 drawn faces of 2 identities" in done.stdout
  assert len(_files(tmp_path)) == 6
  bad = subprocess.run(
    [sys.executable, tool, f"--output={tmp_path}", "--size=8"],
    capture_output=True,
    text=True,
    env=env,
    check=False,
  )
  assert bad.returncode == 2 and "--size=8" in bad.stderr and "Traceback" not in bad.stderr
