"""Ingestion speed: images/s of `facetriplet.data.ingest.build_tfrecords` by detector and worker
count, and of the same ingest as an Apache Beam pipeline (`beam_ingest.build_tfrecords_beam`).

Each configuration decodes, crops and writes the whole input folder into a fresh temporary output
folder (nothing is resumed), timed around the library call: listing, planning, decoding + face
detection in the process pool (spawn start-up included), shard writing and the manifest.
`detector=none` (centred square, no face search) shows what the Haar cascade costs.

  python -m benchmarks.bench_ingest                       # LFW 2-4 (3,181 photos): ~6 min, 2 cores
  python -m benchmarks.bench_ingest --limit_identities=30 # ~80 photos: ~20 s
  python -m benchmarks.bench_ingest --engines=local,beam --detectors=mtcnn --name=ingest_beam
      # local process pool vs Beam DirectRunner, 1 and all workers, LFW 2-4, MTCNN: ~15 min

Flags: --input (identity folders, default ../shared/data/lfw_2to4), --limit_identities (first N
identity folders, linked file by file into a temporary folder), --detectors=mtcnn,haar,none,
--workers=1,0 (0 = every core), --engines=local,beam (default local), --runner (Beam runner,
default DirectRunner; with DirectRunner each --workers value W runs as --direct_num_workers=W,
multi_processing when W != 1, in_memory for 1), --beam_args (more Beam options, one string),
--name (result name). It writes benchmarks/results/<name>.json (default ingest.json).
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
  names = sorted(n for n in os.listdir(input_dir) if os.path.isdir(os.path.join(input_dir, n)))[
    :limit_identities
  ]
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


def beam_options(runner: str, workers: int, extra: Sequence[str]) -> list[str]:
  """Beam options of one run: DirectRunner's worker count and mode, then `extra`."""
  if runner != "DirectRunner":
    return list(extra)
  mode = "in_memory" if workers == 1 else "multi_processing"
  return [f"--direct_num_workers={workers}", f"--direct_running_mode={mode}", *extra]


def run_one(
  input_dir: str,
  detector: str,
  workers: int,
  scratch: str,
  engine: str = "local",
  runner: str = "DirectRunner",
  beam_args: Sequence[str] = (),
) -> dict:
  """One timed `build_tfrecords` (engine local) or `build_tfrecords_beam` (engine beam) call into
  a new folder under `scratch`."""
  from facetriplet.data import faces, ingest  # pylint: disable=g-import-not-at-top

  out = tempfile.mkdtemp(prefix=f"ingest_{engine}_{detector}_{workers}_", dir=scratch)
  os.rmdir(out)  # build_tfrecords creates it
  crop = faces.CropSettings(detector=detector)
  start = time.perf_counter()
  if engine == "beam":
    from facetriplet.data import beam_ingest  # pylint: disable=g-import-not-at-top

    summary = beam_ingest.build_tfrecords_beam(
      input_dir, out, runner, beam_options(runner, workers, beam_args), crop=crop
    )
    used = workers or os.cpu_count() or 1
  else:
    summary = ingest.build_tfrecords(input_dir, out, crop=crop, workers=workers, progress=False)
    used = summary.workers
  seconds = time.perf_counter() - start
  shutil.rmtree(out, ignore_errors=True)
  return {
    "engine": engine if engine == "local" else f"beam {runner}",
    "detector": detector,
    "workers": used,
    "images": summary.decoded,
    "seconds": seconds,
    "images_per_second": summary.decoded / seconds,
    "no_face": summary.no_face,
    "rejected": summary.rejected,
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--input", default=DEFAULT_INPUT, help="folder of identity sub-folders")
  parser.add_argument(
    "--limit_identities",
    type=int,
    default=0,
    help="use only the first N identity folders (0 = all)",
  )
  parser.add_argument("--detectors", default="mtcnn,haar,none")
  parser.add_argument("--workers", type=_ints, default=[1, 0], help="0 = every core")
  parser.add_argument(
    "--engines", default="local", help="local (process pool) and/or beam (Apache Beam pipeline)"
  )
  parser.add_argument("--runner", default="DirectRunner", help="Beam runner of engine beam")
  parser.add_argument(
    "--beam_args",
    default="",
    help="further Beam pipeline options, e.g. '--prism_location=/bin/prism'",
  )
  parser.add_argument(
    "--name", default="ingest", help="result name (benchmarks/results/<name>.json)"
  )
  args = parser.parse_args(argv)
  if not os.path.isdir(args.input):
    print(
      f"input folder {args.input} not found: pass --input=<folder of identity folders>",
      file=sys.stderr,
    )
    return 2
  # build_tfrecords imports TensorFlow when it writes the first shard; pay that once, untimed.
  import tensorflow  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import

  scratch = tempfile.mkdtemp(prefix="bench_ingest_")
  rows, runs = [], []
  try:
    input_dir = subset_folder(args.input, args.limit_identities, os.path.join(scratch, "input"))
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not set(engines) <= {"local", "beam"}:
      print(f"--engines={args.engines}: use local and/or beam", file=sys.stderr)
      return 2
    for detector in [d.strip() for d in args.detectors.split(",") if d.strip()]:
      for engine in engines:
        for workers in args.workers:
          r = run_one(
            input_dir, detector, workers, scratch, engine, args.runner, args.beam_args.split()
          )
          runs.append(r)
          label = f"{r['workers']}" + (" (all)" if workers == 0 else "")
          rows.append(
            [
              r["engine"],
              detector,
              label,
              r["images"],
              round(r["seconds"], 2),
              round(r["images_per_second"], 1),
              r["no_face"],
            ]
          )
          print(
            f"engine={r['engine']} detector={detector} workers={label}: {r['images']} "
            f"images in {r['seconds']:.1f} s = {r['images_per_second']:.1f} images/s, "
            f"no face {r['no_face']}, rejected {r['rejected']}",
            flush=True,
          )
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  source = os.path.basename(os.path.normpath(args.input))
  subset = f" (first {args.limit_identities} identities)" if args.limit_identities else ""
  notes = (
    f"Input: `{source}`{subset}, identity-folder layout, default crop (margin 0.2, 128 px, "
    "JPEG in the records), val_fraction 0.2. Each row is a fresh build into an empty "
    "temporary folder, timed around `build_tfrecords` (listing, process-pool start-up, "
    "decode + detect + crop, shard and manifest writing; TensorFlow already imported). "
    "On small inputs the pool start-up (spawned workers import OpenCV) dominates, which "
    "is why several workers can be slower than one for `detector=none`. `no face` counts "
    "the photos where the Haar cascade found no face (kept with the centred crop); with "
    "`detector=none` nothing is searched, so it is 0. Engine `beam <runner>` is the same "
    "ingest as an Apache Beam pipeline (`beam_ingest`, same shards byte for byte); with "
    "DirectRunner its workers are `--direct_num_workers` (multi_processing mode when "
    "more than one), and its time includes the pipeline's start-up and the SDK worker "
    "processes' imports."
  )
  columns = ["engine", "detector", "workers", "images", "seconds", "images/s", "no face"]
  path = common.write_result(args.name, "Ingestion: build_tfrecords images/s", columns, rows, notes)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
