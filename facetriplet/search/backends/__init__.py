"""Index backends by name: one module each behind `base.IndexBackend`, listed in `REGISTRY`.

  scann       ScaNN: exact below 20k items, partitioned AH + exact re-ranking above (default)
  faiss-flat  faiss IndexFlatIP: exact inner product (on every GPU with faiss-gpu)
  faiss-hnsw  faiss IndexHNSWFlat: an HNSW graph, no training

`facetriplet.search.index.GalleryIndex` is the gallery over one of them; `index.json` records
which. To add a backend, write `facetriplet/search/backends/<name>.py` with a `base.IndexBackend`
subclass (exported as `BACKEND`, or several in `BACKENDS`) and add one line to `REGISTRY`.
Modules are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

from facetriplet.errors import UserError
from facetriplet.search.backends.base import IndexBackend


class Entry(NamedTuple):
  module: str
  summary: str


REGISTRY: dict[str, Entry] = {
  "scann": Entry(
    "facetriplet.search.backends.scann",
    "ScaNN: exact below 20k items, partitions + AH + exact re-ranking above",
  ),
  "faiss-flat": Entry(
    "facetriplet.search.backends.faiss",
    "faiss IndexFlatIP: exact (GPU with faiss-gpu; extra 'faiss')",
  ),
  "faiss-hnsw": Entry(
    "facetriplet.search.backends.faiss", "faiss HNSW graph, approximate (extra 'faiss')"
  ),
}
NAMES = tuple(REGISTRY)
DEFAULT = "scann"


def get(name: str) -> type[IndexBackend]:
  """The backend class registered as `name` (UserError naming the choices otherwise)."""
  if name not in REGISTRY:
    raise UserError(f"backend={name!r} is not one of {', '.join(NAMES)}")
  module = importlib.import_module(REGISTRY[name].module)
  return getattr(module, "BACKENDS", {}).get(name) or module.BACKEND


def help_text() -> str:
  """One phrase per backend, for a flag's help."""
  return "; ".join(f"'{name}' = {entry.summary}" for name, entry in REGISTRY.items())
