"""The HTTP service against the library: a real uvicorn server on 127.0.0.1 over a tiny index.

Every answer is checked against an independent reference: /search against `Searcher.search`
called directly, /embed against `Searcher.embed`, enrolments and removals against a Searcher
reopened from disk. Bad uploads must get a 4xx and leave the server answering.
"""

import base64
import concurrent.futures
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from facetriplet.search import features, gallery
from facetriplet.search.searcher import Searcher
from facetriplet.serving.app import make_app
from facetriplet.serving.batching import GroupCommit
from facetriplet.serving.server import ServerThread
from tests.training.test_export import make_export
from tests.search.test_retrieval import write_image_set

BIN = os.path.dirname(sys.executable)
MAX_UPLOAD = 200_000
MAX_PIXELS = 1_000_000


class Client:
  """Minimal HTTP client (http.client) returning (status, decoded JSON or text)."""

  def __init__(self, url: str):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    self.host, self.port = host, int(port)

  def call(self, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
    try:
      conn.request(method, path, body=body, headers=headers or {})
      resp = conn.getresponse()
      data = resp.read()
      kind = resp.getheader("content-type", "")
      return resp.status, (json.loads(data) if "json" in kind else data.decode("utf-8", "replace"))
    finally:
      conn.close()

  def post_image(self, path, data, fields=None, filename="face.png", headers=None):
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in (fields or {}).items():
      parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
      )
    parts.append(
      f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
      f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
      + data
      + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    kind = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return self.call("POST", path, b"".join(parts), {**kind, **(headers or {})})

  def post_json(self, path, payload):
    return self.call(
      "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def _read(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("serve"))
  rng = np.random.default_rng(0)
  export_dir = make_export(root, seed=0)
  gallery_dir = os.path.join(root, "gallery")
  write_image_set(gallery_dir, rng, per_identity=3)
  queries = os.path.join(root, "queries")
  write_image_set(queries, rng, per_identity=2, folders=False, prefix="q_")
  extractor = features.make_extractor("embedding", export_dir)
  index_dir = os.path.join(root, "index")
  gallery.build_gallery_index(
    extractor, gallery_dir, index_dir, progress=False, model_dir=export_dir
  )
  query_files = sorted(os.path.join(queries, f) for f in os.listdir(queries))
  return dict(root=root, index=index_dir, export=export_dir, queries=query_files)


def _counted(searcher):
  """Counts the searcher's model calls (a wrapper around its extractor's embed)."""
  calls = {"n": 0}
  embed = searcher.extractor.embed
  lock = threading.Lock()

  def counting(batch):
    with lock:
      calls["n"] += 1
    return embed(batch)

  searcher.extractor.embed = counting
  return calls


@pytest.fixture(scope="module")
def served(setup):
  """A read-only server (micro-batched, 50 ms window) and the Searcher it serves."""
  searcher = Searcher.open(setup["index"])
  calls = _counted(searcher)
  app = make_app(
    searcher, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, batch_window_ms=50, max_batch=64
  )
  with ServerThread(app) as server:
    yield dict(searcher=searcher, calls=calls, client=Client(server.url), url=server.url)


@pytest.fixture
def writable(setup, tmp_path):
  """A server over a copy of the index (enrol/remove write to it)."""
  index_dir = str(tmp_path / "index")
  shutil.copytree(setup["index"], index_dir)
  searcher = Searcher.open(index_dir)
  with ServerThread(make_app(searcher, batch_window_ms=5)) as server:
    yield dict(searcher=searcher, client=Client(server.url), index=index_dir)


def _same(answer, result, k):
  """An HTTP answer's matches equal a SearchResult's (ids, ranks, boxes; scores within 1e-5)."""
  assert answer["box"] == (list(result.box) if result.box else None)
  assert answer["problem"] == result.problem
  got, want = answer["matches"], result.matches
  # Ids are shown without filesystem paths: a gallery photo by its path within the gallery.
  assert [m["id"] for m in got] == [m.item.rel_path or m.id for m in want]
  assert not any(os.sep in m["id"] and os.path.isabs(m["id"]) for m in got)
  assert all("path" not in m for m in got)
  assert len(got) == min(k, len(want))
  for g, w in zip(got, want):
    assert g["rank"] == w.rank and g["identity"] == w.identity and g["name"] == w.name
    assert g["score"] == pytest.approx(w.score, abs=1e-5)
    assert g["box"] == (list(w.box) if w.box else None)


def test_search_equals_the_library(served, setup):
  client, searcher = served["client"], served["searcher"]
  for path in setup["queries"]:
    data = _read(path)
    status, answer = client.post_image("/search", data, {"k": 3}, os.path.basename(path))
    assert status == 200, answer
    assert answer["query"] == os.path.basename(path) and answer["k"] == 3
    _same(answer, searcher.search(data, k=3), 3)
    # The same photo as JSON base64 (k in the body) and as a raw body (k in the query).
    status, as_json = client.post_json(
      "/search", {"image_base64": base64.b64encode(data).decode(), "k": 3}
    )
    assert status == 200 and as_json["matches"] == answer["matches"]
    status, raw = client.call("POST", "/search?k=3", data, {"Content-Type": "image/png"})
    assert status == 200 and raw["matches"] == answer["matches"]


def test_min_score_and_no_match(served, setup):
  client, searcher = served["client"], served["searcher"]
  data = _read(setup["queries"][0])
  full = searcher.search(data, k=5)
  cut = (full.matches[1].score + full.matches[2].score) / 2
  status, answer = client.post_image("/search?min_score=%r" % cut, data, {"k": 5})
  assert status == 200
  _same(answer, searcher.search(data, k=5, min_score=cut), 5)
  assert len(answer["matches"]) == 2
  status, answer = client.post_image("/search", data, {"min_score": 1.01})
  assert status == 200 and answer["matches"] == []  # no match is an empty list


def test_faces_all(served, setup):
  client, searcher = served["client"], served["searcher"]
  data = _read(setup["queries"][1])
  status, answer = client.post_image("/search", data, {"k": 2, "faces": "all"})
  assert status == 200, answer
  want = searcher.search(data, k=2, faces_mode="all")
  assert len(answer["faces"]) == len(want)
  for got, result in zip(answer["faces"], want):
    _same(got, result, 2)


def test_embed_equals_the_library(served, setup):
  client, searcher = served["client"], served["searcher"]
  data = _read(setup["queries"][2])
  status, answer = client.post_image("/embed", data)
  assert status == 200, answer
  assert answer["dim"] == searcher.dim == len(answer["embedding"])
  assert answer["fingerprint"] == searcher.extractor.fingerprint
  np.testing.assert_allclose(answer["embedding"], searcher.embed(data), atol=1e-5)


def test_healthz_and_docs(served, setup):
  client, searcher = served["client"], served["searcher"]
  status, health = client.call("GET", "/healthz")
  assert status == 200
  assert health["items"] == len(searcher) == 9
  assert health["dim"] == searcher.dim and health["fingerprint"] == searcher.extractor.fingerprint
  assert health["model"] == os.path.basename(setup["export"])  # a name, never a path
  assert health["index"] == "index"
  status, page = client.call("GET", "/docs")
  assert status == 200 and "swagger" in page.lower()
  status, spec = client.call("GET", "/openapi.json")
  assert status == 200
  assert {"/search", "/embed", "/items", "/items/{item_id}", "/healthz"} <= set(spec["paths"])
  # Every endpoint documents a typed answer (a pydantic model) and every upload its body.
  answers = {
    ("/search", "post"): {"SearchAnswer", "SearchAllAnswer"},
    ("/embed", "post"): {"EmbedAnswer"},
    ("/items", "post"): {"EnrolAnswer"},
    ("/items/{item_id}", "delete"): {"RemoveAnswer"},
    ("/healthz", "get"): {"Health"},
  }
  for (path, method), models in answers.items():
    op = spec["paths"][path][method]
    ok = next(v for code, v in op["responses"].items() if code.startswith("2"))
    assert set(re.findall(r"#/components/schemas/(\w+)", json.dumps(ok))) == models, path
    assert "ErrorAnswer" in json.dumps(op["responses"].get("422", {})), path
    if method == "post":
      body = op["requestBody"]["content"]
      assert set(body) == {"multipart/form-data", "application/json", "image/jpeg"}
      assert "image" in body["multipart/form-data"]["schema"]["properties"]
  assert {"k", "min_score", "faces"} <= set(
    spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"][
      "properties"
    ]
  )
  schemas = spec["components"]["schemas"]
  assert {"rank", "score", "id", "identity", "box"} <= set(schemas["MatchOut"]["properties"])


def _raw_request(url, head: bytes, body_chunks=()):
  """Sends a hand-made request (headers, then body pieces) and returns the status line."""
  host, port = url.removeprefix("http://").rsplit(":", 1)
  with socket.create_connection((host, int(port)), timeout=30) as sock:
    sock.sendall(head)
    for chunk in body_chunks:
      try:
        sock.sendall(chunk)
      except OSError:
        break  # the server answered and closed before reading everything: that is the point
    data = b""
    try:
      while b"\r\n" not in data:
        more = sock.recv(4096)
        if not more:
          break
        data += more
    except ConnectionResetError:
      pass
    return data.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize(
  "name,data,fields,status,words",
  [
    ("text", b"hello, this is not a photo\n" * 10, {}, 415, "not-an-image"),
    ("empty", b"", {}, 400, "empty"),
    ("truncated", None, {}, 400, "truncated"),
    ("pixels", None, {}, 413, "too-large"),
    ("k0", None, {"k": 0}, 422, "k must be"),
    ("kword", None, {"k": "ten"}, 422, "k must be"),
    ("faces", None, {"faces": "some"}, 422, "faces must be"),
    ("score", None, {"min_score": "high"}, 422, "min_score"),
  ],
)
def test_bad_uploads_get_4xx_and_the_server_lives(served, setup, name, data, fields, status, words):
  client = served["client"]
  good = _read(setup["queries"][0])
  if name == "truncated":
    data = good[: len(good) // 2]
  elif name == "pixels":
    data = _png(np.full((1000, 1001, 3), 90, np.uint8))  # 1,001,000 px > MAX_PIXELS, tiny file
  elif data is None:
    data = good
  for endpoint in ("/search", "/embed"):
    if endpoint == "/embed" and fields:
      continue
    got, answer = client.post_image(endpoint, data, fields, f"{name}.png")
    assert got == status, answer
    assert words in answer["detail"] and "\n" not in answer["detail"], answer
  assert client.call("GET", "/healthz")[0] == 200


def test_bad_requests(served, setup):
  client = served["client"]
  assert client.call("GET", "/search")[0] == 405
  status, answer = client.call("POST", "/search", b"x", {"Content-Type": "text/plain"})
  assert status == 415 and "Content-Type" in answer["detail"]
  status, answer = client.post_json("/search", {"k": 3})
  assert status == 400 and "no image" in answer["detail"]
  status, answer = client.post_json("/search", {"image_base64": "@@not base64@@"})
  assert status == 400 and "base64" in answer["detail"]
  status, answer = client.call(
    "POST", "/search", b"{not json", {"Content-Type": "application/json"}
  )
  assert status == 400 and "JSON" in answer["detail"]
  status, answer = client.call("POST", "/search?k=0", b"", {"Content-Type": "image/png"})
  assert status == 422 and answer["detail"].startswith("k: ")
  status, answer = client.post_json(
    "/search",
    {
      "image_base64": "\n".join(base64.encodebytes(_read(setup["queries"][0])).decode().split()),
      "k": 2,
    },
  )
  assert status == 200 and len(answer["matches"]) == 2  # wrapped base64 is fine
  assert client.call("GET", "/healthz")[0] == 200


def test_oversized_uploads_get_413(served, setup):
  client, url = served["client"], served["url"]
  big = os.urandom(MAX_UPLOAD + 1)
  status, answer = client.call("POST", "/search", big, {"Content-Type": "image/jpeg"})
  assert status == 413 and "too large" in answer["detail"]
  # A Content-Length far over the limit is refused before the body is read.
  head = (
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
    b"Content-Length: 900000000\r\n\r\n"
  )
  assert " 413 " in _raw_request(url, head, [b"\xff" * 1000])
  # No Content-Length (chunked): refused once the bytes read pass the limit.
  head = (
    b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
  )
  chunks = [b"%x\r\n" % 65536 + os.urandom(65536) + b"\r\n" for _ in range(8)] + [b"0\r\n\r\n"]
  assert " 413 " in _raw_request(url, head, chunks)
  assert client.call("GET", "/healthz")[0] == 200
  assert client.post_image("/search", _read(setup["queries"][0]))[0] == 200


def _search_all(client, payloads):
  out = []
  for data, k in payloads:
    status, answer = client.post_image("/search", data, {"k": k})
    assert status == 200, answer
    out.append(answer)
  return out


def test_concurrent_searches_are_batched_and_agree(served, setup):
  client, calls = served["client"], served["calls"]
  payloads = [(_read(p), 1 + i % 4) for i, p in enumerate(setup["queries"])] * 4  # 24 requests
  sequential = _search_all(client, payloads)
  before = calls["n"]
  barrier = threading.Barrier(len(payloads))

  def one(payload):
    barrier.wait()
    return _search_all(client, [payload])[0]

  with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
    concurrent_answers = list(pool.map(one, payloads))
  model_calls = calls["n"] - before
  assert 1 <= model_calls < len(payloads)
  for got, want, (_, k) in zip(concurrent_answers, sequential, payloads):
    assert [m["id"] for m in got["matches"]] == [m["id"] for m in want["matches"]]
    assert len(got["matches"]) == k
    for g, w in zip(got["matches"], want["matches"]):
      assert g["score"] == pytest.approx(w["score"], abs=1e-5)
  health = client.call("GET", "/healthz")[1]
  assert health["micro_batch"] and health["search_calls"] < health["search_requests"]


def test_without_micro_batching_each_request_calls_the_model(served, setup):
  searcher = served["searcher"]
  payloads = [(_read(p), 2) for p in setup["queries"]]
  with ServerThread(make_app(searcher, micro_batch=False)) as server:
    client = Client(server.url)
    before = served["calls"]["n"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      answers = list(pool.map(lambda p: _search_all(client, [p])[0], payloads))
    assert served["calls"]["n"] - before == len(payloads)
    health = client.call("GET", "/healthz")[1]
    assert not health["micro_batch"] and health["search_calls"] == len(payloads)
  for answer, (data, k) in zip(answers, payloads):
    _same(answer, searcher.search(data, k=k), k)


def _new_face(seed):
  rng = np.random.default_rng(seed)
  image = np.zeros((40, 36, 3), np.uint8)
  image[..., :] = rng.integers(0, 256, 3)
  image[1::3] = rng.integers(0, 256, (13, 36, 3))
  return _png(image)


def test_enrol_search_remove_persisted(writable):
  client, index_dir = writable["client"], writable["index"]
  data = _new_face(7)
  status, answer = client.post_image(
    "/items", data, {"id": "dave/1", "identity": "dave", "name": "Dave"}
  )
  assert status == 201, answer
  assert answer["ids"] == ["dave/1"] and not answer["replaced"] and answer["items"] == 10
  status, found = client.post_image("/search", data, {"k": 3})
  best = found["matches"][0]
  assert best["id"] == "dave/1" and best["identity"] == "dave" and best["name"] == "Dave"
  assert best["score"] == pytest.approx(1.0, abs=1e-4)
  reopened = Searcher.open(index_dir)  # the enrolment is on disk
  assert reopened.contains("dave/1") and reopened.search(data, k=1).best.id == "dave/1"
  # Without an id, the id comes from the image's SHA-256; enrolling it again replaces it.
  other = _new_face(8)
  status, answer = client.post_image("/items", other)
  assert status == 201 and answer["ids"] == [hashlib.sha256(other).hexdigest()[:16]]
  status, again = client.post_image("/items", other)
  assert status == 201 and again["replaced"] and again["items"] == answer["items"]

  status, answer = client.call("DELETE", "/items/dave/1")
  assert status == 200 and answer["removed"] == 1
  status, found = client.post_image("/search", data, {"k": 100})
  assert status == 200 and "dave/1" not in [m["id"] for m in found["matches"]]
  reopened = Searcher.open(index_dir)
  assert not reopened.contains("dave/1")
  assert "dave/1" not in [m.id for m in reopened.search(data, k=100)]
  status, answer = client.call("DELETE", "/items/dave/1")
  assert status == 404 and "no item with id 'dave/1'" in answer["detail"]
  assert client.call("DELETE", "/items/nobody")[0] == 404
  # A gallery photo is shown (and deleted) by its path within the gallery; its item id inside
  # the index, an absolute path, is not an id the service knows.
  match = next(m for m in found["matches"] if m["identity"] == "alice")
  internal = next(i.id for i in reopened.index.items if i.rel_path == match["id"])
  assert client.call("DELETE", "/items/" + internal)[0] == 404
  status, answer = client.post_image("/items", data, {"id": match["id"]})
  assert status == 409 and "gallery photo" in answer["detail"]  # not replaced by an upload
  status, answer = client.post_image("/items", data, {"id": internal})  # nor by its path
  assert status == 422 and "not paths" in answer["detail"]
  assert client.call("DELETE", "/items/" + match["id"])[0] == 200
  assert not Searcher.open(index_dir).contains(internal)


def test_the_last_item_cannot_be_removed(writable, setup):
  client, searcher = writable["client"], writable["searcher"]
  *others, last = list(searcher.index.items)
  for item in others:
    assert client.call("DELETE", "/items/" + item.rel_path)[0] == 200
  status, answer = client.call("DELETE", "/items/" + last.rel_path)
  assert status == 409 and "empty index" in answer["detail"]
  status, answer = client.post_image("/search", _read(setup["queries"][0]))
  assert status == 200 and [m["id"] for m in answer["matches"]] == [last.rel_path]
  assert [item.id for item in Searcher.open(writable["index"]).index.items] == [last.id]


def test_enrol_refuses_bad_images(writable):
  client = writable["client"]
  status, answer = client.post_image("/items", b"GIF89a but not really", {"id": "x"})
  assert status in (400, 415) and "image" in answer["detail"]
  assert not writable["searcher"].contains("x")
  status, answer = client.post_image("/items", _new_face(1), {"id": "bad\nid"})
  assert status == 422


def test_a_failed_save_is_reported(writable, monkeypatch):
  def full(*_):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(writable["searcher"], "save", full)
  status, answer = writable["client"].post_image("/items", _new_face(3), {"id": "lost"})
  assert status == 500 and "No space left on device" in answer["detail"]
  assert not Searcher.open(writable["index"]).contains("lost")


def test_group_commit_shares_saves():
  saves, changes, lock = [], [0], threading.Lock()

  def slow_save():
    with lock:
      seen = changes[0]
    time.sleep(0.1)
    saves.append(seen)

  commit = GroupCommit(slow_save)

  def change():
    with lock:
      changes[0] += 1
      mine = changes[0]
    commit.commit()
    assert saves and max(saves) >= mine  # a save that saw this change completed first

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda _: change(), range(8)))
  assert 1 <= len(saves) < 8


def test_concurrent_enrol_and_search(writable, setup):
  client = writable["client"]
  queries = [_read(p) for p in setup["queries"]]
  errors, stop = [], threading.Event()

  def searching():
    while not stop.is_set():
      for data in queries:
        status, answer = client.post_image("/search", data, {"k": 3})
        if status != 200:
          errors.append((status, answer))

  def enrolling(worker):
    for n in range(4):
      status, answer = client.post_image(
        "/items", _new_face(100 * worker + n), {"id": f"w{worker}-{n}"}
      )
      if status != 201:
        errors.append((status, answer))
    status, answer = client.call("DELETE", f"/items/w{worker}-0")
    if status != 200:
      errors.append((status, answer))

  searchers = [threading.Thread(target=searching) for _ in range(3)]
  for t in searchers:
    t.start()
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    list(pool.map(enrolling, range(3)))
  stop.set()
  for t in searchers:
    t.join()
  assert not errors, errors[:3]
  reopened = Searcher.open(writable["index"])
  assert len(reopened) == 9 + 3 * 3
  for worker in range(3):
    assert not reopened.contains(f"w{worker}-0")
    assert all(reopened.contains(f"w{worker}-{n}") for n in range(1, 4))


@pytest.mark.slow
def test_tool_prints_the_url_and_stops_on_ctrl_c(setup):
  proc = subprocess.Popen(
    [os.path.join(BIN, "facetriplet-serve"), f"--index={setup['index']}", "--port=0"],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  try:
    line = proc.stdout.readline()
    assert "http://127.0.0.1:" in line and "9 items" in line, (line, proc.stderr.read())
    url = re.search(r"http://127\.0\.0\.1:[0-9]+", line).group(0)
    assert f"open {url} (API docs: {url}/docs)" in line  # the page first
    status, health = Client(url).call("GET", "/healthz")
    assert status == 200 and health["items"] == 9
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err
  assert "stopped" in out and "Traceback" not in err


def test_tool_reports_a_missing_index(tmp_path):
  proc = subprocess.run(
    [os.path.join(BIN, "facetriplet-serve"), f"--index={tmp_path / 'nothing'}"],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "facetriplet-serve: error:" in proc.stderr


def test_tool_help_shows_its_docstring_and_flags():
  proc = subprocess.run(
    [os.path.join(BIN, "facetriplet-serve"), "--help"],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  text = proc.stdout + proc.stderr
  assert proc.returncode in (0, 1) and "Traceback" not in text, text
  assert "facetriplet-serve --index=" in text.split("flags:")[0]
  for flag in ("--index", "--port", "--max_upload_mb", "--batch_window_ms", "--[no]micro_batch"):
    assert flag in text, flag


def _pair(client, a, b, fields=None, headers=None):
  boundary = uuid.uuid4().hex
  parts = [
    f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for k, v in (fields or {}).items()
  ]
  for name, data in (("a", a), ("b", b)):
    parts.append(
      f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"'
      "\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
      + data
      + b"\r\n"
    )
  parts.append(f"--{boundary}--\r\n".encode())
  kind = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
  return client.call("POST", "/verify", b"".join(parts), {**kind, **(headers or {})})


def test_verify_agrees_with_the_library(served, setup):
  client, searcher = served["client"], served["searcher"]
  photos = [_read(p) for p in setup["queries"][:3]]
  for a, b in ((photos[0], photos[0]), (photos[0], photos[1]), (photos[1], photos[2])):
    score = searcher.verify(a, b, threshold=0.0)[1]
    for threshold in (score - 1e-3, score + 1e-3):
      status, answer = _pair(client, a, b, {"threshold": threshold})
      assert status == 200, answer
      assert answer["same"] == searcher.verify(a, b, threshold=threshold)[0]
      assert answer["score"] == pytest.approx(score, abs=1e-5)
      assert answer["threshold"] == pytest.approx(threshold) and answer["far"] is None
    as_json = {
      "a_base64": base64.b64encode(a).decode(),
      "b_base64": base64.b64encode(b).decode(),
      "threshold": 0.5,
    }
    status, answer = client.post_json("/verify", as_json)
    assert status == 200 and answer["score"] == pytest.approx(score, abs=1e-5)
  # This model carries no calibration: without a threshold the answer says what to pass.
  status, answer = _pair(client, photos[0], photos[1])
  assert status == 422 and "threshold" in answer["detail"]
  status, answer = client.post_image("/verify", photos[0])  # one photo only
  assert status == 400 and "'b'" in answer["detail"]
  assert _pair(client, photos[0], photos[1], {"far": 2})[0] == 422


def test_search_tool_verifies_two_photos(setup):
  a, b = setup["queries"][:2]
  proc = subprocess.run(
    [
      os.path.join(BIN, "facetriplet-search"),
      f"--index={setup['index']}",
      "--verify",
      "--threshold=-1",
      a,
      b,
    ],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  assert proc.returncode == 0, proc.stderr
  score = Searcher.open(setup["index"]).verify(a, b, threshold=-1)[1]
  assert proc.stdout.startswith("same person: similarity ") and f"{score:.4f}" in proc.stdout
