"""An index folder on disk: written atomically as one folder, read back from wherever it moved.

  index.json      format, backend and its settings, fingerprint, dim, count, version, created
  items.jsonl     one JSON object per gallery row (`items.Item.to_json`), in row order
  embeddings.npy  float32 [count, dim] (read memory-mapped, never with pickle)
  <backend>/      the backend's own files (`scann/`: the serialized searcher, asset paths
                  relative so the folder can move, docids in docids.json, never a pickle;
                  `faiss/`: the faiss index and its labels)
  gallery.json    (written beside them by `gallery`) what embedded the gallery
  checksums.json  the sha256 of every other file, taken at save time, and a sum of that list

Every file is flushed to the disk before the folder is swapped in, so an index that was saved
survives a power loss. `read_metadata` (hence `check` and every load) verifies the checksums
first: a truncated or bit-flipped file is reported as one line naming it and the fix, before any
loader (numpy, ScaNN, faiss) reads it. A verification stands for `REUSE_S` seconds while the
files' sizes and times are unchanged, so a tool's `check` and its load hash the files once.
A folder without checksums.json (written before they existed) loads with a warning.

Indexes of the previous format (`facetriplet-scann-index/1`: ScaNN only, its settings under
"scann") are read as ScaNN indexes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable, Optional, Sequence, TypeVar

import numpy as np
from absl import logging

import facetriplet
from facetriplet import atomic
from facetriplet.errors import UserError
from facetriplet.search import backends
from facetriplet.search.items import Item

FORMAT = "facetriplet-index/2"
LEGACY_FORMAT = "facetriplet-scann-index/1"  # ScaNN only, settings under "scann"
CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "facetriplet-checksums/1"
REUSE_S = 60.0  # a verification stands this long for unchanged files (a check, then the load)
FIX = "restore the folder from a backup or rebuild it with facetriplet-build-index"

_verified: dict[str, tuple[float, tuple]] = {}  # real path -> (when, file signature)
_warned: set[str] = set()  # folders without checksums.json already warned about
_T = TypeVar("_T")


def write(
  directory: str,
  backend: backends.IndexBackend,
  embeddings: np.ndarray,
  items: Sequence[Item],
  fingerprint: str,
  created: str,
  extra_json: Optional[dict[str, Any]] = None,
  extra_files: Optional[dict[str, bytes]] = None,
) -> None:
  """Writes an index folder atomically (a temp folder beside it, flushed to the disk, then
  swapped in); an index already there is replaced.

  Args:
    directory: the index folder.
    backend, embeddings, items, fingerprint, created: what the index holds.
    extra_json: {file name: object} written as JSON into the same folder (e.g. gallery.json).
    extra_files: {relative path ("/"-separated): bytes} written as they are into the same
      folder, sub-folders created. Like every file, they are listed in checksums.json, so a
      file that changes after the save is reported as damage.

  Raises:
    ValueError: an extra file's path that leaves the folder or names a file already written.
  """
  with atomic.atomic_path(directory) as tmp:
    os.makedirs(os.path.join(tmp, backend.folder))
    backend.save(os.path.join(tmp, backend.folder))
    np.save(os.path.join(tmp, "embeddings.npy"), np.ascontiguousarray(embeddings))
    with open(os.path.join(tmp, "items.jsonl"), "w", encoding="utf-8") as f:
      for item in items:
        f.write(json.dumps(item.to_json(), sort_keys=True, default=str) + "\n")
    meta = {
      "format": FORMAT,
      "fingerprint": fingerprint,
      "dim": int(embeddings.shape[1]),
      "count": len(items),
      "backend": backend.name,
      "settings": backend.config,
      "metric": "dot_product",
      "facetriplet_version": facetriplet.__version__,
      "created": created,
    }
    as_json = {
      name: json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8")
      for name, obj in [("index.json", meta)] + list((extra_json or {}).items())
    }
    for name, data in list(as_json.items()) + list((extra_files or {}).items()):
      _put(tmp, name, data)
    files = {rel: _sha256(os.path.join(tmp, *rel.split("/"))) for rel in _listing(tmp)}
    doc = {"format": CHECKSUMS_FORMAT, "algorithm": "sha256", "files": files, "sum": _sum(files)}
    _put(tmp, CHECKSUMS_FILE, json.dumps(doc, indent=2, sort_keys=True).encode("utf-8"))
    atomic.fsync_tree(tmp)
  atomic.fsync_dir(os.path.dirname(os.path.abspath(directory)))


def _put(folder: str, rel: str, data: bytes) -> None:
  """Writes a new file at `rel` ("/"-separated) inside `folder`."""
  if not _inside(rel):
    raise ValueError(f"{rel!r} is not a relative path inside the index folder")
  path = os.path.join(folder, *rel.split("/"))
  if os.path.lexists(path):
    raise ValueError(f"{rel} is already written into the index folder")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _inside(rel: Any) -> bool:
  return isinstance(rel, str) and all(p not in ("", ".", "..") for p in rel.split("/"))


def _listing(folder: str) -> list[str]:
  """The regular files under `folder` but checksums.json, as sorted "/"-separated paths."""
  found = []
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder).replace(os.sep, "/")
      if rel != CHECKSUMS_FILE and os.path.isfile(path) and not os.path.islink(path):
        found.append(rel)
  return sorted(found)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _sum(files: dict[str, str]) -> str:
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode("utf-8")).hexdigest()


def verify(directory: str) -> bool:
  """Checks every file listed in the folder's checksums.json against its sha256 (files not
  listed are ignored). Hashes nothing when the same files were verified in the last `REUSE_S`
  seconds and their sizes and times are unchanged.

  Returns:
    True; False for a folder without checksums.json (an older version's), with a warning once.

  Raises:
    UserError: a listed file missing, unreadable or changed, or checksums.json damaged (one
      line naming the file and the fix).
  """
  key = os.path.realpath(directory)
  listed = _read_checksums(directory)
  if listed is None:
    if key not in _warned:
      _warned.add(key)
      logging.warning(
        "index at %s has no %s (saved by an older version): damage to its files cannot be "
        "detected; save it again (facetriplet-build-index --index_dir=%s --rebuild) to add it",
        directory,
        CHECKSUMS_FILE,
        directory,
      )
    return False
  order = sorted(listed, key=lambda rel: (rel != "index.json", rel))  # what the folder is, first
  paths = {rel: os.path.join(directory, *rel.split("/")) for rel in order}
  signature = tuple(_stat(p) for p in [os.path.join(directory, CHECKSUMS_FILE), *paths.values()])
  when, seen = _verified.get(key, (0.0, None))
  if seen == signature and time.monotonic() - when < REUSE_S:
    return True
  for rel, path in paths.items():
    if not os.path.isfile(path):
      raise _corrupt(directory, f"no {rel}")
    try:
      got = _sha256(path)
    except OSError as e:
      raise UserError(f"index at {directory} has an unreadable {rel} ({_line(e)}): {FIX}") from None
    if got != listed[rel]:
      raise damaged(
        directory,
        rel,
        f"does not match the checksum saved with it ({os.path.getsize(path)} bytes, sha256 "
        f"{got[:12]}..., saved {listed[rel][:12]}...)",
      )
  _verified[key] = (time.monotonic(), signature)
  return True


def _read_checksums(directory: str) -> Optional[dict[str, str]]:
  """checksums.json's {relative path: sha256} (None when there is none), checked by its sum."""
  path = os.path.join(directory, CHECKSUMS_FILE)
  if not os.path.lexists(path):
    return None
  try:
    with open(path, "rb") as f:
      doc = json.loads(f.read().decode("utf-8"))
  except (OSError, ValueError) as e:
    raise damaged(directory, CHECKSUMS_FILE, f"is unreadable ({_line(e)})") from None
  files = doc.get("files") if isinstance(doc, dict) else None
  kind = (doc.get("format"), doc.get("algorithm")) if isinstance(doc, dict) else None
  if not isinstance(files, dict) or kind != (CHECKSUMS_FORMAT, "sha256"):
    raise damaged(directory, CHECKSUMS_FILE, f"is not a {CHECKSUMS_FORMAT} sha256 list")
  if doc.get("sum") != _sum(files) or not all(
    _inside(rel) and isinstance(digest, str) for rel, digest in files.items()
  ):
    raise damaged(directory, CHECKSUMS_FILE, "does not match its own sum")
  return files


def _stat(path: str) -> Optional[tuple[int, int, int]]:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return st.st_size, st.st_mtime_ns, st.st_ino


def read(
  directory: str, meta: dict[str, Any]
) -> tuple[backends.IndexBackend, np.ndarray, list[Item]]:
  """(backend, embeddings memory-mapped, items) of an index folder whose index.json is `meta`
  as `read_metadata` returned it (which verified the files' checksums).

  Raises:
    UserError: a missing, inconsistent or corrupt part (one line naming it: restore or rebuild).
  """
  backend_cls = backends.get(meta["backend"])
  embeddings = _part(directory, "embeddings.npy", _load_embeddings)
  items = _part(directory, "items.jsonl", _read_items)
  _check_counts(directory, meta, embeddings.shape, len(items))
  backend = _part(
    directory,
    backend_cls.folder,
    lambda path: backend_cls.load(path, meta["settings"], embeddings, [i.id for i in items]),
  )
  return backend, embeddings, items


def _part(directory: str, rel: str, load: Callable[[str], _T]) -> _T:
  """`load(path of rel)`; whatever a loader raises on a damaged file becomes one UserError
  naming `rel` (numpy, ScaNN's pybind and faiss raise many kinds), a UserError passes."""
  try:
    return load(os.path.join(directory, rel))
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _corrupt(directory, f"{rel}: {type(e).__name__}: {_line(e)}") from e


def _load_embeddings(path: str) -> np.ndarray:
  embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
  if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2:
    raise ValueError("not a 2-d .npy array")
  return embeddings


def _read_items(path: str) -> list[Item]:
  items = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          items.append(Item.from_json(json.loads(line), len(items)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
          raise ValueError(f"line {number}: {type(e).__name__}: {e}") from e
  return items


def check(directory: str) -> dict[str, Any]:
  """index.json of an index folder whose files match their checksums, whose parts are all there
  and whose embeddings have the recorded shape, checked without loading the backend (ScaNN loads
  TensorFlow) or the items: a missing or damaged folder is reported at once, before a tool loads
  any model. `read` checks the rest.

  Raises:
    UserError: as `read_metadata`; a missing part or embeddings of another shape.
  """
  meta = read_metadata(directory)
  for part in ("items.jsonl", "embeddings.npy", backends.get(meta["backend"]).folder):
    if not os.path.exists(os.path.join(directory, part)):
      raise _corrupt(directory, f"no {part}")
  shape = _part(directory, "embeddings.npy", _load_embeddings).shape
  _check_counts(directory, meta, shape)
  return meta


def _check_counts(
  directory: str, meta: dict[str, Any], shape: tuple[int, ...], items: Optional[int] = None
) -> None:
  """The embeddings' shape (and the number of items, when counted) must be index.json's."""
  count, dim = meta["count"], int(meta["dim"])
  if tuple(shape) != (count, dim) or items not in (None, count):
    found = f"embeddings {tuple(shape)}" + (f" and {items} items" if items is not None else "")
    raise UserError(
      f"index at {directory} is inconsistent (index.json says {count} x {dim}, found "
      f"{found}): {FIX}"
    )


def damaged(directory: str, rel: str, what: str) -> UserError:
  """The one-line error for a damaged file `rel` of an index folder (`what`: how)."""
  return UserError(f"index at {directory} is damaged: {rel} {what}: {FIX}")


def _corrupt(directory: str, detail: str) -> UserError:
  return UserError(f"index at {directory} is incomplete or corrupt ({detail}): {FIX}")


def _line(e: BaseException, limit: int = 200) -> str:
  """An exception's text on one line, cut to `limit` characters."""
  text = " ".join(str(e).split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


def read_metadata(directory: str) -> dict[str, Any]:
  """index.json of an index folder whose files match their checksums (`verify`), as the current
  format (older ScaNN indexes converted).

  Raises:
    UserError: no folder, a damaged file, or no readable / valid index.json (one line naming
      the fix).
  """
  path = os.path.join(directory, "index.json")
  if not os.path.isdir(directory):
    raise UserError(
      f"no index at {directory}: build one with facetriplet-build-index "
      "or pass the folder it was saved to"
    )
  verify(directory)
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(
      f"index at {directory} has no readable index.json ({_line(e)}): it is not an index "
      f"folder or it is damaged; {FIX}"
    ) from None
  if isinstance(meta, dict) and meta.get("format") == LEGACY_FORMAT:
    meta = dict(meta, format=FORMAT, backend="scann", settings=meta.get("scann"))
  types = dict(format=str, fingerprint=str, dim=int, count=int, backend=str, settings=dict)
  wrong = [k for k, t in types.items() if not isinstance(meta, dict) or not _is(meta.get(k), t)]
  if wrong or meta.get("format") != FORMAT:
    raise UserError(
      f"index at {directory} has an index.json without {wrong or 'format ' + FORMAT}: {FIX}"
    )
  return meta


def _is(value: Any, kind: type) -> bool:
  return isinstance(value, kind) and not (kind is int and (isinstance(value, bool) or value < 0))
