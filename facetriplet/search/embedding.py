"""Embedding many images with the training-time face crop, streaming batch by batch.

`embed_entries` streams image files through load -> crop (a thread pool, each thread with its own
`FaceCropper`) -> embed, so memory holds a couple of batches of crops, never the whole gallery.
`record_batches` does the same for TFRecords, whose records already hold the crops (decoded by
`tfrecords.decode_image`, the decoder training uses). `CropStore` keeps the crops of a set for
reuse, so an evaluation of several features with the same crop finds each face once. Unreadable
files are skipped and returned as `Problem`s; photos without a detectable face use the fallback
crop (and are reported) unless the crop settings say 'skip'.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import threading
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from facetriplet.batches import chunks
from facetriplet.data import detectors, faces, tfrecords
from facetriplet.data.layouts import ImageEntry
from facetriplet.errors import ImageError

NO_FACE = "no-face"


class FaceEntry(NamedTuple):
  """One embedded face: the photo's ImageEntry fields plus which face and where it is."""

  path: str
  rel_path: str
  identity: Optional[str]
  partition: Optional[str]
  face: int = 0
  box: Optional[tuple] = None
  landmarks: Optional[tuple] = None
  found: bool = True
  time: Optional[float] = None  # a video frame's time (seconds); path is the video


@dataclasses.dataclass(frozen=True)
class Problem:
  """An image that was skipped (`kept=False`) or used with a fallback (`kept=True`, no-face)."""

  path: str
  rel_path: str
  reason: str
  detail: str = ""
  kept: bool = False

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def with_progress(
  batches: Iterable[list[Any]], total: int, show: bool = True, desc: str = "embedding"
) -> Iterator[list[Any]]:
  """`batches` as they come, advancing a progress bar (shown when `show`) by each one's length."""
  with tqdm(total=total, unit="img", desc=desc, disable=not show, leave=False) as bar:
    for batch in batches:
      yield batch
      bar.update(len(batch))


def crop_entry(
  cropper: faces.FaceCropper,
  entry: Any,
  faces_mode: str = "largest",
  min_face: float = faces.MIN_FACE_FRACTION,
) -> Any:
  """One photo loaded and cropped: its CropResult, the list of every face's with
  faces_mode='all', or the ImageError that made it unusable."""
  return crop_entries(cropper, [entry], faces_mode, min_face)[0]


def crop_entries(
  cropper: faces.FaceCropper,
  entries: Sequence[Any],
  faces_mode: str = "largest",
  min_face: float = faces.MIN_FACE_FRACTION,
) -> list[Any]:
  """`crop_entry` of each entry, the readable photos sent to the detector together."""
  decoded: list[Any] = []
  for entry in entries:
    try:
      decoded.append(faces.load_rgb(entry.path))
    except ImageError as e:
      decoded.append(e)
  found = cropper.crop_each(decoded, faces_mode, min_face)
  return [f if isinstance(f, ImageError) or faces_mode == "all" else f[0] for f in found]


def iter_crops(
  entries: Sequence[Any],
  settings,
  batch_size: int = 64,
  workers: int = 4,
  faces_mode: str = "largest",
  min_face: float = faces.MIN_FACE_FRACTION,
) -> Iterator[list[tuple[Any, Any]]]:
  """Yields, batch by batch, [(entry, CropResult or ImageError)] in entry order; with
  faces_mode='all' each CropResult is a list of every face's crop (`FaceCropper.crop_faces`,
  faces of at least `min_face` x the short side).

  Loading and cropping run in a thread pool (decoding and OpenCV release the GIL), each task a
  run of photos sent to the detector together (its `batch_size`, as ingest does); at most two
  batches are in flight, so memory does not grow with the number of entries. Each thread owns
  its FaceCropper: an OpenCV cascade must not be shared by concurrent detections.
  """
  local = threading.local()
  step = max(1, detectors.detector_class(settings.detector).batch_size)

  def load(run):
    cropper = getattr(local, "cropper", None)
    if cropper is None:
      cropper = local.cropper = faces.FaceCropper(settings)
    return list(zip(run, crop_entries(cropper, run, faces_mode, min_face)))

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    pending: list[list[concurrent.futures.Future]] = []
    for batch in chunks(entries, batch_size):
      pending.append([pool.submit(load, run) for run in chunks(batch, step)])
      if len(pending) == 2:
        yield [pair for f in pending.pop(0) for pair in f.result()]
    while pending:
      yield [pair for f in pending.pop(0) for pair in f.result()]


class CropStore:
  """The crops of image sets, made once and handed again to every later pass over the same
  entries with the same crop settings (the features of one evaluation). Holds the crops in memory
  (about 49 kB a face at 128 px) for sets of at most `max_photos` photos; a larger set streams
  as without a store (its faces found again by each pass)."""

  def __init__(self, max_photos: int = 20_000):
    self._sets: dict[tuple, list[tuple[Any, Any]]] = {}
    self.max_photos = max_photos

  def batches(
    self,
    entries: Sequence[Any],
    settings,
    batch_size: int = 64,
    workers: int = 4,
    faces_mode: str = "largest",
    min_face: float = faces.MIN_FACE_FRACTION,
  ) -> Iterator[list[tuple[Any, Any]]]:
    """`iter_crops`' batches: made the first time, read back after."""
    if len(entries) > self.max_photos:
      yield from iter_crops(entries, settings, batch_size, workers, faces_mode, min_face)
      return
    key = (
      tuple(tuple(e) for e in entries),  # paths, names and identities: replayed as they were
      json.dumps(settings.to_dict(), sort_keys=True),
      faces_mode,
      float(min_face),
    )
    if key in self._sets:
      yield from chunks(self._sets[key], batch_size)
      return
    made: list[tuple[Any, Any]] = []
    for batch in iter_crops(entries, settings, batch_size, workers, faces_mode, min_face):
      made.extend(batch)
      yield batch
    self._sets[key] = made  # only once the pass is complete


def record_batches(
  shard_set: tfrecords.ShardSet, splits: Optional[Sequence[str]], size: int, batch_size: int = 64
) -> Iterator[list[tuple[ImageEntry, faces.CropResult]]]:
  """Batches of (ImageEntry, CropResult) from the records, crops resized to `size` when the
  stored size differs."""
  root = shard_set.input_root
  for batch in shard_set.decoded_batches(splits, batch_size):
    yield [record_crop(root, rec, rgb, size) for rec, rgb in batch]


def record_crop(
  root: str, rec: dict[str, Any], rgb: np.ndarray, size: int
) -> tuple[ImageEntry, faces.CropResult]:
  """A record (`ShardSet.decoded_batches`' dict, with `split`) and its decoded crop as the
  (ImageEntry, CropResult) of an embedded photo, the crop resized to `size` when it differs."""
  if rgb.shape[0] != size or rgb.shape[1] != size:
    interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
    rgb = cv2.resize(rgb, (size, size), interpolation=interp)
  entry = ImageEntry(
    os.path.join(root, rec["path"]), rec["path"], rec["identity"] or None, rec["split"]
  )
  return entry, faces.CropResult(
    rgb, tuple(rec["box"]), rec["found"], tuple(rec["landmarks"]), rec["method"] or "haar"
  )


def entry_rows(
  entry: Any,
  result: Any,
  on_no_face: str = "center",
  with_faces: bool = False,
) -> Iterator[tuple[Any, Optional[np.ndarray], Optional[Problem]]]:
  """What one photo's crop result (`crop_entry`, or a record's CropResult) becomes, in face order:
  (kept row, its crop image, its problem or None) per face to embed, and (None, None, problem)
  for a photo or face left out. The kept row is a `FaceEntry` with `with_faces`, else `entry`."""
  if isinstance(result, ImageError):
    yield None, None, Problem(entry.path, entry.rel_path, result.reason, result.detail)
    return
  for face, crop in enumerate(result if isinstance(result, list) else [result]):
    problem = None
    if not crop.found:
      skip = on_no_face == "skip"
      problem = Problem(entry.path, entry.rel_path, NO_FACE, kept=not skip)
      if skip:
        yield None, None, problem
        continue
    row = (
      FaceEntry(
        *tuple(entry)[:4],
        face,
        tuple(crop.box),
        tuple(crop.landmarks),
        bool(crop.found),
        getattr(entry, "time", None),
      )
      if with_faces
      else entry
    )
    yield row, crop.image, problem


def embed_crops(
  extractor,
  batches: Iterable[list[tuple[Any, Any]]],
  total: int,
  on_no_face: str = "center",
  progress: bool = True,
  desc: str = "embedding",
  with_faces: bool = False,
) -> tuple[np.ndarray, list[Any], list[Problem]]:
  """Embeds batches of (entry, CropResult | [CropResult] | ImageError) as they come; see
  `embed_entries`. With `with_faces` the kept rows are `FaceEntry`s (box, landmarks, face
  number), else the input entries themselves."""
  vectors, kept, problems = [], [], []
  for batch in with_progress(batches, total, progress, desc):
    images = []
    for entry, result in batch:
      for row, image, problem in entry_rows(entry, result, on_no_face, with_faces):
        if problem is not None:
          problems.append(problem)
        if row is not None:
          images.append(image)
          kept.append(row)
    if images:
      vectors.append(np.asarray(extractor.embed(np.stack(images)), dtype=np.float32))
  dim = int(extractor.dim)
  embeddings = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
  return embeddings, kept, problems


def embed_entries(
  extractor,
  entries: Sequence[Any],
  batch_size: int = 64,
  workers: int = 4,
  progress: bool = True,
  desc: str = "embedding",
  faces_mode: str = "largest",
  min_face: float = faces.MIN_FACE_FRACTION,
  with_faces: bool = False,
  crops: Optional[CropStore] = None,
) -> tuple[np.ndarray, list[Any], list[Problem]]:
  """Loads, crops (with the extractor's crop settings) and embeds images, streaming in batches.

  Args:
    extractor: an `Embedder` or a classical extractor (`.embed`, `.dim`, `.crop_settings`).
    entries: objects with `.path` and `.rel_path` (layouts.ImageEntry).
    batch_size: images per embedding call.
    workers: loading threads.
    progress: show a tqdm bar.
    desc: label of the bar.
    faces_mode: 'largest' (one face a photo) or 'all' (a row per face found).
    min_face: with 'all', the smallest face kept, as a fraction of the photo's short side.
    with_faces: return `FaceEntry`s (face number, box, landmarks) instead of the entries.
    crops: where the crops are kept for reuse (or were kept by an earlier pass).

  Returns:
    (embeddings float32 [M, D], kept entries (M, in input order), problems): problems list the
    unreadable files (skipped) and the photos without a detected face (kept with the fallback
    crop, or skipped when the crop settings say on_no_face='skip').
  """
  settings = extractor.crop_settings
  made = crops.batches if crops is not None else iter_crops
  return embed_crops(
    extractor,
    made(entries, settings, batch_size, workers, faces_mode, min_face),
    len(entries),
    settings.on_no_face,
    progress,
    desc,
    with_faces,
  )
