"""Runs every benchmark in sequence, each in its own process, then regenerates BENCHMARKS.md.

  python -m benchmarks.run_all            # `make bench`: default sizes for a 2-core CPU, ~1.6 h
  python -m benchmarks.run_all --quick    # tiny sizes, ~5 min: checks that every script runs

Order: ingest, input_pipeline, train (ResNet-18-style, then ResNet50), embed, search (100k and 1M),
quality (see BENCHMARKS below for the arguments of each and its expected runtime on 2 cores). A
benchmark that fails, is missing or runs past --timeout_min does not stop the others; the failures
are listed at the end and the exit status is 1. Output of each run is streamed and kept in
--log_dir.

`--quick` never touches the real results: each benchmark runs with `benchmarks.common.RESULTS_DIR`
pointed at a temporary folder, the quality runs train in a temporary workdir, and the report is
rendered into that folder (its path is printed) instead of BENCHMARKS.md.
`--only=embed,quality` / `--skip=search_1m` pick benchmarks by name.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Benchmark(NamedTuple):
  name: str
  module: str
  args: list[str]  # default (full) size for the 2-core CPU machine
  quick_args: list[str]  # tiny size; "{tmp}" is replaced by the quick run's scratch folder
  expected: str  # runtime at the default size on 2 cores


BENCHMARKS = [
  Benchmark("ingest", "benchmarks.bench_ingest", [], ["--limit_identities=20"], "~5 min"),
  Benchmark(
    "input_pipeline",
    "benchmarks.bench_input_pipeline",
    [],
    ["--images=120", "--p=4", "--k=4", "--batches=3"],
    "~1 min",
  ),
  # bench_train writes train_<backbone>.json: the configs/lfw.py-like net, then ResNet50.
  Benchmark(
    "train",
    "benchmarks.bench_train",
    [],
    ["--image_size=32", "--width=0.125", "--batch=16", "--steps=2"],
    "~1 min",
  ),
  Benchmark(
    "train_resnet50",
    "benchmarks.bench_train",
    ["--backbone=resnet50", "--image_size=112", "--batch=32", "--steps=5"],
    ["--backbone=resnet50", "--image_size=32", "--batch=8", "--steps=1"],
    "~3 min",
  ),
  Benchmark(
    "embed",
    "benchmarks.bench_embed",
    [],
    ["--backbone=resnet18", "--width=0.125", "--image_size=32", "--batches=1,8", "--seconds=1"],
    "~5 min",
  ),
  Benchmark(
    "search_100k",
    "benchmarks.bench_search",
    ["--sizes=100000", "--queries=1000"],
    ["--sizes=5000", "--queries=100", "--hnsw_build_budget_s=60"],
    "~2 min",
  ),
  Benchmark(
    "search_1m",
    "benchmarks.bench_search",
    ["--sizes=1000000", "--queries=1000", "--hnsw_m=16", "--hnsw_build_budget_s=480"],
    ["--sizes=20000", "--queries=100", "--skip_faiss"],
    "~15 min",
  ),
  Benchmark("serve", "benchmarks.bench_serve", [], ["--quick"], "~10 min"),
  Benchmark(
    "quality",
    "benchmarks.bench_quality",
    [],
    [
      "--config_variant=smoke",
      "--epochs=1",
      "--limit_identities=60",
      "--workdir_root={tmp}/quality",
      "--classical=pixels,lbp",
    ],
    "~60 min",
  ),
]

# Runs a benchmark module as __main__ after pointing common.RESULTS_DIR elsewhere (quick mode).
_LAUNCHER = """
import runpy, sys
results, module = sys.argv[1], sys.argv[2]
from benchmarks import common
common.RESULTS_DIR = results
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _module_exists(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def run_benchmark(argv: list[str], log_path: str, timeout_s: float) -> tuple[int, float]:
  """Runs `argv` in its own process group, streams + logs its output; returns (rc, seconds)."""
  start = time.time()
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(
      argv,
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      errors="replace",
      start_new_session=True,
    )

    def tee():
      for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)

    reader = threading.Thread(target=tee, daemon=True)
    reader.start()
    try:
      rc = proc.wait(timeout=timeout_s or None)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGTERM)  # the benchmark's own process group only
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
      rc = 124
    except KeyboardInterrupt:
      os.killpg(proc.pid, signal.SIGTERM)
      proc.wait()
      raise
    reader.join(timeout=10)
  return rc, time.time() - start


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes; real results untouched")
  parser.add_argument("--only", default="", help="comma-separated benchmark names")
  parser.add_argument("--skip", default="", help="comma-separated benchmark names")
  parser.add_argument("--timeout_min", type=float, default=0.0, help="per benchmark (0 = none)")
  parser.add_argument("--log_dir", default="", help="default: a temporary folder")
  parser.add_argument("--no_report", action="store_true", help="do not regenerate BENCHMARKS.md")
  args = parser.parse_args(argv)
  names = [b.name for b in BENCHMARKS]
  only = [n for n in args.only.split(",") if n]
  skip = [n for n in args.skip.split(",") if n]
  unknown = [n for n in only + skip if n not in names]
  if unknown:
    parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(names)}")
  chosen = [b for b in BENCHMARKS if (not only or b.name in only) and b.name not in skip]

  start = time.time()
  tmp = tempfile.mkdtemp(prefix="bench_quick_") if args.quick else ""
  results_dir = os.path.join(tmp, "results") if args.quick else ""
  if results_dir:
    os.makedirs(results_dir)
  log_dir = args.log_dir or tempfile.mkdtemp(prefix="bench_logs_")
  os.makedirs(log_dir, exist_ok=True)
  outcome = []
  for b in chosen:
    extra = [a.replace("{tmp}", tmp) for a in (b.quick_args if args.quick else b.args)]
    print(
      f"\n=== {b.name}: python -m {b.module} {' '.join(extra)}"
      + ("" if args.quick else f"  (expected {b.expected})")
      + " ===",
      flush=True,
    )
    if not _module_exists(b.module):
      print(f"=== {b.name}: {b.module} is missing ===", flush=True)
      outcome.append((b.name, "missing", 0.0))
      continue
    if args.quick:
      cmd = [sys.executable, "-c", _LAUNCHER, results_dir, b.module, *extra]
    else:
      cmd = [sys.executable, "-m", b.module, *extra]
    rc, seconds = run_benchmark(cmd, os.path.join(log_dir, f"{b.name}.log"), args.timeout_min * 60)
    status = "ok" if rc == 0 else ("timeout" if rc == 124 else f"failed (exit {rc})")
    print(f"=== {b.name}: {status} in {seconds / 60:.1f} min ===", flush=True)
    outcome.append((b.name, status, seconds))

  report_status = "skipped"
  if not args.no_report:
    if args.quick:
      from benchmarks import report  # pylint: disable=g-import-not-at-top

      report.RESULTS, report.OUTPUT = results_dir, os.path.join(tmp, "BENCHMARKS.md")
      report.main()
      report_status = f"rendered into {report.OUTPUT}"
    else:
      rc = subprocess.call([sys.executable, "-m", "benchmarks.report"], cwd=REPO)
      report_status = "BENCHMARKS.md regenerated" if rc == 0 else f"failed (exit {rc})"
      if rc:
        outcome.append(("report", report_status, 0.0))

  print("\nsummary:")
  for name, status, seconds in outcome:
    print(f"  {name:16s} {status:20s} {seconds / 60:6.1f} min")
  print(f"  report: {report_status}; logs in {log_dir}")
  failed = [n for n, s, _ in outcome if s != "ok"]
  print(
    f"total {(time.time() - start) / 60:.1f} min"
    + (f"; FAILED: {', '.join(failed)}" if failed else "; all ok")
  )
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
