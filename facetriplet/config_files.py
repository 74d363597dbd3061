"""Loading config files by path or by the name of a shipped one, as `--config=` does.

Config files are plain Python files with `get_config(arg=None) -> ml_collections.ConfigDict`.
The shipped ones live in `facetriplet/configs/` (installed with the package; `configs/` in a
checkout points there), so `--config=lfw` (a name) and `--config=configs/lfw.py` (a path) are the
same file. One config loads another (a variant loads `default.py`) through `sibling`.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Optional

from facetriplet.errors import UserError

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped() -> list[str]:
  """Names of the configs shipped with the package (e.g. ['default', 'lfw', 'orl']): the files
  that define `get_config` (common.py holds shared helpers)."""
  names = []
  for n in os.listdir(SHIPPED_DIR):
    if n.endswith(".py") and not n.startswith("_"):
      with open(os.path.join(SHIPPED_DIR, n), encoding="utf-8") as f:
        if "\ndef get_config(" in f.read():
          names.append(os.path.splitext(n)[0])
  return sorted(names)


def resolve(value: str) -> str:
  """`--config` value -> a config file path (`:arg` kept): a shipped config's name ('lfw',
  'orl:smoke') becomes its path in the package; anything else is returned as given."""
  path, sep, arg = value.partition(":")
  if os.sep not in path and "/" not in path and not path.endswith(".py") and path in shipped():
    return os.path.join(SHIPPED_DIR, path + ".py") + sep + arg
  return value


def resolve_argv(argv: list[str]) -> list[str]:
  """`argv` with the value of `--config=NAME` / `--config NAME` resolved by `resolve`."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + resolve(arg[len("--config=") :])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out


def check_file(path: str) -> None:
  """UserError naming the choices when there is no config file at `path` (no `:arg`)."""
  if not os.path.isfile(path):
    raise UserError(
      f"config file {path} not found: pass --config=<name> (shipped: "
      f"{', '.join(shipped())}) or --config=<path of a config .py file>"
    )


def load_module(path: str) -> ModuleType:
  """Imports the config file at `path` as a fresh module."""
  check_file(path)
  name = "facetriplet_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str, arg: Optional[str] = None):
  """`get_config(arg)` of the file at `path`; `path` may carry the arg as `file.py:arg`."""
  path = resolve(path)
  if arg is None and ":" in os.path.basename(path):
    path, arg = path.rsplit(":", 1)
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def sibling(config_file: str, name: str) -> ModuleType:
  """The config module `name` (e.g. "default.py") in the same folder as `config_file`."""
  return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))
