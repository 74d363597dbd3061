"""Gallery search: the index's automatic ScaNN configuration vs exact NumPy search vs faiss.

Data: synthetic face-like embeddings, 128-d unit vectors with the structure of a face gallery:
64 broad groups (think demographics / capture conditions), identities scattered around their group
centre, 5 photos per identity scattered around the identity centre (photo-to-photo cosine ~0.65,
identity-to-identity within a group ~0.3, across groups ~0). Queries are *new* photos of gallery
identities. recall@10 is measured against exact search (the true top 10 by dot product).

Methods, all answering the queries as one batch on every core:
  exact       faiss IndexFlatIP (optimised BLAS + heap; NumPy matmul + argpartition, in gallery
              chunks, only without faiss: it understates exact search several-fold).
  scann-auto  `GalleryIndex.build(..., target_recall=0.95)`: what users get.
  scann       the same AH index, sweeping leaves_to_search (x reorder_k) for equal-recall
              comparisons.
  hnsw        faiss IndexHNSWFlat (inner product), efSearch sweep (optional: needs faiss-cpu).
  ivf         faiss IndexIVFFlat (inner product), nlist = 4 sqrt(n), nprobe sweep.

  python -m benchmarks.bench_search --sizes=100000 --queries=1000           # ~2 min on 2 cores
  python -m benchmarks.bench_search --sizes=1000000 --queries=1000 --hnsw_m=16 \
      --hnsw_build_budget_s=480                                             # ~15 min

It writes benchmarks/results/search_<size>.json (e.g. search_100k, search_1m).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time
from typing import Any, Callable

import numpy as np

from benchmarks import common
from facetriplet.search.index import GalleryIndex
from facetriplet.search.items import Item

DIM = 128
PHOTOS_PER_IDENTITY = 5
GROUPS = 64
K = 10


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_gallery(
  n: int, num_queries: int, dim: int = DIM, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (gallery [n, dim], queries [num_queries, dim]) of face-like unit vectors."""
  rng = np.random.default_rng(seed)
  num_ids = math.ceil(n / PHOTOS_PER_IDENTITY)
  groups = _unit(rng.standard_normal((GROUPS, dim), dtype=np.float32))
  group_of = rng.integers(0, GROUPS, num_ids)
  centres = _unit(
    groups[group_of] + 1.5 / math.sqrt(dim) * rng.standard_normal((num_ids, dim), dtype=np.float32)
  )
  del group_of
  gallery = np.empty((n, dim), np.float32)
  for start in range(0, n, 100_000):
    rows = np.arange(start, min(n, start + 100_000))
    gallery[rows] = _unit(
      centres[rows // PHOTOS_PER_IDENTITY]
      + 0.7 / math.sqrt(dim) * rng.standard_normal((len(rows), dim), dtype=np.float32)
    )
  who = rng.integers(0, num_ids, num_queries)
  queries = _unit(
    centres[who] + 0.7 / math.sqrt(dim) * rng.standard_normal((num_queries, dim), dtype=np.float32)
  )
  return gallery, queries


def exact_search(
  gallery: np.ndarray, queries: np.ndarray, k: int = K, chunk: int = 65_536
) -> np.ndarray:
  """Exact top-k by dot product: matrix multiply + argpartition per gallery chunk, then merge."""
  best_scores = np.full((len(queries), k), -np.inf, np.float32)
  best_ids = np.zeros((len(queries), k), np.int64)
  for start in range(0, len(gallery), chunk):
    scores = queries @ gallery[start : start + chunk].T
    kk = min(k, scores.shape[1])
    part = np.argpartition(scores, scores.shape[1] - kk, axis=1)[:, -kk:]
    cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
    cand_ids = np.concatenate([best_ids, part + start], axis=1)
    top = np.argpartition(-cand_scores, k - 1, axis=1)[:, :k]
    best_scores = np.take_along_axis(cand_scores, top, 1)
    best_ids = np.take_along_axis(cand_ids, top, 1)
  order = np.argsort(-best_scores, axis=1)
  return np.take_along_axis(best_ids, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
  hits = sum(len(set(f[:K].tolist()) & set(t[:K].tolist())) for f, t in zip(found, truth))
  return hits / truth[:, :K].size


def timed(fn: Callable[[], Any], repeats: int = 2, warmup: bool = True) -> tuple[Any, float]:
  """Runs `fn` once to warm up (optionally), then `repeats` times; returns (result, best s)."""
  result = fn() if warmup else None
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return result, best


def run_size(n: int, num_queries: int, args: argparse.Namespace) -> tuple[list, str]:
  """Benchmarks every method at gallery size n; returns (rows, notes)."""
  gallery, queries = clustered_gallery(n, num_queries, seed=args.seed)
  q = len(queries)
  rows: list[list[Any]] = []
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    faiss = None
  if faiss is not None:  # the optimised exact baseline (BLAS + heap); NumPy understates it
    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    (_, truth), secs = timed(lambda: flat.search(queries, K), repeats=1)
    del flat
    method = "faiss IndexFlatIP"
  else:
    truth, secs = timed(lambda: exact_search(gallery, queries), repeats=1, warmup=False)
    method = "numpy matmul + argpartition"
  exact_qps = q / secs
  rows.append([n, "exact", method, 0.0, round(exact_qps), 1.0])
  print(f"[{n}] exact: {exact_qps:.0f} q/s", flush=True)

  start = time.perf_counter()
  index = GalleryIndex.build(gallery, [Item(str(i)) for i in range(n)], "bench", target_recall=0.95)
  build_s = time.perf_counter() - start
  cfg = index.config
  (found, _), secs = timed(lambda index=index: index.search(queries, K))
  desc = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("mode", "target_recall"))
  rows.append(
    [
      n,
      "scann-auto",
      f"target 0.95: {desc}",
      round(build_s, 1),
      round(q / secs),
      round(recall_at_k(found, truth), 4),
    ]
  )
  print(f"[{n}] scann-auto: {rows[-1]}", flush=True)
  if cfg["mode"] == "ah":
    leaves = cfg["num_leaves"]
    for frac in args.leaf_fractions:
      for reorder in args.reorder:
        lts = max(1, round(frac * leaves))
        (found, _), secs = timed(
          lambda lts=lts, reorder=reorder, index=index: index.search(
            queries, K, leaves_to_search=lts, reorder_k=reorder
          )
        )
        rows.append(
          [
            n,
            "scann",
            f"leaves_to_search={lts}/{leaves}, reorder_k={reorder}",
            round(build_s, 1),
            round(q / secs),
            round(recall_at_k(found, truth), 4),
          ]
        )
        print(f"[{n}] {rows[-1]}", flush=True)
  del index
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  memory = f"Peak memory through data + exact + ScaNN (before faiss): {peak_gib:.1f} GiB. "
  if faiss is not None and not args.skip_faiss:
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rows += _bench_faiss(faiss, gallery, queries, truth, args)
  return rows, memory + _summary(n, rows, exact_qps)


def _bench_faiss(
  faiss: Any, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> list[list[Any]]:
  n, q = len(gallery), len(queries)
  rows = []
  start = time.perf_counter()
  hnsw = faiss.IndexHNSWFlat(gallery.shape[1], args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
  hnsw.hnsw.efConstruction = args.hnsw_ef_construction
  for chunk_start in range(0, n, 50_000):  # in chunks, so a slow build can be abandoned
    hnsw.add(gallery[chunk_start : chunk_start + 50_000])
    if time.perf_counter() - start > args.hnsw_build_budget_s and chunk_start + 50_000 < n:
      print(f"[{n}] hnsw build over {args.hnsw_build_budget_s} s budget: skipped", flush=True)
      rows.append(
        [
          n,
          "hnsw",
          f"M={args.hnsw_m}, efConstruction={args.hnsw_ef_construction}: "
          f"skipped, build passed {args.hnsw_build_budget_s} s after "
          f"{chunk_start + 50_000} points",
          None,
          None,
          None,
        ]
      )
      break
  build_s = time.perf_counter() - start
  for ef in args.ef_search if hnsw.ntotal == n else []:
    hnsw.hnsw.efSearch = ef
    (_, found), secs = timed(lambda hnsw=hnsw: hnsw.search(queries, K))
    rows.append(
      [
        n,
        "hnsw",
        f"M={args.hnsw_m}, efConstruction={args.hnsw_ef_construction}, efSearch={ef}",
        round(build_s, 1),
        round(q / secs),
        round(recall_at_k(found, truth), 4),
      ]
    )
    print(f"[{n}] {rows[-1]}", flush=True)
  del hnsw
  nlist = 4 * int(round(math.sqrt(n)))
  start = time.perf_counter()
  quantizer = faiss.IndexFlatIP(gallery.shape[1])
  ivf = faiss.IndexIVFFlat(quantizer, gallery.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
  rng = np.random.default_rng(1)
  ivf.train(gallery[rng.choice(n, min(n, 64 * nlist), replace=False)])
  ivf.add(gallery)
  build_s = time.perf_counter() - start
  for nprobe in args.nprobe:
    ivf.nprobe = nprobe
    (_, found), secs = timed(lambda: ivf.search(queries, K))
    rows.append(
      [
        n,
        "ivf",
        f"nlist={nlist}, nprobe={nprobe}",
        round(build_s, 1),
        round(q / secs),
        round(recall_at_k(found, truth), 4),
      ]
    )
    print(f"[{n}] {rows[-1]}", flush=True)
  return rows


def _summary(n: int, rows: list[list[Any]], exact_qps: float) -> str:
  """One line per method: its fastest setting with recall@10 >= 0.95, and the speed-up."""
  parts = []
  for method in ("scann-auto", "scann", "hnsw", "ivf"):
    ok = [r for r in rows if r[1] == method and r[5] is not None and r[5] >= 0.95]
    if ok:
      best = max(ok, key=lambda r: r[4])
      parts.append(
        f"{method}: {best[4]} q/s ({best[4] / exact_qps:.1f}x exact) at recall "
        f"{best[5]} [{best[2]}]"
      )
    elif any(r[1] == method and r[5] is None for r in rows):
      parts.append(f"{method}: skipped (build time budget)")
    elif any(r[1] == method for r in rows):
      parts.append(f"{method}: no setting reached recall 0.95")
  return f"n={n}, fastest at recall@10 >= 0.95 — " + "; ".join(parts)


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--sizes", type=_ints, default=[100_000])
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--leaf_fractions", type=_floats, default=[0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08]
  )
  parser.add_argument("--reorder", type=_ints, default=[100, 200])
  parser.add_argument("--hnsw_m", type=int, default=32)
  parser.add_argument("--hnsw_ef_construction", type=int, default=40)
  parser.add_argument("--hnsw_build_budget_s", type=float, default=1200)
  parser.add_argument("--ef_search", type=_ints, default=[16, 32, 64, 128, 256])
  parser.add_argument("--nprobe", type=_ints, default=[4, 8, 16, 32, 64])
  parser.add_argument("--skip_faiss", action="store_true")
  args = parser.parse_args()
  for n in args.sizes:
    rows, notes = run_size(n, args.queries, args)
    name = "search_" + (f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k")
    notes = (
      f"{args.queries} queries = new photos of gallery identities (128-d unit vectors, "
      f"{PHOTOS_PER_IDENTITY} photos/identity, {GROUPS} groups); q/s = batched, all cores; "
      "build_s for scann rows is the one AH build that the sweep re-searches. " + notes
    )
    path = common.write_result(
      name=name,
      title=f"Search: ScaNN vs exact vs faiss, {n:,} x {DIM}",
      columns=["n", "method", "settings", "build_s", "queries_per_s", "recall@10"],
      rows=rows,
      notes=notes,
    )
    print(notes)
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
