"""The crop workers of ingest: photos decoded, detected and cropped in parallel processes.

`crop_all` crops every (path, rel_path) task with `faces.FaceCropper`, in task order: in this
process for one worker, else in a pool of spawned processes (each with its own cropper, one thread
each, dying with the parent). Photos go through the detector in batches of its `batch_size`;
photos over `LARGE_PIXELS` are decoded one at a time across all workers.
Results per task: ('ok', jpeg, box, found, landmarks, method, turned) | ('no-face', box) |
('error', reason, detail): one bad photo never stops the job.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Iterator, Sequence

import cv2

from facetriplet.batches import chunks
from facetriplet.data import detectors, faces
from facetriplet.errors import ImageError, UserError


def resolve_workers(workers: int, tasks: int) -> int:
  if workers < 0:
    raise UserError(f"workers={workers} must be >= 0 (0 = all cores)")
  if workers == 0:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(workers, tasks))


_WORKER: dict[str, Any] = {}
# Photos above this many pixels are decoded one at a time across all workers (a shared gate):
# a 50 MP photo costs ~0.6 GB while decoded, so N workers each holding one would need N times
# that. Below it, each worker holds at most a batch of ordinary photos.
LARGE_PIXELS = 12_000_000


def _die_with_parent(parent: int) -> None:
  """A worker must not outlive its parent (a `kill -9` of the tool left ~100 MB workers behind):
  Linux delivers SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); elsewhere a daemon
  thread notices the re-parenting within a second."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
  except (OSError, AttributeError):
    pass
  if os.getppid() != parent:  # The parent died before prctl took effect.
    os._exit(1)  # pylint: disable=protected-access

  def watch():
    while True:
      time.sleep(1.0)
      if os.getppid() != parent:
        os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _init_worker(
  crop: dict[str, Any],
  max_pixels: int,
  subprocess: bool = False,
  parent: int = 0,
  large_gate: Any = None,
) -> None:
  if subprocess:
    if parent:
      _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # The parent handles Ctrl-C and stops the pool.
    detectors.limit_threads(crop["detector"])
  cv2.setNumThreads(1)  # One process per core already; OpenCV's own threads would oversubscribe.
  _WORKER["cropper"] = faces.FaceCropper(faces.CropSettings.from_dict(crop))
  _WORKER["max_pixels"] = max_pixels
  _WORKER["large_gate"] = large_gate


def _crop_chunk(tasks: Sequence[tuple[str, str]]) -> list[tuple]:
  """`crop_chunk` with this worker process's cropper, size limit and gate."""
  return crop_chunk(_WORKER["cropper"], tasks, _WORKER["max_pixels"], _WORKER.get("large_gate"))


def crop_chunk(
  cropper: faces.FaceCropper,
  tasks: Sequence[tuple[str, str]],
  max_pixels: int,
  large_gate: Any = None,
) -> list[tuple]:
  """`crop_tasks` of the chunk, except that with a `large_gate` (a lock or semaphore) photos over
  `LARGE_PIXELS` are cropped alone, one at a time across everything sharing the gate, and never
  held for the batch. The pool and the Beam pipeline (`beam_ingest`) both crop through it."""
  if large_gate is None:
    return crop_tasks(cropper, tasks, max_pixels)
  large = {i for i, (path, _) in enumerate(tasks) if faces.image_pixels(path) > LARGE_PIXELS}
  out = dict(
    zip(
      [i for i in range(len(tasks)) if i not in large],
      crop_tasks(cropper, [t for i, t in enumerate(tasks) if i not in large], max_pixels),
    )
  )
  for i in sorted(large):
    with large_gate:
      out[i] = crop_tasks(cropper, [tasks[i]], max_pixels)[0]
  return [out[i] for i in range(len(tasks))]


def crop_tasks(
  cropper: faces.FaceCropper, tasks: Sequence[tuple[str, str]], max_pixels: int
) -> list[tuple]:
  """Per (path, rel_path) task: ('ok', jpeg, box, found, landmarks, method, turned) |
  ('no-face', box) when skipped | ('error', reason, detail). The decodable photos go through the
  detector together (MTCNN runs batched)."""
  out: list[tuple] = [()] * len(tasks)
  good: list[tuple[int, Any]] = []
  # One bad photo must never stop the job: anything unexpected becomes a rejection.
  for i, (path, _) in enumerate(tasks):
    try:
      good.append((i, faces.load_rgb(path, max_pixels=max_pixels)))
    except ImageError as e:
      out[i] = ("error", e.reason, e.detail)
    except Exception as e:  # pylint: disable=broad-except
      out[i] = ("error", "unreadable", f"{type(e).__name__}: {e}")
  try:
    results = cropper.crop_batch([rgb for _, rgb in good])
  except Exception:  # pylint: disable=broad-except
    results = []  # Find the photo that broke the batch: crop one by one.
    for _, rgb in good:
      try:
        results.append(cropper.crop(rgb))
      except Exception as e:  # pylint: disable=broad-except
        results.append(e)
  for (i, _), result in zip(good, results):
    if isinstance(result, Exception):
      out[i] = ("error", "unreadable", f"crop failed: {type(result).__name__}: {result}")
    elif not result.found and cropper.settings.on_no_face == "skip":
      out[i] = ("no-face", result.box)
    else:
      out[i] = (
        "ok",
        faces.encode_jpeg(result.image),
        result.box,
        result.found,
        result.landmarks,
        result.method,
        result.turned,
      )
  return out


def chunk_size(crop: faces.CropSettings) -> int:
  """Photos per detector call: the detector's `batch_size`. MTCNN pads a batch to its largest
  photo, so its boxes depend on which photos share a call: every engine cuts the task list into
  the same chunks (`chunks`) to write the same bytes."""
  return detectors.detector_class(crop.detector).batch_size


def crop_all(
  tasks: Sequence[tuple[str, str]], crop: faces.CropSettings, max_pixels: int, workers: int
) -> Iterator[tuple]:
  """Results of `_crop_chunk` for every task, in task order."""
  batch = chunk_size(crop)
  if workers == 1:
    previous = cv2.getNumThreads()
    _init_worker(crop.to_dict(), max_pixels)
    try:
      for chunk in chunks(tasks, batch):
        yield from _crop_chunk(chunk)
    finally:
      cv2.setNumThreads(previous)
    return
  # spawn: workers start clean (no TensorFlow threads inherited from the parent).
  context = multiprocessing.get_context("spawn")
  todo = list(chunks(tasks, batch))
  per_call = max(1, min(32 // batch, len(todo) // (workers * 8)))
  gate = context.BoundedSemaphore(1)
  pool = concurrent.futures.ProcessPoolExecutor(
    workers,
    mp_context=context,
    initializer=_init_worker,
    initargs=(crop.to_dict(), max_pixels, True, os.getpid(), gate),
  )
  try:
    for results in pool.map(_crop_chunk, todo, chunksize=per_call):
      yield from results
  finally:  # On Ctrl-C or an error, drop the queued photos instead of decoding them all first.
    pool.shutdown(wait=True, cancel_futures=True)
