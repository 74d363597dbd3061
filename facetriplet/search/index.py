"""The gallery search index: a ScaNN searcher plus the metadata that makes its answers usable.

`ScannIndex` keeps, side by side, the ScaNN searcher over the gallery embeddings, the embeddings
themselves (for exact re-scoring and evaluation), one metadata dict per gallery row (`path`,
`identity`, ...) and the fingerprint of the model that produced the embeddings, so that queries
from another model are refused instead of answered with garbage.

How ScaNN is configured follows the gallery size (`auto_config`): exact brute force for small
galleries, and for large ones a k-means partition (about sqrt(n) leaves) scored with anisotropic
asymmetric hashing and re-ranked exactly. The numbers come from `benchmarks/bench_search.py`
(clustered synthetic 128-d face-like embeddings at 100k and 1M); see `auto_config`.

Every item has an `id` (a string, unique in the index; the searcher's docid), so photos can be
added (`add`, ScaNN's upsert: nothing re-embedded, partitions kept) and removed (`remove`) without
a rebuild. When the gallery has grown or shrunk well past the size the partitions were trained
for, `needs_rebuild` says so and `rebuild` retrains them.

On disk an index is one folder, written atomically:
  index.json      format, fingerprint, dim, count, ScaNN settings, facetriplet version, created
  items.jsonl     one JSON object per gallery row, in row order
  embeddings.npy  float32 [count, dim]
  scann/          the serialized searcher (asset paths stored relative, so the folder can move;
                  its docids in docids.json, not a pickle)
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

from absl import logging
import numpy as np

import facetriplet
from facetriplet import atomic
from facetriplet.errors import UserError
from facetriplet.search.scann_config import (BRUTE_FORCE_BELOW, _SEARCH_KEYS,  # noqa: F401
                                             _build_searcher, _force_ah, _load_searcher,
                                             _make_assets_relative, _validated, auto_config)

FORMAT = "facetriplet-scann-index/1"


class ScannIndex:
  """ScaNN searcher over unit-vector gallery embeddings, with per-row metadata and fingerprint."""

  def __init__(self, searcher: Any, embeddings: np.ndarray, items: list[dict], fingerprint: str,
               config: dict[str, Any], created: str | None = None):
    """Use `ScannIndex.build` or `ScannIndex.load`; this only stores the parts."""
    self._searcher = searcher
    self.embeddings = embeddings
    self.items = items
    self.fingerprint = fingerprint
    self.config = config
    self.created = created or _now()
    self._row_of = {item_id(item, i): i for i, item in enumerate(items)}

  def row_of(self, id_: str) -> int | None:
    """The row of the item with this id, or None."""
    return self._row_of.get(id_)

  @property
  def ids(self) -> list[str]:
    return [item_id(item, i) for i, item in enumerate(self.items)]

  @property
  def dim(self) -> int:
    """Embedding dimension."""
    return int(self.embeddings.shape[1])

  def __len__(self) -> int:
    return int(self.embeddings.shape[0])

  @classmethod
  def build(cls, embeddings: np.ndarray, items: Sequence[dict], fingerprint: str,
            target_recall: float = 0.95, **overrides: Any) -> "ScannIndex":
    """Builds an index over `embeddings` with settings from `auto_config` plus `overrides`.

    Args:
      embeddings: float32 [N, D] gallery embeddings with unit rows.
      items: One metadata dict per row (e.g. {"path": ..., "identity": ...}).
      fingerprint: Fingerprint of the model that produced the embeddings.
      target_recall: Wanted recall@10 relative to exact search (see `auto_config`).
      **overrides: Any of num_leaves, num_leaves_to_search, training_sample_size,
        dimensions_per_block, anisotropic_quantization_threshold, reorder_k (forces the
        partitioned AH path), or mode="brute_force"/"ah". None values are ignored.

    Returns:
      The built index.

    Raises:
      UserError: Empty gallery, wrong shape, non-unit rows, items of another length, or an
        unknown override.
    """
    embeddings = _check_embeddings(embeddings)
    items = _with_ids(items)
    if len(items) != len(embeddings):
      raise UserError(f"{len(items)} items for {len(embeddings)} embeddings: pass one metadata "
                      "dict per embedding row, in the same order")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(overrides) - set(_SEARCH_KEYS) - {"mode"})
    if unknown:
      raise UserError(f"unknown index setting(s) {unknown}: valid are {list(_SEARCH_KEYS)} "
                      "and mode")
    n, dim = embeddings.shape
    config = auto_config(n, dim, target_recall)
    if overrides:
      if overrides.get("mode", "ah") == "ah" and config["mode"] == "brute_force":
        config = _force_ah(n, dim, target_recall)
      config.update(overrides)
      if config["mode"] == "brute_force":
        config = {"mode": "brute_force", "target_recall": target_recall}
    config = dict(_validated(config, n), trained_on=n)
    logging.info("Building ScaNN index over %d x %d embeddings with %s", n, dim, config)
    searcher = _build_searcher(embeddings, config, [item["id"] for item in items])
    return cls(searcher, embeddings, items, str(fingerprint), config)

  def add(self, embeddings: np.ndarray, items: Sequence[dict]) -> tuple[int, int]:
    """Adds gallery rows without retraining the partitions (ScaNN upsert). An item whose id is
    already in the index replaces that row (so adding the same photos again changes nothing).

    Returns:
      (rows added, rows replaced).

    Raises:
      UserError: wrong shape or non-unit rows, items of another length, duplicate ids.
    """
    embeddings = _check_embeddings(embeddings, allow_empty=True)
    if embeddings.shape[1] != self.dim:
      raise UserError(f"new embeddings are {embeddings.shape[1]}-d, the index holds {self.dim}-d:"
                      " embed them with the index's model")
    items = _with_ids(items, start=len(self))
    if len(items) != len(embeddings):
      raise UserError(f"{len(items)} items for {len(embeddings)} embeddings")
    if not items:
      return 0, 0
    self._ensure_docids()
    self._searcher.upsert([item["id"] for item in items], embeddings, batch_size=256)
    rows = [self._row_of.get(item["id"]) for item in items]
    fresh = [i for i, row in enumerate(rows) if row is None]
    stored = np.array(self.embeddings)  # a loaded index is memory-mapped read-only
    for i, row in enumerate(rows):
      if row is not None:
        stored[row] = embeddings[i]
        self.items[row] = items[i]
    self.embeddings = np.concatenate([stored, embeddings[fresh]]) if fresh else stored
    for i in fresh:
      self._row_of[items[i]["id"]] = len(self.items)
      self.items.append(items[i])
    return len(fresh), len(items) - len(fresh)

  def remove(self, ids: Sequence[str]) -> int:
    """Removes the rows with these ids (ScaNN delete; partitions kept). Returns rows removed.

    Raises:
      UserError: an id that is not in the index (nothing is removed then), or removing all.
    """
    ids = list(dict.fromkeys(ids))
    unknown = [i for i in ids if i not in self._row_of]
    if unknown:
      raise UserError(f"{len(unknown)} id(s) not in the index, e.g. {unknown[:3]}: nothing "
                      "removed (ids are listed in the index's items.jsonl)")
    if len(ids) >= len(self):
      raise UserError("removing every item would leave an empty index: build a new one instead")
    if not ids:
      return 0
    self._ensure_docids()
    self._searcher.delete(ids)
    gone = np.zeros(len(self), bool)
    gone[[self._row_of[i] for i in ids]] = True
    self.embeddings = np.asarray(self.embeddings)[~gone]
    self.items = [item for item, g in zip(self.items, gone) if not g]
    self._row_of = {item_id(item, i): i for i, item in enumerate(self.items)}
    return int(gone.sum())

  @property
  def needs_rebuild(self) -> str:
    """Why the searcher should be rebuilt ('' when it is fine): the gallery is more than twice or
    less than half the size its partitions were trained for, or crossed the brute-force size."""
    trained = int(self.config.get("trained_on") or len(self))
    wanted = auto_config(len(self), self.dim, self.config.get("target_recall", 0.95))["mode"]
    if wanted != self.config["mode"]:
      return (f"{len(self)} items would now be searched with {wanted}, the index uses "
              f"{self.config['mode']} (built for {trained})")
    if self.config["mode"] == "ah" and not trained / 2 <= len(self) <= 2 * trained:
      return f"{len(self)} items, partitions trained for {trained}"
    return ""

  def rebuild(self, target_recall: float | None = None) -> None:
    """Retrains the searcher over the current rows (after many adds or removes)."""
    target = target_recall or self.config.get("target_recall", 0.95)
    config = dict(_validated(auto_config(len(self), self.dim, target), len(self)),
                  trained_on=len(self))
    self.embeddings = np.ascontiguousarray(self.embeddings)
    self._searcher = _build_searcher(self.embeddings, config, self.ids)
    self.config = config

  def _ensure_docids(self) -> None:
    """An index saved before ids existed has a searcher without docids: rebuild it with them."""
    if getattr(self._searcher, "docids", None) is None:
      logging.info("index without searcher ids (older format): rebuilding its searcher once")
      self.embeddings = np.ascontiguousarray(self.embeddings)
      self._searcher = _build_searcher(self.embeddings, self.config, self.ids)

  def check_queries_from(self, extractor) -> None:
    """Refuses queries embedded by another model than the index's (fingerprint, dimension)."""
    check_model(self.fingerprint, self.dim, extractor.fingerprint, int(extractor.dim),
                "the index", getattr(extractor, "name", ""))

  def clamp_k(self, k: int) -> int:
    """`k` limited to the gallery size (with a warning). UserError for k < 1 or an empty index."""
    if len(self) == 0:
      raise UserError("the gallery is empty: build the index from a folder with readable images")
    if k < 1:
      raise UserError(f"k={k}: ask for at least one neighbour")
    if k > len(self):
      logging.warning("k=%d is larger than the gallery (%d items); returning %d neighbours",
                      k, len(self), len(self))
      return len(self)
    return k

  def search(self, queries: np.ndarray, k: int, leaves_to_search: int | None = None,
             reorder_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Finds the `k` gallery rows with the highest dot product for each query.

    Args:
      queries: float32 [Q, D] (or [D]) query embeddings from the index's model.
      k: Neighbours per query; more than the gallery holds is clamped (with a warning).
      leaves_to_search: Overrides the configured leaves searched (AH indexes only).
      reorder_k: Overrides the configured re-ranking depth (AH indexes only).

    Returns:
      (indices int64 [Q, k], scores float32 [Q, k]): dot-product similarities, highest first.
      Where an approximate search finds fewer than k candidates the row is padded with index
      -1 and score -inf.

    Raises:
      UserError: Queries of the wrong dimension or k < 1.
    """
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
      queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise UserError(f"queries have shape {queries.shape}, the index holds {self.dim}-d "
                      "embeddings: embed the queries with the model the index was built with")
    k = self.clamp_k(k)
    if len(queries) == 0:
      return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    kwargs: dict[str, Any] = {"final_num_neighbors": k}
    if self.config["mode"] == "ah":
      kwargs["pre_reorder_num_neighbors"] = max(k, reorder_k or self.config["reorder_k"])
      kwargs["leaves_to_search"] = leaves_to_search or self.config["num_leaves_to_search"]
    if len(queries) >= 64:
      indices, scores = self._searcher.search_batched_parallel(queries, **kwargs)
    else:
      indices, scores = self._searcher.search_batched(queries, **kwargs)
    if getattr(self._searcher, "docids", None) is not None:  # docids -> our rows
      indices = [[self._row_of[d] for d in row] for row in indices]
      width = max((len(row) for row in indices), default=k)
      indices = np.array([list(row) + [-1] * (width - len(row)) for row in indices], np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    missing = ~np.isfinite(scores)
    if missing.any():
      indices[missing] = -1
      scores[missing] = -np.inf
    return indices, scores

  def save(self, directory: str, extra_json: dict[str, Any] | None = None) -> str:
    """Writes the index as one folder, atomically (temp folder beside it, then rename).

    Args:
      directory: Destination folder; an existing index there is replaced.
      extra_json: {file name: JSON-serialisable object} written into the same folder before the
        rename (e.g. gallery.json), so the folder appears complete or not at all.

    Returns:
      The folder written.
    """
    with atomic.atomic_path(directory) as tmp:
      os.makedirs(os.path.join(tmp, "scann"))
      self._searcher.serialize(os.path.join(tmp, "scann"))
      _make_assets_relative(os.path.join(tmp, "scann"))
      docids = getattr(self._searcher, "docids", None)
      pickled = os.path.join(tmp, "scann", "scann_docids.pkl")
      if os.path.exists(pickled):
        os.remove(pickled)  # never load a pickle from an index folder; docids.json instead
      if docids is not None:
        with open(os.path.join(tmp, "scann", "docids.json"), "w", encoding="utf-8") as f:
          json.dump(list(docids), f)
      np.save(os.path.join(tmp, "embeddings.npy"), np.ascontiguousarray(self.embeddings))
      with open(os.path.join(tmp, "items.jsonl"), "w", encoding="utf-8") as f:
        for item in self.items:
          f.write(json.dumps(item, sort_keys=True, default=str) + "\n")
      with open(os.path.join(tmp, "index.json"), "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "fingerprint": self.fingerprint, "dim": self.dim,
                   "count": len(self), "scann": self.config, "metric": "dot_product",
                   "facetriplet_version": facetriplet.__version__, "created": self.created},
                  f, indent=2, sort_keys=True)
      for name, obj in (extra_json or {}).items():
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
          json.dump(obj, f, indent=2, sort_keys=True, default=str)
    logging.info("Saved index of %d items to %s", len(self), directory)
    return directory

  @classmethod
  def load(cls, directory: str, expected_fingerprint: str | None = None,
           expected_dim: int | None = None) -> "ScannIndex":
    """Loads an index folder written by `save` (from wherever it has been moved).

    Args:
      directory: The index folder.
      expected_fingerprint: Fingerprint of the model the queries will come from, if known.
      expected_dim: Dimension of the query embeddings, if known.

    Returns:
      The loaded index.

    Raises:
      UserError: Missing or corrupt folder, or an index built by another model / dimension.
    """
    meta = _read_metadata(directory)
    fingerprint, dim = meta["fingerprint"], int(meta["dim"])
    check_model(fingerprint, dim, expected_fingerprint, expected_dim, f"index at {directory}")
    try:
      embeddings = np.load(os.path.join(directory, "embeddings.npy"), mmap_mode="r")
      with open(os.path.join(directory, "items.jsonl"), encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
      searcher = _load_searcher(os.path.join(directory, "scann"))
    except (OSError, ValueError, RuntimeError) as e:
      raise UserError(f"index at {directory} is incomplete or corrupt ({e}): rebuild it with "
                      "facetriplet-build-index") from e
    if embeddings.shape != (meta["count"], dim) or len(items) != meta["count"]:
      raise UserError(
          f"index at {directory} is inconsistent (index.json says {meta['count']} x {dim}, found "
          f"embeddings {embeddings.shape} and {len(items)} items): rebuild it with "
          "facetriplet-build-index")
    return cls(searcher, embeddings, items, fingerprint, meta["scann"], meta.get("created"))


def check_model(fingerprint: str, dim: int, query_fingerprint: str | None,
                query_dim: int | None, what: str = "the index", query_name: str = "") -> None:
  """The one check that queries come from the model an index was built with.

  Raises:
    UserError: another fingerprint or dimension (the message says how to rebuild).
  """
  if query_fingerprint is not None and query_fingerprint != fingerprint:
    named = f" ({query_name})" if query_name else ""
    raise UserError(
        f"{what} was built with model {fingerprint}, queries come from model "
        f"{query_fingerprint}{named}: rebuild the index with facetriplet-build-index "
        f"--model=<export of model {query_fingerprint}> (or query with model {fingerprint})")
  if query_dim is not None and int(query_dim) != dim:
    raise UserError(
        f"{what} holds {dim}-d embeddings, queries are {query_dim}-d: rebuild the index with "
        "facetriplet-build-index using the model the queries come from")


def _check_embeddings(embeddings: np.ndarray, allow_empty: bool = False) -> np.ndarray:
  embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
  if embeddings.ndim != 2:
    raise UserError(f"embeddings have shape {embeddings.shape}: pass a float32 [N, D] array")
  if embeddings.shape[0] == 0 and allow_empty:
    return embeddings
  if embeddings.shape[0] == 0:
    raise UserError("the gallery is empty: build the index from at least one embedding "
                    "(check the gallery folder and that its images were embedded)")
  if not np.isfinite(embeddings).all():
    raise UserError("embeddings contain NaN or infinity: check the model export and the images")
  norms = np.linalg.norm(embeddings, axis=1)
  if np.abs(norms - 1.0).max() > 1e-3:
    raise UserError(f"embedding rows are not unit length (norms {norms.min():.4f}.."
                    f"{norms.max():.4f}): L2-normalise them (x / ||x||) before indexing")
  return embeddings


def item_id(item: dict, row: int) -> str:
  """An item's id: its `id`, else (indexes written before ids) its row number."""
  return str(item["id"]) if item.get("id") is not None else str(row)


def _with_ids(items: Sequence[dict], start: int = 0) -> list[dict]:
  """Copies of `items`, each with a unique string `id` (its row number where it had none)."""
  out = [dict(item, id=item_id(item, start + i)) for i, item in enumerate(items)]
  ids = [item["id"] for item in out]
  if len(set(ids)) != len(ids):
    dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
    raise UserError(f"duplicate item ids {dup}: every gallery item needs its own id")
  return out


def _read_metadata(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, "index.json")
  if not os.path.isdir(directory):
    raise UserError(f"no index at {directory}: build one with facetriplet-build-index "
                    "or pass the folder it was saved to")
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"index at {directory} has no readable index.json ({e}): it is not an index "
                    "folder or it is corrupt; rebuild it with facetriplet-build-index") from e
  missing = [k for k in ("format", "fingerprint", "dim", "count", "scann") if k not in meta]
  if missing or meta.get("format") != FORMAT:
    raise UserError(f"index at {directory} has index.json without {missing or 'format ' + FORMAT}:"
                    " rebuild it with facetriplet-build-index")
  return meta


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
