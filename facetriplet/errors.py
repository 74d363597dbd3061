"""Errors a user can cause, and how the tools report them.

Library code raises `UserError` (or a subclass) for anything a person can fix: a missing folder, a
bad flag, an index built by another model. The message names the thing and the fix. Tools wrap
their main with `run_tool`, which turns such an error into one line on stderr and exit status 2,
never a traceback. `run_tool` also gives every tool `--verbose` and, without it, keeps
TensorFlow's C++ start-up lines (CUDA probing, CPU features, oneDNN) off the terminal
(`quiet_tensorflow`); the tools import TensorFlow only after their flags and paths are checked.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence


class UserError(Exception):
  """A problem with the user's input or settings; the message says what and how to fix it."""


class ImageError(UserError):
  """An image file that cannot be used; `reason` is a short machine-friendly tag."""

  def __init__(self, path: str, reason: str, detail: str = ""):
    self.path = path
    self.reason = reason
    self.detail = detail
    super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class _TensorFlowInfoFilter(logging.Filter):
  """Drops INFO and DEBUG records logged from files under `package_dir` (tensorflow's folder)."""

  def __init__(self, package_dir: str):
    super().__init__()
    self.prefix = os.path.join(os.path.realpath(package_dir), "")

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING or not record.pathname:
      return True
    return not os.path.realpath(record.pathname).startswith(self.prefix)


def _tensorflow_dir() -> str | None:
  """The installed tensorflow package's folder, found without importing it."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  try:
    spec = importlib.util.find_spec("tensorflow")
  except (ImportError, ValueError):
    return None
  locations = list(spec.submodule_search_locations or []) if spec else []
  return locations[0] if locations else None


def quiet_tensorflow(verbose: bool = False, environ=os.environ) -> None:
  """Sets TF_CPP_MIN_LOG_LEVEL for a tool, before TensorFlow loads (later it has no effect).

  With --verbose "0": every line. Otherwise a level the user set is kept; else "2" (info and
  warning lines hidden: "Could not find cuda drivers", cpu_feature_guard, oneDNN, tf.data's
  end-of-sequence warnings; C++ errors still shown), or "3" on a machine without an NVIDIA
  driver, where XLA logs "failed call to cuInit" as an error although a CPU-only run is fine.
  Without --verbose, TensorFlow's own Python modules also show warnings and errors only: saving a
  SavedModel logs its bookkeeping at INFO ("Sharding callback duration", "Assets written to",
  "Writing fingerprint", input names with unsupported characters), some through absl's logger,
  which the project's own progress lines share (`_TensorFlowInfoFilter`: by the file that logs,
  inside the installed tensorflow package or not); only --verbose shows them again, not a
  TF_CPP_MIN_LOG_LEVEL the user set. Python exceptions, `UserError` lines and the project's own
  logging are not affected.
  """
  if verbose:
    environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    return
  package_dir = _tensorflow_dir()
  for name in ("tensorflow", "absl") if package_dir else ():
    logger = logging.getLogger(name)
    if not any(isinstance(f, _TensorFlowInfoFilter) for f in logger.filters):
      logger.addFilter(_TensorFlowInfoFilter(package_dir))
  if "TF_CPP_MIN_LOG_LEVEL" not in environ:
    no_gpu_driver = sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia")
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3" if no_gpu_driver else "2"


def run_tool(main: Callable[[Sequence[str]], None]) -> None:
  """Runs an absl main; a `UserError` becomes one line on stderr and exit status 2.

  Every tool gets `--verbose` (TensorFlow's start-up lines shown, see `quiet_tensorflow`).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool(
      "verbose",
      False,
      "Show TensorFlow's and CUDA's start-up log lines (hidden by default on the terminal).",
    )

  # As a console script the main module is setuptools' wrapper, so --help would show neither the
  # tool's docstring nor its flags: lend it both.
  module = sys.modules.get(main.__module__)
  if module is not None:
    for flag in flags.FLAGS.get_flags_for_module(module.__name__):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["verbose"])
    entry = sys.modules.get("__main__")
    if entry is not None and entry is not module and not entry.__doc__:
      entry.__doc__ = module.__doc__

  def guarded(argv: Sequence[str]) -> None:
    quiet_tensorflow(flags.FLAGS.verbose)
    try:
      main(argv)
    except UserError as e:
      prog = argv[0].rsplit("/", 1)[-1] if argv else "facetriplet"
      print(f"{prog}: error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print(
        "interrupted; outputs written so far are complete and a re-run resumes", file=sys.stderr
      )
      sys.exit(130)

  app.run(guarded)
