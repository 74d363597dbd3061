"""Where does each person appear in a video: frames sampled every `every_s` seconds (OpenCV's
VideoCapture), every face of each searched against an index, and per identity the time ranges
where it appears, adjacent sampled frames merged, with its best-scoring frame.

  from facetriplet import Searcher
  from facetriplet.search import video
  for person in video.find_people(Searcher.open("runs/index"), "clip.mp4", every_s=0.5):
    print(person.identity, [(r.start, r.end) for r in person.ranges], person.best_time)

`embed_video` embeds every face of the sampled frames as gallery rows (`facetriplet-build-index
--gallery=clip.mp4`, `facetriplet-cluster --input=clip.mp4`): each face's item carries its
frame's time, and is named '<video>@<seconds>s'.

A face counts for an identity when its best match (one gallery photo) scores at least
`min_score` (default: the model's calibrated threshold at `far`); faces under it are
nobody known. A range runs from the first to the last sampled frame of an unbroken run (a frame
without the person ends it), so its ends are exact to one sampling step.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Iterator, NamedTuple, Optional

import numpy as np

from facetriplet.data import faces
from facetriplet.errors import ImageError, UserError
from facetriplet.search import embedding, engine
from facetriplet.search.items import frame_suffix

EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def is_video(path: str) -> bool:
  """A file named like a video (what --gallery / --input take as one)."""
  return os.path.isfile(path) and path.lower().endswith(EXTENSIONS)


class VideoFrame(NamedTuple):
  """A sampled frame as an entry to embed (the fields of `layouts.ImageEntry`, and its time)."""

  path: str
  rel_path: str  # '<video file name>@<seconds>s'
  identity: Optional[str]
  partition: Optional[str]
  time: float


@dataclasses.dataclass
class Range:
  start: float  # seconds: the first sampled frame with the person
  end: float  # the last one


@dataclasses.dataclass
class Appearance:
  """One identity in a video: its time ranges and its best-scoring frame."""

  identity: str
  ranges: list[Range]
  best_time: float
  best_score: float
  best_frame: Optional[np.ndarray] = None  # RGB of the best frame
  best_box: Optional[tuple] = None

  def to_dict(self) -> dict[str, Any]:
    return {
      "identity": self.identity,
      "ranges": [[round(r.start, 3), round(r.end, 3)] for r in self.ranges],
      "best_time": round(self.best_time, 3),
      "best_score": self.best_score,
      "best_box": list(self.best_box) if self.best_box else None,
    }


def frames(path: str, every_s: float = 0.5) -> Iterator[tuple[float, np.ndarray]]:
  """(time in seconds, RGB uint8 frame) every `every_s` seconds of a video file.

  Raises:
    UserError: a file OpenCV cannot open as a video, or every_s <= 0.
  """
  import cv2  # pylint: disable=g-import-not-at-top

  if every_s <= 0:
    raise UserError(f"every_s={every_s}: the time between sampled frames must be positive")
  capture = cv2.VideoCapture(path)
  try:
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0
    if not fps or fps <= 0:
      raise UserError(f"{path} is not a video OpenCV can read (mp4, avi, mkv, mov, webm ...)")
    step = max(1, round(every_s * fps))
    index = 0
    while True:
      ok, bgr = capture.read()
      if not ok:
        return
      if index % step == 0:
        yield index / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      index += 1
  finally:
    capture.release()


def frame_at(path: str, seconds: float) -> np.ndarray:
  """The RGB frame of a video at `seconds` (the frame `frames` sampled there).

  Raises:
    ImageError: the video cannot be read there (moved, changed or too short).
  """
  import cv2  # pylint: disable=g-import-not-at-top

  capture = cv2.VideoCapture(path)
  try:
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0
    if fps and fps > 0:
      capture.set(cv2.CAP_PROP_POS_FRAMES, round(seconds * fps))
      ok, bgr = capture.read()
      if ok:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
  finally:
    capture.release()
  raise ImageError(path, "unreadable", f"no frame at {seconds:.3f} s")


def frame_count(path: str, every_s: float) -> int:
  """About how many frames `frames` samples (for a progress bar)."""
  import cv2  # pylint: disable=g-import-not-at-top

  capture = cv2.VideoCapture(path)
  try:
    fps, count = capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
  finally:
    capture.release()
  step = max(1, round(every_s * fps)) if fps > 0 else 1
  return int(-(-count // step)) if count > 0 else 0  # frames 0, step, 2 step, ... below count


def embed_video(
  extractor: Any,
  path: str,
  every_s: float = 0.5,
  batch_size: int = 64,
  progress: bool = True,
  min_face: float = faces.MIN_FACE_FRACTION,
) -> tuple[np.ndarray, list[Any], list[embedding.Problem]]:
  """Every face of the frames sampled every `every_s` seconds, cropped and embedded as a
  gallery is (`embedding.embed_crops`' triple; rows are FaceEntry with the frame's time)."""
  cropper = faces.FaceCropper(extractor.crop_settings)
  path = os.path.abspath(path)  # items name the video wherever a tool runs later
  name = os.path.basename(path)

  def batches():
    sampled = frames(path, every_s)
    while batch := list(itertools.islice(sampled, batch_size)):
      rows = [VideoFrame(path, name + frame_suffix(t), None, None, t) for t, _ in batch]
      # Every face of each frame (the detector batches the frames itself); none: no rows.
      yield list(zip(rows, cropper.crop_each([rgb for _, rgb in batch], "all", min_face)))

  total = frame_count(path, every_s)
  return embedding.embed_crops(extractor, batches(), total, "skip", progress, name, True)


def find_people(
  searcher: Any,
  path: str,
  every_s: float = 0.5,
  min_score: Optional[float] = None,
  far: float = 0.01,
  batch: int = 16,
) -> list[Appearance]:
  """Every identity of the index seen in the video, in order of first appearance."""
  if min_score is None:
    min_score = searcher.threshold(far)
    if min_score is None:
      raise UserError(
        f"the model has no calibrated threshold at FAR {far:g}: pass min_score (--min_score), "
        "the similarity from which a face counts for a person"
      )
  seen: dict[str, list[float]] = {}
  best: dict[str, tuple[float, float, np.ndarray, Optional[tuple]]] = {}
  times: list[float] = []
  pending: list[tuple[float, np.ndarray]] = []

  def flush() -> None:
    if not pending:
      return
    results = searcher.search([f for _, f in pending], k=1, min_score=min_score, faces_mode="all")
    groups = engine.split_by_image(results, len(pending))
    for (t, frame), found in zip(pending, groups):
      for r in found:
        if not r.matches or r.box is None or r.matches[0].identity is None:
          continue
        who, score = r.matches[0].identity, r.matches[0].score
        if not seen.setdefault(who, []) or seen[who][-1] != t:
          seen[who].append(t)
        if who not in best or score > best[who][0]:
          best[who] = (score, t, frame, r.box)
    pending.clear()

  for t, frame in frames(path, every_s):
    times.append(t)
    pending.append((t, frame))
    if len(pending) >= batch:
      flush()
  flush()
  order = {t: i for i, t in enumerate(times)}
  out = []
  for who, stamps in sorted(seen.items(), key=lambda kv: kv[1][0]):
    ranges: list[Range] = []
    for t in stamps:
      if ranges and order[t] == order[ranges[-1].end] + 1:
        ranges[-1].end = t
      else:
        ranges.append(Range(t, t))
    score, t, frame, box = best[who]
    out.append(Appearance(who, ranges, t, float(score), frame, box))
  return out
