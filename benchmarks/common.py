"""What every benchmark shares: a description of the machine and one JSON result file per benchmark.

Each benchmark script writes `benchmarks/results/<name>.json`:
  {"name", "title", "command", "machine", "date", "columns": [...], "rows": [[...], ...], "notes"}
and `python -m benchmarks.report` regenerates BENCHMARKS.md from all of them as tables.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any, Sequence

from facetriplet import atomic

# FACETRIPLET_BENCH_RESULTS sends results elsewhere (quick runs must not touch the real tables).
RESULTS_DIR = os.environ.get(
  "FACETRIPLET_BENCH_RESULTS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
)


def machine_description() -> str:
  """CPU model, core count, memory and GPU (if TensorFlow sees one)."""
  cpu = platform.processor() or platform.machine()
  vector = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
          cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          wanted = (
            "sse4_2",
            "avx",
            "avx2",
            "fma",
            "avx512f",
            "avx512_vnni",
            "avx512_bf16",
            "amx_tile",
          )
          vector = " (" + " ".join(f for f in wanted if f in flags) + ")"
          break
  except OSError:
    pass
  cpu += vector
  mem = ""
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      kb = int(f.readline().split()[1])
      mem = f", {kb / 2**20:.0f} GiB RAM"
  except (OSError, ValueError, IndexError):
    pass
  gpu = ""
  if "tensorflow" in sys.modules:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
      names = []
      for g in gpus:
        try:
          names.append(tf.config.experimental.get_device_details(g).get("device_name", g.name))
        except Exception:  # pylint: disable=broad-except
          names.append(g.name)
      gpu = ", GPU: " + ", ".join(names)
  return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}"


def command_line() -> str:
  return " ".join(
    [
      "python",
      "-m",
      sys.modules["__main__"].__spec__.name
      if getattr(sys.modules["__main__"], "__spec__", None)
      else sys.argv[0],
    ]
    + sys.argv[1:]
  )


def write_result(
  name: str,
  title: str,
  columns: Sequence[str],
  rows: Sequence[Sequence[Any]],
  notes: str = "",
  command: str | None = None,
) -> str:
  """Writes benchmarks/results/<name>.json atomically and returns its path."""
  path = os.path.join(RESULTS_DIR, f"{name}.json")
  atomic.write_json(
    path,
    {
      "name": name,
      "title": title,
      "command": command or command_line(),
      "machine": machine_description(),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "columns": list(columns),
      "rows": [list(r) for r in rows],
      "notes": notes,
    },
  )
  return path
