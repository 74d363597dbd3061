"""Retrieval metrics (top-k accuracy, precision@k, recall@k, MAP@R) and verification metrics
(`verification_metrics`: TAR at fixed FAR, EER, AUC of same/different-identity pairs); NumPy only.

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

import dataclasses
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

PAD = -1  # label of a missing result in `metrics_from_ranked` / `ranked_labels`


def retrieval_metrics(query_emb: np.ndarray, query_labels: Sequence, gallery_emb: np.ndarray,
                      gallery_labels: Sequence, ks: Sequence[int] = (1, 5, 10),
                      leave_one_out: bool = False, chunk_size: int = 1024) -> Dict[str, float]:
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
  query_emb, gallery_emb = _unit_rows(query_emb), _unit_rows(gallery_emb)
  query_ids, gallery_ids = _encode_labels(query_labels, gallery_labels)
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


def ranked_labels(query_emb: np.ndarray, gallery_emb: np.ndarray, gallery_labels: Sequence,
                  k: int, leave_one_out: bool = False, chunk_size: int = 1024
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
  query_emb, gallery_emb = _unit_rows(query_emb), _unit_rows(gallery_emb)
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


def metrics_from_ranked(ranked_gallery_labels: np.ndarray, query_labels: Sequence,
                        num_relevant: Sequence[int], ks: Sequence[int] = (1, 5, 10)
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


# Verification (is a pair one person?) over same/different-identity pairs of unit embeddings.
FARS = (1e-1, 1e-2, 1e-3)
MAX_POSITIVE_PAIRS, MAX_NEGATIVE_PAIRS = 1_000_000, 100_000


def far_key(far: float) -> str:
  """How a FAR is spelled in metric keys and calibration files: 0.01 -> '0.01'."""
  return f"{float(far):g}"


@dataclasses.dataclass
class Pairs:
  """Row pairs [i, j] ([P, 2] and [N, 2] int64) and how many of each kind exist."""
  positive: np.ndarray
  negative: np.ndarray
  total_positive: int
  total_negative: int


def verification_pairs(labels: Sequence, other_labels: Optional[Sequence] = None,
                       max_positives: int = MAX_POSITIVE_PAIRS,
                       max_negatives: int = MAX_NEGATIVE_PAIRS, seed: int = 0) -> Pairs:
  """Same-identity (positive) and different-identity (negative) pairs, grouped by label.

  Within one set (`other_labels` None) a pair is rows i < j of `labels`; across two sets it is
  row i of `labels` and row j of `other_labels`. All pairs of a kind are kept when there are at
  most `max_positives` / `max_negatives`, else a seeded uniform sample of that many distinct
  pairs: 10k photos make ~50M pairs, nearly all negative; 100k negatives resolve FAR 1e-5.
  """
  cross = other_labels is not None
  a, b = _encode_labels(labels, other_labels if cross else labels)
  size = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
  count_a, count_b = np.bincount(a, minlength=size), np.bincount(b, minlength=size)
  start_a, start_b = np.cumsum(count_a) - count_a, np.cumsum(count_b) - count_b
  order_a, order_b = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
  rng = np.random.default_rng(seed)
  # Pair number t of label group g decodes to rows of the label-sorted sets.
  if cross:
    g, t, total_pos = _pick(count_a * count_b, max_positives, rng)
    i, j = np.divmod(t, np.maximum(count_b[g], 1))
    positive = (order_a[start_a[g] + i], order_b[start_b[g] + j])
    width = len(b) - count_b  # rows of the second set with another label
    g, t, total_neg = _pick(count_a * width, max_negatives, rng)
    i, k = np.divmod(t, np.maximum(width[g], 1))
    negative = (order_a[start_a[g] + i], order_b[np.where(k < start_b[g], k, k + count_b[g])])
  else:
    g, t, total_pos = _pick(count_a * (count_a - 1) // 2, max_positives, rng)
    i, j = _triangle(t, count_a[g])
    positive = (order_a[start_a[g] + i], order_a[start_a[g] + j])
    width = len(a) - start_a - count_a  # rows with a later label
    g, t, total_neg = _pick(count_a * width, max_negatives, rng)
    i, k = np.divmod(t, np.maximum(width[g], 1))
    rows = (order_a[start_a[g] + i], order_a[start_a[g] + count_a[g] + k])
    negative = (np.minimum(*rows), np.maximum(*rows))
  return Pairs(np.stack(positive, axis=1).astype(np.int64),
               np.stack(negative, axis=1).astype(np.int64), total_pos, total_neg)


def verification_metrics(embeddings: np.ndarray, labels: Sequence,
                         other_embeddings: Optional[np.ndarray] = None,
                         other_labels: Optional[Sequence] = None, fars: Sequence[float] = FARS,
                         max_positives: int = MAX_POSITIVE_PAIRS,
                         max_negatives: int = MAX_NEGATIVE_PAIRS, seed: int = 0,
                         exclude: Optional[np.ndarray] = None) -> Dict[str, Any]:
  """`verification_from_scores` of the cosine similarities (dot products of the unit rows) of
  the `verification_pairs` within `embeddings`, or across it and `other_embeddings`.

  `exclude`: [E, 2] row pairs left out (e.g. a query and its own copy in the gallery). Adds
  `positive_pairs_total` / `negative_pairs_total`: the pairs that exist (`num_*` are scored).
  """
  x = _unit_rows(embeddings)
  y = x if other_embeddings is None else _unit_rows(other_embeddings)
  pairs = verification_pairs(labels, other_labels, max_positives, max_negatives, seed)
  scores = []
  for p in (pairs.positive, pairs.negative):
    if exclude is not None and len(exclude) and len(p):
      p = p[~np.isin(p[:, 0] * len(y) + p[:, 1], exclude[:, 0] * len(y) + exclude[:, 1])]
    scores.append(np.concatenate([np.zeros(0, np.float32)] + [
        np.einsum("ij,ij->i", x[p[s:s + 65536, 0]], y[p[s:s + 65536, 1]])
        for s in range(0, len(p), 65536)]))
  result = verification_from_scores(scores[0], scores[1], fars)
  result.update(positive_pairs_total=pairs.total_positive,
                negative_pairs_total=pairs.total_negative)
  return result


def verification_from_scores(positive: Sequence[float], negative: Sequence[float],
                             fars: Sequence[float] = FARS) -> Dict[str, Any]:
  """TAR at fixed FARs, EER and AUC from same-identity and different-identity pair scores.

  Threshold t accepts a pair when score >= t; the candidates are the observed scores and one
  above all of them. TAR = accepted positives / positives, FAR = accepted negatives / negatives.
  * `tar@far=F`, `threshold@far=F`: at the lowest candidate with FAR <= F (the best TAR within
    F). F < 1 / num_negative_pairs cannot be told from 0 with so few negatives: both are None
    and F is listed in `unresolved_fars`.
  * `eer`, `eer_threshold`: (FAR + FRR) / 2 at the candidate of smallest |FAR - FRR|, FRR =
    1 - TAR (the highest such threshold on ties).
  * `auc`: the ROC's area (trapezoids) = P(positive > negative) + P(tie) / 2.
  * `roc`: [far, tar, threshold] by rising FAR, every point up to 200, else the first, the last,
    and the one of the largest FAR <= each of 99 FARs log-spaced from 1 / num_negatives to 1 and
    99 linear.
  Everything is None (`roc` empty) when there are no positive or no negative pairs.
  """
  pos = np.sort(np.asarray(positive, np.float64))
  neg = np.sort(np.asarray(negative, np.float64))
  result: Dict[str, Any] = {"num_positive_pairs": len(pos), "num_negative_pairs": len(neg)}
  result.update({f"{kind}@far={far_key(f)}": None for f in fars for kind in ("tar", "threshold")})
  result.update(eer=None, eer_threshold=None, auc=None, unresolved_fars=[], roc=[],
                min_resolvable_far=1.0 / len(neg) if len(neg) else None)
  if not len(pos) or not len(neg):
    result["unresolved_fars"] = [float(f) for f in fars]
    return result
  scores = np.unique(np.concatenate([pos, neg]))[::-1]
  thresholds = np.concatenate([[np.nextafter(scores[0], np.inf)], scores])
  tar = (len(pos) - np.searchsorted(pos, thresholds, side="left")) / len(pos)
  accepted = len(neg) - np.searchsorted(neg, thresholds, side="left")
  far = accepted / len(neg)
  for f in fars:
    if f * len(neg) < 1 - 1e-9:
      result["unresolved_fars"].append(float(f))
      continue
    k = int(np.searchsorted(accepted, f * len(neg) * (1 + 1e-9), side="right")) - 1
    result[f"tar@far={far_key(f)}"] = float(tar[k])
    result[f"threshold@far={far_key(f)}"] = float(thresholds[k])
  k = int(np.argmin(np.abs(far - (1 - tar))))
  result.update(eer=float((far[k] + 1 - tar[k]) / 2), eer_threshold=float(thresholds[k]),
                auc=float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2)))
  targets = np.concatenate([np.logspace(np.log10(1 / len(neg)), 0, 99), np.linspace(0, 1, 99)])
  picks = np.unique(np.concatenate([[0, len(far) - 1], np.arange(len(far) * (len(far) <= 200)),
                                    np.searchsorted(far, targets * (1 + 1e-9), "right") - 1]))
  result["roc"] = [[float(far[i]), float(tar[i]), float(thresholds[i])] for i in picks if i >= 0]
  return result


def _pick(per_group: np.ndarray, limit: int, rng: np.random.Generator):
  """All pair numbers, or a seeded sample of `limit`: (group, number within the group, total)."""
  total = int(per_group.sum())
  t = (np.arange(total, dtype=np.int64) if total <= limit else
       np.sort(rng.choice(total, size=int(limit), replace=False)).astype(np.int64))
  ends = np.cumsum(per_group)
  group = np.searchsorted(ends, t, side="right")
  return group, t - (ends - per_group)[group], total


def _triangle(t: np.ndarray, c: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Pair number t of the pairs i < j of c items, row by row, as (i, j)."""
  c = c.astype(np.int64)
  before = lambda r: r * (2 * c - r - 1) // 2  # noqa: E731  (pairs in the rows above r)
  i = np.floor((2 * c - 1 - np.sqrt(np.maximum((2.0 * c - 1) ** 2 - 8.0 * t, 0))) / 2).astype(int)
  for _ in range(2):  # float rounding: step to the row that holds t
    i = np.where(before(i + 1) <= t, i + 1, np.where(before(i) > t, i - 1, i))
  return i, t - before(i) + i + 1


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


def _unit_rows(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, dtype=np.float32)
  if x.ndim != 2:
    raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _encode_labels(query_labels: Sequence, gallery_labels: Sequence
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """Maps labels of any type to non-negative ints shared by queries and gallery."""
  query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
  if query_labels.dtype.kind in "OUS" or gallery_labels.dtype.kind in "OUS":
    query_labels, gallery_labels = query_labels.astype(str), gallery_labels.astype(str)
  _, inverse = np.unique(np.concatenate([query_labels, gallery_labels]), return_inverse=True)
  inverse = inverse.reshape(-1).astype(np.int64)
  return inverse[:len(query_labels)], inverse[len(query_labels):]


def _num_relevant(query_ids: np.ndarray, gallery_ids: np.ndarray, leave_one_out: bool
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
