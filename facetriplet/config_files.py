"""Loading `configs/*.py` files by path, the way `--config=configs/x.py[:arg]` does.

Config files are plain Python files with `get_config(arg=None) -> ml_collections.ConfigDict`;
they are not a package, so one loads another (a variant loads `default.py`) through here too.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Optional

from facetriplet.errors import UserError


def load_module(path: str) -> ModuleType:
  """Imports the config file at `path` as a fresh module."""
  if not os.path.isfile(path):
    raise UserError(f"config file {path} not found: pass --config=configs/<name>.py")
  name = "facetriplet_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str, arg: Optional[str] = None):
  """`get_config(arg)` of the file at `path`; `path` may carry the arg as `file.py:arg`."""
  if arg is None and ":" in os.path.basename(path):
    path, arg = path.rsplit(":", 1)
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def sibling(config_file: str, name: str) -> ModuleType:
  """The config module `name` (e.g. "default.py") in the same folder as `config_file`."""
  return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))
