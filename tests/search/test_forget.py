"""Forgetting a person and the audit trail, on real indexes (ScaNN and faiss), through the
library, the HTTP service and the build-index tool.

The reference for "forgotten" is the bytes on disk: after an erasure no file of the index folder
(the audit trail and gallery.json included) holds the person's name, any of their item ids or
photo paths, or any of their embeddings (as float32 bytes).
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from facetriplet.errors import UserError
from facetriplet.search import audit, features, gallery, thumbnails
from facetriplet.search.searcher import Searcher
from facetriplet.serving import security
from facetriplet.serving.app import make_app
from facetriplet.serving.server import ServerThread
from tests.search.test_retrieval import write_image_set
from tests.serving.test_serve import BIN, Client, _new_face
from tests.training.test_export import make_export

SECRET = "e" * 24
TOKENS = security.Tokens.parse(f"editor write {SECRET}", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Index folders (scann, faiss-flat) of alice/bob/carol, carol with an unreadable photo."""
  root = str(tmp_path_factory.mktemp("forget"))
  export_dir = make_export(root, seed=0)
  gallery_dir = os.path.join(root, "people")
  write_image_set(gallery_dir, np.random.default_rng(0), per_identity=3)
  with open(os.path.join(gallery_dir, "carol", "broken.jpg"), "wb") as f:
    f.write(b"not a jpeg")
  extractor = features.make_extractor("embedding", export_dir)
  out = {}
  for backend in ("scann", "faiss-flat"):
    out[backend] = os.path.join(root, f"index-{backend}")
    gallery.build_gallery_index(
      extractor, gallery_dir, out[backend], progress=False, model_dir=export_dir, backend=backend
    )
  return out


def _copy(src, tmp_path):
  dst = str(tmp_path / "index")
  shutil.copytree(src, dst)
  return dst


def _all_bytes(folder):
  """{relative path: bytes} of every file under folder."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
  return out


def _traces(searcher, identity):
  """What must vanish: the name, the ids, paths and shown ids of the person's items, and their
  embeddings' bytes."""
  rows = [r for r, item in enumerate(searcher.index.items) if item.identity == identity]
  items = [searcher.index.items[r] for r in rows]
  needles = {identity.encode()}
  for item in items:
    needles |= {item.id.encode(), item.path.encode(), item.rel_path.encode()}
  vectors = [np.asarray(searcher.index.embeddings[r], np.float32).tobytes() for r in rows]
  return {n for n in needles if n}, vectors


def _assert_forgotten(index_dir, needles, vectors):
  for rel, data in _all_bytes(index_dir).items():
    for needle in needles:
      assert needle not in data, (rel, needle)
    for vector in vectors:
      assert vector not in data, (rel, "an embedding of the person")


@pytest.mark.parametrize("backend", ["scann", "faiss-flat"])
def test_forget_leaves_no_byte_of_the_person(built, backend, tmp_path):
  index_dir = _copy(built[backend], tmp_path)
  searcher = Searcher.open(index_dir)
  assert "carol" in json.dumps(searcher.info)  # the skipped photo is listed under carol/
  face = _new_face(7)
  searcher.add_image(face, "carol-upload", identity="carol", actor={"token": "t", "client": "x"})
  searcher.add_image(_new_face(8), "bob-upload", identity="bob")
  searcher.add_image(_new_face(9), "c-old-77", identity="carol")  # enrolled, then removed:
  searcher.remove(["c-old-77"])  # its id is in the trail only, and must go too
  searcher.save()
  needles, vectors = _traces(searcher, "carol")
  needles.add(b"c-old-77")
  faces_ = {
    i: searcher.thumbs.of(searcher.index.items[searcher.index.row_of(i)])
    for i in ("carol-upload", "bob-upload")
  }
  assert _all_bytes(index_dir)[thumbnails.file_name("carol-upload")] == faces_["carol-upload"]
  assert thumbnails.file_name("c-old-77") not in _all_bytes(index_dir)  # removed with its item
  model = searcher.info["model"]
  assert any(b"carol" in data for data in _all_bytes(index_dir).values())
  queries = [np.asarray(v, np.float32) for v in searcher.index.embeddings[:]]

  assert searcher.forget("carol") == 4
  searcher.save()
  _assert_forgotten(index_dir, needles, vectors + [faces_["carol-upload"]])  # her face's picture
  assert _all_bytes(index_dir)[thumbnails.file_name("bob-upload")] == faces_["bob-upload"]
  reopened = Searcher.open(index_dir)
  assert len(reopened) == 7 and {i.identity for i in reopened.index.items} == {"alice", "bob"}
  for query in queries:  # nothing of carol is ever found again
    rows, _ = reopened.index.search(query[None], 7)
    assert all(reopened.index.items[r].identity != "carol" for r in rows[0] if r >= 0)
  # The trail: carol's enrolment rewritten as hashes, the erasure recorded without her name;
  # bob's entries intact. The key confirms the erasure of a name to the index's operator.
  trail = audit.Trail(index_dir).read()
  key = audit.Trail(index_dir).key()
  assert [e["action"] for e in trail] == ["build", "enrol", "enrol", "enrol", "remove", "forget"]
  assert trail[1]["id"] == audit.hashed(key, "carol-upload")
  assert trail[1]["identity"] == audit.hashed(key, "carol") == trail[5]["identity"]
  assert trail[2]["id"] == "bob-upload" and trail[2]["identity"] == "bob"
  assert trail[4]["id"] == audit.hashed(key, "c-old-77")
  assert trail[5]["items"] == 4 and trail[5]["token"] is None and trail[5]["client"] == "cli"
  assert reopened.info["model"] == model  # the settings in gallery.json are left alone
  assert trail[1]["token"] == "t" and trail[1]["client"] == "x"


def test_forget_refuses_unknown_and_last_people(built, tmp_path):
  searcher = Searcher.open(_copy(built["faiss-flat"], tmp_path))
  with pytest.raises(UserError, match="no item of identity 'dave'"):
    searcher.forget("dave")
  searcher.forget("alice")
  searcher.forget("bob")
  with pytest.raises(UserError, match="empty index"):
    searcher.forget("carol")
  assert len(searcher) == 3


def test_audit_trail_of_service_changes(built, tmp_path):
  """Every enrolment, replacement, removal and erasure through the service, with the token's
  name and the client's address, saved before the answer."""
  index_dir = _copy(built["scann"], tmp_path)
  searcher = Searcher.open(index_dir)
  auth = {"Authorization": f"Bearer {SECRET}"}
  with ServerThread(make_app(searcher, tokens=TOKENS, batch_window_ms=1)) as server:
    client = Client(server.url)
    assert (
      client.post_image("/items", _new_face(1), {"id": "z1", "identity": "zoe"}, headers=auth)[0]
      == 201
    )
    assert audit.Trail(index_dir).read()[-1]["id"] == "z1"  # on disk before the answer came
    assert (
      client.post_image("/items", _new_face(2), {"id": "z1", "identity": "zoe"}, headers=auth)[0]
      == 201
    )
    assert client.call("DELETE", "/items/alice/alice_0.png", headers=auth)[0] == 200
    status, answer = client.call("DELETE", "/identities/bob", headers=auth)
    assert status == 200 and answer["removed"] == 3 and answer["items"] == len(searcher)
    assert client.call("DELETE", "/identities/bob", headers=auth)[0] == 404
    assert client.call("DELETE", "/identities/zoe")[0] == 401  # erasure needs a write token
  trail = audit.Trail(index_dir).read()
  assert [e["action"] for e in trail] == ["build", "enrol", "replace", "remove", "forget"]
  for entry in trail[1:]:
    assert entry["token"] == "editor" and entry["client"] == "127.0.0.1" and entry["time"]
  assert trail[3]["identity"] == "alice" and trail[3]["id"].endswith("alice/alice_0.png")
  assert b"bob" not in b"".join(_all_bytes(index_dir).values())


def test_the_tool_forgets_and_records(built, tmp_path):
  index_dir = _copy(built["scann"], tmp_path)
  searcher = Searcher.open(index_dir)
  needles, vectors = _traces(searcher, "carol")
  proc = subprocess.run(
    [os.path.join(BIN, "facetriplet-build-index"), f"--index_dir={index_dir}", "--forget=carol"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert "3 item(s) erased" in proc.stdout
  _assert_forgotten(index_dir, needles, vectors)
  trail = audit.Trail(index_dir).read()
  assert [e["action"] for e in trail] == ["build", "forget"] and trail[1]["client"] == "cli"
  assert len(Searcher.open(index_dir)) == 6
