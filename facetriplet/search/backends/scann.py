"""ScaNN (the default backend): how a searcher is configured for a gallery of n vectors
(`auto_config`), built, searched, changed in place (upsert, delete), written and read back (asset
paths made relative, docids in JSON, never a pickle).

Small galleries are searched exactly (brute force); large ones get a k-means partition of about
sqrt(n) leaves, anisotropic asymmetric hashing and exact re-ranking, searched at a fraction of
the leaves picked from the target recall@10. The numbers come from `benchmarks/bench_search.py`.
Upserted vectors join the trained partitions as they are; when the gallery is more than twice or
less than half the size they were trained for, or crossed the brute-force size, `needs_rebuild`
says so.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Sequence

import numpy as np
from absl import logging

from facetriplet.errors import UserError
from facetriplet.search.backends import base

_ASSET_PATH = re.compile(r'asset_path:\s*"([^"]*)"')

BRUTE_FORCE_BELOW = 20_000  # exact below this: < 1 ms per query at 128-d, no recall lost

# Fraction of the ~sqrt(n) leaves to search and re-ranking depth per target recall@10, measured
# with benchmarks/bench_search.py (and at 300k) on clustered 128-d unit vectors (AH 2 dims/block,
# anisotropic threshold 0.2); the fraction needed was the same at 100k and 300k. `auto_config`
# uses the first row whose recall is >= the target, with a margin; the 1M run confirmed it (1.5 %
# -> 0.966, 2 % -> 0.982, 2.5 % -> 0.986 at ~300x exact search). Above 0.99: exact brute force.
_RECALL_TABLE: tuple[tuple[float, float, int], ...] = (
  # (target recall@10, fraction of leaves searched, reorder_k); measured 100k / 300k:
  (0.80, 0.01, 50),  # 0.856 / 0.846
  (0.90, 0.015, 100),  # 0.960 / 0.951
  (0.95, 0.025, 100),  # 0.975 / 0.976 at 2%; 0.988 / 0.985 at 3%
  (0.98, 0.04, 200),  # 0.989 / 0.988 at 3%; 0.993 / 0.991 at 5%
  (0.99, 0.08, 200),  # 0.995 / 0.995
)
_TRAINING_SAMPLE_CAP = 250_000
SETTINGS = (
  "num_leaves",
  "num_leaves_to_search",
  "training_sample_size",
  "dimensions_per_block",
  "anisotropic_quantization_threshold",
  "reorder_k",
)


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
    raise UserError(
      "the gallery is empty: build the index from at least one embedding "
      "(check the gallery folder and that its images were embedded)"
    )
  if dim <= 0:
    raise UserError(f"embedding dimension {dim} is not positive: pass float32 [N, D] embeddings")
  if not 0.0 < target_recall <= 1.0:
    raise UserError(f"target_recall={target_recall} is outside (0, 1]: pass e.g. 0.95")
  if n < BRUTE_FORCE_BELOW or target_recall > _RECALL_TABLE[-1][0]:
    return {"mode": "brute_force", "target_recall": target_recall}
  num_leaves = max(2, int(round(math.sqrt(n))))
  fraction, reorder_k = next(
    (frac, reorder) for recall, frac, reorder in _RECALL_TABLE if recall >= target_recall
  )
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


def _force_ah(n: int, dim: int, target_recall: float) -> dict[str, Any]:
  """AH settings for a gallery below the brute-force threshold (used when overrides ask for AH)."""
  config = auto_config(BRUTE_FORCE_BELOW, dim, min(target_recall, _RECALL_TABLE[-1][0]))
  leaves = max(2, min(int(round(math.sqrt(n))), n))
  fraction = config["num_leaves_to_search"] / config["num_leaves"]
  config.update(
    num_leaves=leaves,
    training_sample_size=n,
    num_leaves_to_search=max(1, int(math.ceil(leaves * fraction))),
  )
  return config


def _validated(config: dict[str, Any], n: int) -> dict[str, Any]:
  if config["mode"] not in ("brute_force", "ah"):
    raise UserError(f"mode={config['mode']!r}: valid modes are 'brute_force' and 'ah'")
  if config["mode"] == "brute_force":
    return config
  config = dict(config)
  for key in SETTINGS:
    if key != "anisotropic_quantization_threshold":
      config[key] = int(config[key])
      if config[key] < 1:
        raise UserError(f"{key}={config[key]}: must be at least 1")
  config["anisotropic_quantization_threshold"] = float(config["anisotropic_quantization_threshold"])
  if config["num_leaves"] > n:
    raise UserError(
      f"num_leaves={config['num_leaves']} exceeds the {n} gallery items: "
      "use at most one leaf per item (about sqrt(n) is usual)"
    )
  config["num_leaves_to_search"] = min(config["num_leaves_to_search"], config["num_leaves"])
  config["training_sample_size"] = min(config["training_sample_size"], n)
  return config


def _build_searcher(embeddings: np.ndarray, config: dict[str, Any], docids: list[str]) -> Any:
  from scann.scann_ops.py import scann_ops_pybind  # pylint: disable=g-import-not-at-top

  builder = scann_ops_pybind.builder(embeddings, 10, "dot_product")
  if config["mode"] == "brute_force":
    return builder.score_brute_force().build(docids=list(docids))
  return (
    builder.tree(
      num_leaves=config["num_leaves"],
      num_leaves_to_search=config["num_leaves_to_search"],
      training_sample_size=config["training_sample_size"],
    )
    .score_ah(
      config["dimensions_per_block"],
      anisotropic_quantization_threshold=config["anisotropic_quantization_threshold"],
    )
    .reorder(config["reorder_k"])
    .build(docids=list(docids))
  )


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
    lambda m: 'asset_path: "%s"' % os.path.join(scann_dir, os.path.basename(m.group(1))), text
  )
  docids = None
  if os.path.isfile(os.path.join(scann_dir, "docids.json")):
    with open(os.path.join(scann_dir, "docids.json"), encoding="utf-8") as f:
      docids = [str(d) for d in json.load(f)]
  return scann_ops_pybind.ScannSearcher(
    scann_ops_pybind.scann_pybind.ScannNumpy(scann_dir, text), docids
  )


class ScannBackend(base.IndexBackend):
  """A ScaNN searcher whose docids are the item ids."""

  name = "scann"
  folder = "scann"
  search_options = ("leaves_to_search", "reorder_k")

  def __init__(self, searcher: Any, config: dict[str, Any]):
    super().__init__(config)
    self._searcher = searcher

  @classmethod
  def settings(
    cls, n: int, dim: int, target_recall: float = 0.95, **overrides: Any
  ) -> dict[str, Any]:
    """`auto_config(n, dim, target_recall)` plus `overrides` (any of `SETTINGS`, which force the
    partitioned AH path, or mode='brute_force'/'ah'; None values are ignored).

    Raises:
      UserError: an unknown setting or an invalid value.
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(overrides) - set(SETTINGS) - {"mode"})
    if unknown:
      raise UserError(f"unknown index setting(s) {unknown}: valid are {list(SETTINGS)} and mode")
    config = auto_config(n, dim, target_recall)
    if overrides:
      if overrides.get("mode", "ah") == "ah" and config["mode"] == "brute_force":
        config = _force_ah(n, dim, target_recall)
      config.update(overrides)
      if config["mode"] == "brute_force":
        config = {"mode": "brute_force", "target_recall": target_recall}
    return dict(_validated(config, n), trained_on=n)

  @classmethod
  def build(
    cls, embeddings: np.ndarray, ids: Sequence[str], config: dict[str, Any]
  ) -> "ScannBackend":
    logging.info(
      "Building ScaNN searcher over %d x %d embeddings with %s", *embeddings.shape, config
    )
    return cls(_build_searcher(embeddings, config, ids), config)

  def search(
    self, queries: np.ndarray, k: int, **options: Any
  ) -> tuple[list[list[str]], np.ndarray]:
    options = base.check_options(type(self), options)
    kwargs: dict[str, Any] = {"final_num_neighbors": k}
    if self.config["mode"] == "ah":
      kwargs["pre_reorder_num_neighbors"] = max(
        k, options.get("reorder_k") or self.config["reorder_k"]
      )
      kwargs["leaves_to_search"] = (
        options.get("leaves_to_search") or self.config["num_leaves_to_search"]
      )
    if len(queries) >= 64:
      ids, scores = self._searcher.search_batched_parallel(queries, **kwargs)
    else:
      ids, scores = self._searcher.search_batched(queries, **kwargs)
    return base.pad_results([list(row) for row in ids], list(np.asarray(scores, np.float32)), k)

  def upsert(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
    self._searcher.upsert(list(ids), embeddings, batch_size=256)

  def delete(self, ids: Sequence[str]) -> None:
    self._searcher.delete(list(ids))

  def needs_rebuild(self, n: int, dim: int) -> str:
    trained = int(self.config.get("trained_on") or n)
    wanted = auto_config(n, dim, self.config.get("target_recall", 0.95))["mode"]
    if wanted != self.config["mode"]:
      return (
        f"{n} items would now be searched with {wanted}, the index uses "
        f"{self.config['mode']} (built for {trained})"
      )
    if self.config["mode"] == "ah" and not trained / 2 <= n <= 2 * trained:
      return f"{n} items, partitions trained for {trained}"
    return ""

  def save(self, directory: str) -> None:
    self._searcher.serialize(directory)
    _make_assets_relative(directory)
    pickled = os.path.join(directory, "scann_docids.pkl")
    if os.path.exists(pickled):
      os.remove(pickled)  # never load a pickle from an index folder; docids.json instead
    with open(os.path.join(directory, "docids.json"), "w", encoding="utf-8") as f:
      json.dump(list(self._searcher.docids), f)

  @classmethod
  def load(
    cls, directory: str, config: dict[str, Any], embeddings: np.ndarray, ids: Sequence[str]
  ) -> "ScannBackend":
    searcher = _load_searcher(directory)
    if getattr(searcher, "docids", None) is None:
      # Saved before items had ids: rebuild once, with the row numbers as ids.
      logging.info("index without searcher ids (older format): rebuilding its searcher once")
      searcher = _build_searcher(np.ascontiguousarray(embeddings), config, ids)
    return cls(searcher, config)


BACKEND = ScannBackend
