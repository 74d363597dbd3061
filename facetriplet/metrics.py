"""Retrieval metrics (top-k accuracy, precision@k, recall@k, MAP@R); NumPy only. Verification
(same person or not) is `facetriplet.verification`.

Definitions, for one query with R relevant gallery items (same label) and its ranked gallery:
  * `top{k}`: 1 when ANY of the first k results has the query's label (the competition metric).
  * `precision@k`: relevant items among the first k, divided by k.
  * `recall@k`: relevant items among the first k, divided by R.
  * `map@r`: MAP@R (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", 2020):
    (1/R) * sum over i <= R of precision@i * [result i is relevant].
Every value is averaged over the queries that have at least one relevant gallery item; the others
are counted in `queries_without_match` and excluded from all averages.

Ranking is by cosine similarity, highest first; ties are broken by the lower gallery index, so the
result never depends on the sort algorithm. Queries are processed in chunks, so memory grows with
chunk_size x gallery size, never with queries x gallery.
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence, Tuple

import numpy as np

PAD = -1  # label of a missing result in `metrics_from_ranked` / `ranked_labels`


def retrieval_metrics(
  query_emb: np.ndarray,
  query_labels: Sequence,
  gallery_emb: np.ndarray,
  gallery_labels: Sequence,
  ks: Sequence[int] = (1, 5, 10),
  leave_one_out: bool = False,
  chunk_size: int = 1024,
) -> Dict[str, float]:
  """Scores an exact cosine-similarity ranking of the gallery for every query.

  Args:
    query_emb: [Q, D] query embeddings (unit rows expected; normalised again defensively).
    query_labels: [Q] labels (ints or strings).
    gallery_emb: [G, D] gallery embeddings.
    gallery_labels: [G] labels.
    ks: cut-offs for `top{k}`, `precision@{k}` and `recall@{k}`.
    leave_one_out: the queries ARE the gallery (same rows, same order); each query's own row is
      excluded from its ranking and from its relevant count.
    chunk_size: queries ranked at a time.

  Returns:
    Dict with `top{k}`, `precision@{k}`, `recall@{k}` for each k, `map@r`, `num_queries` (queries
    scored) and `queries_without_match`.

  Raises:
    ValueError: inconsistent shapes, or `leave_one_out` with queries that differ from the gallery.
  """
  query_emb, gallery_emb = unit_rows(query_emb), unit_rows(gallery_emb)
  query_ids, gallery_ids = encode_labels(query_labels, gallery_labels)
  if query_emb.shape[0] != len(query_ids) or gallery_emb.shape[0] != len(gallery_ids):
    raise ValueError("each embedding row needs exactly one label")
  if query_emb.shape[1] != gallery_emb.shape[1]:
    raise ValueError(f"query dim {query_emb.shape[1]} != gallery dim {gallery_emb.shape[1]}")
  if leave_one_out and query_emb.shape[0] != gallery_emb.shape[0]:
    raise ValueError("leave_one_out needs the query set to be the gallery (same rows)")
  num_relevant = _num_relevant(query_ids, gallery_ids, leave_one_out)
  depth = max(max(ks), int(num_relevant.max(initial=0)))
  totals = _Totals(ks)
  for start in range(0, len(query_ids), chunk_size):
    stop = min(start + chunk_size, len(query_ids))
    exclude = np.arange(start, stop) if leave_one_out else None
    order = _top_indices(query_emb[start:stop] @ gallery_emb.T, depth, exclude)
    if len(gallery_ids):
      ranked = np.where(order >= 0, gallery_ids[np.maximum(order, 0)], PAD)
    else:
      ranked = np.full(order.shape, PAD, np.int64)
    totals.add(ranked, query_ids[start:stop], num_relevant[start:stop])
  return totals.result()


def ranked_labels(
  query_emb: np.ndarray,
  gallery_emb: np.ndarray,
  gallery_labels: Sequence,
  k: int,
  leave_one_out: bool = False,
  chunk_size: int = 1024,
) -> Tuple[np.ndarray, np.ndarray]:
  """Exact top-k by cosine similarity (ties: lower gallery index first).

  Args:
    query_emb: [Q, D] query embeddings.
    gallery_emb: [G, D] gallery embeddings.
    gallery_labels: [G] labels.
    k: results per query; when the gallery has fewer, rows are padded with index -1.
    leave_one_out: exclude row i of the gallery from query i's results.
    chunk_size: queries ranked at a time.

  Returns:
    (indices [Q, k] int64 with -1 padding, labels [Q, k] with `PAD` (-1) where padded; labels
    keep the dtype of `gallery_labels`, so string labels are padded with '-1').
  """
  query_emb, gallery_emb = unit_rows(query_emb), unit_rows(gallery_emb)
  labels = np.asarray(gallery_labels)
  chunks = []
  for start in range(0, query_emb.shape[0], chunk_size):
    stop = min(start + chunk_size, query_emb.shape[0])
    exclude = np.arange(start, stop) if leave_one_out else None
    chunks.append(_top_indices(query_emb[start:stop] @ gallery_emb.T, k, exclude))
  indices = np.concatenate(chunks) if chunks else np.zeros((0, k), np.int64)
  if labels.size:
    gathered = labels[np.maximum(indices, 0)]
  else:
    gathered = np.zeros(indices.shape, labels.dtype if labels.dtype != object else np.int64)
  padded = np.where(indices >= 0, gathered, np.asarray(PAD).astype(gathered.dtype))
  return indices, padded


def metrics_from_ranked(
  ranked_gallery_labels: np.ndarray,
  query_labels: Sequence,
  num_relevant: Sequence[int],
  ks: Sequence[int] = (1, 5, 10),
) -> Dict[str, float]:
  """The same metrics from precomputed rankings (e.g. ScaNN results).

  Columns beyond the available results count as not relevant: with fewer than k columns,
  `top{k}`/`recall@{k}` use what is there and `precision@{k}` still divides by k. MAP@R needs
  the first R results of each query; when a query has R larger than the number of columns,
  its MAP@R is computed from the available ranks (a lower bound) and the query is counted in
  `map@r_truncated_queries`. Search with k >= the largest R for an exact MAP@R.

  Args:
    ranked_gallery_labels: [Q, K] labels of each query's results, best first; `PAD` (-1) marks
      a missing result (so -1 must not be a real label).
    query_labels: [Q] labels.
    num_relevant: [Q] number of gallery items with the query's label (R).
    ks: cut-offs.

  Returns:
    Dict as `retrieval_metrics`, plus `map@r_truncated_queries`.
  """
  ranked = np.asarray(ranked_gallery_labels)
  if ranked.ndim != 2:
    raise ValueError(f"ranked_gallery_labels must be [Q, K], got shape {ranked.shape}")
  query_labels = np.asarray(query_labels)
  num_relevant = np.asarray(num_relevant, dtype=np.int64)
  if not len(query_labels) == len(num_relevant) == ranked.shape[0]:
    raise ValueError("ranked_gallery_labels, query_labels and num_relevant need the same Q")
  totals = _Totals(ks)
  totals.add(ranked, query_labels, num_relevant)
  result = totals.result()
  result["map@r_truncated_queries"] = int(np.sum(num_relevant > ranked.shape[1]))
  return result


class _Totals:
  """Sums of per-query metrics over chunks of ranked results."""

  def __init__(self, ks: Iterable[int]):
    self.ks = sorted({int(k) for k in ks})
    if not self.ks or self.ks[0] < 1:
      raise ValueError(f"ks must be positive integers, got {list(ks)}")
    self.sums: Dict[str, float] = {}
    self.count = 0
    self.without_match = 0

  def add(self, ranked: np.ndarray, query_labels: np.ndarray, num_relevant: np.ndarray) -> None:
    keep = num_relevant > 0
    self.without_match += int(np.sum(~keep))
    ranked, query_labels, r = ranked[keep], query_labels[keep], num_relevant[keep]
    if not len(r):
      return
    self.count += len(r)
    hits = (ranked == query_labels[:, None]) & (ranked != np.asarray(PAD).astype(ranked.dtype))
    cum = np.cumsum(hits, axis=1)
    width = hits.shape[1]
    for k in self.ks:
      found = cum[:, min(k, width) - 1] if width else np.zeros(len(r))
      self._add(f"top{k}", np.sum(found > 0))
      self._add(f"precision@{k}", np.sum(found / k))
      self._add(f"recall@{k}", np.sum(found / r))
    ranks = np.arange(1, width + 1)
    within_r = ranks[None, :] <= r[:, None]
    precision_at_i = cum / ranks[None, :]
    self._add("map@r", np.sum(np.sum(precision_at_i * hits * within_r, axis=1) / r))

  def _add(self, key: str, value: float) -> None:
    self.sums[key] = self.sums.get(key, 0.0) + float(value)

  def result(self) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for k in self.ks:
      for name in (f"top{k}", f"precision@{k}", f"recall@{k}"):
        out[name] = self.sums.get(name, 0.0) / self.count if self.count else 0.0
    out["map@r"] = self.sums.get("map@r", 0.0) / self.count if self.count else 0.0
    out["num_queries"] = self.count
    out["queries_without_match"] = self.without_match
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, dtype=np.float32)
  if x.ndim != 2:
    raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def encode_labels(
  query_labels: Sequence, gallery_labels: Sequence
) -> Tuple[np.ndarray, np.ndarray]:
  """Maps labels of any type to non-negative ints shared by queries and gallery."""
  query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
  if query_labels.dtype.kind in "OUS" or gallery_labels.dtype.kind in "OUS":
    query_labels, gallery_labels = query_labels.astype(str), gallery_labels.astype(str)
  _, inverse = np.unique(np.concatenate([query_labels, gallery_labels]), return_inverse=True)
  inverse = inverse.reshape(-1).astype(np.int64)
  return inverse[: len(query_labels)], inverse[len(query_labels) :]


def _num_relevant(
  query_ids: np.ndarray, gallery_ids: np.ndarray, leave_one_out: bool
) -> np.ndarray:
  size = int(max(query_ids.max(initial=-1), gallery_ids.max(initial=-1))) + 1
  counts = np.bincount(gallery_ids, minlength=size)
  relevant = counts[query_ids] if len(query_ids) else np.zeros(0, np.int64)
  return relevant - 1 if leave_one_out else relevant


def _top_indices(similarity: np.ndarray, k: int, exclude: np.ndarray = None) -> np.ndarray:
  """Indices of the k most similar columns per row (ties: lower index first), -1 padded."""
  similarity = np.array(similarity, dtype=np.float32)
  rows, cols = similarity.shape
  if exclude is not None:
    similarity[np.arange(rows), exclude] = -np.inf
  available = cols - (1 if exclude is not None else 0)
  take = min(k, max(available, 0))
  out = np.full((rows, k), -1, dtype=np.int64)
  if take == 0:
    return out
  for i in range(rows):
    row = similarity[i]
    if take < cols:
      part = np.argpartition(-row, take - 1)[:take]
      candidates = np.flatnonzero(row >= row[part].min())  # keeps every tie at the boundary
    else:
      candidates = np.arange(cols)
    order = candidates[np.lexsort((candidates, -row[candidates]))]
    out[i, :take] = order[:take]
  return out
