"""Atomic file writes: write under a temporary name in the same folder, then rename.

A killed job therefore never leaves a half-written file that a later run would trust.

Folders (an index, an export) are replaced by swapping the new folder with the old one in one
step (Linux `renameat2(RENAME_EXCHANGE)`), so the target path holds the complete old or the
complete new folder at every instant. Where the kernel or filesystem cannot swap, the old folder
is moved aside and the new one renamed in; a kill between those two renames leaves the old one
aside under `.<name>.tmp-<pid>.old`, and the next `atomic_path` on the same target puts it back
(when the target is missing) and removes what killed runs left, so nothing is lost and no
temporary folder stays behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
from typing import Any, Callable, Iterator

from facetriplet.errors import UserError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
  """Swaps two existing paths atomically; False where the system cannot."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
  except (OSError, AttributeError):
    return False
  fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
    return False
  raise OSError(err, os.strerror(err), b)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def recover(path: str) -> None:
  """Undoes what killed runs left beside `path`: the old folder set aside by an interrupted
  replacement comes back when `path` is missing; temporaries of dead processes are removed."""
  directory = os.path.dirname(os.path.abspath(path)) or "."
  base = os.path.basename(path)
  # `.<base>.tmp-<pid>`, its set-aside `.old`, and staging names with an extra suffix
  # (`.<base>.tmp-<pid>.keras`, which Keras insists on).
  pattern = re.compile(r"^\." + re.escape(base) + r"\.tmp-(\d+)(\.old)?(\.[A-Za-z0-9]+)?$")
  try:
    names = sorted(os.listdir(directory))
  except OSError:
    return
  for name in names:
    m = pattern.match(name)
    if not m or _pid_alive(int(m.group(1))) and int(m.group(1)) != os.getpid():
      continue
    leftover = os.path.join(directory, name)
    if m.group(2) and not m.group(3) and not os.path.exists(path):
      os.replace(leftover, path)  # the complete old folder, put back
    else:
      remove(leftover)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success it is renamed to `path`.

  Works for files and folders: whatever the caller creates at the temporary path replaces `path`.
  On error the temporary is removed and `path` is left as it was.
  """
  directory = os.path.dirname(os.path.abspath(path)) or "."
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
  recover(path)
  remove(tmp)
  try:
    yield tmp
    if os.path.isdir(tmp) and os.path.isdir(path) and not os.path.islink(path):
      if _exchange(tmp, path):  # `path` is the new folder now, `tmp` the old one
        remove(tmp)
      else:  # No atomic swap here: old aside, new in; `recover` repairs a kill in between.
        old = tmp + ".old"
        remove(old)
        os.replace(path, old)
        os.replace(tmp, path)
        remove(old)
    else:
      os.replace(tmp, path)
  finally:
    remove(tmp)


def fsync_dir(path: str) -> None:
  """Flushes a folder's entries (names created, renamed or removed in it) to the disk."""
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
  try:
    os.fsync(fd)
  except OSError as e:  # a filesystem that cannot sync folders has nothing more to flush
    if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
      raise
  finally:
    os.close(fd)


def fsync_tree(path: str) -> None:
  """Flushes every file and folder under `path` (a file or a folder) to the disk.

  Called on a temporary before `atomic_path` renames it into place, and `fsync_dir` on the
  parent after, what was written survives a power loss as a whole: a rename is durable only
  once the data it names is.
  """
  if not os.path.isdir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    return
  for root, _, names in os.walk(path, topdown=False):  # files, then their folder
    for name in names:
      if not os.path.islink(os.path.join(root, name)):
        fsync_tree(os.path.join(root, name))
    fsync_dir(root)


def write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def remove(path: str) -> None:
  """Removes a file, link or folder tree at `path`; a missing path is not an error."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def claim_folder(path: str, ours: Callable[[str], bool], what: str, tool: str) -> list[str]:
  """The one check of a tool's output folder: `path` is a folder (created when missing) holding
  only names the tool writes (`ours`). Returns those names, sorted.

  Raises:
    UserError: `path` is a file, or holds a name that is not ours (named, with the fix).
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{what} {path} is a file: choose a folder")
  os.makedirs(path, exist_ok=True)
  names = sorted(os.listdir(path))
  foreign = [n for n in names if not ours(n)]
  if foreign:
    raise UserError(
      f"{what} {path} holds {foreign[0]}, which {tool} did not write: choose an empty folder"
    )
  return names
