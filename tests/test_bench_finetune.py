"""The paired bootstrap of benchmarks/bench_finetune: per-query terms against the library's means,
and hand-worked differences."""

import numpy as np

from benchmarks import bench_finetune
from facetriplet import metrics


def test_per_query_terms_average_to_the_library_metrics():
  rng = np.random.default_rng(3)
  labels = [f"p{i % 7}" for i in range(40)] + ["alone"]  # one person with a single photo
  emb = rng.normal(size=(41, 8)) + 2.0 * np.eye(8)[[i % 7 for i in range(40)] + [7]]
  top1, ap = bench_finetune.per_query(emb, labels)
  want = metrics.retrieval_metrics(emb, labels, emb, labels, ks=(1,), leave_one_out=True)
  assert want["queries_without_match"] == 1
  assert np.isnan(top1[-1]) and np.isnan(ap[-1])  # left out, as the library leaves it out
  assert set(np.unique(top1[:-1])) <= {0.0, 1.0}
  got = [np.nanmean(top1), np.nanmean(ap)]
  np.testing.assert_allclose(got, [want["top1"], want["map@r"]], atol=1e-12)
  assert 0 < np.nanmean(ap) < 1  # neither all right nor all wrong: the terms are really compared


def test_per_query_hand_worked():
  # Unit vectors at these angles (degrees); cosine ranks by angular distance.
  angles = np.radians([0, 10, 50, 32, 95])
  emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  labels = ["a", "a", "a", "b", "b"]
  top1, ap = bench_finetune.per_query(emb, labels)
  # a@0: a@10, b@32, a@50 -> R=2, hits at ranks 1 and 3: AP@R = (1 + 0) / 2.
  # a@10: a@0, b@32, a@50 -> the same. a@50: b@32, a@10, b@95, a@0 -> (0 + 1/2) / 2.
  # b@32: a@50, a@10, a@0, b@95 -> R=1, miss. b@95: a@50, b@32 -> R=1, miss at rank 1.
  np.testing.assert_array_equal(top1, [1, 1, 0, 0, 0])
  np.testing.assert_allclose(ap, [0.5, 0.5, 0.25, 0, 0])


def test_paired_bootstrap_constant_difference():
  a = np.array([0.5, 0.2, 0.9, 0.4, np.nan])  # the last query has no match: left out
  got = bench_finetune.paired_bootstrap(a, a + 0.1, ["x", "x", "y", "z", "w"], 200)
  assert [round(v, 12) for v in got] == [0.1, 0.1, 0.1, 1.0, 0.0]


def test_paired_bootstrap_ties_are_neither_ahead_nor_behind():
  a = np.array([1.0, 0.0, 1.0])
  assert bench_finetune.paired_bootstrap(a, a.copy(), ["x", "y", "z"], 100) == (0, 0, 0, 0, 0)
  row = bench_finetune.compare_row(a, a.copy(), ["x", "y", "z"], 100)
  assert row == [0.6667, 0.6667, "+0.0000", "[+0.0000, +0.0000]", "0.000 / 0.000"]


def test_paired_bootstrap_resamples_people_not_queries():
  # One person gains 1 on each of 3 queries, another loses 1 on 1 query: by query the mean gain
  # is 0.5; by person each resample is a mix of the two people, so some draws are all losses.
  a = np.zeros(4)
  b = np.array([1.0, 1.0, 1.0, -1.0])
  diff, low, high, ahead, behind = bench_finetune.paired_bootstrap(a, b, ["g", "g", "g", "l"], 2000)
  assert diff == 0.5
  assert low == -1.0 and high == 1.0  # both people alone are drawn
  assert 0.6 < ahead < 0.9  # P(not both draws the loser) = 3/4
  assert ahead + behind == 1.0  # no draw ties: every mix of the two people is ahead or behind
