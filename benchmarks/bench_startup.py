r"""Time to first word: how long a tool takes to answer `--help`, a bad flag, a missing file or a
missing or damaged index, as a user runs it (a new process each time), here and in another
checkout of facetriplet (--before, e.g. the commit before a change) in the same run.

Each case runs --rounds times per checkout, alternating checkouts; the table gives the median
wall time in seconds, the exit code, and whether the answer was one line (no traceback). The
index cases use a folder made here: missing (a path that does not exist) and damaged (an
index.json cut in half).

  python -m benchmarks.bench_startup
  git worktree add /tmp/before <commit> && ln -s tools /tmp/before/facetriplet_tools
  python -m benchmarks.bench_startup --before=/tmp/before

Writes benchmarks/results/startup.json (--name).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cases(work: str) -> list[tuple[str, list[str]]]:
  """(label, tool arguments) of each case; `work` holds the damaged index."""
  damaged = os.path.join(work, "damaged_index")
  os.makedirs(damaged, exist_ok=True)
  with open(os.path.join(damaged, "index.json"), "w", encoding="utf-8") as f:
    f.write('{"format": 1, "size": ')
  photo = os.path.join(work, "face.jpg")  # a readable photo: only the index is wrong
  import cv2  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  cv2.imwrite(photo, np.full((64, 64, 3), 128, np.uint8))
  return [
    ("search --help", ["search", "--help"]),
    ("serve --help", ["serve", "--help"]),
    ("train --help", ["train", "--help"]),
    ("build_tfrecords --detector=bogus", ["build_tfrecords", "--input=.", "--detector=bogus"]),
    ("search: missing index", ["search", "--index=/nonexistent/index", photo]),
    ("search: damaged index", ["search", f"--index={damaged}", photo]),
    ("retrieve: missing queries", ["retrieve", f"--index={damaged}", "--queries=/nonexistent"]),
    ("build_tfrecords: missing input", ["build_tfrecords", "--input=/nonexistent/in"]),
  ]


def run(checkout: str, args: list[str]) -> tuple[float, int, bool]:
  """Seconds, exit code, and whether stderr was free of a traceback."""
  env = dict(os.environ, PYTHONPATH=checkout)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  start = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, "-m", f"facetriplet_tools.{args[0]}", *args[1:]],
    cwd=checkout,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  return time.perf_counter() - start, proc.returncode, "Traceback" not in proc.stderr


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--before", help="another facetriplet checkout to time in the same run")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--name", default="startup")
  args = parser.parse_args(argv)
  checkouts = [("before", os.path.abspath(args.before))] if args.before else []
  checkouts.append(("now", REPO))
  rows = []
  with tempfile.TemporaryDirectory() as work:
    for label, tool_args in cases(work):
      cells = []
      for _, checkout in checkouts:
        runs = []
        for _ in range(args.rounds):
          runs.append(run(checkout, tool_args))
        seconds = statistics.median(r[0] for r in runs)
        cells += [round(seconds, 2), runs[-1][1], "yes" if runs[-1][2] else "traceback"]
      rows.append([label] + cells)
      print(label, cells, flush=True)
  columns = ["case"]
  for name, _ in checkouts:
    columns += [f"{name}: s", f"{name}: exit", f"{name}: one line"]
  common.write_result(
    args.name,
    "Time to first word: --help, a bad flag, a missing file or index (new process each time)",
    columns,
    rows,
    notes=(
      f"Median of {args.rounds} runs of `python -m facetriplet_tools.<tool> ...` per checkout, "
      "TF_CPP_MIN_LOG_LEVEL unset (as a user runs it). "
      + (f"before = {args.before}; " if args.before else "")
      + "now = this checkout."
    ),
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
