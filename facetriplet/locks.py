"""A readers-writer lock: many readers at once, or one writer alone (the Searcher's searches and
its enrolments, removals and saves)."""

from __future__ import annotations

import contextlib
import threading


class ReadWriteLock:
  """Many readers (searches) or one writer (add/remove/save)."""

  def __init__(self):
    self._cond = threading.Condition()
    self._readers = 0
    self._writing = False

  @contextlib.contextmanager
  def read(self):
    with self._cond:
      while self._writing:
        self._cond.wait()
      self._readers += 1
    try:
      yield
    finally:
      with self._cond:
        self._readers -= 1
        self._cond.notify_all()

  @contextlib.contextmanager
  def write(self):
    with self._cond:
      while self._writing or self._readers:
        self._cond.wait()
      self._writing = True
    try:
      yield
    finally:
      with self._cond:
        self._writing = False
        self._cond.notify_all()
