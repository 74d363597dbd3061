"""Face thumbnails of an index's items: what the service's web page shows beside each match.

A gallery photo's thumbnail is cut from the photo (or video frame) at the item's own path (the
path recorded in the index when it was built, never one a caller names) around the item's face
box, on request.
An image enrolled from memory has no photo on disk: its thumbnail is cut at enrolment and kept in
the index folder (`thumbs/<hash of the id>.jpg`, saved with the index in the same atomic write,
checksummed like every file), and dropped when the item is removed or its person forgotten.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from facetriplet.data import images, turns
from facetriplet.errors import ImageError
from facetriplet.search import video
from facetriplet.search.items import Item

FOLDER = "thumbs"
SIZE = 112  # pixels a side
MARGIN = 0.25  # of the face box's larger side, added on each side
_CACHED = 512  # gallery thumbnails kept in memory


def face_thumbnail(
  rgb: np.ndarray,
  box: Optional[Sequence[float]],
  size: int = SIZE,
  margin: float = MARGIN,
  landmarks: Optional[Sequence[float]] = None,
) -> bytes:
  """`face_square` as a JPEG."""
  return images.encode_jpeg(face_square(rgb, box, size, margin, landmarks))


def face_square(
  rgb: np.ndarray,
  box: Optional[Sequence[float]],
  size: int = SIZE,
  margin: float = MARGIN,
  landmarks: Optional[Sequence[float]] = None,
) -> np.ndarray:
  """The square around the face at `box` (x, y, w, h) with `margin` of its larger side on each
  side, `size` pixels a side; the centred square of the photo when there is no box. Parts
  outside the photo are grey. With the face's `landmarks` (x1..x5, y1..y5) the square is turned
  so the face stands upright (a face found in the photo turned on its side: `turns`)."""
  h, w = rgb.shape[:2]
  if box is None or box[2] <= 0 or box[3] <= 0:
    side = min(h, w)
    x0, y0 = (w - side) / 2, (h - side) / 2
  else:
    side = max(box[2], box[3]) * (1 + 2 * margin)
    x0 = box[0] + box[2] / 2 - side / 2
    y0 = box[1] + box[3] / 2 - side / 2
  left, top = int(round(x0)), int(round(y0))
  side_px = max(1, int(round(side)))
  canvas = Image.new("RGB", (side_px, side_px), (128, 128, 128))
  canvas.paste(Image.fromarray(np.ascontiguousarray(rgb[..., :3])), (-left, -top))
  if side_px != size:
    canvas = canvas.resize((size, size), Image.BILINEAR)
  k = turns.upright_turn(landmarks)
  return np.ascontiguousarray(np.rot90(np.asarray(canvas), k)) if k else np.asarray(canvas)


def file_name(item_id: str) -> str:
  """The stored thumbnail's path in the index folder (a hash: ids may hold any characters)."""
  return f"{FOLDER}/{hashlib.sha256(item_id.encode('utf-8')).hexdigest()[:32]}.jpg"


class Thumbnails:
  """The thumbnails of one index: enrolled items' stored ones, gallery photos' cut on request."""

  def __init__(self, index_dir: str):
    self._stored: dict[str, bytes] = {}  # file name -> JPEG, enrolled items only
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()
    folder = os.path.join(index_dir, FOLDER)
    if os.path.isdir(folder):
      for name in os.listdir(folder):
        if name.endswith(".jpg"):
          with open(os.path.join(folder, name), "rb") as f:
            self._stored[f"{FOLDER}/{name}"] = f.read()

  def put(
    self,
    item_id: str,
    rgb: np.ndarray,
    box: Optional[Sequence[float]],
    landmarks: Optional[Sequence[float]] = None,
  ) -> None:
    """Keeps the thumbnail of an item enrolled from memory (saved with the index)."""
    data = face_thumbnail(rgb, box, landmarks=landmarks)
    with self._lock:
      self._stored[file_name(item_id)] = data

  def drop(self, item_ids: Iterable[str]) -> None:
    """Forgets the thumbnails of removed items (gone from the folder at the next save)."""
    item_ids = set(item_ids)
    with self._lock:
      for item_id in item_ids:
        self._stored.pop(file_name(item_id), None)
      for key in [key for key in self._cache if key[0] in item_ids]:
        del self._cache[key]

  def files(self) -> dict[str, bytes]:
    """The files the next save writes into the index folder."""
    with self._lock:
      return dict(self._stored)

  def of(self, item: Item) -> Optional[bytes]:
    """The item's thumbnail as JPEG bytes; None when there is none (an enrolled item saved
    before thumbnails were kept).

    Raises:
      ImageError: the gallery photo is no longer readable at its path.
    """
    if not item.path:
      with self._lock:
        return self._stored.get(file_name(item.id))
    key = (item.id, item.path, item.box)
    with self._lock:
      if key in self._cache:
        self._cache.move_to_end(key)
        return self._cache[key]
    if not os.path.isfile(item.path):
      raise ImageError(item.path, "the photo is no longer at the path it was indexed from")
    if item.time is not None:  # a face of a video frame
      rgb = video.frame_at(item.path, item.time)
    else:
      rgb = images.load_rgb(item.path)
    data = face_thumbnail(rgb, item.box, landmarks=item.landmarks)
    with self._lock:
      self._cache[key] = data
      while len(self._cache) > _CACHED:
        self._cache.popitem(last=False)
    return data
