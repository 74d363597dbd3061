"""Tests for facetriplet.metrics on hand-worked rankings and against a brute-force reference."""

import numpy as np
import pytest

from facetriplet import metrics


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
  want = {"top1": 2 / 3, "top2": 1.0, "top5": 1.0,
          "precision@1": 2 / 3, "precision@2": 1 / 2, "precision@5": 1 / 3,
          "recall@1": 1 / 3, "recall@2": 2 / 3, "recall@5": 1.0, "map@r": 1 / 3}
  for key, value in want.items():
    assert got[key] == pytest.approx(value), key
  assert got["num_queries"] == 3 and got["queries_without_match"] == 1


def test_default_keys_and_string_labels():
  queries = at_angles([0, 40])
  got = metrics.retrieval_metrics(queries, ["ann", "bob"], GALLERY,
                                  ["ann", "bob", "ann", "cy", "bob"])
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
  q, ql = (g, gl) if leave_one_out else (rng.normal(size=(40, 6)).astype(np.float32),
                                         rng.integers(0, 7, size=40))
  ks = (1, 5, 10)
  got = metrics.retrieval_metrics(q, ql, g, gl, ks=ks, leave_one_out=leave_one_out,
                                  chunk_size=7)
  want = brute_force(q, ql, g, gl, ks, leave_one_out)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key

  _, ranked = metrics.ranked_labels(q, g, gl, k=len(g), leave_one_out=leave_one_out)
  counts = np.array([np.sum(gl == label) for label in ql]) - (1 if leave_one_out else 0)
  from_ranked = metrics.metrics_from_ranked(ranked, ql, counts, ks=ks)
  for key, value in got.items():
    assert from_ranked[key] == pytest.approx(value, abs=1e-12), key


def test_to_markdown():
  one = {"top1": 0.5, "num_queries": 3}
  assert metrics.to_markdown(one) == "| metric | value |\n|---|---:|\n| top1 | 0.5000 |\n" \
                                     "| num_queries | 3 |\n"
  table = metrics.to_markdown({"lbp": one, "embedding": {"top1": 0.9, "map@r": 0.25}})
  lines = table.strip().split("\n")
  assert lines[0] == "| method | top1 | num_queries | map@r |"
  assert lines[2] == "| lbp | 0.5000 | 3 |  |"
  assert lines[3] == "| embedding | 0.9000 |  | 0.2500 |"
