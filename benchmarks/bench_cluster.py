"""Clustering faces without labels (`facetriplet.search.cluster`): quality against the known
people of lfw_2to4 and celeba_199, side by side with dlib's Chinese whispers on the same
embeddings, and speed on 10k / 100k / 1M synthetic embeddings.

Quality: photos of --people people of each set (the first ones, sorted by name) are embedded by
--model (default: the pretrained network), one face a photo. The edge threshold is calibrated on
other people: photos of lfw_2to4's people --people..2x--people, the similarity that a fraction
--far of their different-person pairs reach. Both methods then get that same threshold: ours
over the k-nearest-neighbour graph (ScaNN, k=16), dlib's `chinese_whispers_clustering` over every
pair (Euclidean distance sqrt(2 - 2 x threshold) on the same unit vectors).

  python -m benchmarks.bench_cluster                        # ~25 min on 2 cores
  python -m benchmarks.bench_cluster --people=50 --sizes=10000   # a quick look

Speed: --sizes synthetic sets of 128-d unit vectors (people of 10 photos, noise 0.5), one run
each. Writes benchmarks/results/cluster.json and cluster_speed.json (--name).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional, Sequence

import numpy as np

from benchmarks import common

DATA = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
)


def _people_entries(root: str, start: int, count: int):
  from facetriplet.data import layouts  # pylint: disable=g-import-not-at-top

  layout = "celeba" if os.path.basename(root) == "img_celeba" else "folders"
  entries = layouts.list_images(root, layout)
  people = sorted({e.identity for e in entries})[start : start + count]
  keep = set(people)
  return [e for e in entries if e.identity in keep]


def embed(model: str, root: str, start: int, count: int, cache: str):
  """(embeddings, identities) of the photos of people [start, start+count) of `root`, cached."""
  if os.path.exists(cache):
    data = np.load(cache, allow_pickle=False)
    return data["x"], data["who"]
  from facetriplet.search import embedding, features  # pylint: disable=g-import-not-at-top

  extractor = features.make_extractor("embedding", model)
  entries = _people_entries(root, start, count)
  x, kept, _ = embedding.embed_entries(extractor, entries, 32, 2, True, os.path.basename(root))
  who = np.array([e.identity for e in kept])
  np.savez(cache, x=x, who=who)
  return x, who


def calibrate(x: np.ndarray, who: np.ndarray, far: float) -> float:
  """The similarity a fraction `far` of different-person pairs reach."""
  sims = x @ x.T
  other = sims[np.triu(who[:, None] != who[None, :], 1)]
  return float(np.quantile(other, 1 - far))


def dlib_whispers(x: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
  import dlib  # pylint: disable=g-import-not-at-top

  vectors = [dlib.vector(row.astype(np.float64).tolist()) for row in x]
  start = time.perf_counter()
  labels = dlib.chinese_whispers_clustering(vectors, float(np.sqrt(2 - 2 * threshold)))
  return np.asarray(labels), time.perf_counter() - start


def quality(args, work: str) -> list[list]:
  from facetriplet.search import cluster  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  model = export.resolve_model(args.model)
  lfw = os.path.join(DATA, "lfw_2to4")
  cal_x, cal_who = embed(model, lfw, args.people, args.people, os.path.join(work, "cal.npz"))
  sets = {
    "lfw_2to4": embed(model, lfw, 0, args.people, os.path.join(work, "lfw.npz")),
    "celeba_199": embed(
      model,
      os.path.join(DATA, "celeba_199", "img_celeba"),
      0,
      args.people,
      os.path.join(work, "celeba.npz"),
    ),
  }
  rows = []
  for far in args.fars:
    threshold = calibrate(cal_x, cal_who, far)
    for name, (x, who) in sets.items():
      ours = cluster.cluster(x, threshold, k=args.k)
      theirs, dlib_s = dlib_whispers(x, threshold)
      for method, labels, seconds in (
        (f"facetriplet (kNN k={args.k}, ScaNN)", ours.labels, sum(ours.seconds.values())),
        ("dlib chinese_whispers_clustering (all pairs)", theirs, dlib_s),
      ):
        pair = cluster.pairwise_scores(labels, who)
        b3 = cluster.bcubed_scores(labels, who)
        rows.append(
          [
            name,
            f"{far:g} ({threshold:.3f})",
            method,
            len(x),
            len(set(who)),
            len(set(labels.tolist())),
            round(pair["precision"], 4),
            round(pair["recall"], 4),
            round(pair["f"], 4),
            round(b3["f"], 4),
            round(seconds, 2),
          ]
        )
        print(rows[-1], flush=True)
  return rows


def speed(sizes: Sequence[int]) -> list[list]:
  from facetriplet.search import cluster  # pylint: disable=g-import-not-at-top

  rows = []
  for n in sizes:
    rng = np.random.default_rng(0)
    dim, people = 128, max(1, n // 10)
    centres = rng.standard_normal((people, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    who = rng.integers(0, people, n)
    x = centres[who] + 0.5 / np.sqrt(dim) * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    start = time.perf_counter()
    result = cluster.cluster(x, 0.6, k=16)
    total = time.perf_counter() - start
    pair = cluster.pairwise_scores(result.labels, who)
    rows.append(
      [
        n,
        round(result.seconds["graph"], 1),
        round(result.seconds["whispers"], 1),
        round(total, 1),
        result.edges,
        result.rounds,
        len(result.sizes),
        len(set(who.tolist())),
        round(pair["f"], 4),
      ]
    )
    print(rows[-1], flush=True)
  return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="dlib_resnet")
  parser.add_argument("--people", type=int, default=200)
  parser.add_argument("--fars", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3])
  parser.add_argument("--k", type=int, default=16)
  parser.add_argument("--sizes", default="10000,100000,1000000")
  parser.add_argument("--work", default="/tmp/bench_cluster")
  parser.add_argument("--name", default="cluster")
  parser.add_argument("--skip_quality", action="store_true")
  args = parser.parse_args(argv)
  os.makedirs(args.work, exist_ok=True)
  if not args.skip_quality:
    rows = quality(args, args.work)
    common.write_result(
      args.name,
      "Clustering faces without labels: lfw_2to4 and celeba_199 people, vs dlib's Chinese whispers",
      [
        "set",
        "FAR (threshold)",
        "method",
        "faces",
        "people",
        "clusters",
        "pairwise P",
        "pairwise R",
        "pairwise F",
        "BCubed F",
        "seconds",
      ],
      rows,
      notes=(
        f"Model {args.model}; the first {args.people} people (by name) of each set, one face a "
        f"photo. Threshold calibrated on lfw_2to4 people {args.people}..{2 * args.people - 1} "
        "(disjoint): the similarity reached by that fraction of their different-person pairs. "
        "dlib: chinese_whispers_clustering on the same unit embeddings at Euclidean distance "
        "sqrt(2 - 2 x threshold), every pair compared. Seconds: clustering only (embedding "
        "not counted)."
      ),
    )
  sizes = [int(s) for s in args.sizes.split(",") if s]
  if sizes:
    common.write_result(
      f"{args.name}_speed",
      "Clustering speed: synthetic 128-d face embeddings, kNN graph (ScaNN) + Chinese whispers",
      [
        "faces",
        "graph s",
        "whispers s",
        "total s",
        "edges",
        "rounds",
        "clusters",
        "people",
        "pairwise F",
      ],
      speed(sizes),
      notes=(
        "People of 10 photos on average (Gaussian noise 0.5 around a random unit centre, "
        "renormalised), threshold 0.6, k=16; one run each, nothing else running."
      ),
    )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
