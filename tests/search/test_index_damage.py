"""Damaged index folders: every file of a saved index (ScaNN exact and partitioned, faiss),
truncated or with one byte flipped, is one UserError line naming the file and the fix, both at
the cheap check (before any model or TensorFlow loads) and at the load; checksums.json, written at
save time, is what catches damage the loaders would read as a valid index. An untouched index
answers as before; one saved before checksums existed still loads."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest

from facetriplet.errors import UserError
from facetriplet.search import audit, gallery, index_folder
from facetriplet.search.index import GalleryIndex
from tests.search.test_index import clustered, items_for

BIN = os.path.dirname(sys.executable)
SEEDS = (0, 1, 2)
AH = dict(num_leaves=10, num_leaves_to_search=3, training_sample_size=300, reorder_k=20)
KINDS = {  # name: (backend, settings); AH adds the partitioner, codebook and hashed dataset
  "scann": ("scann", {}),
  "scann-ah": ("scann", AH),
  "faiss-flat": ("faiss-flat", {}),
}
INFO = {"features": "embedding", "model": None, "fingerprint": "model-A", "dim": 16, "items": 300}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """{kind: (folder of a saved index with gallery.json, the index, queries)}, built once."""
  gallery_, queries = clustered(300, 16, 20, seed=3)
  out = {}
  for kind, (backend, settings) in KINDS.items():
    if backend.startswith("faiss"):
      pytest.importorskip("faiss")
    index = GalleryIndex.build(gallery_, items_for(len(gallery_)), "model-A", backend, **settings)
    folder = str(tmp_path_factory.mktemp("saved") / kind)
    trail = audit.Trail(folder)  # the audit trail and its key, as a Searcher saves them
    trail.record("build", items=len(gallery_))
    trail.forget("someone", ["id-1"], None)
    index.save(folder, extra_json={gallery.GALLERY_FILE: INFO}, extra_files=trail.contents())
    assert {audit.AUDIT_FILE, audit.KEY_FILE} <= set(os.listdir(folder))
    out[kind] = (folder, index, queries)
  return out


def files_of(folder):
  return sorted(
    os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
    for root, _, names in os.walk(folder)
    for name in names
  )


def damage(path, how, seed, rel):
  """Truncates the file (to 0 bytes with seed 0, else at a random point) or flips one random
  byte (xor 0xFF), at a point fixed by the seed and the file's name."""
  with open(path, "rb") as f:
    data = f.read()
  rng = np.random.default_rng([seed, zlib.crc32(rel.encode())])
  if how == "truncate":
    data = data[: 0 if seed == 0 else int(rng.integers(1, len(data)))]
  else:
    at = int(rng.integers(0, len(data)))
    data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
  with open(path, "wb") as f:
    f.write(data)


def refusal(open_, folder):
  """The UserError's message of `open_(folder)`, or what went wrong instead."""
  try:
    open_(folder)
  except UserError as e:
    return str(e)
  except Exception as e:  # pylint: disable=broad-except
    return f"not a UserError: {type(e).__name__}: {e}"
  return "opened without an error"


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_damaged_file_is_one_line_naming_it_and_the_fix(saved, kind, how, tmp_path):
  source = saved[kind][0]
  assert index_folder.CHECKSUMS_FILE in files_of(source)
  failures = []
  for n, rel in enumerate(files_of(source)):
    for seed in SEEDS:
      copy = str(tmp_path / f"{n}-{seed}")
      shutil.copytree(source, copy)
      damage(os.path.join(copy, *rel.split("/")), how, seed, rel)
      for what, open_ in (("check_index", gallery.check_index), ("load", GalleryIndex.load)):
        message = refusal(open_, copy)
        if (
          "\n" in message
          or rel not in message
          or not ("restore" in message or "rebuild" in message)
        ):
          failures.append(f"{rel} seed {seed} {what}: {message}")
      shutil.rmtree(copy)
  assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_untouched_index_loads_and_answers_as_before(saved, kind, tmp_path):
  folder, index, queries = saved[kind]
  copy = str(tmp_path / "copy")
  shutil.copytree(folder, copy)  # verified where it now is
  assert gallery.check_index(copy) == INFO
  loaded = GalleryIndex.load(copy)
  rows, scores = index.search(queries, 5)
  got_rows, got_scores = loaded.search(queries, 5)
  np.testing.assert_array_equal(got_rows, rows)
  np.testing.assert_allclose(got_scores, scores, atol=1e-6)
  assert loaded.ids == index.ids and loaded.fingerprint == index.fingerprint
  np.testing.assert_array_equal(np.asarray(loaded.embeddings), index.embeddings)


def test_checksums_list_every_file_and_sum_themselves(saved):
  folder = saved["scann-ah"][0]
  with open(os.path.join(folder, index_folder.CHECKSUMS_FILE), encoding="utf-8") as f:
    doc = json.load(f)
  assert doc["format"] == "facetriplet-checksums/1" and doc["algorithm"] == "sha256"
  assert sorted(doc["files"]) == [r for r in files_of(folder) if r != "checksums.json"]
  assert {"gallery.json", "index.json", "scann/docids.json"} <= set(doc["files"])
  assert doc["sum"] == index_folder._sum(doc["files"])


def test_an_index_without_checksums_loads_with_one_warning(saved, tmp_path, caplog):
  folder, index, queries = saved["scann"]
  old = str(tmp_path / "old")
  shutil.copytree(folder, old)
  os.remove(os.path.join(old, index_folder.CHECKSUMS_FILE))
  with caplog.at_level(logging.WARNING):
    assert gallery.check_index(old) == INFO
    loaded = GalleryIndex.load(old)
  np.testing.assert_array_equal(loaded.search(queries, 3)[0], index.search(queries, 3)[0])
  warned = [r for r in caplog.records if "no checksums.json" in r.getMessage()]
  assert len(warned) == 1 and "save it again" in warned[0].getMessage()


def test_files_are_hashed_once_per_open_and_again_when_changed(saved, tmp_path, monkeypatch):
  """check_index then load (what open_index does) hash every file once; a file changed since
  is hashed again and its damage found. Files nobody listed are ignored."""
  folder = str(tmp_path / "index")
  shutil.copytree(saved["faiss-flat"][0], folder)
  with open(os.path.join(folder, "notes.txt"), "w", encoding="utf-8") as f:
    f.write("a file put there by hand, not part of the index")
  hashed = []
  real = index_folder._sha256
  monkeypatch.setattr(index_folder, "_sha256", lambda p: hashed.append(p) or real(p))
  gallery.check_index(folder)
  GalleryIndex.load(folder)
  listed = [r for r in files_of(folder) if r not in ("checksums.json", "notes.txt")]
  assert sorted(os.path.relpath(p, folder) for p in hashed) == listed
  damage(os.path.join(folder, "items.jsonl"), "flip", 0, "items.jsonl")
  with pytest.raises(UserError, match=r"is damaged: items.jsonl does not match the checksum"):
    GalleryIndex.load(folder)


def test_extra_files_are_written_and_checked(saved, tmp_path):
  _, index, _ = saved["scann"]
  folder = str(tmp_path / "index")
  args = (index.backend, index.embeddings, index.items, index.fingerprint, index.created)
  audit = b'{"event": "build"}\n'
  index_folder.write(folder, *args, extra_files={"audit.jsonl": audit, "logs/a.txt": b"x"})
  with open(os.path.join(folder, "audit.jsonl"), "rb") as f:
    assert f.read() == audit
  assert index_folder.verify(folder)
  with open(os.path.join(folder, "audit.jsonl"), "ab") as f:
    f.write(b'{"event": "tampered"}\n')
  with pytest.raises(UserError, match="damaged: audit.jsonl does not match"):
    index_folder.check(folder)
  for bad in ("../outside", "/abs", "index.json", "a//b"):
    with pytest.raises(ValueError):
      index_folder.write(str(tmp_path / "bad"), *args, extra_files={bad: b""})
  assert sorted(os.listdir(tmp_path)) == ["index"]  # nothing left of the refused writes


def test_a_damaged_checksums_list_and_a_missing_file_are_named(saved, tmp_path):
  folder = str(tmp_path / "index")
  shutil.copytree(saved["scann"][0], folder)
  path = os.path.join(folder, index_folder.CHECKSUMS_FILE)
  with open(path, encoding="utf-8") as f:
    doc = json.load(f)
  doc["files"]["items.jsonl"] = "0" * 64  # edited without its sum
  with open(path, "w", encoding="utf-8") as f:
    json.dump(doc, f)
  with pytest.raises(UserError, match="damaged: checksums.json does not match its own sum"):
    gallery.check_index(folder)
  shutil.rmtree(folder)
  shutil.copytree(saved["scann"][0], folder)
  os.remove(os.path.join(folder, "scann", "docids.json"))
  with pytest.raises(UserError, match=r"incomplete or corrupt \(no scann/docids.json\): restore"):
    GalleryIndex.load(folder)


@pytest.mark.parametrize(
  "tool,args",
  [
    ("facetriplet-search", ["{q}"]),
    ("facetriplet-serve", ["--port=0"]),
    ("facetriplet-retrieve", ["--queries={q}", "--output={out}"]),
    ("facetriplet-evaluate", ["--queries={q}", "--output={out}"]),
    ("facetriplet-build-index", ["--forget=someone"]),
  ],
)
def test_every_tool_reports_a_damaged_index_in_one_line(saved, tmp_path, tool, args):
  folder = str(tmp_path / "index")
  shutil.copytree(saved["scann"][0], folder)
  damage(os.path.join(folder, "scann", "dataset.npy"), "flip", 1, "scann/dataset.npy")
  (tmp_path / "q.jpg").write_bytes(b"")
  flag = "--index_dir" if tool == "facetriplet-build-index" else "--index"
  argv = [a.format(q=tmp_path / "q.jpg", out=tmp_path / "out") for a in args]
  proc = subprocess.run(
    [os.path.join(BIN, tool), f"{flag}={folder}", *argv],
    capture_output=True,
    text=True,
    timeout=120,
  )
  # One line of error (a tool's absl log lines, "I1203 ...", may come before it).
  lines = [x for x in proc.stderr.strip().splitlines() if not re.match(r"[IW]\d{4} ", x)]
  assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert lines[0].startswith(f"{tool}: error: index at ")
  assert "scann/dataset.npy" in lines[0] and "rebuild it with facetriplet-build-index" in lines[0]


def test_the_probe_a_truncated_gallery_json_is_one_line_in_search(saved, tmp_path):
  """The issue's probe: gallery.json cut short gave a JSONDecodeError traceback."""
  folder = str(tmp_path / "index")
  shutil.copytree(saved["scann"][0], folder)
  path = os.path.join(folder, gallery.GALLERY_FILE)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  (tmp_path / "q.jpg").write_bytes(b"")
  proc = subprocess.run(
    [os.path.join(BIN, "facetriplet-search"), f"--index={folder}", str(tmp_path / "q.jpg")],
    capture_output=True,
    text=True,
    timeout=120,
  )
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert "gallery.json" in lines[0] and "restore" in lines[0]
