"""The gallery index: typed items, their ids and embeddings, and the model's fingerprint, over
one search backend (`facetriplet.search.backends`: ScaNN by default, faiss exact or HNSW).

`GalleryIndex` keeps, side by side, the backend's search structure over the gallery embeddings,
the embeddings themselves (exact re-scoring, evaluation, rebuilds), one `items.Item` per row and
the fingerprint of the model that produced the embeddings, so that queries from another model are
refused instead of answered with garbage.

Every item has an `id` (unique in the index; the backend's key), so photos can be added (`add`:
an upsert, nothing re-embedded, the structure kept) and removed (`remove`) without a rebuild.
When the gallery has outgrown the structure, `needs_rebuild` says so and `rebuild` rebuilds it.

On disk an index is one folder, written atomically (`index_folder`).
"""

from __future__ import annotations

import datetime
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

from facetriplet.errors import UserError
from facetriplet.search import backends, index_folder
from facetriplet.search.items import Item


class GalleryIndex:
  """Unit-vector gallery embeddings with per-row `Item`s and the model fingerprint, searched by
  a backend. Use `GalleryIndex.build` or `GalleryIndex.load`."""

  def __init__(
    self,
    backend: backends.IndexBackend,
    embeddings: np.ndarray,
    items: list[Item],
    fingerprint: str,
    created: Optional[str] = None,
  ):
    self.backend = backend
    self.embeddings = embeddings
    self.items = items
    self.fingerprint = fingerprint
    self.created = created or _now()
    self._row_of = {item.id: i for i, item in enumerate(items)}

  def row_of(self, id_: str) -> Optional[int]:
    """The row of the item with this id, or None."""
    return self._row_of.get(id_)

  @property
  def ids(self) -> list[str]:
    return [item.id for item in self.items]

  @property
  def config(self) -> dict[str, Any]:
    """The backend's settings (as recorded in index.json)."""
    return self.backend.config

  @property
  def dim(self) -> int:
    return int(self.embeddings.shape[1])

  def __len__(self) -> int:
    return int(self.embeddings.shape[0])

  @classmethod
  def build(
    cls,
    embeddings: np.ndarray,
    items: Sequence[Item],
    fingerprint: str,
    backend: str = backends.DEFAULT,
    target_recall: float = 0.95,
    **settings: Any,
  ) -> "GalleryIndex":
    """Builds an index over `embeddings` with the backend's automatic settings plus `settings`.

    Args:
      embeddings: float32 [N, D] gallery embeddings with unit rows.
      items: one `Item` per row, ids unique.
      fingerprint: fingerprint of the model that produced the embeddings.
      backend: a `facetriplet.search.backends` name.
      target_recall: wanted recall@10 relative to exact search.
      **settings: backend settings (ScaNN: num_leaves, num_leaves_to_search,
        training_sample_size, dimensions_per_block, anisotropic_quantization_threshold,
        reorder_k, mode; faiss-hnsw: m, ef_construction, ef_search). None values are ignored.

    Raises:
      UserError: empty gallery, wrong shape, non-unit rows, items of another length or with
        duplicate ids, an unknown backend or setting.
    """
    embeddings = _check_embeddings(embeddings)
    items = _check_items(items, len(embeddings))
    backend_cls = backends.get(backend)
    config = backend_cls.settings(*embeddings.shape, target_recall, **settings)
    return cls(
      backend_cls.build(embeddings, [i.id for i in items], config),
      embeddings,
      items,
      str(fingerprint),
    )

  def add(self, embeddings: np.ndarray, items: Sequence[Item]) -> tuple[int, int]:
    """Adds gallery rows without rebuilding (an upsert): an item whose id is already in the
    index replaces that row, so adding the same photos again changes nothing.

    Returns:
      (rows added, rows replaced).

    Raises:
      UserError: wrong shape or non-unit rows, items of another length, duplicate ids.
    """
    embeddings = _check_embeddings(embeddings, allow_empty=True)
    if embeddings.shape[1] != self.dim:
      raise UserError(
        f"new embeddings are {embeddings.shape[1]}-d, the index holds {self.dim}-d:"
        " embed them with the index's model"
      )
    items = _check_items(items, len(embeddings))
    if not items:
      return 0, 0
    self.backend.upsert([item.id for item in items], embeddings)
    rows = [self._row_of.get(item.id) for item in items]
    fresh = [i for i, row in enumerate(rows) if row is None]
    stored = np.array(self.embeddings)  # a loaded index is memory-mapped read-only
    for i, row in enumerate(rows):
      if row is not None:
        stored[row] = embeddings[i]
        self.items[row] = items[i]
    self.embeddings = np.concatenate([stored, embeddings[fresh]]) if fresh else stored
    for i in fresh:
      self._row_of[items[i].id] = len(self.items)
      self.items.append(items[i])
    return len(fresh), len(items) - len(fresh)

  def remove(self, ids: Sequence[str]) -> int:
    """Removes the rows with these ids (no rebuild). Returns rows removed.

    Raises:
      UserError: an id that is not in the index (nothing is removed then), or removing all.
    """
    ids = list(dict.fromkeys(ids))
    unknown = [i for i in ids if i not in self._row_of]
    if unknown:
      raise UserError(
        f"{len(unknown)} id(s) not in the index, e.g. {unknown[:3]}: nothing "
        "removed (ids are listed in the index's items.jsonl)"
      )
    if len(ids) >= len(self):
      raise UserError("removing every item would leave an empty index: build a new one instead")
    if not ids:
      return 0
    self.backend.delete(ids)
    gone = np.zeros(len(self), bool)
    gone[[self._row_of[i] for i in ids]] = True
    self.embeddings = np.asarray(self.embeddings)[~gone]
    self.items = [item for item, g in zip(self.items, gone) if not g]
    self._row_of = {item.id: i for i, item in enumerate(self.items)}
    return int(gone.sum())

  @property
  def needs_rebuild(self) -> str:
    """Why the backend's structure should be rebuilt ('' when it fits the gallery)."""
    return self.backend.needs_rebuild(len(self), self.dim)

  def rebuild(self, target_recall: Optional[float] = None) -> None:
    """Rebuilds the search structure over the current rows with automatic settings."""
    backend_cls = type(self.backend)
    target = target_recall or self.config.get("target_recall", 0.95)
    self.embeddings = np.ascontiguousarray(self.embeddings)
    config = backend_cls.settings(len(self), self.dim, target)
    self.backend = backend_cls.build(self.embeddings, self.ids, config)

  def check_queries_from(self, extractor) -> None:
    """Refuses queries embedded by another model than the index's (fingerprint, dimension)."""
    check_model(
      self.fingerprint,
      self.dim,
      extractor.fingerprint,
      int(extractor.dim),
      "the index",
      getattr(extractor, "name", ""),
    )

  def clamp_k(self, k: int) -> int:
    """`k` limited to the gallery size (with a warning). UserError for k < 1 or an empty index."""
    if len(self) == 0:
      raise UserError("the gallery is empty: build the index from a folder with readable images")
    if k < 1:
      raise UserError(f"k={k}: ask for at least one neighbour")
    if k > len(self):
      logging.warning(
        "k=%d is larger than the gallery (%d items); returning %d neighbours",
        k,
        len(self),
        len(self),
      )
      return len(self)
    return k

  def search(self, queries: np.ndarray, k: int, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finds the `k` gallery rows with the highest dot product for each query.

    Args:
      queries: float32 [Q, D] (or [D]) query embeddings from the index's model.
      k: neighbours per query; more than the gallery holds is clamped (with a warning).
      **options: the backend's search options (ScaNN: leaves_to_search, reorder_k;
        faiss-hnsw: ef_search).

    Returns:
      (rows int64 [Q, k], scores float32 [Q, k]): dot-product similarities, highest first.
      Where an approximate search finds fewer than k candidates the row is padded with row -1
      and score -inf.

    Raises:
      UserError: queries of the wrong dimension, k < 1, an unknown search option.
    """
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
      queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise UserError(
        f"queries have shape {queries.shape}, the index holds {self.dim}-d "
        "embeddings: embed the queries with the model the index was built with"
      )
    k = self.clamp_k(k)
    if len(queries) == 0:
      return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    ids, scores = self.backend.search(queries, k, **options)
    rows = np.full(scores.shape, -1, np.int64)
    for q, row in enumerate(ids):
      rows[q, : len(row)] = [self._row_of[i] for i in row]
    scores[rows < 0] = -np.inf
    return rows, scores

  def save(
    self,
    directory: str,
    extra_json: Optional[dict[str, Any]] = None,
    extra_files: Optional[dict[str, bytes]] = None,
  ) -> str:
    """Writes the index as one folder, atomically (`index_folder.write`).

    Args:
      directory: destination folder; an existing index there is replaced.
      extra_json: {file name: JSON-serialisable object} written into the same folder before the
        swap (e.g. gallery.json), so the folder appears complete or not at all.
      extra_files: {file name: bytes} written the same way (e.g. the audit trail).

    Returns:
      The folder written.
    """
    index_folder.write(
      directory,
      self.backend,
      self.embeddings,
      self.items,
      self.fingerprint,
      self.created,
      extra_json,
      extra_files,
    )
    logging.info("Saved index of %d items to %s", len(self), directory)
    return directory

  @classmethod
  def load(
    cls,
    directory: str,
    expected_fingerprint: Optional[str] = None,
    expected_dim: Optional[int] = None,
  ) -> "GalleryIndex":
    """Loads an index folder written by `save` (from wherever it has been moved).

    Args:
      directory: the index folder.
      expected_fingerprint: fingerprint of the model the queries will come from, if known.
      expected_dim: dimension of the query embeddings, if known.

    Raises:
      UserError: missing or corrupt folder, or an index built by another model / dimension.
    """
    meta = index_folder.read_metadata(directory)
    fingerprint, dim = meta["fingerprint"], int(meta["dim"])
    check_model(fingerprint, dim, expected_fingerprint, expected_dim, f"index at {directory}")
    backend, embeddings, items = index_folder.read(directory, meta)
    return cls(backend, embeddings, items, fingerprint, meta.get("created"))


def check_model(
  fingerprint: str,
  dim: int,
  query_fingerprint: Optional[str],
  query_dim: Optional[int],
  what: str = "the index",
  query_name: str = "",
) -> None:
  """The one check that queries come from the model an index was built with.

  Raises:
    UserError: another fingerprint or dimension (the message says how to rebuild).
  """
  if query_fingerprint is not None and query_fingerprint != fingerprint:
    named = f" ({query_name})" if query_name else ""
    raise UserError(
      f"{what} was built with model {fingerprint}, queries come from model "
      f"{query_fingerprint}{named}: rebuild the index with facetriplet-build-index "
      f"--model=<export of model {query_fingerprint}> (or query with model {fingerprint})"
    )
  if query_dim is not None and int(query_dim) != dim:
    raise UserError(
      f"{what} holds {dim}-d embeddings, queries are {query_dim}-d: rebuild the index with "
      "facetriplet-build-index using the model the queries come from"
    )


def _check_embeddings(embeddings: np.ndarray, allow_empty: bool = False) -> np.ndarray:
  embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
  if embeddings.ndim != 2:
    raise UserError(f"embeddings have shape {embeddings.shape}: pass a float32 [N, D] array")
  if embeddings.shape[0] == 0 and allow_empty:
    return embeddings
  if embeddings.shape[0] == 0:
    raise UserError(
      "the gallery is empty: build the index from at least one embedding "
      "(check the gallery folder and that its images were embedded)"
    )
  if not np.isfinite(embeddings).all():
    raise UserError("embeddings contain NaN or infinity: check the model export and the images")
  norms = np.linalg.norm(embeddings, axis=1)
  if np.abs(norms - 1.0).max() > 1e-3:
    raise UserError(
      f"embedding rows are not unit length (norms {norms.min():.4f}.."
      f"{norms.max():.4f}): L2-normalise them (x / ||x||) before indexing"
    )
  return embeddings


def _check_items(items: Sequence[Item], rows: int) -> list[Item]:
  items = list(items)
  if len(items) != rows:
    raise UserError(
      f"{len(items)} items for {rows} embeddings: pass one item per embedding "
      "row, in the same order"
    )
  ids = [item.id for item in items]
  if len(set(ids)) != len(ids):
    seen: set = set()
    dup = sorted({i for i in ids if i in seen or seen.add(i)})[:3]
    raise UserError(f"duplicate item ids {dup}: every gallery item needs its own id")
  return items


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
