"""The scaling curve of gallery search: 100k, 1M and 10M faces on one machine.

For each size, on synthetic clustered 128-d unit vectors (the generator of bench_search: 5 photos
per identity, 64 groups; 1000 queries = new photos of gallery identities):

  exact       faiss IndexFlatIP (optimised BLAS + heap): the exact baseline and the ground truth.
  scann-auto  the index's automatic configuration (`backends.scann.auto_config`, target 0.95), built
              exactly as `GalleryIndex.build` builds it; then the leaves searched are raised until
              recall@10 >= 0.95 if the automatic setting falls short.
  hnsw        faiss IndexHNSWFlat, M=32, efConstruction=80, no time cap at sizes <= --hnsw_full_max;
              above it the build rate of the first --hnsw_probe points and the projected time.

Recorded per method: build seconds, peak resident memory of the build (VmHWM, reset before each
build), bytes per vector on disk (ScaNN: its serialized folder; faiss: `write_index`), queries/s
(one batch of 1000 queries on every core) at the first setting with recall@10 >= 0.95.

  python -m benchmarks.bench_scale --sizes=100000,1000000,10000000   # ~1 h on 2 cores, 24 GB
  python -m benchmarks.bench_scale --sizes=20000 --quick              # seconds: checks it runs

It writes benchmarks/results/scale.json; docs/SCALING.md extrapolates from it.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.bench_search import K, clustered_gallery, recall_at_k
from facetriplet.search.backends import scann as scann_config

FRACTIONS = (0.025, 0.035, 0.05, 0.08, 0.12)  # leaves searched, tried in order until recall >= .95


def _peak_reset() -> None:
  """Resets the process's peak RSS (Linux: writing 5 to clear_refs), so VmHWM is per stage."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
      f.write("5")
  except OSError:
    pass


def _peak_gib() -> float:
  with open("/proc/self/status", encoding="utf-8") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return round(int(line.split()[1]) / 2**20, 2)
  return float("nan")


def _folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _qps(fn, queries: np.ndarray, repeats: int = 2) -> tuple[Any, float]:
  """(result, queries/s) of the best of `repeats` timed calls after one warm-up call."""
  result = fn()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return result, len(queries) / best


def bench_exact(faiss, gallery, queries, scratch):
  _peak_reset()
  start = time.perf_counter()
  flat = faiss.IndexFlatIP(gallery.shape[1])
  flat.add(gallery)
  build = time.perf_counter() - start
  peak = _peak_gib()
  (_, truth), qps = _qps(lambda flat=flat: flat.search(queries, K), queries, repeats=1)
  path = os.path.join(scratch, "flat.faiss")
  faiss.write_index(flat, path)
  per_vector = os.path.getsize(path) / len(gallery)
  os.remove(path)
  del flat
  return truth, [
    "exact",
    "faiss IndexFlatIP",
    round(build, 1),
    peak,
    round(per_vector, 1),
    round(qps),
    1.0,
  ]


def bench_scann(gallery, queries, truth, scratch, reorder: str = "float32"):
  """The automatic ScaNN configuration; `reorder='int8'` or 'bfloat16' keeps the re-ranking copy
  of the vectors quantised (4x / 2x smaller than float32) instead of float32."""
  from scann.scann_ops.py import scann_ops_pybind  # pylint: disable=g-import-not-at-top
  from scann.scann_ops.py import scann_builder  # pylint: disable=g-import-not-at-top

  n, dim = gallery.shape
  config = scann_config._validated(scann_config.auto_config(n, dim, 0.95), n)  # pylint: disable=protected-access
  _peak_reset()
  start = time.perf_counter()
  builder = scann_ops_pybind.builder(gallery, 10, "dot_product")
  if config["mode"] == "brute_force":
    searcher = builder.score_brute_force().build()
  else:
    searcher = (
      builder.tree(
        num_leaves=config["num_leaves"],
        num_leaves_to_search=config["num_leaves_to_search"],
        training_sample_size=config["training_sample_size"],
      )
      .score_ah(
        config["dimensions_per_block"],
        anisotropic_quantization_threshold=config["anisotropic_quantization_threshold"],
      )
      .reorder(
        config["reorder_k"],
        quantize={
          "float32": scann_builder.ReorderType.FLOAT32,
          "int8": scann_builder.ReorderType.INT8,
          "bfloat16": scann_builder.ReorderType.BFLOAT16,
        }[reorder],
      )
      .build()
    )
  build = time.perf_counter() - start
  peak = _peak_gib()
  folder = os.path.join(scratch, "scann")
  os.makedirs(folder)
  searcher.serialize(folder)
  per_vector = _folder_bytes(folder) / n
  shutil.rmtree(folder)
  rows = []
  settings = (
    [None]
    if config["mode"] == "brute_force"
    else [
      max(config["num_leaves_to_search"], math.ceil(f * config["num_leaves"])) for f in FRACTIONS
    ]
  )
  for leaves in dict.fromkeys(settings):
    kwargs = {"final_num_neighbors": K}
    if leaves:
      kwargs.update(leaves_to_search=leaves, pre_reorder_num_neighbors=config["reorder_k"])
    (found, _), qps = _qps(
      lambda s=searcher, kw=kwargs: s.search_batched_parallel(queries, **kw), queries
    )
    recall = recall_at_k(np.asarray(found), truth)
    label = (
      "brute force"
      if not leaves
      else f"leaves {leaves}/{config['num_leaves']}, reorder {config['reorder_k']}"
      + (" (auto)" if leaves == config["num_leaves_to_search"] else "")
    )
    method = "scann-auto" if reorder == "float32" else f"scann-auto {reorder} reorder"
    rows.append(
      [method, label, round(build, 1), peak, round(per_vector, 1), round(qps), round(recall, 4)]
    )
    print(rows[-1], flush=True)
    if recall >= 0.95:
      break
  del searcher
  return rows


def bench_hnsw(faiss, gallery, queries, truth, scratch, args):
  n = len(gallery)
  hnsw = faiss.IndexHNSWFlat(gallery.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
  hnsw.hnsw.efConstruction = 80
  _peak_reset()
  start = time.perf_counter()
  if n > args.hnsw_full_max:
    probe = min(n, args.hnsw_probe)
    hnsw.add(gallery[:probe])
    secs = time.perf_counter() - start
    rate = probe / secs
    # Insertion cost grows ~log(n): scale the probe's rate by log(probe) / log(n).
    projected = n / rate * math.log(n) / math.log(probe)
    del hnsw
    return [
      [
        "hnsw",
        f"M=32, efConstruction=80: built {probe:,} points at {rate:.0f}/s; full "
        f"build projected {projected / 3600:.1f} h (not run)",
        round(projected, 0),
        None,
        round(hnsw_bytes(n, gallery.shape[1]), 1),
        None,
        None,
      ]
    ]
  hnsw.add(gallery)
  build = time.perf_counter() - start
  peak = _peak_gib()
  path = os.path.join(scratch, "hnsw.faiss")
  faiss.write_index(hnsw, path)
  per_vector = os.path.getsize(path) / n
  os.remove(path)
  rows = []
  for ef in (16, 32, 64, 128, 256, 512):
    hnsw.hnsw.efSearch = ef
    (_, found), qps = _qps(lambda: hnsw.search(queries, K), queries)
    recall = recall_at_k(found, truth)
    rows.append(
      [
        "hnsw",
        f"M=32, efConstruction=80, efSearch={ef}",
        round(build, 1),
        peak,
        round(per_vector, 1),
        round(qps),
        round(recall, 4),
      ]
    )
    print(rows[-1], flush=True)
    if recall >= 0.95:
      break
  return rows


def hnsw_bytes(n: int, dim: int, m: int = 32) -> float:
  """Bytes per vector of IndexHNSWFlat: the float32 vector plus ~2M int32 links at level 0."""
  return dim * 4 + 2 * m * 4 * 1.05


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--sizes", default="100000,1000000,10000000")
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument(
    "--hnsw_full_max",
    type=int,
    default=1_000_000,
    help="largest size whose HNSW index is built in full",
  )
  parser.add_argument(
    "--hnsw_probe",
    type=int,
    default=500_000,
    help="points inserted to measure HNSW's build rate above that size",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--reorders",
    default="float32",
    help="ScaNN re-ranking storage(s): float32, int8, bfloat16 (comma list)",
  )
  parser.add_argument("--skip_hnsw", action="store_true")
  parser.add_argument("--name", default="scale")
  parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
  args = parser.parse_args()
  import faiss  # pylint: disable=g-import-not-at-top

  faiss.omp_set_num_threads(os.cpu_count() or 1)
  sizes = [int(s) for s in args.sizes.split(",")]
  if args.quick:
    sizes, args.queries, args.hnsw_full_max, args.hnsw_probe = [5000, 30000], 100, 5000, 2000
  rows, notes = [], []
  scratch = tempfile.mkdtemp(prefix="bench_scale_")
  try:
    for n in sizes:
      start = time.perf_counter()
      gallery, queries = clustered_gallery(n, args.queries, seed=args.seed)
      notes.append(
        f"n={n:,}: data generated in {time.perf_counter() - start:.0f} s "
        f"({gallery.nbytes / 2**30:.2f} GiB float32)"
      )
      truth, exact = bench_exact(faiss, gallery, queries, scratch)
      rows.append([n] + exact)
      print(rows[-1], flush=True)
      for reorder in args.reorders.split(","):
        rows += [[n] + r for r in bench_scann(gallery, queries, truth, scratch, reorder)]
      if not args.skip_hnsw:
        rows += [[n] + r for r in bench_hnsw(faiss, gallery, queries, truth, scratch, args)]
      del gallery, queries, truth
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  notes.append(
    "Peak GiB is the process's resident-memory high-water mark during that build (the "
    "gallery array itself included); bytes/vector is the saved index on disk. q/s: "
    f"{args.queries} queries in one batch on every core; the scann-auto rows stop at "
    "the first leaves setting with recall@10 >= 0.95, hnsw rows at the first efSearch."
  )
  path = common.write_result(
    args.name,
    "Scaling: exact vs ScaNN vs HNSW, 100k to 10M x 128",
    [
      "n",
      "method",
      "settings",
      "build_s",
      "peak_GiB",
      "bytes/vector",
      "queries_per_s",
      "recall@10",
    ],
    rows,
    " ".join(notes),
  )
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
