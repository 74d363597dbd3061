"""One query engine: retrieve, evaluate, search and serve rank the same index and queries alike.

Each of the four is driven as a user drives it (the retrieve and search tools in a subprocess,
evaluate as a library call, the service over HTTP on 127.0.0.1), and their rankings are checked
against each other and against a NumPy brute force over the index's embeddings.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from facetriplet.data import faces
from facetriplet.evaluation import evaluation
from facetriplet.search import engine, features, gallery
from facetriplet.search.searcher import Searcher
from facetriplet.serving.app import make_app
from facetriplet.serving.server import ServerThread
from tests.search.test_retrieval import write_image_set
from tests.serving.test_serve import Client
from tests.training.test_export import make_export

BIN = os.path.dirname(sys.executable)
K = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("engine"))
  rng = np.random.default_rng(11)
  export_dir = make_export(root, seed=0)
  write_image_set(os.path.join(root, "gallery"), rng, per_identity=4)
  queries = os.path.join(root, "queries")
  write_image_set(queries, rng, per_identity=2, prefix="q_")
  extractor = features.make_extractor("embedding", export_dir)
  index_dir = os.path.join(root, "index")
  gallery.build_gallery_index(
    extractor, os.path.join(root, "gallery"), index_dir, progress=False, model_dir=export_dir
  )
  files = sorted(
    os.path.join(queries, d, n)
    for d in os.listdir(queries)
    for n in os.listdir(os.path.join(queries, d))
  )
  return dict(root=root, index=index_dir, queries=queries, files=files, extractor=extractor)


def _csv(path):
  """{query file name: [(gallery name, similarity), ...]} of a results.csv."""
  out = {}
  with open(path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      out.setdefault(row["query"], []).append((row["gallery"], float(row["similarity"])))
  return out


def _run(*args):
  proc = subprocess.run(
    list(args),
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_retrieve_evaluate_search_and_serve_rank_alike(setup, tmp_path):
  files, names = setup["files"], [os.path.basename(p) for p in setup["files"]]
  # 1. facetriplet-retrieve: results.csv.
  _run(
    os.path.join(BIN, "facetriplet-retrieve"),
    f"--index={setup['index']}",
    f"--queries={setup['queries']}",
    f"--output={tmp_path / 'retrieve'}",
    f"--k={K}",
    "--noprogress",
  )
  retrieved = _csv(tmp_path / "retrieve" / "results.csv")
  # 2. evaluate against the index (labelled queries): its results.csv.
  evaluation.evaluate(
    [],
    str(tmp_path / "evaluate"),
    queries=setup["queries"],
    index_dir=setup["index"],
    ks=(1, K),
    grid_queries=0,
    progress=False,
  )
  evaluated = _csv(tmp_path / "evaluate" / "results.csv")
  # 3. facetriplet-search --json.
  searched = {
    os.path.basename(r["query"]): [(m["name"], m["score"]) for m in r["matches"]]
    for r in json.loads(
      _run(
        os.path.join(BIN, "facetriplet-search"),
        f"--index={setup['index']}",
        f"--k={K}",
        "--json",
        *files,
      )
    )
  }
  # 4. The HTTP service.
  with ServerThread(make_app(Searcher.open(setup["index"]))) as server:
    client = Client(server.url)
    served = {}
    for path in files:
      with open(path, "rb") as f:
        status, answer = client.post_image("/search", f.read(), {"k": K}, os.path.basename(path))
      assert status == 200, answer
      served[answer["query"]] = [(m["name"], m["score"]) for m in answer["matches"]]

  # The independent reference: brute force over the index's embeddings.
  searcher = Searcher.open(setup["index"])
  index = searcher.index
  reference = {}
  for name, path in zip(names, files):
    crop = faces.load_and_crop(path, setup["extractor"].crop_settings).image
    scores = np.asarray(index.embeddings) @ setup["extractor"].embed(crop[None])[0]
    order = np.argsort(-scores, kind="stable")[:K]
    reference[name] = [(index.items[j].name, float(scores[j])) for j in order]

  for how, got in (
    ("retrieve", retrieved),
    ("evaluate", evaluated),
    ("search", searched),
    ("serve", served),
  ):
    assert sorted(got) == sorted(names), how
    for name in names:
      assert [n for n, _ in got[name]] == [n for n, _ in reference[name]], (how, name)
      np.testing.assert_allclose(
        [s for _, s in got[name]],
        [s for _, s in reference[name]],
        atol=1e-5,
        err_msg=f"{how} {name}",
      )


def test_results_are_typed(setup):
  searcher = Searcher.open(setup["index"])
  result = searcher.search(setup["files"][0], k=3)
  assert isinstance(result, engine.SearchResult)
  assert all(isinstance(m, engine.Match) for m in result)
  assert all(m.item is searcher.index.items[searcher.index.row_of(m.id)] for m in result)
