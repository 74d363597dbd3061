"""Verification metrics: is a pair of faces one person, by cosine similarity >= threshold? Over
same/different-identity pairs of unit embeddings: TAR at fixed FARs, the threshold of each, EER and
its threshold, AUC and a ROC (`verification_metrics`, `verification_from_scores`); the pairs are
chosen by `verification_pairs` (every same-identity pair up to MAX_POSITIVE_PAIRS, a seeded sample
of different-identity pairs up to MAX_NEGATIVE_PAIRS). NumPy only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from facetriplet import metrics

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


def verification_pairs(
  labels: Sequence,
  other_labels: Optional[Sequence] = None,
  max_positives: int = MAX_POSITIVE_PAIRS,
  max_negatives: int = MAX_NEGATIVE_PAIRS,
  seed: int = 0,
) -> Pairs:
  """Same-identity (positive) and different-identity (negative) pairs, grouped by label.

  Within one set (`other_labels` None) a pair is rows i < j of `labels`; across two sets it is
  row i of `labels` and row j of `other_labels`. All pairs of a kind are kept when there are at
  most `max_positives` / `max_negatives`, else a seeded uniform sample of that many distinct
  pairs: 10k photos make ~50M pairs, nearly all negative; 100k negatives resolve FAR 1e-5.
  """
  cross = other_labels is not None
  a, b = metrics.encode_labels(labels, other_labels if cross else labels)
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
  return Pairs(
    np.stack(positive, axis=1).astype(np.int64),
    np.stack(negative, axis=1).astype(np.int64),
    total_pos,
    total_neg,
  )


def verification_metrics(
  embeddings: np.ndarray,
  labels: Sequence,
  other_embeddings: Optional[np.ndarray] = None,
  other_labels: Optional[Sequence] = None,
  fars: Sequence[float] = FARS,
  max_positives: int = MAX_POSITIVE_PAIRS,
  max_negatives: int = MAX_NEGATIVE_PAIRS,
  seed: int = 0,
  exclude: Optional[np.ndarray] = None,
) -> Dict[str, Any]:
  """`verification_from_scores` of the cosine similarities (dot products of the unit rows) of
  the `verification_pairs` within `embeddings`, or across it and `other_embeddings`.

  `exclude`: [E, 2] row pairs left out (e.g. a query and its own copy in the gallery). Adds
  `positive_pairs_total` / `negative_pairs_total`: the pairs that exist (`num_*` are scored).
  """
  x = metrics.unit_rows(embeddings)
  y = x if other_embeddings is None else metrics.unit_rows(other_embeddings)
  pairs = verification_pairs(labels, other_labels, max_positives, max_negatives, seed)
  scores = []
  for p in (pairs.positive, pairs.negative):
    if exclude is not None and len(exclude) and len(p):
      p = p[~np.isin(p[:, 0] * len(y) + p[:, 1], exclude[:, 0] * len(y) + exclude[:, 1])]
    scores.append(
      np.concatenate(
        [np.zeros(0, np.float32)]
        + [
          np.einsum("ij,ij->i", x[p[s : s + 65536, 0]], y[p[s : s + 65536, 1]])
          for s in range(0, len(p), 65536)
        ]
      )
    )
  result = verification_from_scores(scores[0], scores[1], fars)
  result.update(
    positive_pairs_total=pairs.total_positive, negative_pairs_total=pairs.total_negative
  )
  return result


def verification_from_scores(
  positive: Sequence[float], negative: Sequence[float], fars: Sequence[float] = FARS
) -> Dict[str, Any]:
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
  result.update(
    eer=None,
    eer_threshold=None,
    auc=None,
    unresolved_fars=[],
    roc=[],
    min_resolvable_far=1.0 / len(neg) if len(neg) else None,
  )
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
  result.update(
    eer=float((far[k] + 1 - tar[k]) / 2),
    eer_threshold=float(thresholds[k]),
    auc=float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2)),
  )
  targets = np.concatenate([np.logspace(np.log10(1 / len(neg)), 0, 99), np.linspace(0, 1, 99)])
  picks = np.unique(
    np.concatenate(
      [
        [0, len(far) - 1],
        np.arange(len(far) * (len(far) <= 200)),
        np.searchsorted(far, targets * (1 + 1e-9), "right") - 1,
      ]
    )
  )
  result["roc"] = [[float(far[i]), float(tar[i]), float(thresholds[i])] for i in picks if i >= 0]
  return result


def _pick(per_group: np.ndarray, limit: int, rng: np.random.Generator):
  """All pair numbers, or a seeded sample of `limit`: (group, number within the group, total)."""
  total = int(per_group.sum())
  t = (
    np.arange(total, dtype=np.int64)
    if total <= limit
    else np.sort(rng.choice(total, size=int(limit), replace=False)).astype(np.int64)
  )
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
