"""Evaluation: gallery, index and leave-one-out set-ups agree with metrics.py; outputs written."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from facetriplet import metrics
from facetriplet.evaluation import evaluation
from facetriplet.search import features, gallery
from facetriplet.errors import UserError
from tests.search.test_export import make_export
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
  gallery.build_gallery_index(extractor, os.path.join(root, "gallery"),
                              os.path.join(root, "index"), progress=False, model_dir=export_dir)
  return root, export_dir, extractor


def test_gallery_and_index_agree_with_metrics(sets, tmp_path):
  root, export_dir, extractor = sets
  dense = evaluation.evaluate(["embedding"], os.path.join(tmp_path, "dense"), export_dir,
                              queries=os.path.join(root, "queries"),
                              gallery_dir=os.path.join(root, "gallery"), grid_queries=2,
                              grid_k=4, progress=False)
  via_index = evaluation.evaluate([], os.path.join(tmp_path, "index"),
                                  queries=os.path.join(root, "queries"),
                                  index_dir=os.path.join(root, "index"), grid_queries=2,
                                  progress=False)
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
  loo = evaluation.evaluate(["embedding"], str(tmp_path), export_dir, leave_one_out=True,
                            data=os.path.join(root, "gallery"), grid_queries=0, progress=False)
  assert loo["results"]["embedding"]["num_queries"] == 9
  assert loo["setup"]["mode"] == "leave_one_out"
  assert not os.path.exists(os.path.join(tmp_path, "grid.png"))
  labelled = evaluation.evaluate(["embedding"], str(tmp_path), export_dir,
                                 queries=os.path.join(root, "flat"),
                                 gallery_dir=os.path.join(root, "gallery"),
                                 labels_file=os.path.join(root, "labels.txt"), grid_queries=1,
                                 progress=False)
  assert labelled["results"]["embedding"]["num_queries"] == 3


def test_unknown_identities_and_bad_setups(sets, tmp_path):
  root, export_dir, _ = sets
  with pytest.raises(UserError, match="known identity"):
    evaluation.evaluate(["embedding"], str(tmp_path), export_dir,
                        queries=os.path.join(root, "flat"),
                        gallery_dir=os.path.join(root, "gallery"), progress=False)
  with pytest.raises(UserError, match="--queries with one of"):
    evaluation.evaluate(["embedding"], str(tmp_path), export_dir,
                        queries=os.path.join(root, "flat"), progress=False)
  with pytest.raises(UserError, match="one kind of features"):
    evaluation.evaluate(["embedding", "hog"], str(tmp_path), export_dir,
                        queries=os.path.join(root, "queries"),
                        index_dir=os.path.join(root, "index"), progress=False)


def test_index_evaluation_never_counts_self_matches(sets, tmp_path):
  """Queries that are the gallery's own files (issue: top-1 rose to 1.000 with no warning)."""
  root, _, extractor = sets
  report = evaluation.evaluate([], str(tmp_path), queries=os.path.join(root, "gallery"),
                               index_dir=os.path.join(root, "index"), grid_queries=0,
                               progress=False)
  got = report["results"]["embedding"]
  g = evaluation.embed_set(extractor, os.path.join(root, "gallery"), "auto", None, 8, 1, False)
  # Independent reference: leave-one-out over the same embeddings (NumPy brute force).
  expected = metrics.retrieval_metrics(g.embeddings, g.identities, g.embeddings, g.identities,
                                       leave_one_out=True)
  for key in ("top1", "top5", "precision@5", "recall@5", "map@r"):
    assert got[key] == pytest.approx(expected[key], abs=1e-6), key
  assert got["self_matches_excluded"] == got["num_queries"] == 9
  assert report["setup"]["self_matches"] == "excluded"


def test_degenerate_evaluations_are_errors_or_stated_clamps(sets, tmp_path):
  root, export_dir, extractor = sets
  # Leave-one-out where nobody has a second photo: an error, not a table of zeros.
  with pytest.raises(UserError, match="no query .* relevant gallery item"):
    evaluation.evaluate(["embedding"], str(tmp_path), export_dir, leave_one_out=True,
                        data=os.path.join(root, "queries"), grid_queries=0, progress=False)
  # k above the candidates (9 gallery photos, 8 others per query): scored at 8 and said so.
  report = evaluation.evaluate(["embedding"], str(tmp_path), export_dir, leave_one_out=True,
                               data=os.path.join(root, "gallery"), ks=(1, 5, 20),
                               grid_queries=0, progress=False)
  got = report["results"]["embedding"]
  assert report["setup"]["ks_clamped"] == {"@20": 8}
  g = evaluation.embed_set(extractor, os.path.join(root, "gallery"), "auto", None, 8, 1, False)
  expected = metrics.retrieval_metrics(g.embeddings, g.identities, g.embeddings, g.identities,
                                       ks=(1, 5, 8), leave_one_out=True)
  assert got["precision@20"] == pytest.approx(expected["precision@8"])
  assert got["top20"] == pytest.approx(expected["top8"]) and "top8" not in got
