"""Ingestion speed: images/s of `facetriplet.data.ingest.build_tfrecords`, by detector and worker count.

Each configuration decodes, crops and writes the whole input folder into a fresh temporary output
folder (nothing is resumed), timed around the library call: listing, planning, decoding + face
detection in the process pool (spawn start-up included), shard writing and the manifest.
`detector=none` (centred square, no face search) shows what the Haar cascade costs.

  python -m benchmarks.bench_ingest                       # LFW 2-4 (3,181 photos): ~6 min, 2 cores
  python -m benchmarks.bench_ingest --limit_identities=30 # ~80 photos: ~20 s

Flags: --input (identity folders, default ../shared/data/lfw_2to4), --limit_identities (first N
identity folders, linked file by file into a temporary folder), --detectors=mtcnn,haar,none,
--workers=1,0 (0 = every core), --name (result name). It writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Sequence

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_INPUT = os.path.join(os.path.dirname(REPO), "shared", "data", "lfw_2to4")


def subset_folder(input_dir: str, limit_identities: int, target: str) -> str:
  """Links the photos of the first `limit_identities` identity folders of `input_dir` into `target`.

  Args:
    input_dir: folder of identity sub-folders.
    limit_identities: how many identity folders to keep (sorted by name); 0 keeps all and
      returns `input_dir` unchanged.
    target: empty folder to fill with one sub-folder per identity of symbolic links.

  Returns:
    The folder to read (`target`, or `input_dir` when nothing is dropped).
  """
  if limit_identities <= 0:
    return input_dir
  names = sorted(n for n in os.listdir(input_dir)
                 if os.path.isdir(os.path.join(input_dir, n)))[:limit_identities]
  os.makedirs(target, exist_ok=True)
  for name in names:
    os.makedirs(os.path.join(target, name), exist_ok=True)
    for f in sorted(os.listdir(os.path.join(input_dir, name))):
      src = os.path.abspath(os.path.join(input_dir, name, f))
      dst = os.path.join(target, name, f)
      if os.path.isfile(src) and not os.path.lexists(dst):
        os.symlink(src, dst)
  return target


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def run_one(input_dir: str, detector: str, workers: int, scratch: str) -> dict:
  """One timed `build_tfrecords` call into a new folder under `scratch`."""
  from facetriplet.data import faces, ingest  # pylint: disable=g-import-not-at-top
  out = tempfile.mkdtemp(prefix=f"ingest_{detector}_{workers}_", dir=scratch)
  os.rmdir(out)  # build_tfrecords creates it
  start = time.perf_counter()
  summary = ingest.build_tfrecords(input_dir, out, crop=faces.CropSettings(detector=detector),
                                   workers=workers, progress=False)
  seconds = time.perf_counter() - start
  shutil.rmtree(out, ignore_errors=True)
  return {"detector": detector, "workers": summary.workers, "images": summary.decoded,
          "seconds": seconds, "images_per_second": summary.decoded / seconds,
          "no_face": summary.no_face, "rejected": summary.rejected}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--input", default=DEFAULT_INPUT, help="folder of identity sub-folders")
  parser.add_argument("--limit_identities", type=int, default=0,
                      help="use only the first N identity folders (0 = all)")
  parser.add_argument("--detectors", default="mtcnn,haar,none")
  parser.add_argument("--workers", type=_ints, default=[1, 0], help="0 = every core")
  parser.add_argument("--name", default="ingest",
                      help="result name (benchmarks/results/<name>.json)")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.input):
    print(f"input folder {args.input} not found: pass --input=<folder of identity folders>",
          file=sys.stderr)
    return 2
  # build_tfrecords imports TensorFlow when it writes the first shard; pay that once, untimed.
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  scratch = tempfile.mkdtemp(prefix="bench_ingest_")
  rows, runs = [], []
  try:
    input_dir = subset_folder(args.input, args.limit_identities, os.path.join(scratch, "input"))
    for detector in [d.strip() for d in args.detectors.split(",") if d.strip()]:
      for workers in args.workers:
        r = run_one(input_dir, detector, workers, scratch)
        runs.append(r)
        label = f"{r['workers']}" + (" (all)" if workers == 0 else "")
        rows.append([detector, label, r["images"], round(r["seconds"], 2),
                     round(r["images_per_second"], 1), r["no_face"]])
        print(f"detector={detector} workers={label}: {r['images']} images in "
              f"{r['seconds']:.1f} s = {r['images_per_second']:.1f} images/s, "
              f"no face {r['no_face']}, rejected {r['rejected']}", flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  source = os.path.basename(os.path.normpath(args.input))
  subset = f" (first {args.limit_identities} identities)" if args.limit_identities else ""
  notes = (f"Input: `{source}`{subset}, identity-folder layout, default crop (margin 0.2, 128 px, "
           "JPEG in the records), val_fraction 0.2. Each row is a fresh build into an empty "
           "temporary folder, timed around `build_tfrecords` (listing, process-pool start-up, "
           "decode + detect + crop, shard and manifest writing; TensorFlow already imported). "
           "On small inputs the pool start-up (spawned workers import OpenCV) dominates, which "
           "is why several workers can be slower than one for `detector=none`. `no face` counts "
           "the photos where the Haar cascade found no face (kept with the centred crop); with "
           "`detector=none` nothing is searched, so it is 0.")
  columns = ["detector", "workers", "images", "seconds", "images/s", "no face"]
  path = common.write_result(args.name, "Ingestion: build_tfrecords images/s", columns, rows,
                             notes)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
