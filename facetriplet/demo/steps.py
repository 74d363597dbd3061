"""A demo step: one installed facetriplet tool run in a subprocess, printed first so the demo is a
walk-through, its useful lines echoed (everything goes to <workdir>/logs/<step>.log).

Echoed: a tool's stdout (its summary, Keras' epoch lines) less TensorFlow's C++ noise, and of its
stderr (absl logs) only the training plan, the per-epoch val numbers and one-line tool errors.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from typing import Optional, Sequence

from facetriplet.errors import UserError

_ABSL = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_ABSL_SHOWN = re.compile(r"val retrieval|global batch|starting .* from scratch|resum")
_NOISE = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+: [IWE] |cuInit|^\s*$")


def _tool_command(name: str) -> list[str]:
  script = os.path.join(os.path.dirname(sys.executable), f"facetriplet-{name}")
  return (
    [script]
    if os.path.isfile(script)
    else [sys.executable, "-m", f"facetriplet_tools.{name.replace('-', '_')}"]
  )


def _pump(stream, log, lock, show) -> None:
  """Copies a child's stream to the log, echoing the lines `show` picks (with absl's prefix cut)."""
  for line in stream:
    with lock:
      log.write(line)
      line = line.rstrip()
      shown = show(line)
      if shown is not None:
        print("  " + shown, flush=True)


def _stdout_line(line: str) -> Optional[str]:
  return None if _NOISE.search(line) else line  # tool prints, Keras epoch lines


def _stderr_line(line: str) -> Optional[str]:
  """Of the logs, only the training plan and per-epoch val numbers, and one-line tool errors."""
  if _ABSL.match(line):
    return _ABSL.sub("", line) if _ABSL_SHOWN.search(line) else None
  return line if ": error: " in line else None


def run(step: str, tool: str, args: Sequence[str], workdir: str) -> None:
  """Runs facetriplet-<tool> in `workdir`, echoing its useful lines (all: logs/<step>.log);
  raises UserError if it fails."""
  command = _tool_command(tool) + list(args)
  print(f"\n$ {' '.join(['facetriplet-' + tool] + list(args))}", flush=True)
  log_path = os.path.join(workdir, "logs", f"{step}.log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
  lock = threading.Lock()
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(
      command,
      cwd=workdir,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      errors="replace",
    )
    pumps = [
      threading.Thread(target=_pump, args=(proc.stdout, log, lock, _stdout_line)),
      threading.Thread(target=_pump, args=(proc.stderr, log, lock, _stderr_line)),
    ]
    for t in pumps:
      t.start()
    try:
      code = proc.wait()
    except KeyboardInterrupt:
      proc.send_signal(signal.SIGINT)
      proc.wait()
      raise
    finally:
      for t in pumps:
        t.join()
  if code != 0:
    with open(log_path, encoding="utf-8") as f:
      tail = f.read().splitlines()[-20:]
    print("\n".join("  | " + t for t in tail), file=sys.stderr)
    raise UserError(
      f"step '{step}' failed (facetriplet-{tool} exit status {code}); full log: "
      f"{log_path}. Fix the cause and run the same command again to resume"
    )
