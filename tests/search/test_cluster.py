"""Clustering faces: hand-worked graphs and scores, the kNN graph against NumPy brute force, and
clusters of face-like vectors against their known people."""

import numpy as np
import pytest

from facetriplet.errors import UserError
from facetriplet.search import cluster


def test_two_triangles_and_a_weak_bridge():
  # Faces 0-1-2 and 3-4-5 are triangles (weight 0.9); 2-3 a weak bridge (0.3).
  edges = [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5)]
  src = np.array([a for a, _ in edges] + [2])
  dst = np.array([b for _, b in edges] + [3])
  w = np.array([0.9] * 6 + [0.3], np.float32)
  labels, _ = cluster.chinese_whispers(7, src, dst, w)  # face 6: no edge, its own cluster
  groups = {frozenset(np.flatnonzero(labels == x)) for x in set(labels)}
  assert groups == {frozenset({0, 1, 2}), frozenset({3, 4, 5}), frozenset({6})}
  np.testing.assert_array_equal(cluster.renumber([7, 7, 3, 3, 3, 9]), [1, 1, 0, 0, 0, 2])


def test_scores_worked_by_hand():
  labels, truth = [0, 0, 1, 1], ["a", "a", "a", "b"]
  # Pairs together: clustered (0,1),(2,3); same person (0,1),(0,2),(1,2); both (0,1).
  pair = cluster.pairwise_scores(labels, truth)
  assert pair["precision"] == pytest.approx(1 / 2) and pair["recall"] == pytest.approx(1 / 3)
  assert pair["f"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
  # BCubed per face: precision 1, 1, 1/2, 1/2; recall 2/3, 2/3, 1/3, 1.
  b3 = cluster.bcubed_scores(labels, truth)
  assert b3["precision"] == pytest.approx(0.75) and b3["recall"] == pytest.approx(2 / 3)
  perfect = cluster.pairwise_scores([5, 5, 2], ["x", "x", "y"])
  assert perfect == {"precision": 1.0, "recall": 1.0, "f": 1.0}


def _people(n_people=40, photos=12, dim=32, spread=0.35, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n_people, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  who = np.repeat(np.arange(n_people), photos)
  x = centres[who] + spread / np.sqrt(dim) * rng.standard_normal((len(who), dim))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x.astype(np.float32), who


@pytest.mark.parametrize("backend", ["scann", "faiss-flat"])
def test_knn_graph_is_the_brute_force_one(backend):
  x, _ = _people(n_people=20, photos=10)
  src, dst, w = cluster.knn_graph(x, k=5, threshold=0.5, backend=backend)
  sims = x @ x.T
  np.fill_diagonal(sims, -np.inf)
  want = set()
  for i in range(len(x)):
    for j in np.argsort(-sims[i], kind="stable")[:5]:
      if sims[i, j] >= 0.5:
        want.add((i, int(j)))
  assert set(zip(src.tolist(), dst.tolist())) == want
  np.testing.assert_allclose(w, sims[src, dst], atol=1e-5)


def test_people_are_found_without_labels():
  x, who = _people()
  sims = x @ x.T
  same = sims[who[:, None] == who[None, :]]
  other = sims[who[:, None] != who[None, :]]
  assert np.percentile(same, 1) > other.max()  # separable: a threshold between exists
  threshold = float((np.percentile(same, 1) + other.max()) / 2)
  result = cluster.cluster(x, threshold, k=16)
  assert len(result.sizes) == 40 and result.edges > 0
  assert cluster.pairwise_scores(result.labels, who)["f"] == pytest.approx(1.0)
  assert cluster.bcubed_scores(result.labels, who)["f"] == pytest.approx(1.0)
  # A threshold nothing passes: every face alone; one everything passes: fewer, larger groups.
  alone = cluster.cluster(x, 0.9999, k=16)
  assert len(alone.sizes) == len(x) and alone.edges == 0
  with pytest.raises(UserError):
    cluster.cluster(x, 1.5)


def test_the_same_seed_gives_the_same_clusters():
  x, _ = _people(seed=3, spread=0.6)
  a = cluster.cluster(x, 0.3, k=8, seed=1).labels
  b = cluster.cluster(x, 0.3, k=8, seed=1).labels
  np.testing.assert_array_equal(a, b)


def test_whispers_stop_only_when_no_face_wants_another_label():
  x, _ = _people(seed=5, spread=0.9)  # overlapping people: many faces change labels
  src, dst, w = cluster.knn_graph(x, k=8, threshold=0.2)
  labels, rounds = cluster.chinese_whispers(len(x), src, dst, w, max_rounds=500)
  assert rounds < 500
  # The fixpoint, by hand: every face's label carries the most weight among its neighbours.
  weight: dict = {}
  for a, b, s in zip(np.concatenate([src, dst]), np.concatenate([dst, src]), np.tile(w, 2)):
    weight.setdefault(int(a), {}).setdefault(int(labels[b]), 0.0)
    weight[int(a)][int(labels[b])] += float(s)
  for node, by_label in weight.items():
    assert by_label[int(labels[node])] >= max(by_label.values()) - 1e-9, node
