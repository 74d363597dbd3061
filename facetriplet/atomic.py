"""Atomic file writes: write under a temporary name in the same folder, then rename.

A killed job therefore never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success it is renamed to `path`.

  Works for files and folders: whatever the caller creates at the temporary path replaces `path`.
  On error the temporary is removed and `path` is left as it was.
  """
  directory = os.path.dirname(os.path.abspath(path)) or "."
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
  _remove(tmp)
  try:
    yield tmp
    if os.path.isdir(tmp) and os.path.isdir(path):
      # Folders cannot be replaced atomically over a non-empty folder: move the old one aside first.
      old = tmp + ".old"
      _remove(old)
      os.replace(path, old)
      os.replace(tmp, path)
      _remove(old)
    else:
      os.replace(tmp, path)
  finally:
    _remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
