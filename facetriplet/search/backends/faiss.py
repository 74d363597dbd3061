"""faiss backends (the `faiss` extra: faiss-cpu, or faiss-gpu): exact search with `IndexFlatIP`
(`faiss-flat`) and graph search with `IndexHNSWFlat` (`faiss-hnsw`), both by inner product.

Item ids map to faiss' int64 labels kept beside the index (`labels.json`: position = label, the
id or null). `faiss-flat` removes deleted vectors (`IndexIDMap2.remove_ids`). HNSW graphs cannot
drop nodes, so `faiss-hnsw` marks deleted labels and leaves them out of every search (an
`IDSelector` in the search parameters); `needs_rebuild` says when a fifth of the graph is dead.
With faiss-gpu and a GPU, exact search runs on every GPU (`index_cpu_to_all_gpus`) at no cost to
the caller; HNSW stays on the CPU.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

from facetriplet.errors import UserError
from facetriplet.search.backends import base

INDEX_FILE = "index.faiss"
LABELS_FILE = "labels.json"
HNSW_M = 32  # graph degree: recall@10 >= 0.95 at 1M 128-d with efSearch 128 (BENCHMARKS.md)
HNSW_EF_CONSTRUCTION = 80
DEAD_FRACTION = 0.2  # faiss-hnsw: rebuild advised once this fraction of the graph is deleted


def _faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
      f"the faiss backends need faiss ({e}): pip install 'facetriplet[faiss]' "
      "(faiss-cpu; or faiss-gpu for GPU search), or use --backend=scann"
    ) from None
  return faiss


class _Labels:
  """Item ids <-> int64 labels (a label is never reused; deleted ones map to None)."""

  def __init__(self, ids: Sequence[Optional[str]] = ()):
    self.ids: list[Optional[str]] = list(ids)
    self.label = {i: n for n, i in enumerate(self.ids) if i is not None}
    self.dead = [n for n, i in enumerate(self.ids) if i is None]

  def assign(self, ids: Sequence[str]) -> np.ndarray:
    start = len(self.ids)
    self.ids.extend(ids)
    self.label.update({i: start + n for n, i in enumerate(ids)})
    return np.arange(start, start + len(ids), dtype=np.int64)

  def drop(self, ids: Sequence[str]) -> np.ndarray:
    labels = np.array([self.label.pop(i) for i in ids if i in self.label], np.int64)
    for n in labels:
      self.ids[n] = None
    self.dead.extend(int(n) for n in labels)
    return labels

  def to_ids(self, labels: np.ndarray, scores: np.ndarray):
    rows = [[self.ids[n] for n in row if n >= 0] for row in labels]
    return base.pad_results(rows, [s[row >= 0] for s, row in zip(scores, labels)], labels.shape[1])


class FaissFlat(base.IndexBackend):
  """Exact inner-product search (`IndexIDMap2(IndexFlatIP)`)."""

  name = "faiss-flat"
  folder = "faiss"
  search_options = ()

  def __init__(self, index: Any, labels: _Labels, config: dict[str, Any]):
    super().__init__(config)
    self._index, self._labels = index, labels
    self._gpu = None

  @classmethod
  def settings(
    cls, n: int, dim: int, target_recall: float = 0.95, **overrides: Any
  ) -> dict[str, Any]:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("mode") == "exact":
      overrides.pop("mode")  # settings of its own, passed back (a build from a sample)
    if overrides:
      raise UserError(
        f"the {cls.name} backend has no settings ({sorted(overrides)}): it is "
        "exact; see --backend=faiss-hnsw or scann for tunable search"
      )
    return {"mode": "exact", "target_recall": target_recall, "trained_on": n}

  @classmethod
  def build(cls, embeddings: np.ndarray, ids: Sequence[str], config: dict[str, Any]) -> "FaissFlat":
    faiss = _faiss()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(int(embeddings.shape[1])))
    labels = _Labels()
    index.add_with_ids(np.ascontiguousarray(embeddings, np.float32), labels.assign(ids))
    return cls(index, labels, config)

  def _searched(self) -> Any:
    """The index searched: a copy on every GPU when faiss-gpu sees one, else the CPU index."""
    faiss = _faiss()
    if self._gpu is None:
      self._gpu = self._index
      if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        self._gpu = faiss.index_cpu_to_all_gpus(self._index)
        logging.info("faiss-flat: searching on %d GPU(s)", faiss.get_num_gpus())
    return self._gpu

  def search(
    self, queries: np.ndarray, k: int, **options: Any
  ) -> tuple[list[list[str]], np.ndarray]:
    base.check_options(type(self), options)
    scores, labels = self._searched().search(np.ascontiguousarray(queries, np.float32), k)
    return self._labels.to_ids(labels, scores)

  def upsert(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
    old = self._labels.drop(ids)
    if len(old):
      self._index.remove_ids(old)
    self._index.add_with_ids(np.ascontiguousarray(embeddings, np.float32), self._labels.assign(ids))
    self._gpu = None

  def delete(self, ids: Sequence[str]) -> None:
    self._index.remove_ids(self._labels.drop(ids))
    self._gpu = None

  def save(self, directory: str) -> None:
    _write(directory, self._index, self._labels)

  @classmethod
  def load(
    cls, directory: str, config: dict[str, Any], embeddings: np.ndarray, ids: Sequence[str]
  ) -> "FaissFlat":
    return cls(*_read(directory), config)


class FaissHnsw(base.IndexBackend):
  """Approximate inner-product search on an HNSW graph (`IndexHNSWFlat`)."""

  name = "faiss-hnsw"
  folder = "faiss"
  search_options = ("ef_search",)
  _SETTINGS = ("m", "ef_construction", "ef_search")

  def __init__(self, index: Any, labels: _Labels, config: dict[str, Any]):
    super().__init__(config)
    self._index, self._labels = index, labels

  @classmethod
  def settings(
    cls, n: int, dim: int, target_recall: float = 0.95, **overrides: Any
  ) -> dict[str, Any]:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("mode") == "hnsw":
      overrides.pop("mode")  # settings of its own, passed back (a build from a sample)
    unknown = sorted(set(overrides) - set(cls._SETTINGS))
    if unknown:
      raise UserError(f"unknown {cls.name} setting(s) {unknown}: valid are {list(cls._SETTINGS)}")
    # efSearch grows with the wanted recall (measured at 1M, M=32: 128 -> recall@10 >= 0.95).
    ef = 64 if target_recall <= 0.9 else 128 if target_recall <= 0.95 else 256
    config = {
      "mode": "hnsw",
      "m": HNSW_M,
      "ef_construction": HNSW_EF_CONSTRUCTION,
      "ef_search": ef,
      "target_recall": target_recall,
      "trained_on": n,
    }
    config.update({k: int(v) for k, v in overrides.items()})
    if min(config["m"], config["ef_construction"], config["ef_search"]) < 1:
      raise UserError(f"{cls.name} settings must be at least 1: {config}")
    return config

  @classmethod
  def build(cls, embeddings: np.ndarray, ids: Sequence[str], config: dict[str, Any]) -> "FaissHnsw":
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(
      int(embeddings.shape[1]), int(config["m"]), faiss.METRIC_INNER_PRODUCT
    )
    index.hnsw.efConstruction = int(config["ef_construction"])
    labels = _Labels()
    labels.assign(ids)
    index.add(np.ascontiguousarray(embeddings, np.float32))
    return cls(index, labels, config)

  def search(
    self, queries: np.ndarray, k: int, **options: Any
  ) -> tuple[list[list[str]], np.ndarray]:
    faiss = _faiss()
    options = base.check_options(type(self), options)
    ef = int(options.get("ef_search") or self.config["ef_search"])
    dead = np.array(self._labels.dead, np.int64)
    keep = [faiss.IDSelectorBatch(dead)] if len(dead) else []
    if keep:
      keep.append(faiss.IDSelectorNot(keep[0]))  # both kept alive during the search
    params = faiss.SearchParametersHNSW(efSearch=max(ef, k), sel=keep[-1] if keep else None)
    scores, labels = self._index.search(np.ascontiguousarray(queries, np.float32), k, params=params)
    return self._labels.to_ids(labels, scores)

  def upsert(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
    self._labels.drop(ids)
    self._labels.assign(ids)
    self._index.add(np.ascontiguousarray(embeddings, np.float32))

  def delete(self, ids: Sequence[str]) -> None:
    self._labels.drop(ids)

  def needs_rebuild(self, n: int, dim: int) -> str:
    dead = len(self._labels.dead)
    if dead > DEAD_FRACTION * max(1, len(self._labels.ids)):
      return f"{dead} of the graph's {len(self._labels.ids)} nodes are deleted items"
    return ""

  def save(self, directory: str) -> None:
    _write(directory, self._index, self._labels)

  @classmethod
  def load(
    cls, directory: str, config: dict[str, Any], embeddings: np.ndarray, ids: Sequence[str]
  ) -> "FaissHnsw":
    return cls(*_read(directory), config)


def _write(directory: str, index: Any, labels: _Labels) -> None:
  _faiss().write_index(index, os.path.join(directory, INDEX_FILE))
  with open(os.path.join(directory, LABELS_FILE), "w", encoding="utf-8") as f:
    json.dump(labels.ids, f)


def _read(directory: str) -> tuple[Any, _Labels]:
  index = _faiss().read_index(os.path.join(directory, INDEX_FILE))
  with open(os.path.join(directory, LABELS_FILE), encoding="utf-8") as f:
    return index, _Labels(json.load(f))


BACKENDS = {FaissFlat.name: FaissFlat, FaissHnsw.name: FaissHnsw}
