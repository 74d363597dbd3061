"""Every tool in sequence through its console entry point, on a tiny drawn-face set.

build-tfrecords -> train (smoke config) -> export -> build-index (from the TFRecords) -> retrieve
(a flat query folder with an unreadable file) -> evaluate (leave-one-out, embedding vs pixels).
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
IDENTITIES, PHOTOS = 6, 4


def _tool(name, *args, cwd):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  # The editable install maps `facetriplet` as a namespace package for console scripts, so its
  # __init__ (and __version__) is only seen when the repository is on the path.
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [os.path.join(BIN, f"facetriplet-{name}"), *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, f"facetriplet-{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
  return proc.stdout


def _make_faces(folder):
  try:
    from facetriplet import synthetic  # pylint: disable=g-import-not-at-top
  except ImportError:
    synthetic = None
  if synthetic is not None and hasattr(synthetic, "make_face_dataset"):
    synthetic.make_face_dataset(folder, IDENTITIES, PHOTOS, 64, 0)
    return
  rng = np.random.default_rng(0)
  for i in range(IDENTITIES):
    os.makedirs(os.path.join(folder, f"person_{i:03d}"))
    base = rng.integers(0, 256, (64, 64, 3))
    for j in range(PHOTOS):
      photo = np.clip(base + rng.integers(-30, 31, base.shape), 0, 255).astype(np.uint8)
      Image.fromarray(photo).save(os.path.join(folder, f"person_{i:03d}", f"{j:03d}.jpg"))


@pytest.mark.slow
def test_all_tools_in_sequence(tmp_path):
  run = str(tmp_path)
  faces_dir = os.path.join(run, "faces")
  _make_faces(faces_dir)
  config = os.path.join(REPO, "configs", "default.py")
  if not os.path.isfile(config):
    pytest.skip("configs/default.py (smoke variant) not present yet")

  out = _tool(
    "build-tfrecords",
    "--layout=folders",
    f"--input={faces_dir}",
    "--output=tfr",
    "--crop_size=32",
    "--detector=none",
    "--val_fraction=0.34",
    "--noprogress",
    cwd=run,
  )
  with open(os.path.join(run, "tfr", "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["crop"]["crop_size"] == 32 and sum(manifest["identity_counts"].values()) == 24

  _tool(
    "train", f"--config={config}:smoke", "--config.data.tfrecord_dir=tfr", "--workdir=work", cwd=run
  )
  assert os.path.isfile(os.path.join(run, "work", "checkpoints", "last.keras"))

  out = _tool("export", "--workdir=work", "--export_dir=export", cwd=run)
  with open(os.path.join(run, "export", "assets", "facetriplet.json")) as f:
    meta = json.load(f)
  assert meta["fingerprint"] in out and meta["crop_size"] == 32
  assert meta["crop"] == manifest["crop"] and meta["config"]["model"]["backbone"] == "resnet18"
  assert os.path.isfile(os.path.join(run, "export", "saved_model.pb"))

  out = _tool(
    "build-index", "--model=export", "--gallery=tfr", "--index_dir=index", "--noprogress", cwd=run
  )
  assert "24 items, 0 skipped" in out and "images/s" in out
  with open(os.path.join(run, "index", "index.json")) as f:
    index_meta = json.load(f)
  assert index_meta["count"] == 24 and index_meta["fingerprint"] == meta["fingerprint"]

  queries = os.path.join(run, "queries")
  os.makedirs(queries)
  for i in range(3):
    shutil.copy(
      os.path.join(
        faces_dir, f"person_{i:03d}", os.listdir(os.path.join(faces_dir, f"person_{i:03d}"))[0]
      ),
      os.path.join(queries, f"q{i}.jpg"),
    )
  with open(os.path.join(queries, "broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8 not really")
  out = _tool(
    "retrieve",
    "--index=index",
    f"--queries={queries}",
    "--output=submission",
    "--groupname=e2e",
    "--k=5",
    "--noprogress",
    cwd=run,
  )
  with open(os.path.join(run, "submission", "submission.json")) as f:
    submission = json.load(f)
  assert submission["groupname"] == "e2e"
  assert sorted(submission["images"]) == ["broken.jpg", "q0.jpg", "q1.jpg", "q2.jpg"]
  assert submission["images"]["broken.jpg"] == []
  assert all(len(submission["images"][f"q{i}.jpg"]) == 5 for i in range(3))
  # Gallery file names repeat across identity folders, so the submission names relative paths.
  assert all(
    name.startswith("person_") and name.count("/") == 1
    for i in range(3)
    for name in submission["images"][f"q{i}.jpg"]
  )
  with open(os.path.join(run, "submission", "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * 5 + 1 and "unreadable query broken.jpg" in out

  out = _tool(
    "evaluate",
    "--model=export",
    "--leave_one_out",
    f"--data={faces_dir}",
    "--features=embedding,pixels",
    "--output=eval",
    "--grid_queries=3",
    "--grid_k=4",
    "--noprogress",
    cwd=run,
  )
  with open(os.path.join(run, "eval", "metrics.json")) as f:
    report = json.load(f)
  for name in ("embedding", "pixels"):
    metrics = report["results"][name]
    assert metrics["num_queries"] == 24
    assert 0 <= metrics["top1"] <= metrics["top5"] <= metrics["top10"] <= 1
  with open(os.path.join(run, "eval", "metrics.md")) as f:
    table = f.read()
  assert "| embedding |" in table and "| pixels |" in table
  for png in ("grid.png", "grid_pixels.png"):
    with Image.open(os.path.join(run, "eval", png)) as im:
      assert im.format == "PNG" and im.size[0] > im.size[1] > 0
