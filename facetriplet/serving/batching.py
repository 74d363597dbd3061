"""What the HTTP service (`serve.py`) needs around a `Searcher`: micro-batched searches and
group-committed saves. Neither knows about HTTP.

`MicroBatcher` puts concurrent search requests on a short queue; one worker thread takes up to
`max_batch` of them (waiting at most `window_s` for more, and only while other requests are on
their way), calls `Searcher.search` once for the whole batch with the largest k asked, and trims
each answer to its own k and min_score. One model call then serves many requests.

`GroupCommit` makes every enrol/remove durable before it is reported: `commit()` returns once a
`Searcher.save()` that started after the caller's change has completed. Changes that arrive
while a save runs share the next save, so a burst of enrolments costs a few saves, not one each.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from typing import Any, Optional, Sequence

from absl import logging

from facetriplet.search import engine


@dataclasses.dataclass
class SearchRequest:
  """One query: a decoded RGB image and what its sender asked for."""

  image: Any  # RGB uint8 [H, W, 3] (or anything Searcher.search takes)
  k: int
  min_score: Optional[float] = None
  faces_mode: str = "largest"
  future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)


def trim(result: Any, k: int, min_score: Optional[float]) -> Any:
  """A SearchResult cut to its first k matches scoring at least min_score (ranks kept)."""
  matches = [m for m in result.matches if min_score is None or m.score >= min_score][:k]
  return dataclasses.replace(result, matches=matches)


def search_batch(searcher: Any, requests: Sequence[SearchRequest]) -> list[Any]:
  """Answers requests of one faces_mode with one `searcher.search` call: a SearchResult per
  request ('largest') or a list of them ('all')."""
  mode = requests[0].faces_mode
  k = max(1, min(max(r.k for r in requests), len(searcher)))  # no warning for k > gallery
  results = searcher.search([r.image for r in requests], k=k, faces_mode=mode)
  if mode == "all":
    return [
      [trim(x, r.k, r.min_score) for x in group]
      for r, group in zip(requests, engine.split_by_image(results, len(requests)))
    ]
  return [trim(x, r.k, r.min_score) for r, x in zip(requests, results)]


class MicroBatcher:
  """Collects concurrent search requests into one `Searcher.search` call per batch.

  Usage: `with batcher.arriving(): ...decode the upload...; future = batcher.submit(request)`.
  `arriving` tells the worker that a request is on its way, so it waits (at most `window_s`) for
  it; a lone request is answered at once.
  """

  def __init__(self, searcher: Any, window_s: float = 0.005, max_batch: int = 32):
    if max_batch < 1 or window_s < 0:
      raise ValueError(f"max_batch={max_batch} must be >= 1 and window_s={window_s} >= 0")
    self.searcher = searcher
    self.window_s = window_s
    self.max_batch = max_batch
    self.requests = 0  # requests answered
    self.calls = 0  # searcher.search calls made
    self._queue: collections.deque[SearchRequest] = collections.deque()
    self._cond = threading.Condition()
    self._arriving = 0
    self._closed = False
    self._thread = threading.Thread(
      target=self._run, name="facetriplet-search-batcher", daemon=True
    )
    self._thread.start()

  @contextlib.contextmanager
  def arriving(self):
    """Marks a request as on its way (being read or decoded) while the block runs."""
    with self._cond:
      self._arriving += 1
    try:
      yield
    finally:
      with self._cond:
        self._arriving -= 1
        self._cond.notify_all()

  def submit(self, request: SearchRequest) -> concurrent.futures.Future:
    """Queues a request; its future gets the answer (or the exception search raised)."""
    with self._cond:
      if self._closed:
        raise RuntimeError("the search batcher is closed")
      self._queue.append(request)
      self._cond.notify_all()
    return request.future

  def close(self, timeout: float = 10.0) -> None:
    """Answers what is queued, then stops the worker."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()
    self._thread.join(timeout)

  def _take(self) -> list[SearchRequest]:
    with self._cond:
      while not self._queue and not self._closed:
        self._cond.wait()
      deadline = time.monotonic() + self.window_s
      while len(self._queue) < self.max_batch and self._arriving > 0 and not self._closed:
        left = deadline - time.monotonic()
        if left <= 0:
          break
        self._cond.wait(left)
      return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

  def _run(self) -> None:
    while True:
      batch = self._take()
      if not batch:
        return  # closed and drained
      by_mode: dict[str, list[SearchRequest]] = {}
      for request in batch:
        by_mode.setdefault(request.faces_mode, []).append(request)
      for requests in by_mode.values():
        self._answer(requests)

  def _answer(self, requests: list[SearchRequest]) -> None:
    try:
      answers = search_batch(self.searcher, requests)
    except BaseException as e:  # pylint: disable=broad-except  (handed to every waiting request)
      for request in requests:
        request.future.set_exception(e)
      return
    finally:
      self.calls += 1
      self.requests += len(requests)
    for request, answer in zip(requests, answers):
      request.future.set_result(answer)


class GroupCommit:
  """Durable changes: `commit()` after a change returns once a save covering it has completed."""

  def __init__(self, save: Any):
    self._save = save
    self._save_lock = threading.Lock()  # one save at a time
    self._counts = threading.Lock()
    self._changes = 0  # changes made so far
    self._saved = 0  # changes covered by a completed save
    self.saves = 0

  def commit(self) -> None:
    """Call after a change has been applied; raises what the save raised."""
    with self._counts:
      self._changes += 1
      mine = self._changes
    with self._save_lock:
      with self._counts:
        if self._saved >= mine:
          return  # a save that started after this change has already completed
        upto = self._changes  # every change counted here was applied before the save starts
      self._save()
      self.saves += 1
      with self._counts:
        self._saved = max(self._saved, upto)
      logging.info("saved the index (%d changes so far, %d saves)", upto, self.saves)
