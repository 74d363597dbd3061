"""facetriplet-cluster end to end: real ORL photos with the pretrained network (the people found
without labels, checked against the folders they came from), and an index's items."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facetriplet.search import cluster

BIN = os.path.dirname(sys.executable)


def _run(*args):
  return subprocess.run(
    [os.path.join(BIN, "facetriplet-cluster"), *args, "--noprogress"],
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )


@pytest.mark.slow
def test_orl_people_are_found_without_labels(orl_faces, tmp_path):
  pytest.importorskip("face_recognition_models", reason="the pretrained network (extra)")
  photos = tmp_path / "photos"  # a flat collection: the people's names are not in it
  os.makedirs(photos)
  truth = {}
  people = sorted(p for p in os.listdir(orl_faces) if p.startswith("s"))[:6]
  for n, person in enumerate(people):
    for i, name in enumerate(sorted(os.listdir(os.path.join(orl_faces, person)))):
      shown = f"photo_{n * 10 + i:03d}.png"
      Image.open(os.path.join(orl_faces, person, name)).save(photos / shown)
      truth[shown] = person
  out = tmp_path / "people"
  # No --threshold: the pretrained network's calibrated one (FAR 0.001).
  proc = _run(f"--input={photos}", f"--output={out}", "--write_folders")
  assert proc.returncode == 0, proc.stderr
  assert "threshold 0.928" in proc.stdout, proc.stdout
  with open(out / "clusters.json", encoding="utf-8") as f:
    doc = json.load(f)
  labels, who = [], []
  for c in doc["clusters"]:
    for face in c["faces"]:
      labels.append(c["cluster"])
      who.append(truth[face["photo"]])
      assert len(face["box"]) == 4
  scores = cluster.pairwise_scores(np.array(labels), who)
  assert scores["precision"] == 1.0 and scores["recall"] >= 0.8, scores  # no two people merged
  sizes = [c["size"] for c in doc["clusters"]]
  assert sum(sizes) >= 55 and sizes == sorted(sizes, reverse=True) and sizes[0] == 10
  assert f"{sum(sizes)} faces -> {len(sizes)} clusters" in proc.stdout
  big = sum(1 for n in sizes if n >= 2)
  assert sorted(os.listdir(out / "sheets")) == [f"cluster_{c:04d}.jpg" for c in range(big)]
  assert Image.open(out / "sheets" / "cluster_0000.jpg").size[0] > 96 * 8
  folder = out / "folders" / "cluster_0000"
  linked = [os.path.basename(os.path.realpath(folder / x)) for x in os.listdir(folder)]
  assert len(linked) == 10 and len({truth[x] for x in linked}) == 1  # one person's photos


def test_an_index_is_clustered_and_bad_flags_are_one_line(tmp_path):
  from tests.search.test_retrieval import write_image_set  # pylint: disable=g-import-not-at-top
  from tests.training.test_export import make_export  # pylint: disable=g-import-not-at-top
  from facetriplet.search import features, gallery  # pylint: disable=g-import-not-at-top

  export_dir = make_export(str(tmp_path), seed=0)
  write_image_set(str(tmp_path / "g"), np.random.default_rng(0), per_identity=3)
  index_dir = str(tmp_path / "index")
  extractor = features.make_extractor("embedding", export_dir)
  gallery.build_gallery_index(
    extractor, str(tmp_path / "g"), index_dir, progress=False, model_dir=export_dir
  )
  proc = _run(f"--index={index_dir}", f"--output={tmp_path / 'out'}", "--threshold=-1", "--k=8")
  assert proc.returncode == 0, proc.stderr
  doc = json.loads((tmp_path / "out" / "clusters.json").read_text())
  # Threshold -1 links everything: one cluster of the 9 items.
  assert [c["size"] for c in doc["clusters"]] == [9] and doc["threshold"] == -1
  # An uncalibrated model without --threshold, and contradictory flags: one line each; an
  # output folder holding other files, or the photos themselves, is refused (it is replaced).
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep me")
  for args in (
    [f"--index={index_dir}", f"--output={tmp_path / 'mine'}", "--threshold=0"],
    [f"--input={tmp_path / 'g'}", f"--output={tmp_path / 'g' / 'people'}", "--threshold=0"],
    [f"--index={index_dir}", f"--output={tmp_path / 'o2'}"],
    [f"--output={tmp_path / 'o3'}"],
    [f"--input={tmp_path / 'none'}", f"--output={tmp_path / 'o4'}"],
  ):
    proc = _run(*args)
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("facetriplet-cluster")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, args
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
  assert "--threshold" in _run(f"--index={index_dir}", f"--output={tmp_path / 'o5'}").stderr
