"""Who is in these photos: faces grouped by person without labels.

`cluster(embeddings, threshold)` links every face to its k nearest neighbours that score at least
`threshold` (a k-nearest-neighbour graph from the search index, ScaNN by default, so it scales
past what a full similarity matrix allows: 1M faces hold 10^12 pairs, the graph 32M edges), then
runs Chinese whispers on that graph (Biemann 2006, as dlib's `chinese_whispers_clustering`): every
face takes the label carrying the most edge weight among its neighbours, until labels settle.

Chinese whispers updates one node at a time in random order. Here a random half of the nodes
update at once per round (vectorised with NumPy over the edge list), which keeps the random-order
property that stops two labels from swapping back and forth, at NumPy speed: a round over 1M
faces and 32M edges takes seconds, not the minutes of a Python loop over nodes.

`pairwise_scores` and `bcubed_scores` measure a clustering against known identities.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import numpy as np
from absl import logging

from facetriplet.errors import UserError
from facetriplet.search.index import GalleryIndex
from facetriplet.search.items import Item

DEFAULT_K = 16


@dataclasses.dataclass
class Clustering:
  labels: np.ndarray  # int [N]: cluster of each face, clusters numbered by size (0 = largest)
  edges: int  # edges of the graph at or above the threshold
  rounds: int
  seconds: dict[str, float]  # "graph", "whispers"

  @property
  def sizes(self) -> np.ndarray:
    return np.bincount(self.labels)


def knn_graph(
  embeddings: np.ndarray, k: int, threshold: float, backend: str = "scann", batch: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(sources, targets, weights) of the edges from each face to its k nearest neighbours (self
  excluded) that score at least `threshold`, found with the search index `backend`."""
  n = len(embeddings)
  if n < 2:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
  items = [Item(id=str(i)) for i in range(n)]
  index = GalleryIndex.build(np.asarray(embeddings, np.float32), items, "cluster", backend)
  depth = min(n, k + 1)
  sources, targets, weights = [], [], []
  for start in range(0, n, batch):
    rows, scores = index.search(np.asarray(embeddings[start : start + batch], np.float32), depth)
    rows, scores = np.asarray(rows, np.int64), np.asarray(scores, np.float32)
    own = np.arange(start, start + len(rows))[:, None]
    keep = (rows >= 0) & (rows != own) & (scores >= threshold)
    sources.append(np.broadcast_to(own, rows.shape)[keep])
    targets.append(rows[keep])
    weights.append(scores[keep])
  return np.concatenate(sources), np.concatenate(targets), np.concatenate(weights)


def chinese_whispers(
  n: int,
  sources: np.ndarray,
  targets: np.ndarray,
  weights: np.ndarray,
  max_rounds: int = 50,
  seed: int = 0,
) -> tuple[np.ndarray, int]:
  """(labels int [n], rounds run) of Chinese whispers over an undirected weighted graph given as
  directed edges (both directions are used). Stops when a round changes no label."""
  src = np.concatenate([sources, targets]).astype(np.int64)
  dst = np.concatenate([targets, sources]).astype(np.int64)
  w = np.concatenate([weights, weights]).astype(np.float64)
  order = np.argsort(src, kind="stable")
  src, dst, w = src[order], dst[order], w[order]
  labels = np.arange(n, dtype=np.int64)
  rng = np.random.default_rng(seed)
  rounds = 0
  while rounds < max_rounds and len(src):
    rounds += 1
    # Weight of each (node, neighbour's label) pair; the heaviest label of each node wins (ties:
    # the smaller label, so the outcome depends only on the seed).
    key = src * n + labels[dst]
    uniq, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=w)
    node, label = uniq // n, uniq % n
    best = np.lexsort((label, -total, node))
    first = np.ones(len(best), bool)
    first[1:] = node[best][1:] != node[best][:-1]
    winners = best[first]
    proposal = labels.copy()
    proposal[node[winners]] = label[winners]
    wanting = proposal != labels
    if not wanting.any():
      break  # settled: no node wants another label
    moving = rng.random(n) < 0.5  # a random half moves: the random order of Chinese whispers
    labels[moving & wanting] = proposal[moving & wanting]
  return labels, rounds


def cluster(
  embeddings: np.ndarray,
  threshold: float,
  k: int = DEFAULT_K,
  backend: str = "scann",
  seed: int = 0,
) -> Clustering:
  """Faces (unit embeddings [N, D]) grouped by person: the kNN graph at `threshold`, then
  Chinese whispers. Clusters are numbered by size, largest first (ties by first face).

  Raises:
    UserError: k < 1 or a threshold outside -1..1.
  """
  if k < 1 or not -1.0 <= threshold <= 1.0:
    raise UserError(f"k={k} must be at least 1 and threshold={threshold} within -1..1")
  n = len(embeddings)
  start = time.perf_counter()
  sources, targets, weights = knn_graph(embeddings, k, threshold, backend)
  graph_s = time.perf_counter() - start
  labels, rounds = chinese_whispers(n, sources, targets, weights, seed=seed)
  whispers_s = time.perf_counter() - start - graph_s
  logging.info(
    "clustered %d faces: %d edges, %d rounds, graph %.1f s, whispers %.1f s",
    n,
    len(sources),
    rounds,
    graph_s,
    whispers_s,
  )
  return Clustering(
    renumber(labels), len(sources), rounds, {"graph": graph_s, "whispers": whispers_s}
  )


def renumber(labels: np.ndarray) -> np.ndarray:
  """Labels 0..C-1 by cluster size, largest first (ties: the cluster met first)."""
  labels = np.asarray(labels)
  if not len(labels):
    return labels.astype(np.int64)
  uniq, first, inverse, counts = np.unique(
    labels, return_index=True, return_inverse=True, return_counts=True
  )
  rank = np.lexsort((first, -counts))
  new = np.empty(len(uniq), np.int64)
  new[rank] = np.arange(len(uniq))
  return new[inverse.reshape(-1)]


def _pair_counts(labels: np.ndarray, truth: Sequence) -> tuple[float, float, float]:
  """(pairs together in both, pairs together in `labels`, pairs together in `truth`)."""
  _, t = np.unique(np.asarray(truth), return_inverse=True)
  labels = np.asarray(labels, np.int64)
  if len(labels) != len(t) or not len(t):
    raise ValueError(f"{len(labels)} labels for {len(t)} known identities")
  joint = np.unique(labels * (t.max() + 1) + t, return_counts=True)[1].astype(np.float64)
  pred = np.bincount(labels).astype(np.float64)
  true = np.bincount(t).astype(np.float64)
  pairs = lambda c: float((c * (c - 1) / 2).sum())  # noqa: E731
  return pairs(joint), pairs(pred), pairs(true)


def pairwise_scores(labels: np.ndarray, truth: Sequence) -> dict[str, float]:
  """Pairwise precision, recall and F1: over all pairs of faces, 'same cluster' vs 'same person'."""
  both, pred, true = _pair_counts(labels, truth)
  precision = both / pred if pred else 1.0
  recall = both / true if true else 1.0
  f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f": f}


def bcubed_scores(labels: np.ndarray, truth: Sequence) -> dict[str, float]:
  """BCubed precision, recall and F1 (Bagga & Baldwin): per face, the share of its cluster that
  is its person, and of its person that is in its cluster, averaged over faces."""
  _, t = np.unique(np.asarray(truth), return_inverse=True)
  labels = np.asarray(labels, np.int64)
  if len(labels) != len(t) or not len(t):
    raise ValueError(f"{len(labels)} labels for {len(t)} known identities")
  _, joint_id, joint = np.unique(
    labels * (t.max() + 1) + t, return_inverse=True, return_counts=True
  )
  together = joint[joint_id.reshape(-1)].astype(np.float64)
  precision = float(np.mean(together / np.bincount(labels)[labels]))
  recall = float(np.mean(together / np.bincount(t)[t]))
  f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f": f}


def threshold_for(searcher_or_extractor, far: float, given: Optional[float]) -> float:
  """The edge threshold: `given`, else the model's calibrated threshold at `far`.

  Raises:
    UserError: neither (the export carries no calibration).
  """
  if given is not None:
    return float(given)
  get = getattr(searcher_or_extractor, "threshold", None)
  found = get(far) if callable(get) else None
  if found is None:
    raise UserError(
      "this model carries no calibrated threshold: pass --threshold (a cosine similarity; "
      "facetriplet-evaluate's threshold_at_far on labelled photos of your own is one)"
    )
  return float(found)
