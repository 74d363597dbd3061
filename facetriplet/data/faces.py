"""The one face crop used at training *and* query time: find the face in a decoded photo, crop it.

Photos are decoded by `facetriplet.data.images.load_rgb` (re-exported here with `load_rgb`,
`image_pixels`, `encode_jpeg` and `MAX_PIXELS`).

`FaceCropper` finds one face per photo and cuts a `size` x `size` crop of it. Detectors:

- `mtcnn` (the `mtcnn` package, MIT, P/R/O-Net weights inside its wheel, nothing downloaded):
  a face box and five landmarks (eyes, nose tip, mouth corners). The crop is *aligned*: the
  similarity transform (rotation, uniform scale, shift; `cv2.estimateAffinePartial2D`) that maps
  the landmarks onto `TEMPLATES[template]` (the usual 5-point template of a 112-px face, scaled to
  `size` and shrunk towards the centre by `1 / (1 + 2 * align_margin)`) warps the photo, black
  outside it. Detection runs batched (`FaceCropper.crop_batch`) on RGB copies downscaled to at
  most `DETECT_MAX_SIDE` pixels (faces of 20+ px there).
  When MTCNN finds no face the Haar cascade is tried, then the centred square (each counted and
  listed by ingest: `CropResult.method` says which one made the crop).
- `haar` (OpenCV's bundled frontal-face cascade, `cv2.data.haarcascades`): a box only; the crop is
  the square of side `max(w, h) * (1 + 2 * margin)` centred on the box, black outside the image.
  Runs on a histogram-equalised grayscale copy downscaled the same way.
- `none` (sets that are already cropped): the centred square of side min(H, W).

Which face (`pick`): `largest` (default), or `center`, the face nearest the photo's centre among
those at least a quarter of the largest one's area (for centred sets such as LFW, where the named
person is in the middle and others may be larger). When no face is found the crop is the centred
square of side min(H, W), with no margin. Everything stays RGB; OpenCV's BGR order appears only
inside `encode_jpeg`.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Mapping, NamedTuple

import cv2
import numpy as np

from facetriplet.data.images import (JPEG_QUALITY, MAX_PIXELS, REASONS,  # noqa: F401
                                     encode_jpeg, image_pixels, load_rgb)
from facetriplet.errors import UserError

DETECT_MAX_SIDE = 640  # Haar runs on a copy no larger than this; faces stay well above 24 px.
# Faces narrower than this fraction of the short side are not searched for: the finest pyramid
# levels cost most of Haar's time (30 → 19 ms per LFW photo) and found no extra LFW/ORL faces.
MIN_FACE_FRACTION = 0.2
CASCADE_FILE = "haarcascade_frontalface_default.xml"
DETECTORS = ("mtcnn", "haar", "none")
ON_NO_FACE = ("center", "skip")
PICKS = ("largest", "center")
# Five-point templates (left eye, right eye, nose tip, left and right mouth corner) in the pixel
# frame of a `side` x `side` face crop. `arcface112` is the template of the ArcFace/InsightFace
# 112 x 112 crops, the usual target of 5-point alignment.
TEMPLATES = {
    "arcface112": {"side": 112.0, "points": ((38.2946, 51.6963), (73.5318, 51.5014),
                                              (56.0252, 71.7366), (41.5493, 92.3655),
                                              (70.7299, 92.2041))},
}
# Ways a crop was made (`CropResult.method`, record `face/method`, manifest counts).
METHODS = ("mtcnn", "haar", "center", "none")
MTCNN_BATCH = 16  # photos per MTCNN call at ingest (its stages run on the whole batch)
PAD = "black"  # Pixels of the margin box outside the image are zeros (documented in the manifest).

@dataclasses.dataclass(frozen=True)
class CropSettings:
  """How faces are found and cropped; stored in the manifest and the export metadata.

  Attributes:
    detector: 'mtcnn' (aligned on five landmarks; the default: alignment lifted LFW top-1 of
      every feature, see BENCHMARKS.md), 'haar' (OpenCV frontal-face cascade, box crop) or
      'none' (centred square of the whole image, for sets that are already cropped).
    margin: fraction of the face box added on every side before squaring (0.2 → 1.4x the box).
    size: side in pixels of the stored square crop.
    on_no_face: 'center' keeps the centred square and marks face/found=0; 'skip' drops the photo.
    pick: which face of a photo with several: 'largest' or 'center' (see the module docstring).
    template: the 5-point alignment template (`TEMPLATES`), used by `mtcnn`.
    align_margin: zoom-out of the aligned crop: 0 puts the template's points where they are in a
      112-px ArcFace crop scaled to `size`; 0.1 shrinks the face by 1/1.2 around the centre.
  """
  detector: str = "mtcnn"
  margin: float = 0.2
  size: int = 128
  on_no_face: str = "center"
  pick: str = "largest"
  template: str = "arcface112"
  align_margin: float = 0.0

  def __post_init__(self):
    if self.detector not in DETECTORS:
      raise UserError(f"detector={self.detector!r} is not one of {', '.join(DETECTORS)}")
    if self.on_no_face not in ON_NO_FACE:
      raise UserError(f"on_no_face={self.on_no_face!r} is not one of {', '.join(ON_NO_FACE)}")
    if not 0 <= float(self.margin) <= 2:
      raise UserError(f"margin={self.margin} must be between 0 and 2 (fraction of the face box)")
    if not 16 <= int(self.size) <= 4096:
      raise UserError(f"size={self.size} must be between 16 and 4096 pixels")
    if self.pick not in PICKS:
      raise UserError(f"pick={self.pick!r} is not one of {', '.join(PICKS)}")
    if self.template not in TEMPLATES:
      raise UserError(f"template={self.template!r} is not one of {', '.join(TEMPLATES)}")
    if not 0 <= float(self.align_margin) <= 1:
      raise UserError(f"align_margin={self.align_margin} must be between 0 and 1")
    object.__setattr__(self, "align_margin", float(self.align_margin))
    object.__setattr__(self, "margin", float(self.margin))
    object.__setattr__(self, "size", int(self.size))

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(pad=PAD, detect_max_side=DETECT_MAX_SIDE, min_face_fraction=MIN_FACE_FRACTION,
             cascade=CASCADE_FILE)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "CropSettings":
    """Builds settings from `to_dict()` output; informational keys (pad, cascade...) are ignored.

    Settings written before a field existed get that field's default, which is what they did.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  def template_points(self) -> np.ndarray:
    """The alignment template in the pixel frame of the `size` x `size` crop, float32 [5, 2]."""
    t = TEMPLATES[self.template]
    points = np.asarray(t["points"], np.float64) / t["side"] * self.size
    centre = self.size / 2.0
    return ((points - centre) / (1.0 + 2.0 * self.align_margin) + centre).astype(np.float32)


NO_LANDMARKS = (0.0,) * 10


class CropResult(NamedTuple):
  """A square RGB face crop and how it was made.

  Attributes:
    image: uint8 [size, size, 3].
    box: face box (x, y, w, h) in source pixels (the centred square when no face was found).
    found: a face was detected (always True for detector='none').
    landmarks: (x1..x5, y1..y5) of the five MTCNN points in source pixels, zeros without them.
    method: 'mtcnn' (aligned), 'haar', 'center' (no face found) or 'none' (detector='none').
  """
  image: np.ndarray
  box: tuple[float, float, float, float]
  found: bool
  landmarks: tuple[float, ...] = NO_LANDMARKS
  method: str = "haar"


class FaceCropper:
  """Finds one face per photo and cuts its crop. Load once, call `crop` or `crop_batch`.

  Thread-safe: the process's one MTCNN detector is called by one thread at a time (TensorFlow
  already uses every core inside one call); this cropper's Haar cascade likewise.
  """

  def __init__(self, settings: CropSettings = CropSettings()):
    self.settings = settings
    self._cascade = None
    self._mtcnn = None
    self._lock = threading.Lock()
    if settings.detector in ("haar", "mtcnn"):
      path = cv2.data.haarcascades + CASCADE_FILE
      cascade = cv2.CascadeClassifier(path)
      if cascade.empty():
        raise UserError(f"cannot load the Haar cascade {path}: reinstall opencv-python-headless<5 "
                        "or pass --detector=none")
      self._cascade = cascade
    if settings.detector == "mtcnn":
      self._mtcnn = _load_mtcnn()

  def _pick(self, boxes: list[tuple[float, float, float, float]], h: int, w: int) -> int:
    """Index of the chosen face among `boxes` (x, y, w, h) of an h x w image."""
    areas = [b[2] * b[3] for b in boxes]
    if self.settings.pick == "center":
      big = max(areas)
      candidates = [i for i, a in enumerate(areas) if a >= 0.25 * big]
      return min(candidates, key=lambda i: (
          (boxes[i][0] + boxes[i][2] / 2 - w / 2) ** 2
          + (boxes[i][1] + boxes[i][3] / 2 - h / 2) ** 2, -areas[i], boxes[i][1], boxes[i][0]))
    # Largest area wins; ties broken by position so the choice never depends on detector order.
    return max(range(len(boxes)), key=lambda i: (areas[i], -boxes[i][1], -boxes[i][0]))

  def detect(self, rgb: np.ndarray) -> tuple[float, float, float, float] | None:
    """The chosen Haar face box (x, y, w, h) in source pixels, or None (also for 'none')."""
    boxes = self.detect_all(rgb)
    return boxes[self._pick(boxes, rgb.shape[0], rgb.shape[1])] if boxes else None

  def detect_all(self, rgb: np.ndarray, min_fraction: float = MIN_FACE_FRACTION,
                 ) -> list[tuple[float, float, float, float]]:
    """Every Haar face box (x, y, w, h) in source pixels at least `min_fraction` of the short
    side ([] for 'none')."""
    if self._cascade is None:
      return []
    gray, scale = _downscale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    gray = cv2.equalizeHist(gray)
    min_side = max(24, int(min_fraction * min(gray.shape)))
    with self._lock:
      faces = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                             minSize=(min_side, min_side))
    return [tuple(int(v) / scale for v in f) for f in faces]

  def detect_landmarks(self, images: list[np.ndarray]) -> list[tuple[tuple, np.ndarray] | None]:
    """MTCNN on a batch: for each image (box (x, y, w, h), landmarks [5, 2]) in source pixels,
    or None when no face was found. Empty for other detectors."""
    out = []
    for rgb, faces in zip(images, self.detect_all_landmarks(images)):
      if not faces:
        out.append(None)
        continue
      out.append(faces[self._pick([box for box, _ in faces], rgb.shape[0], rgb.shape[1])])
    return out

  def detect_all_landmarks(self, images: list[np.ndarray]) -> list[list[tuple[tuple, np.ndarray]]]:
    """MTCNN on a batch: for each image every face found, as (box (x, y, w, h), landmarks
    [5, 2]) in source pixels. Empty lists for other detectors."""
    if self._mtcnn is None or not images:
      return [[] for _ in images]
    small, scales = zip(*[_downscale(rgb) for rgb in images])
    # MTCNN's own smallest face (20 px of the downscaled copy): mtcnn 1.0.0 fails inside P-Net
    # ("empty output" of a Conv2D) with a larger `min_face_size` on 250-px photos.
    with _MTCNN_CALL_LOCK:  # one detector per process, shared by every FaceCropper
      rows = self._mtcnn.detect_faces(list(small), output_type="numpy")
    rows = np.asarray(rows, np.float64).reshape(-1, 16)
    out: list[list[tuple[tuple, np.ndarray]]] = []
    for i, scale in enumerate(scales):
      out.append([(tuple(float(v) / scale for v in r[1:5]),
                   np.stack([r[6:11], r[11:16]], axis=1) / scale) for r in rows[rows[:, 0] == i]])
    return out

  def crop(self, rgb: np.ndarray) -> CropResult:
    """Crops one RGB uint8 image [H, W, 3]; see `crop_batch`."""
    return self.crop_batch([rgb])[0]

  def crop_batch(self, images: list[np.ndarray]) -> list[CropResult]:
    """Crops RGB uint8 images [H, W, 3] to `size` x `size` faces (MTCNN runs once per batch).

    Returns:
      A CropResult per image; `found` is False when no face was detected and the centred square
      was used. With detector='none' the centred square is the intended crop and `found` is True.
    """
    for rgb in images:
      if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    marks = self.detect_landmarks(images)
    results = []
    for rgb, mark in zip(images, marks):
      if mark is not None:
        box, points = mark
        image = align(rgb, points, self.settings)
        landmarks = tuple(round(float(v), 2) for v in np.concatenate([points[:, 0], points[:, 1]]))
        results.append(CropResult(image, tuple(round(v, 2) for v in box), True, landmarks,
                                  "mtcnn"))
      else:
        results.append(self._box_crop(rgb))
    return results

  def crop_faces(self, rgb: np.ndarray, min_face: float = MIN_FACE_FRACTION) -> list[CropResult]:
    """Every face of one photo, each cropped exactly as `crop` crops its chosen face (aligned for
    MTCNN, boxed for Haar), largest first; faces whose box is narrower than `min_face` x the
    photo's short side are left out. No face: [the fallback crop] (`found` False)."""
    h, w = rgb.shape[:2]
    smallest = min_face * min(h, w)
    results = []
    if self._mtcnn is not None:
      for box, points in self.detect_all_landmarks([rgb])[0]:
        if box[2] >= smallest:
          landmarks = tuple(round(float(v), 2)
                            for v in np.concatenate([points[:, 0], points[:, 1]]))
          results.append(CropResult(align(rgb, points, self.settings),
                                    tuple(round(v, 2) for v in box), True, landmarks, "mtcnn"))
    if not results:
      for box in self.detect_all(rgb, min_fraction=min(min_face, MIN_FACE_FRACTION)):
        if box[2] >= smallest:
          results.append(self._square_crop(rgb, box))
    if not results:
      return [self._box_crop(rgb)]
    return sorted(results, key=lambda r: (-r.box[2] * r.box[3], r.box[1], r.box[0]))

  def _square_crop(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> CropResult:
    """The margin square around a Haar box."""
    bx, by, bw, bh = box
    side = max(bw, bh) * (1 + 2 * self.settings.margin)
    cx, cy = bx + bw / 2, by + bh / 2
    image = _cut_square(rgb, (cx - side / 2, cy - side / 2, side, side), self.settings.size)
    return CropResult(image, tuple(round(float(v), 2) for v in box), True, NO_LANDMARKS, "haar")

  def _box_crop(self, rgb: np.ndarray) -> CropResult:
    """The Haar square crop, or the centred square when Haar finds nothing (or detector='none')."""
    h, w = rgb.shape[:2]
    box = self.detect(rgb)
    if box is None:
      side = float(min(h, w))
      box = ((w - side) / 2, (h - side) / 2, side, side)
      square = box
      found = self._cascade is None
      method = "none" if found else "center"
    else:
      return self._square_crop(rgb, box)
    image = _cut_square(rgb, square, self.settings.size)
    return CropResult(image, tuple(round(float(v), 2) for v in box), found, NO_LANDMARKS, method)


def _downscale(image: np.ndarray) -> tuple[np.ndarray, float]:
  """A copy no larger than `DETECT_MAX_SIDE` for detection, and the factor applied."""
  h, w = image.shape[:2]
  scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
  if scale < 1.0:
    image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
  return image, scale


def similarity_transform(points: np.ndarray, settings: CropSettings) -> np.ndarray:
  """The 2 x 3 similarity matrix mapping five source landmarks [5, 2] onto the template."""
  src = np.asarray(points, np.float32).reshape(5, 2)
  dst = settings.template_points()
  matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
  if matrix is None:  # degenerate points (all equal): fall back to least squares on all five
    matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=0)
  if matrix is None:
    raise ValueError("landmarks do not define a similarity transform")
  return matrix


def align(rgb: np.ndarray, points: np.ndarray, settings: CropSettings) -> np.ndarray:
  """The aligned `size` x `size` crop of `rgb` for five landmarks [5, 2] (x, y) in its pixels."""
  matrix = similarity_transform(points, settings)
  scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
  if scale < 0.5:  # Shrinking a lot: area-downscale first so the warp does not alias.
    factor = min(1.0, 2.0 * scale)
    h, w = rgb.shape[:2]
    rgb = cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))),
                     interpolation=cv2.INTER_AREA)
    matrix = similarity_transform(np.asarray(points, np.float64) * [
        rgb.shape[1] / w, rgb.shape[0] / h], settings)
  size = settings.size
  out = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
  return np.ascontiguousarray(out)


_MTCNN_LOCK = threading.Lock()
_MTCNN_CALL_LOCK = threading.Lock()
_MTCNN: list = []


def _load_mtcnn():
  """The process's MTCNN detector (loaded once; it imports TensorFlow)."""
  with _MTCNN_LOCK:
    if not _MTCNN:
      try:
        from mtcnn import MTCNN  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise UserError(f"--detector=mtcnn needs the mtcnn package ({e}): pip install "
                        "'mtcnn==1.0.0' lz4 joblib, or pass --detector=haar") from None
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      _MTCNN.append(MTCNN(device="GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"))
    return _MTCNN[0]


def _cut_square(rgb: np.ndarray, square: tuple[float, float, float, float],
                size: int) -> np.ndarray:
  """The square (x, y, side, side) of `rgb`, black outside the image, resized to size x size."""
  h, w = rgb.shape[:2]
  x0, y0 = int(round(square[0])), int(round(square[1]))
  side = max(1, int(round(square[2])))
  x1, y1 = x0 + side, y0 + side
  inner = rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
  if inner.size == 0:
    patch = np.zeros((side, side, 3), np.uint8)
  else:
    patch = cv2.copyMakeBorder(inner, max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w),
                               cv2.BORDER_CONSTANT, value=(0, 0, 0))
  interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
  return np.ascontiguousarray(cv2.resize(patch, (size, size), interpolation=interp))


_CROPPERS: dict[CropSettings, FaceCropper] = {}
_CROPPERS_LOCK = threading.Lock()


def get_cropper(settings: CropSettings) -> FaceCropper:
  """A per-process cached `FaceCropper`, so the cascade is loaded once per process."""
  with _CROPPERS_LOCK:
    if settings not in _CROPPERS:
      _CROPPERS[settings] = FaceCropper(settings)
    return _CROPPERS[settings]


def load_and_crop(path: str, settings: CropSettings = CropSettings(),
                  max_pixels: int = MAX_PIXELS) -> CropResult:
  """Decodes `path` and crops its face: the single crop used by ingestion and by queries.

  Raises:
    ImageError: the file cannot be used (see `load_rgb`).
  """
  return get_cropper(settings).crop(load_rgb(path, max_pixels=max_pixels))
