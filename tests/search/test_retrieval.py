"""Retrieval: gallery embedding, top-k, submission JSON/CSV, POST with retries, model checks."""

import csv
import http.server
import json
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from facetriplet.data import layouts
from facetriplet.search import embedding, features, gallery, retrieval, submission
from facetriplet.errors import UserError
from facetriplet.search.index import GalleryIndex
from facetriplet.search.items import Item
from tests.training.test_export import make_export

BIN = os.path.dirname(sys.executable)
IDENTITIES = ("alice", "bob", "carol")


def _photo(rng, base):
  noise = rng.integers(-20, 21, base.shape)
  return np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)


def write_image_set(root, rng, per_identity=2, folders=True, prefix=""):
  """Identity-coloured random images; returns {file name: identity}."""
  names = {}
  for i, identity in enumerate(IDENTITIES):
    base = np.zeros((40, 36, 3), np.uint8)
    base[..., i] = 200
    base[::4] = rng.integers(0, 256, (10, 36, 3))
    folder = os.path.join(root, identity) if folders else root
    os.makedirs(folder, exist_ok=True)
    for j in range(per_identity):
      name = f"{prefix}{identity}_{j}.png"
      Image.fromarray(_photo(rng, base)).save(os.path.join(folder, name))
      names[name] = identity
  return names


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("retrieval"))
  rng = np.random.default_rng(0)
  export_dir = make_export(root, seed=0)
  other_export = make_export(root, seed=1)
  gallery_dir = os.path.join(root, "gallery")
  write_image_set(gallery_dir, rng)
  with open(os.path.join(gallery_dir, "bob", "broken.jpg"), "wb") as f:
    f.write(b"not a jpeg at all")
  queries = os.path.join(root, "queries")
  write_image_set(queries, rng, per_identity=1, folders=False, prefix="q_")
  with open(os.path.join(queries, "corrupt.jpg"), "wb") as f:
    f.write(b"\xff\xd8garbage")
  extractor = features.make_extractor("embedding", export_dir)
  index_dir = os.path.join(root, "index")
  summary = gallery.build_gallery_index(
    extractor, gallery_dir, index_dir, progress=False, model_dir=export_dir
  )
  return dict(
    root=root,
    export=export_dir,
    other_export=other_export,
    gallery=gallery_dir,
    queries=queries,
    index=index_dir,
    extractor=extractor,
    summary=summary,
  )


def test_gallery_index_skips_unreadable(setup):
  s = setup["summary"]
  assert s.items == 6 and s.dim == 8
  assert [(p.rel_path, p.reason) for p in s.skipped] == [("bob/broken.jpg", "not-an-image")]
  index = GalleryIndex.load(setup["index"], expected_fingerprint=setup["extractor"].fingerprint)
  assert len(index) == 6
  assert {item.identity for item in index.items} == set(IDENTITIES)
  info = gallery.read_gallery_info(setup["index"])
  assert info["features"] == "embedding" and info["skipped"][0]["reason"] == "not-an-image"


def test_embed_entries_streams_in_input_order(setup):
  entries = layouts.list_inputs(setup["queries"])
  emb, kept, problems = embedding.embed_entries(
    setup["extractor"], entries, batch_size=2, workers=2, progress=False
  )
  assert [e.rel_path for e in kept] == [e.rel_path for e in entries if e.rel_path != "corrupt.jpg"]
  assert emb.shape == (3, 8)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
  assert [(p.rel_path, p.kept) for p in problems] == [("corrupt.jpg", False)]


def test_submission_and_csv(setup, tmp_path):
  index = GalleryIndex.load(setup["index"])
  entries = layouts.list_inputs(setup["queries"])
  result = retrieval.retrieve(setup["extractor"], index, entries, k=3, progress=False)
  payload = submission.make_submission(result.results, "team", result.shared_names)
  assert payload["groupname"] == "team"
  images = payload["images"]
  assert sorted(images) == sorted(["corrupt.jpg", "q_alice_0.png", "q_bob_0.png", "q_carol_0.png"])
  assert images["corrupt.jpg"] == []
  gallery_names = {item.name for item in index.items}
  for name in ("q_alice_0.png", "q_bob_0.png", "q_carol_0.png"):
    assert len(images[name]) == 3 and set(images[name]) <= gallery_names
    assert all("/" not in n for n in images[name])
  path = os.path.join(tmp_path, "out", "submission.json")
  submission.write_submission(path, payload)
  with open(path) as f:
    assert json.load(f) == payload
  csv_path = os.path.join(tmp_path, "out", "results.csv")
  assert submission.write_results_csv(csv_path, result.results, result.shared_names) == 3 * 3 + 1
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(submission.CSV_COLUMNS)
  good = [r for r in rows if r["query"] == "q_bob_0.png"]
  assert [int(r["rank"]) for r in good] == [1, 2, 3]
  sims = [float(r["similarity"]) for r in good]
  assert sims == sorted(sims, reverse=True) and all(-1.001 <= s <= 1.001 for s in sims)
  assert all(r["gallery_identity"] in IDENTITIES for r in good)
  bad = [r for r in rows if r["query"] == "corrupt.jpg"]
  assert len(bad) == 1 and bad[0]["rank"] == "" and bad[0]["query_note"]


def test_query_list_file_and_missing_query(setup, tmp_path):
  listing = os.path.join(tmp_path, "queries.txt")
  with open(listing, "w") as f:
    f.write(f"# queries\n{setup['queries']}/q_alice_0.png\n{tmp_path}/missing.png\n")
  entries = layouts.list_inputs(listing)
  index = GalleryIndex.load(setup["index"])
  result = retrieval.retrieve(setup["extractor"], index, entries, k=2, progress=False)
  payload = submission.make_submission(result.results, "g", result.shared_names)
  assert payload["images"]["missing.png"] == []
  assert len(payload["images"]["q_alice_0.png"]) == 2
  assert result.results[1].problem == "unreadable"


def test_k_clamped_with_warning(setup, caplog):
  index = GalleryIndex.load(setup["index"])
  entries = layouts.list_inputs(setup["queries"])
  with caplog.at_level(logging.WARNING):
    result = retrieval.retrieve(setup["extractor"], index, entries, k=50, progress=False)
  assert result.k == 6
  assert all(len(q.matches) == 6 for q in result.results if q.problem is None)
  assert any("larger than the gallery" in r.getMessage() for r in caplog.records)


def test_empty_gallery_is_an_error(setup, tmp_path):
  empty = os.path.join(tmp_path, "empty")
  os.makedirs(os.path.join(empty, "x"))
  with open(os.path.join(empty, "x", "bad.png"), "wb") as f:
    f.write(b"nope")
  with pytest.raises(UserError, match="no usable image"):
    gallery.build_gallery_index(
      setup["extractor"], empty, os.path.join(tmp_path, "idx"), progress=False
    )
  with pytest.raises(UserError, match="at least one"):
    GalleryIndex.load(setup["index"]).clamp_k(0)


def test_fingerprint_mismatch_refused(setup):
  other = features.make_extractor("embedding", setup["other_export"])
  assert other.fingerprint != setup["extractor"].fingerprint
  with pytest.raises(UserError, match="built with model"):
    GalleryIndex.load(setup["index"], expected_fingerprint=other.fingerprint)
  index = GalleryIndex.load(setup["index"])
  with pytest.raises(UserError, match="built with model"):
    retrieval.retrieve(other, index, layouts.list_inputs(setup["queries"]), progress=False)


class _Server:
  """A local HTTP server that answers 500 to the first `failures` POSTs, then 200."""

  def __init__(self, failures):
    self.bodies = []
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):  # noqa: N802
        outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        ok = len(outer.bodies) > failures
        body = b'{"top1": 0.5, "message": "thanks"}' if ok else b"server exploded"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/submit"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


def test_post_retries_then_succeeds():
  server = _Server(failures=2)
  waits = []
  try:
    answer = submission.post_submission(
      server.url,
      {"groupname": "g", "images": {}},
      timeout=5,
      retries=3,
      backoff=0.5,
      sleep=waits.append,
    )
  finally:
    server.close()
  assert answer.attempts == 3 and answer.status == 200 and "thanks" in answer.body
  assert waits == [0.5, 1.0] and len(server.bodies) == 3
  assert server.bodies[-1] == {"groupname": "g", "images": {}}


def test_post_gives_up():
  server = _Server(failures=100)
  try:
    with pytest.raises(UserError, match="after 3 attempts"):
      submission.post_submission(
        server.url, {}, timeout=5, retries=2, backoff=0, sleep=lambda s: None
      )
  finally:
    server.close()
  assert len(server.bodies) == 3


def _retrieve_tool(setup, out, *extra):
  return subprocess.run(
    [
      os.path.join(BIN, "facetriplet-retrieve"),
      f"--index={setup['index']}",
      f"--queries={setup['queries']}",
      f"--output={out}",
      "--groupname=team",
      "--k=4",
      "--backoff=0.01",
      "--noprogress",
      *extra,
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_retrieve_tool_posts_with_retries(setup, tmp_path):
  server = _Server(failures=2)
  try:
    proc = _retrieve_tool(setup, tmp_path, f"--submit_url={server.url}")
  finally:
    server.close()
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(server.bodies) == 3
  assert '"message": "thanks"' in proc.stdout and "3 attempt(s)" in proc.stdout
  with open(os.path.join(tmp_path, "submission.json")) as f:
    payload = json.load(f)
  assert payload == server.bodies[-1]
  assert len(payload["images"]) == 4 and payload["images"]["corrupt.jpg"] == []
  assert "unreadable query corrupt.jpg" in proc.stdout
  assert os.path.isfile(os.path.join(tmp_path, "results.csv"))


def test_retrieve_tool_keeps_file_when_post_fails(setup, tmp_path):
  server = _Server(failures=100)
  try:
    proc = _retrieve_tool(setup, tmp_path, f"--submit_url={server.url}", "--retries=1")
  finally:
    server.close()
  assert proc.returncode != 0
  assert "could not submit" in proc.stderr and "Traceback" not in proc.stderr
  assert len(server.bodies) == 2
  with open(os.path.join(tmp_path, "submission.json")) as f:
    assert len(json.load(f)["images"]) == 4


def test_retrieve_tool_refuses_other_model(setup, tmp_path):
  proc = _retrieve_tool(setup, tmp_path, f"--model={setup['other_export']}")
  assert proc.returncode == 2 and "built with model" in proc.stderr
  assert not os.path.exists(os.path.join(tmp_path, "submission.json"))


def test_no_face_query_uses_fallback_and_is_reported(setup, tmp_path):
  from facetriplet.data import faces  # pylint: disable=g-import-not-at-top

  crop = faces.CropSettings(detector="haar", crop_size=32)
  pixels = features.make_extractor("pixels", crop=crop)
  index_dir = os.path.join(tmp_path, "index")
  summary = gallery.build_gallery_index(pixels, setup["gallery"], index_dir, progress=False)
  assert summary.items == 6 and len(summary.no_face) == 6  # noise has no face: fallback crop
  index = GalleryIndex.load(index_dir, expected_fingerprint=pixels.fingerprint)
  result = retrieval.retrieve(
    pixels, index, layouts.list_inputs(setup["queries"]), k=2, progress=False
  )
  by_name = dict(zip(retrieval.query_names(result.results), result.results))
  assert by_name["q_bob_0.png"].problem == embedding.NO_FACE
  assert len(by_name["q_bob_0.png"].matches) == 2
  assert [p.kept for p in result.problems if p.rel_path == "q_bob_0.png"] == [True]
  skip = features.make_extractor(
    "pixels", crop=faces.CropSettings(detector="haar", crop_size=32, on_no_face="skip")
  )
  _, kept, problems = embedding.embed_entries(
    skip, layouts.list_inputs(setup["queries"]), progress=False
  )
  assert kept == [] and {p.reason for p in problems} == {embedding.NO_FACE, "not-an-image"}


def test_duplicate_gallery_file_names_use_relative_paths(setup):
  extractor = setup["extractor"]
  entries = layouts.list_inputs(setup["queries"])
  emb, kept, _ = embedding.embed_entries(extractor, entries, progress=False)
  items = [
    Item(id=d, path=e.path, rel_path=f"{d}/same.png", name="same.png")
    for e, d in zip(kept, ("a", "b", "c"))
  ]
  index = GalleryIndex.build(emb, items, extractor.fingerprint)
  # The query is itself gallery row "a" here; keep it, this test is about naming.
  result = retrieval.retrieve(extractor, index, kept[:1], k=3, progress=False, exclude_self=False)
  names = submission.make_submission(result.results, "g", result.shared_names)["images"][
    retrieval.query_names(result.results)[0]
  ]
  assert sorted(names) == ["a/same.png", "b/same.png", "c/same.png"]


def test_gallery_files_as_queries_never_retrieve_themselves(setup):
  """Leave-one-out over one set: querying with the gallery's own files.

  Each of the 6 readable gallery photos is a query; with exclude_self its own file is never in
  its list, every list has the other 5 (k=10 clamped to 6, minus itself), and the top hit's
  similarity equals the brute-force best among the *other* gallery rows. Without exclude_self the
  file finds itself first (similarity 1).
  """
  index = GalleryIndex.load(setup["index"])
  entries = [e for e in layouts.list_inputs(setup["gallery"]) if "broken" not in e.path]
  result = retrieval.retrieve(setup["extractor"], index, entries, k=10, progress=False)
  emb = index.embeddings
  row_of = {item.path: j for j, item in enumerate(index.items)}
  for q in result.results:
    paths = [n.path for n in q.matches]
    assert q.entry.path not in paths and len(paths) == 5
    own = row_of[q.entry.path]
    sims = emb @ emb[own]
    sims[own] = -np.inf
    assert q.matches[0].score == pytest.approx(float(sims.max()), abs=1e-4)
  plain = retrieval.retrieve(
    setup["extractor"], index, entries, k=10, progress=False, exclude_self=False
  )
  assert all(q.matches[0].path == q.entry.path for q in plain.results)


def test_retrieve_tool_takes_one_image_and_min_score(setup, tmp_path):
  """--queries=<one photo> answers that photo; --min_score above every similarity leaves its list
  empty (no match) yet the query stays in the submission; a binary non-image file is one line."""
  photo = os.path.join(
    setup["queries"], sorted(n for n in os.listdir(setup["queries"]) if n.startswith("q_"))[0]
  )
  proc = _retrieve_tool(setup, tmp_path, f"--queries={photo}", "--min_score=1.01")
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(tmp_path, "submission.json"), encoding="utf-8") as f:
    assert json.load(f)["images"] == {os.path.basename(photo): []}
  blob = os.path.join(tmp_path, "queries.bin")
  with open(blob, "wb") as f:
    f.write(bytes(range(256)) * 8)
  bad = _retrieve_tool(setup, tmp_path, f"--queries={blob}")
  last = bad.stderr.strip().splitlines()[-1]  # (TensorFlow may log a CUDA line before it)
  assert bad.returncode == 2 and ": error: " in last and "Traceback" not in bad.stderr
  assert "queries.bin" in last and "image" in last
