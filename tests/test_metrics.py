"""Tests for facetriplet.metrics on hand-worked rankings and against a brute-force reference."""

import numpy as np
import pytest

from facetriplet import metrics, verification


def at_angles(degrees):
  radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
  return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


# Gallery: items 0..4 at 0, 10, 20, 30, 40 degrees with labels A B A C B (0 1 0 2 1).
GALLERY = at_angles([0, 10, 20, 30, 40])
GALLERY_LABELS = np.array([0, 1, 0, 2, 1])


def test_hand_worked_example():
  """Queries (angle, label): q0 (0, A), q1 (40, B), q2 (22, C), q3 (0, D: no match).

  Rankings by angular distance, with labels and hits:
    q0: 0 1 2 3 4 -> A B A C B -> hits 1 0 1 0 0, R = 2
    q1: 4 3 2 1 0 -> B C A B A -> hits 1 0 0 1 0, R = 2
    q2: 2 3 1 4 0 -> A C B B A -> hits 0 1 0 0 0, R = 1
    q3: excluded (no D in the gallery), counted in queries_without_match.
  top1 = (1 + 1 + 0)/3 = 2/3; top2 = 1; top5 = 1.
  precision@1 = 2/3; precision@2 = (1/2 + 1/2 + 1/2)/3 = 1/2; precision@5 = (2/5+2/5+1/5)/3 = 1/3.
  recall@1 = (1/2 + 1/2 + 0)/3 = 1/3; recall@2 = (1/2 + 1/2 + 1)/3 = 2/3; recall@5 = 1.
  MAP@R: q0 ranks 1..2 hits at 1 -> (1/1)/2 = 1/2; q1 likewise 1/2; q2 rank 1 is a miss -> 0;
  mean 1/3.
  """
  queries = at_angles([0, 40, 22, 0])
  labels = np.array([0, 1, 2, 3])
  got = metrics.retrieval_metrics(queries, labels, GALLERY, GALLERY_LABELS, ks=(1, 2, 5))
  want = {
    "top1": 2 / 3,
    "top2": 1.0,
    "top5": 1.0,
    "precision@1": 2 / 3,
    "precision@2": 1 / 2,
    "precision@5": 1 / 3,
    "recall@1": 1 / 3,
    "recall@2": 2 / 3,
    "recall@5": 1.0,
    "map@r": 1 / 3,
  }
  for key, value in want.items():
    assert got[key] == pytest.approx(value), key
  assert got["num_queries"] == 3 and got["queries_without_match"] == 1


def test_default_keys_and_string_labels():
  queries = at_angles([0, 40])
  got = metrics.retrieval_metrics(
    queries, ["ann", "bob"], GALLERY, ["ann", "bob", "ann", "cy", "bob"]
  )
  for key in ("top1", "top5", "top10", "precision@10", "recall@5", "map@r", "num_queries"):
    assert key in got
  assert got["top1"] == 1.0 and got["recall@10"] == 1.0


def test_map_at_r_hand_worked():
  """R = 3, hits at ranks 1, 3 and 4: only ranks 1..3 count -> (1/1 + 2/3) / 3 = 5/9.
  A second query with R = 2 and hits at ranks 2, 3 -> (1/2) / 2 = 1/4. Mean = (5/9 + 1/4) / 2.
  Its first 3 results hold 2 of 3 relevant items: recall@3 = 2/3 and 1 (second: 2 of 2)."""
  ranked = np.array([[5, 7, 5, 5, 8], [7, 9, 9, -1, -1]])
  got = metrics.metrics_from_ranked(ranked, [5, 9], [3, 2], ks=(1, 3))
  assert got["map@r"] == pytest.approx((5 / 9 + 1 / 4) / 2)
  assert got["top1"] == pytest.approx(0.5)
  assert got["recall@3"] == pytest.approx((2 / 3 + 1) / 2)
  assert got["precision@3"] == pytest.approx((2 / 3 + 2 / 3) / 2)
  assert got["map@r_truncated_queries"] == 0


def test_padding_is_never_relevant_and_truncation_is_reported():
  """A query labelled -1 must not match padding; R = 4 with only 2 columns is truncated:
  hits at ranks 1 and 2 give (1 + 1)/4 = 1/2 (a lower bound of the true MAP@R)."""
  ranked = np.array([[-1, -1], [3, 3]])
  got = metrics.metrics_from_ranked(ranked, [-1, 3], [1, 4], ks=(1,))
  assert got["top1"] == pytest.approx(0.5)
  assert got["map@r"] == pytest.approx((0 + 0.5) / 2)
  assert got["map@r_truncated_queries"] == 1


def test_leave_one_out():
  """Points at 0, 10, 50, 60, 100 degrees, labels 0 0 1 1 2. Without itself, each of the first
  four finds its partner first: top1 = 1, MAP@R = 1; the singleton (label 2) has no match.
  Without leave-one-out every query finds itself first and the singleton counts too."""
  x = at_angles([0, 10, 50, 60, 100])
  labels = np.array([0, 0, 1, 1, 2])
  got = metrics.retrieval_metrics(x, labels, x, labels, ks=(1, 2), leave_one_out=True)
  assert got["top1"] == 1.0 and got["map@r"] == 1.0 and got["recall@1"] == 1.0
  assert got["num_queries"] == 4 and got["queries_without_match"] == 1
  assert got["precision@2"] == pytest.approx(0.5)
  plain = metrics.retrieval_metrics(x, labels, x, labels, ks=(1,))
  assert plain["num_queries"] == 5 and plain["top1"] == 1.0
  with pytest.raises(ValueError):
    metrics.retrieval_metrics(x[:3], labels[:3], x, labels, leave_one_out=True)


def test_ties_broken_by_lower_gallery_index():
  """Gallery rows 0..3 are identical; the query ties with all of them. Order must be 0, 1, 2, 3
  whatever the sort does, so with labels 9 9 9 4 and query label 4, top3 = 0 and top4 = 1."""
  gallery = np.tile(at_angles([30]), (4, 1))
  indices, labels = metrics.ranked_labels(at_angles([30]), gallery, [9, 9, 9, 4], k=4)
  assert indices.tolist() == [[0, 1, 2, 3]] and labels.tolist() == [[9, 9, 9, 4]]
  got = metrics.retrieval_metrics(at_angles([30]), [4], gallery, [9, 9, 9, 4], ks=(3, 4))
  assert got["top3"] == 0.0 and got["top4"] == 1.0
  # Asking for more results than the gallery holds pads with -1.
  indices, labels = metrics.ranked_labels(at_angles([30]), gallery[:2], [9, 4], k=3)
  assert indices.tolist() == [[0, 1, -1]] and labels.tolist() == [[9, 4, -1]]


def brute_force(q, ql, g, gl, ks, leave_one_out):
  """Full stable argsort per query and explicit loops over ranks."""
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  g = g / np.linalg.norm(g, axis=1, keepdims=True)
  sums, count = {}, 0
  for i in range(len(q)):
    sim = (g @ q[i]).astype(np.float32)
    order = [j for j in np.argsort(-sim, kind="stable") if not (leave_one_out and j == i)]
    hits = [gl[j] == ql[i] for j in order]
    r = sum(hits)
    if r == 0:
      continue
    count += 1
    row = {}
    for k in ks:
      row[f"top{k}"] = float(any(hits[:k]))
      row[f"precision@{k}"] = sum(hits[:k]) / k
      row[f"recall@{k}"] = sum(hits[:k]) / r
    ap = 0.0
    for rank in range(1, r + 1):
      if hits[rank - 1]:
        ap += sum(hits[:rank]) / rank
    row["map@r"] = ap / r
    for key, value in row.items():
      sums[key] = sums.get(key, 0.0) + value
  return {key: value / count for key, value in sums.items()}


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_agrees_with_brute_force_and_ranked_path(leave_one_out):
  rng = np.random.default_rng(0)
  g = rng.normal(size=(60, 6)).astype(np.float32)
  gl = rng.integers(0, 6, size=60)
  q, ql = (
    (g, gl)
    if leave_one_out
    else (rng.normal(size=(40, 6)).astype(np.float32), rng.integers(0, 7, size=40))
  )
  ks = (1, 5, 10)
  got = metrics.retrieval_metrics(q, ql, g, gl, ks=ks, leave_one_out=leave_one_out, chunk_size=7)
  want = brute_force(q, ql, g, gl, ks, leave_one_out)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key

  _, ranked = metrics.ranked_labels(q, g, gl, k=len(g), leave_one_out=leave_one_out)
  counts = np.array([np.sum(gl == label) for label in ql]) - (1 if leave_one_out else 0)
  from_ranked = metrics.metrics_from_ranked(ranked, ql, counts, ks=ks)
  for key, value in got.items():
    assert from_ranked[key] == pytest.approx(value, abs=1e-12), key


def test_verification_hand_worked():
  """Four faces at 0, 70, 90, 135 degrees, identities A A B B.

  Positive pairs: (0,1) cos70 = .342, (2,3) cos45 = .707. Negatives: (0,2) cos90 = 0,
  (0,3) cos135 = -.707, (1,2) cos20 = .940, (1,3) cos65 = .423.
  Thresholds high to low -> (TAR, FAR): above all (0, 0), .940 (0, .25), .707 (.5, .25),
  .423 (.5, .5), .342 (1, .5), 0 (1, .75), -.707 (1, 1).
  FAR <= .25: lowest threshold .707, TAR .5; FAR <= .5: threshold .342, TAR 1; FAR .1 is below
  1/4 negatives: unresolved. |FAR - FRR| is 0 at .423: EER = (.5 + .5)/2 = .5.
  AUC = P(pos > neg) = (3 + 2) / 8 = .625.
  """
  x = at_angles([0, 70, 90, 135])
  labels = ["A", "A", "B", "B"]
  pairs = verification.verification_pairs(labels)
  assert sorted(map(tuple, pairs.positive.tolist())) == [(0, 1), (2, 3)]
  assert sorted(map(tuple, pairs.negative.tolist())) == [(0, 2), (0, 3), (1, 2), (1, 3)]
  got = verification.verification_metrics(x, labels, fars=(0.1, 0.25, 0.5))
  cos = lambda d: np.cos(np.deg2rad(d))  # noqa: E731
  assert got["num_positive_pairs"] == 2 and got["num_negative_pairs"] == 4
  assert got["tar@far=0.25"] == pytest.approx(0.5)
  assert got["threshold@far=0.25"] == pytest.approx(cos(45), abs=1e-6)
  assert got["tar@far=0.5"] == pytest.approx(1.0)
  assert got["threshold@far=0.5"] == pytest.approx(cos(70), abs=1e-6)
  assert got["tar@far=0.1"] is None and got["threshold@far=0.1"] is None
  assert got["unresolved_fars"] == [0.1] and got["min_resolvable_far"] == 0.25
  assert got["eer"] == pytest.approx(0.5)
  assert got["eer_threshold"] == pytest.approx(cos(65), abs=1e-6)
  assert got["auc"] == pytest.approx(0.625)
  roc = np.array(got["roc"])
  np.testing.assert_allclose(
    roc[:, :2], [[0, 0], [0.25, 0], [0.25, 0.5], [0.5, 0.5], [0.5, 1], [0.75, 1], [1, 1]]
  )


def test_verification_from_scores_with_ties_and_no_pairs():
  """Positives .9 .6 and negatives .7 .6 .2 (a tie at .6): at threshold .6 both the positive and
  the negative are accepted, so FAR <= 1/3 stops at .7 (TAR .5); FAR <= 2/3 reaches .6 (TAR 1)."""
  got = verification.verification_from_scores([0.9, 0.6], [0.7, 0.6, 0.2], fars=(1 / 3, 2 / 3))
  assert got["tar@far=0.333333"] == 0.5 and got["threshold@far=0.333333"] == 0.7
  assert got["tar@far=0.666667"] == 1.0 and got["threshold@far=0.666667"] == 0.6
  assert got["auc"] == pytest.approx((3 + 0.5 + 1) / 6)  # .9 beats 3; .6 ties one, beats one
  empty = verification.verification_from_scores([0.5], [])
  assert empty["tar@far=0.01"] is None and empty["eer"] is None and empty["roc"] == []


def reference_verification(pos, neg, fars):
  """A plain loop over every distinct threshold (accept when score >= t), counting by hand."""
  pos, neg = [float(s) for s in pos], [float(s) for s in neg]
  points = [(0.0, 0.0, float("inf"))]
  for t in sorted(set(pos + neg), reverse=True):
    tar = sum(s >= t for s in pos) / len(pos)
    far = sum(s >= t for s in neg) / len(neg)
    points.append((far, tar, t))
  out = {}
  for f in fars:
    if f < 1 / len(neg):
      out[f] = None
      continue
    ok = [p for p in points if p[0] <= f + 1e-12]
    out[f] = (max(p[1] for p in ok), min(p[2] for p in ok))
  best = min(points, key=lambda p: (abs(p[0] - (1 - p[1])), -p[2]))
  wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
  return out, (best[0] + 1 - best[1]) / 2, best[2], wins / (len(pos) * len(neg)), points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verification_agrees_with_a_threshold_loop(seed):
  rng = np.random.default_rng(seed)
  pos = np.round(rng.normal(0.5, 0.25, size=150), 2)  # rounded: ties within and across kinds
  neg = np.round(rng.normal(0.0, 0.25, size=700), 2)
  fars = (0.1, 0.01, 0.001)
  got = verification.verification_from_scores(pos, neg, fars)
  want, eer, eer_threshold, auc, points = reference_verification(pos, neg, fars)
  for f in fars:
    key = verification.far_key(f)
    if want[f] is None:
      assert got[f"tar@far={key}"] is None and f in got["unresolved_fars"]
    else:
      assert got[f"tar@far={key}"] == pytest.approx(want[f][0], abs=1e-12)
      assert got[f"threshold@far={key}"] == pytest.approx(want[f][1], abs=1e-12)
  assert got["eer"] == pytest.approx(eer, abs=1e-12)
  assert got["eer_threshold"] == pytest.approx(eer_threshold, abs=1e-12)
  assert got["auc"] == pytest.approx(auc, abs=1e-12)
  full = {(round(p[0], 12), round(p[1], 12)) for p in points}
  roc = got["roc"]
  assert 2 < len(roc) <= 200 and roc[0][:2] == [0.0, 0.0] and roc[-1][:2] == [1.0, 1.0]
  assert all((round(f, 12), round(t, 12)) in full for f, t, _ in roc)
  assert [p[0] for p in roc] == sorted(p[0] for p in roc)


def brute_force_pairs(labels, other=None):
  if other is None:
    n = len(labels)
    all_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    other = labels
  else:
    all_pairs = [(i, j) for i in range(len(labels)) for j in range(len(other))]
  pos = {p for p in all_pairs if labels[p[0]] == other[p[1]]}
  return pos, set(all_pairs) - pos


@pytest.mark.parametrize("cross", [False, True])
def test_verification_pairs_agree_with_brute_force(cross):
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 7, size=45)
  other = rng.integers(2, 9, size=30) if cross else None
  pos, neg = brute_force_pairs(list(labels), None if other is None else list(other))
  pairs = verification.verification_pairs(labels, other)
  assert set(map(tuple, pairs.positive.tolist())) == pos and len(pairs.positive) == len(pos)
  assert set(map(tuple, pairs.negative.tolist())) == neg and len(pairs.negative) == len(neg)
  assert (pairs.total_positive, pairs.total_negative) == (len(pos), len(neg))
  # Capped: a seeded sample of distinct pairs of the right kind, the same for the same seed.
  sampled = verification.verification_pairs(
    labels, other, max_positives=20, max_negatives=50, seed=3
  )
  for got, want, cap in ((sampled.positive, pos, 20), (sampled.negative, neg, 50)):
    as_set = set(map(tuple, got.tolist()))
    assert len(got) == cap == len(as_set) and as_set <= want
  again = verification.verification_pairs(labels, other, max_positives=20, max_negatives=50, seed=3)
  np.testing.assert_array_equal(again.negative, sampled.negative)
  other_seed = verification.verification_pairs(labels, other, max_negatives=50, seed=4)
  assert not np.array_equal(other_seed.negative, sampled.negative)


def test_verification_pairs_sample_large_sets_quickly():
  """One identity of 3,000 photos (4.5M positive pairs, decoded from pair numbers) and 10k photos
  overall: capped samples, every pair valid and distinct."""
  import time  # pylint: disable=g-import-not-at-top

  labels = np.concatenate([np.zeros(3000, np.int64), np.arange(1, 7001) // 5 + 1])
  np.random.default_rng(0).shuffle(labels)
  start = time.time()
  pairs = verification.verification_pairs(labels)
  assert time.time() - start < 5
  assert len(pairs.positive) == verification.MAX_POSITIVE_PAIRS
  assert len(pairs.negative) == verification.MAX_NEGATIVE_PAIRS
  counts = np.bincount(labels)
  assert pairs.total_positive == int(np.sum(counts * (counts - 1) // 2))
  assert pairs.total_negative == 10000 * 9999 // 2 - pairs.total_positive
  for p, same in ((pairs.positive, True), (pairs.negative, False)):
    assert np.all(p[:, 0] < p[:, 1]) and np.all((labels[p[:, 0]] == labels[p[:, 1]]) == same)
    assert len(np.unique(p[:, 0] * 10000 + p[:, 1])) == len(p)


def test_verification_metrics_across_sets_with_excluded_pairs():
  """Scores are the dot products of the unit rows of each pair; an excluded pair is not scored."""
  rng = np.random.default_rng(5)
  q, g = rng.normal(size=(12, 4)), rng.normal(size=(20, 4))
  ql, gl = rng.integers(0, 4, size=12), rng.integers(0, 4, size=20)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  exclude = np.array([[0, j] for j in range(20) if gl[j] == ql[0]][:1] + [[1, 0]])
  pos, neg = brute_force_pairs(list(ql), list(gl))
  skip = set(map(tuple, exclude.tolist()))
  pos_scores = [qn[i] @ gn[j] for i, j in pos if (i, j) not in skip]
  neg_scores = [qn[i] @ gn[j] for i, j in neg if (i, j) not in skip]
  got = verification.verification_metrics(q, ql, g, gl, fars=(0.1, 0.05), exclude=exclude)
  want = verification.verification_from_scores(pos_scores, neg_scores, fars=(0.1, 0.05))
  assert got["num_positive_pairs"] == len(pos_scores) and got["positive_pairs_total"] == len(pos)
  for key in ("tar@far=0.1", "threshold@far=0.1", "tar@far=0.05", "eer", "eer_threshold", "auc"):
    assert got[key] == pytest.approx(want[key], abs=1e-6), key
