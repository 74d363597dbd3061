"""What every index backend is: vectors kept under string ids, searched by inner product.

`facetriplet.search.index.GalleryIndex` owns the gallery (items, ids, embeddings, the model's
fingerprint) and hands the vectors to one backend, chosen by name. A backend builds its search
structure (`build`, with settings from `settings`), answers top-k by inner product (`search`,
best first, ids and scores), takes changes without a rebuild (`upsert`, `delete`), writes itself
into a folder of the index (`save`, `load`), and says when its structure no longer fits the
gallery (`needs_rebuild`). The gallery's embeddings stay with `GalleryIndex` (the exact scores
and evaluation use them), so a backend may keep only what its search needs.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Sequence

import numpy as np

from facetriplet.errors import UserError


class IndexBackend(abc.ABC):
  """A search structure over unit vectors under string ids.

  Attributes:
    name: the registry name (`facetriplet.search.backends.NAMES`), recorded in index.json.
    folder: the sub-folder of an index folder it saves into.
    config: its settings, as `settings` returned them (recorded in index.json); `trained_on`
      is the gallery size the structure was built for.
  """

  name: ClassVar[str] = ""
  folder: ClassVar[str] = ""
  search_options: ClassVar[tuple[str, ...]] = ()  # keyword options `search` accepts

  def __init__(self, config: dict[str, Any]):
    self.config = dict(config)

  @classmethod
  @abc.abstractmethod
  def settings(
    cls, n: int, dim: int, target_recall: float = 0.95, **overrides: Any
  ) -> dict[str, Any]:
    """The validated settings for `n` vectors of dimension `dim` (UserError for bad ones)."""

  @classmethod
  @abc.abstractmethod
  def build(
    cls, embeddings: np.ndarray, ids: Sequence[str], config: dict[str, Any]
  ) -> "IndexBackend":
    """A new structure over `embeddings` (float32 [n, d] unit rows) under `ids`."""

  @abc.abstractmethod
  def search(
    self, queries: np.ndarray, k: int, **options: Any
  ) -> tuple[list[list[str]], np.ndarray]:
    """The ids and inner products of the (up to) k best vectors per query, best first.

    Returns:
      (ids per query, scores float32 [Q, w] with w <= k, -inf where a row has fewer ids).
    """

  @abc.abstractmethod
  def upsert(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
    """Adds vectors; an id already present is replaced."""

  @abc.abstractmethod
  def delete(self, ids: Sequence[str]) -> None:
    """Removes the vectors of these (present) ids."""

  @abc.abstractmethod
  def save(self, directory: str) -> None:
    """Writes the structure into `directory` (an empty folder inside the index's temp folder)."""

  @classmethod
  @abc.abstractmethod
  def load(
    cls, directory: str, config: dict[str, Any], embeddings: np.ndarray, ids: Sequence[str]
  ) -> "IndexBackend":
    """Reads what `save` wrote; `embeddings` and `ids` are the gallery's (row order), for
    backends that rebuild what they did not store."""

  def needs_rebuild(self, n: int, dim: int) -> str:
    """Why the structure should be rebuilt for a gallery of `n` vectors ('' when it fits)."""
    del n, dim
    return ""


def pad_results(
  ids: list[list[str]], scores: list[np.ndarray], k: int
) -> tuple[list[list[str]], np.ndarray]:
  """Per-query id lists and score rows as (ids, float32 [Q, width]) padded with -inf."""
  width = max((len(row) for row in ids), default=k)
  out = np.full((len(ids), width), -np.inf, np.float32)
  for i, (row_ids, row) in enumerate(zip(ids, scores)):
    n = min(len(row_ids), len(row))
    out[i, :n] = row[:n]
  out[~np.isfinite(out)] = -np.inf
  return ids, out


def check_options(backend: type[IndexBackend], options: dict[str, Any]) -> dict[str, Any]:
  """The options that are set, refusing ones this backend does not know (UserError)."""
  given = {k: v for k, v in options.items() if v is not None}
  unknown = sorted(set(given) - set(backend.search_options))
  if unknown:
    raise UserError(
      f"the {backend.name} backend has no search option(s) {unknown}: valid are "
      f"{list(backend.search_options) or 'none'}"
    )
  return given
