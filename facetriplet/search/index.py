"""The gallery search index: a ScaNN searcher plus the metadata that makes its answers usable.

`ScannIndex` keeps, side by side, the ScaNN searcher over the gallery embeddings, the embeddings
themselves (for exact re-scoring and evaluation), one metadata dict per gallery row (`path`,
`identity`, ...) and the fingerprint of the model that produced the embeddings, so that queries
from another model are refused instead of answered with garbage.

How ScaNN is configured follows the gallery size (`auto_config`): exact brute force for small
galleries, and for large ones a k-means partition (about sqrt(n) leaves) scored with anisotropic
asymmetric hashing and re-ranked exactly. The numbers come from `benchmarks/bench_search.py`
(clustered synthetic 128-d face-like embeddings at 100k and 1M); see `auto_config`.

On disk an index is one folder, written atomically:
  index.json      format, fingerprint, dim, count, ScaNN settings, facetriplet version, created
  items.jsonl     one JSON object per gallery row, in row order
  embeddings.npy  float32 [count, dim]
  scann/          the serialized searcher (asset paths stored relative, so the folder can move)
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from typing import Any, Sequence

from absl import logging
import numpy as np

import facetriplet
from facetriplet import atomic
from facetriplet.errors import UserError

FORMAT = "facetriplet-scann-index/1"
BRUTE_FORCE_BELOW = 20_000  # exact below this: < 1 ms per query at 128-d, no recall lost

# Fraction of the ~sqrt(n) leaves to search and re-ranking depth per target recall@10, measured
# with benchmarks/bench_search.py (and at 300k) on clustered 128-d unit vectors (AH 2 dims/block,
# anisotropic threshold 0.2); the fraction needed was the same at 100k and 300k. `auto_config`
# uses the first row whose recall is >= the target, with a margin; the 1M run confirmed it (1.5 %
# -> 0.966, 2 % -> 0.982, 2.5 % -> 0.986 at ~300x exact search). Above 0.99: exact brute force.
_RECALL_TABLE: tuple[tuple[float, float, int], ...] = (
    # (target recall@10, fraction of leaves searched, reorder_k); measured 100k / 300k:
    (0.80, 0.01, 50),    # 0.856 / 0.846
    (0.90, 0.015, 100),  # 0.960 / 0.951
    (0.95, 0.025, 100),  # 0.975 / 0.976 at 2%; 0.988 / 0.985 at 3%
    (0.98, 0.04, 200),   # 0.989 / 0.988 at 3%; 0.993 / 0.991 at 5%
    (0.99, 0.08, 200),   # 0.995 / 0.995
)
_TRAINING_SAMPLE_CAP = 250_000
_SEARCH_KEYS = ("num_leaves", "num_leaves_to_search", "training_sample_size",
                "dimensions_per_block", "anisotropic_quantization_threshold", "reorder_k")
_ASSET_PATH = re.compile(r'asset_path:\s*"([^"]*)"')


def auto_config(n: int, dim: int, target_recall: float = 0.95) -> dict[str, Any]:
  """Chooses ScaNN settings for a gallery of `n` unit vectors of dimension `dim`.

  Rule: n < 20,000 (or target_recall > 0.99) -> exact brute force. Otherwise a k-means tree
  with num_leaves = round(sqrt(n)) (the usual ScaNN choice: leaf size and leaf count grow alike,
  so partition training and leaf scanning cost the same order), of which the smallest measured
  fraction that reached `target_recall` is searched with anisotropic AH (2 dims per block,
  threshold 0.2, ScaNN's recommendation for maximum inner product), and the best `reorder_k`
  candidates are re-scored exactly. The fractions were measured with benchmarks/bench_search.py
  (see `_RECALL_TABLE` and BENCHMARKS.md).

  Args:
    n: Number of gallery vectors.
    dim: Embedding dimension.
    target_recall: Wanted recall@10 relative to exact search, in (0, 1].

  Returns:
    A dict with `mode` ("brute_force" or "ah") and, for "ah", the keys num_leaves,
    num_leaves_to_search, training_sample_size, dimensions_per_block,
    anisotropic_quantization_threshold and reorder_k.

  Raises:
    UserError: For an empty gallery or a target recall outside (0, 1].
  """
  if n <= 0:
    raise UserError("the gallery is empty: build the index from at least one embedding "
                    "(check the gallery folder and that its images were embedded)")
  if dim <= 0:
    raise UserError(f"embedding dimension {dim} is not positive: pass float32 [N, D] embeddings")
  if not 0.0 < target_recall <= 1.0:
    raise UserError(f"target_recall={target_recall} is outside (0, 1]: pass e.g. 0.95")
  if n < BRUTE_FORCE_BELOW or target_recall > _RECALL_TABLE[-1][0]:
    return {"mode": "brute_force", "target_recall": target_recall}
  num_leaves = max(2, int(round(math.sqrt(n))))
  fraction, reorder_k = next((frac, reorder) for recall, frac, reorder in _RECALL_TABLE
                             if recall >= target_recall)
  return {
      "mode": "ah",
      "target_recall": target_recall,
      "num_leaves": num_leaves,
      "num_leaves_to_search": max(1, min(num_leaves, int(math.ceil(fraction * num_leaves)))),
      "training_sample_size": min(n, _TRAINING_SAMPLE_CAP),
      "dimensions_per_block": 2,
      "anisotropic_quantization_threshold": 0.2,
      "reorder_k": reorder_k,
  }


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
    items = [dict(item) for item in items]
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
    config = _validated(config, n)
    logging.info("Building ScaNN index over %d x %d embeddings with %s", n, dim, config)
    return cls(_build_searcher(embeddings, config), embeddings, items, str(fingerprint), config)

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


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
  embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
  if embeddings.ndim != 2:
    raise UserError(f"embeddings have shape {embeddings.shape}: pass a float32 [N, D] array")
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


def _force_ah(n: int, dim: int, target_recall: float) -> dict[str, Any]:
  """AH settings for a gallery below the brute-force threshold (used when overrides ask for AH)."""
  config = auto_config(BRUTE_FORCE_BELOW, dim, min(target_recall, _RECALL_TABLE[-1][0]))
  leaves = max(2, min(int(round(math.sqrt(n))), n))
  fraction = config["num_leaves_to_search"] / config["num_leaves"]
  config.update(num_leaves=leaves, training_sample_size=n,
                num_leaves_to_search=max(1, int(math.ceil(leaves * fraction))))
  return config


def _validated(config: dict[str, Any], n: int) -> dict[str, Any]:
  if config["mode"] not in ("brute_force", "ah"):
    raise UserError(f"mode={config['mode']!r}: valid modes are 'brute_force' and 'ah'")
  if config["mode"] == "brute_force":
    return config
  config = dict(config)
  for key in _SEARCH_KEYS:
    if key != "anisotropic_quantization_threshold":
      config[key] = int(config[key])
      if config[key] < 1:
        raise UserError(f"{key}={config[key]}: must be at least 1")
  config["anisotropic_quantization_threshold"] = float(
      config["anisotropic_quantization_threshold"])
  if config["num_leaves"] > n:
    raise UserError(f"num_leaves={config['num_leaves']} exceeds the {n} gallery items: "
                    "use at most one leaf per item (about sqrt(n) is usual)")
  config["num_leaves_to_search"] = min(config["num_leaves_to_search"], config["num_leaves"])
  config["training_sample_size"] = min(config["training_sample_size"], n)
  return config


def _build_searcher(embeddings: np.ndarray, config: dict[str, Any]) -> Any:
  from scann.scann_ops.py import scann_ops_pybind  # pylint: disable=g-import-not-at-top

  builder = scann_ops_pybind.builder(embeddings, 10, "dot_product")
  if config["mode"] == "brute_force":
    return builder.score_brute_force().build()
  return (builder
          .tree(num_leaves=config["num_leaves"],
                num_leaves_to_search=config["num_leaves_to_search"],
                training_sample_size=config["training_sample_size"])
          .score_ah(config["dimensions_per_block"],
                    anisotropic_quantization_threshold=config["anisotropic_quantization_threshold"])
          .reorder(config["reorder_k"])
          .build())


def _make_assets_relative(scann_dir: str) -> None:
  """Stores asset paths as bare file names: the serialized ones point into the temp folder."""
  path = os.path.join(scann_dir, "scann_assets.pbtxt")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  text = _ASSET_PATH.sub(lambda m: f'asset_path: "{os.path.basename(m.group(1))}"', text)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def _load_searcher(scann_dir: str) -> Any:
  """Loads a serialized searcher with its asset paths resolved inside `scann_dir`."""
  from scann.scann_ops.py import scann_ops_pybind  # pylint: disable=g-import-not-at-top

  scann_dir = os.path.abspath(scann_dir)
  with open(os.path.join(scann_dir, "scann_assets.pbtxt"), encoding="utf-8") as f:
    text = f.read()
  text = _ASSET_PATH.sub(
      lambda m: 'asset_path: "%s"' % os.path.join(scann_dir, os.path.basename(m.group(1))), text)
  return scann_ops_pybind.ScannSearcher(scann_ops_pybind.scann_pybind.ScannNumpy(scann_dir, text),
                                        None)


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
