"""Soak of the HTTP service with SIGKILL restarts (`benchmarks.soak.run_soak`): --searchers
searching clients, one enrolling and one deleting client against `facetriplet-serve` over a copy
of --index, the server killed with SIGKILL every --period_s seconds and restarted --restarts
times. Reports answers, 5xx, writes acknowledged and found, and every violation of the soak's
rules (see `benchmarks/soak.py`).

  facetriplet-build-index --model=dlib_resnet --gallery=../shared/data/orl_faces \
      --index_dir=/tmp/orl_index
  python -m benchmarks.bench_soak --index=/tmp/orl_index --photos=../shared/data/orl_faces

Queries and enrolments are photos of --photos (the first --queries files as queries, the next
--enrol files enrolled under new ids). Writes benchmarks/results/soak.json (--name).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from typing import Optional, Sequence

from benchmarks import common
from benchmarks.soak import run_soak

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".pgm", ".bmp", ".webp")


def _photos(folder: str) -> list[str]:
  found = []
  for root, _, names in os.walk(folder):
    found += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTS)]
  return sorted(found)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--index", required=True, help="index folder (a copy is changed)")
  parser.add_argument("--photos", required=True, help="folder of photos to query and enrol")
  parser.add_argument("--queries", type=int, default=40)
  parser.add_argument("--enrol", type=int, default=40)
  parser.add_argument("--restarts", type=int, default=3)
  parser.add_argument("--period_s", type=float, default=15.0)
  parser.add_argument("--searchers", type=int, default=16)
  parser.add_argument("--name", default="soak")
  args = parser.parse_args(argv)
  paths = _photos(args.photos)[:: max(1, len(_photos(args.photos)) // (args.queries + args.enrol))]
  data = []
  for path in paths[: args.queries + args.enrol]:
    with open(path, "rb") as f:
      data.append(f.read())
  queries, faces = data[: args.queries], data[args.queries :]
  with tempfile.TemporaryDirectory() as work:
    index_dir = os.path.join(work, "index")
    shutil.copytree(args.index, index_dir)
    figures = run_soak(index_dir, queries, faces, args.restarts, args.period_s, args.searchers)
  print(figures, flush=True)
  columns = [
    "seconds",
    "SIGKILL restarts",
    "answers",
    "searches",
    "5xx",
    "refused while down",
    "enrolments acknowledged",
    "deletions acknowledged",
    "live acknowledged found",
    "violations",
  ]
  row = [
    figures["seconds"],
    figures["restarts"],
    figures["answers"],
    figures["searches"],
    figures["server_errors"],
    figures["refused_while_down"],
    figures["enrolments_acknowledged"],
    figures["deletions_acknowledged"],
    figures["live_acknowledged_found"],
    len(figures["violations"]),
  ]
  index_name = os.path.basename(args.index.rstrip("/"))
  common.write_result(
    args.name,
    "HTTP service soak: searching, enrolling, deleting clients, SIGKILL and restart",
    columns,
    [row],
    notes=(
      f"{args.searchers} searching clients (k=1000: every item, so a deleted id would show), one "
      "enrolling and one deleting client; the server killed with SIGKILL every "
      f"{args.period_s:g} s and restarted {args.restarts} times; index {index_name}, "
      f"{len(queries)} query photos and {len(faces)} enrolled photos from {args.photos}. "
      "'refused while down': connections refused or cut while the server was dead or starting. "
      "Index sizes after the restarts: "
      f"{figures['index_sizes_after_restarts']}. Violations: {figures['violations'][:5] or 'none'}."
    ),
  )
  return 1 if figures["violations"] else 0


if __name__ == "__main__":
  raise SystemExit(main())
