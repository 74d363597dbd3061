"""An index folder on disk: written atomically as one folder, read back from wherever it moved.

  index.json      format, backend and its settings, fingerprint, dim, count, version, created
  items.jsonl     one JSON object per gallery row (`items.Item.to_json`), in row order
  embeddings.npy  float32 [count, dim] (read memory-mapped, never with pickle)
  <backend>/      the backend's own files (`scann/`: the serialized searcher, asset paths
                  relative so the folder can move, docids in docids.json, never a pickle;
                  `faiss/`: the faiss index and its labels)
  gallery.json    (written beside them by `gallery`) what embedded the gallery

Indexes of the previous format (`facetriplet-scann-index/1`: ScaNN only, its settings under
"scann") are read as ScaNN indexes.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np

import facetriplet
from facetriplet import atomic
from facetriplet.errors import UserError
from facetriplet.search import backends
from facetriplet.search.items import Item

FORMAT = "facetriplet-index/2"
LEGACY_FORMAT = "facetriplet-scann-index/1"  # ScaNN only, settings under "scann"


def write(
  directory: str,
  backend: backends.IndexBackend,
  embeddings: np.ndarray,
  items: Sequence[Item],
  fingerprint: str,
  created: str,
  extra_json: Optional[dict[str, Any]] = None,
) -> None:
  """Writes an index folder atomically (a temp folder beside it, then swapped in); an index
  already there is replaced. `extra_json`: {file name: object} written into the same folder."""
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
    for name, obj in [("index.json", meta)] + list((extra_json or {}).items()):
      with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)


def read(
  directory: str, meta: dict[str, Any]
) -> tuple[backends.IndexBackend, np.ndarray, list[Item]]:
  """(backend, embeddings memory-mapped, items) of an index folder whose index.json is `meta`.

  Raises:
    UserError: a missing, inconsistent or corrupt part (one line: rebuild it).
  """
  backend_cls = backends.get(meta["backend"])
  try:
    embeddings = np.load(os.path.join(directory, "embeddings.npy"), mmap_mode="r")
    with open(os.path.join(directory, "items.jsonl"), encoding="utf-8") as f:
      items = [
        Item.from_json(json.loads(line), row)
        for row, line in enumerate(line for line in f if line.strip())
      ]
    _check_counts(directory, meta, embeddings.shape, len(items))
    backend = backend_cls.load(
      os.path.join(directory, backend_cls.folder),
      meta["settings"],
      embeddings,
      [item.id for item in items],
    )
  except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
    raise _corrupt(directory, f"{type(e).__name__}: {e}") from e
  return backend, embeddings, items


def check(directory: str) -> dict[str, Any]:
  """index.json of an index folder whose parts are all there and whose embeddings have the
  recorded shape, checked without loading the backend (ScaNN loads TensorFlow) or the items: a
  missing or damaged folder is reported at once, before a tool loads any model. `read` checks
  the rest.

  Raises:
    UserError: as `read_metadata`; a missing part or embeddings of another shape.
  """
  meta = read_metadata(directory)
  for part in ("items.jsonl", "embeddings.npy", backends.get(meta["backend"]).folder):
    if not os.path.exists(os.path.join(directory, part)):
      raise _corrupt(directory, f"no {part}")
  try:
    shape = np.load(os.path.join(directory, "embeddings.npy"), mmap_mode="r").shape
  except (OSError, ValueError) as e:
    raise _corrupt(directory, f"embeddings.npy: {type(e).__name__}: {e}") from e
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
      f"{found}): rebuild it with facetriplet-build-index"
    )


def _corrupt(directory: str, detail: str) -> UserError:
  return UserError(
    f"index at {directory} is incomplete or corrupt ({detail}): rebuild it with "
    "facetriplet-build-index"
  )


def read_metadata(directory: str) -> dict[str, Any]:
  """index.json of an index folder, as the current format (older ScaNN indexes converted).

  Raises:
    UserError: no folder, or no readable / valid index.json (one line naming the fix).
  """
  path = os.path.join(directory, "index.json")
  if not os.path.isdir(directory):
    raise UserError(
      f"no index at {directory}: build one with facetriplet-build-index "
      "or pass the folder it was saved to"
    )
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(
      f"index at {directory} has no readable index.json ({e}): it is not an index "
      "folder or it is corrupt; rebuild it with facetriplet-build-index"
    ) from None
  if isinstance(meta, dict) and meta.get("format") == LEGACY_FORMAT:
    meta = dict(meta, format=FORMAT, backend="scann", settings=meta.get("scann"))
  required = ("format", "fingerprint", "dim", "count", "backend", "settings")
  missing = [k for k in required if not isinstance(meta, dict) or meta.get(k) is None]
  if missing or meta.get("format") != FORMAT:
    raise UserError(
      f"index at {directory} has an index.json without {missing or 'format ' + FORMAT}"
      ": rebuild it with facetriplet-build-index"
    )
  return meta
