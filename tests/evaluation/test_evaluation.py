"""Evaluation: gallery, index and leave-one-out set-ups agree with metrics.py; outputs written."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from facetriplet import metrics, verification
from facetriplet.evaluation import evaluation
from facetriplet.search import features, gallery
from facetriplet.errors import UserError
from tests.training.test_export import make_export
from tests.search.test_retrieval import write_image_set


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("evaluation"))
  rng = np.random.default_rng(3)
  export_dir = make_export(root, seed=0)
  write_image_set(os.path.join(root, "gallery"), rng, per_identity=3)
  write_image_set(os.path.join(root, "queries"), rng, per_identity=1, prefix="q_")
  flat = os.path.join(root, "flat")
  names = write_image_set(flat, rng, per_identity=1, folders=False, prefix="f_")
  with open(os.path.join(root, "labels.txt"), "w") as f:
    f.writelines(f"{name} {identity}\n" for name, identity in names.items())
  extractor = features.make_extractor("embedding", export_dir)
  gallery.build_gallery_index(
    extractor,
    os.path.join(root, "gallery"),
    os.path.join(root, "index"),
    progress=False,
    model_dir=export_dir,
  )
  return root, export_dir, extractor


def test_gallery_and_index_agree_with_metrics(sets, tmp_path):
  root, export_dir, extractor = sets
  dense = evaluation.evaluate(
    ["embedding"],
    os.path.join(tmp_path, "dense"),
    export_dir,
    queries=os.path.join(root, "queries"),
    gallery_dir=os.path.join(root, "gallery"),
    grid_queries=2,
    grid_k=4,
    progress=False,
  )
  via_index = evaluation.evaluate(
    [],
    os.path.join(tmp_path, "index"),
    queries=os.path.join(root, "queries"),
    index_dir=os.path.join(root, "index"),
    grid_queries=2,
    progress=False,
  )
  q = evaluation.embed_set(extractor, os.path.join(root, "queries"), "auto", None, 8, 1, False)
  g = evaluation.embed_set(extractor, os.path.join(root, "gallery"), "auto", None, 8, 1, False)
  expected = metrics.retrieval_metrics(q.embeddings, q.identities, g.embeddings, g.identities)
  for key in ("top1", "top5", "precision@5", "recall@5", "map@r"):
    assert dense["results"]["embedding"][key] == pytest.approx(expected[key])
    assert via_index["results"]["embedding"][key] == pytest.approx(expected[key], abs=1e-6)
  assert dense["results"]["embedding"]["num_queries"] == 3
  for out in ("dense", "index"):
    with open(os.path.join(tmp_path, out, "metrics.json")) as f:
      assert "embedding" in json.load(f)["results"]
    with open(os.path.join(tmp_path, out, "metrics.md")) as f:
      assert "| embedding |" in f.read()
    with Image.open(os.path.join(tmp_path, out, "grid.png")) as im:
      assert im.size[0] > im.size[1] > 0


def test_leave_one_out_and_labels_file(sets, tmp_path):
  root, export_dir, _ = sets
  loo = evaluation.evaluate(
    ["embedding"],
    str(tmp_path),
    export_dir,
    leave_one_out=True,
    data=os.path.join(root, "gallery"),
    grid_queries=0,
    progress=False,
  )
  assert loo["results"]["embedding"]["num_queries"] == 9
  assert loo["setup"]["mode"] == "leave_one_out"
  assert not os.path.exists(os.path.join(tmp_path, "grid.png"))
  labelled = evaluation.evaluate(
    ["embedding"],
    str(tmp_path),
    export_dir,
    queries=os.path.join(root, "flat"),
    gallery_dir=os.path.join(root, "gallery"),
    labels_file=os.path.join(root, "labels.txt"),
    grid_queries=1,
    progress=False,
  )
  assert labelled["results"]["embedding"]["num_queries"] == 3


def test_unknown_identities_and_bad_setups(sets, tmp_path):
  root, export_dir, _ = sets
  with pytest.raises(UserError, match="known identity"):
    evaluation.evaluate(
      ["embedding"],
      str(tmp_path),
      export_dir,
      queries=os.path.join(root, "flat"),
      gallery_dir=os.path.join(root, "gallery"),
      progress=False,
    )
  with pytest.raises(UserError, match="--queries with one of"):
    evaluation.evaluate(
      ["embedding"], str(tmp_path), export_dir, queries=os.path.join(root, "flat"), progress=False
    )
  with pytest.raises(UserError, match="one kind of features"):
    evaluation.evaluate(
      ["embedding", "hog"],
      str(tmp_path),
      export_dir,
      queries=os.path.join(root, "queries"),
      index_dir=os.path.join(root, "index"),
      progress=False,
    )


def test_index_evaluation_never_counts_self_matches(sets, tmp_path):
  """Queries that are the gallery's own files (issue: top-1 rose to 1.000 with no warning)."""
  root, _, extractor = sets
  report = evaluation.evaluate(
    [],
    str(tmp_path),
    queries=os.path.join(root, "gallery"),
    index_dir=os.path.join(root, "index"),
    grid_queries=0,
    progress=False,
  )
  got = report["results"]["embedding"]
  g = evaluation.embed_set(extractor, os.path.join(root, "gallery"), "auto", None, 8, 1, False)
  # Independent reference: leave-one-out over the same embeddings (NumPy brute force).
  expected = metrics.retrieval_metrics(
    g.embeddings, g.identities, g.embeddings, g.identities, leave_one_out=True
  )
  for key in ("top1", "top5", "precision@5", "recall@5", "map@r"):
    assert got[key] == pytest.approx(expected[key], abs=1e-6), key
  assert got["self_matches_excluded"] == got["num_queries"] == 9
  assert report["setup"]["self_matches"] == "excluded"


def test_degenerate_evaluations_are_errors_or_stated_clamps(sets, tmp_path):
  root, export_dir, extractor = sets
  # Leave-one-out where nobody has a second photo: an error, not a table of zeros.
  with pytest.raises(UserError, match="no query .* relevant gallery item"):
    evaluation.evaluate(
      ["embedding"],
      str(tmp_path),
      export_dir,
      leave_one_out=True,
      data=os.path.join(root, "queries"),
      grid_queries=0,
      progress=False,
    )
  # k above the candidates (9 gallery photos, 8 others per query): scored at 8 and said so.
  report = evaluation.evaluate(
    ["embedding"],
    str(tmp_path),
    export_dir,
    leave_one_out=True,
    data=os.path.join(root, "gallery"),
    ks=(1, 5, 20),
    grid_queries=0,
    progress=False,
  )
  got = report["results"]["embedding"]
  assert report["setup"]["ks_clamped"] == {"@20": 8}
  g = evaluation.embed_set(extractor, os.path.join(root, "gallery"), "auto", None, 8, 1, False)
  expected = metrics.retrieval_metrics(
    g.embeddings, g.identities, g.embeddings, g.identities, ks=(1, 5, 8), leave_one_out=True
  )
  assert got["precision@20"] == pytest.approx(expected["precision@8"])
  assert got["top20"] == pytest.approx(expected["top8"]) and "top8" not in got


def _reference(q_emb, q_ids, g_emb, g_ids, pairs, fars):
  """Brute force: score every listed pair, then the threshold loop of tests/test_metrics.py."""
  from tests.test_metrics import reference_verification  # pylint: disable=g-import-not-at-top

  q = q_emb / np.linalg.norm(q_emb, axis=1, keepdims=True)
  g = g_emb / np.linalg.norm(g_emb, axis=1, keepdims=True)
  pos = [float(q[i] @ g[j]) for i, j in pairs if q_ids[i] == g_ids[j]]
  neg = [float(q[i] @ g[j]) for i, j in pairs if q_ids[i] != g_ids[j]]
  return len(pos), len(neg), reference_verification(pos, neg, fars)


def _check_verification(got, reference, fars):
  num_pos, num_neg, (want, eer, eer_threshold, auc, _) = reference
  assert got["num_positive_pairs"] == num_pos and got["num_negative_pairs"] == num_neg
  for f in fars:
    key = verification.far_key(f)
    if want[f] is None:
      assert got[f"tar@far={key}"] is None and got[f"threshold@far={key}"] is None, key
    else:
      assert got[f"tar@far={key}"] == pytest.approx(want[f][0], abs=1e-6), key
      assert got[f"threshold@far={key}"] == pytest.approx(want[f][1], abs=1e-6), key
  assert got["eer"] == pytest.approx(eer, abs=1e-6)
  assert got["eer_threshold"] == pytest.approx(eer_threshold, abs=1e-6)
  assert got["auc"] == pytest.approx(auc, abs=1e-6)


def test_verification_in_every_mode_matches_brute_force(sets, tmp_path):
  """Leave-one-out: pairs of two different photos (9 photos of 3 people: 9 same, 27 different);
  queries + gallery: every query with every gallery photo (3 x 9); queries = the index's own
  files: every query with every gallery photo but its own copy (9 x 8)."""
  root, export_dir, extractor = sets
  fars = (0.1, 0.05, 0.01, 0.001)
  g = evaluation.embed_set(extractor, os.path.join(root, "gallery"), "auto", None, 8, 1, False)
  q = evaluation.embed_set(extractor, os.path.join(root, "queries"), "auto", None, 8, 1, False)
  loo = evaluation.evaluate(
    ["embedding"],
    str(tmp_path / "loo"),
    export_dir,
    leave_one_out=True,
    data=os.path.join(root, "gallery"),
    grid_queries=0,
    progress=False,
    far=0.05,
  )
  got = loo["verification"]["embedding"]
  n = len(g.entries)
  _check_verification(
    got,
    _reference(
      g.embeddings,
      g.identities,
      g.embeddings,
      g.identities,
      [(i, j) for i in range(n) for j in range(i + 1, n)],
      fars,
    ),
    fars,
  )
  assert (got["num_positive_pairs"], got["num_negative_pairs"]) == (9, 27)
  assert got["far"] == 0.05 and got["threshold_at_far"] == got["threshold@far=0.05"]
  assert got["tar_at_far"] == got["tar@far=0.05"] is not None
  assert got["tar@far=0.01"] is None and 0.01 in got["unresolved_fars"]  # 27 negatives < 100
  assert 0 < len(got["roc"]) <= 200

  dense = evaluation.evaluate(
    ["embedding", "pixels"],
    str(tmp_path / "dense"),
    export_dir,
    queries=os.path.join(root, "queries"),
    gallery_dir=os.path.join(root, "gallery"),
    grid_queries=0,
    progress=False,
  )
  pairs = [(i, j) for i in range(len(q.entries)) for j in range(n)]
  fars = verification.FARS  # with the default --far=0.01
  _check_verification(
    dense["verification"]["embedding"],
    _reference(q.embeddings, q.identities, g.embeddings, g.identities, pairs, fars),
    fars,
  )
  assert set(dense["verification"]) == {"embedding", "pixels"}
  assert dense["verification"]["embedding"]["far"] == 0.01  # the default

  own = evaluation.evaluate(
    [],
    str(tmp_path / "index"),
    queries=os.path.join(root, "gallery"),
    index_dir=os.path.join(root, "index"),
    grid_queries=0,
    progress=False,
  )
  _check_verification(
    own["verification"]["embedding"],
    _reference(
      g.embeddings,
      g.identities,
      g.embeddings,
      g.identities,
      [(i, j) for i in range(n) for j in range(n) if i != j],
      fars,
    ),
    fars,
  )
  with open(tmp_path / "loo" / "metrics.json") as f:
    on_disk = json.load(f)
  assert on_disk["verification"]["embedding"]["eer"] == pytest.approx(got["eer"])
  assert on_disk["setup"]["far"] == 0.05
  with open(tmp_path / "dense" / "metrics.md") as f:
    table = f.read()
  assert "Verification" in table and "TAR@FAR=0.01" in table and "threshold@FAR=0.01" in table
  assert table.count("| pixels |") == 2 and "n/a" in table
  with pytest.raises(UserError, match="--far"):
    evaluation.evaluate(
      ["embedding"],
      str(tmp_path),
      export_dir,
      leave_one_out=True,
      data=os.path.join(root, "gallery"),
      progress=False,
      far=1.5,
    )


@pytest.mark.slow
def test_tool_reports_verification_at_the_asked_far(sets, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  root, export_dir, _ = sets
  tool = os.path.join(os.path.dirname(sys.executable), "facetriplet-evaluate")
  out = str(tmp_path / "eval")
  proc = subprocess.run(
    [
      tool,
      f"--model={export_dir}",
      "--leave_one_out",
      f"--data={os.path.join(root, 'gallery')}",
      "--far=0.05",
      "--grid_queries=0",
      "--noprogress",
      f"--output={out}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "metrics.json")) as f:
    report = json.load(f)
  got = report["verification"]["embedding"]
  assert report["setup"]["far"] == 0.05 and got["far"] == 0.05
  assert got["threshold_at_far"] == got["threshold@far=0.05"] is not None
  assert "threshold@FAR=0.05" in proc.stdout and "TAR@FAR=0.1" in proc.stdout
  bad = subprocess.run(
    [
      tool,
      f"--model={export_dir}",
      "--leave_one_out",
      f"--data={os.path.join(root, 'gallery')}",
      "--far=2",
      f"--output={out}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2 and "--far" in bad.stderr and "Traceback" not in bad.stderr


def test_several_features_find_each_face_once(sets, tmp_path, monkeypatch):
  """Features sharing the crop settings reuse each photo's crop; every score is what the
  feature gets when evaluated alone."""
  from facetriplet.data import faces  # pylint: disable=g-import-not-at-top

  root, export_dir, _ = sets
  cropped = []
  crop_each = faces.FaceCropper.crop_each

  def counting(self, decoded, *args, **kwargs):
    cropped.extend(range(len(decoded)))
    return crop_each(self, decoded, *args, **kwargs)

  monkeypatch.setattr(faces.FaceCropper, "crop_each", counting)
  where = dict(
    queries=os.path.join(root, "queries"),
    gallery_dir=os.path.join(root, "gallery"),
    grid_queries=0,
    progress=False,
  )
  both = evaluation.evaluate(["embedding", "pixels"], str(tmp_path / "both"), export_dir, **where)
  photos = sum(len(files) for _, _, files in os.walk(root + "/queries")) + sum(
    len(files) for _, _, files in os.walk(root + "/gallery")
  )
  assert len(cropped) == photos  # once each, for both features
  for name in ("embedding", "pixels"):
    alone = evaluation.evaluate([name], str(tmp_path / name), export_dir, **where)
    assert both["results"][name] == alone["results"][name], name
    assert both["verification"][name] == alone["verification"][name], name
  assert len(cropped) == 3 * photos  # alone: once per evaluation
