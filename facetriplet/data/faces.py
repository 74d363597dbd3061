"""The one face crop used at training *and* query time: find the face in a decoded photo, crop it.

Photos are decoded by `facetriplet.data.images.load_rgb` (re-exported here with `load_rgb`,
`image_pixels`, `encode_jpeg` and `MAX_PIXELS`).

`FaceCropper` asks the detector named by the settings (`facetriplet.data.detectors`: mtcnn, haar,
none, ...) for the faces of a batch of photos, chooses one face per photo and cuts a square crop
of side `crop_size` of it:

- a face with five landmarks (eyes, nose tip, mouth corners) is *aligned*: the similarity
  transform (rotation, uniform scale, shift; `cv2.estimateAffinePartial2D`) that maps the
  landmarks onto `TEMPLATES[template]` (a 5-point template scaled to `crop_size` and shrunk
  towards the centre by `1 / (1 + 2 * align_margin)`) warps the photo, black outside it;
- a face with a box only gets the square of side `max(w, h) * (1 + 2 * margin)` centred on the
  box, black outside the image;
- where the detector finds nothing upright it is tried on the photo turned on either side and
  upside down (`try_turned`, `facetriplet.data.turns`: people lying down, sideways scans), and the
  face cut upright from the turn it is surest of; then its `fallback` detector is tried (MTCNN
  and YuNet fall back to Haar), then the centred square of side min(H, W) is used (`found`
  False); a `whole_image` detector (`none`, for sets that are already cropped) takes that centred
  square as the intended crop.
`CropResult.method` says which detector made the crop ('center' for the last resort).

Which face (`pick`): `largest` (default), or `center`, the face nearest the photo's centre among
those at least a quarter of the largest one's area (for centred sets such as LFW, where the named
person is in the middle and others may be larger). Everything stays RGB; OpenCV's BGR order
appears only inside `encode_jpeg`.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from facetriplet.data import alignment, detectors, turns
from facetriplet.data.alignment import FITS, TEMPLATES
from facetriplet.data.detectors import DETECT_MAX_SIDE, MIN_FACE_FRACTION, Detector, Face
from facetriplet.data.detectors.haar import CASCADE_FILE

# Decoding lives in data/images.py; these names are re-exported for the crop's callers.
from facetriplet.data.images import JPEG_QUALITY as JPEG_QUALITY
from facetriplet.data.images import MAX_PIXELS as MAX_PIXELS
from facetriplet.data.images import REASONS as REASONS
from facetriplet.data.images import encode_jpeg as encode_jpeg
from facetriplet.data.images import image_pixels as image_pixels
from facetriplet.data.images import load_rgb as load_rgb
from facetriplet.errors import UserError

ON_NO_FACE = ("center", "skip")
PICKS = ("largest", "center")
# Faces used per photo: the chosen one (`pick`), or every face found (collections, group photos).
FACE_MODES = ("largest", "all")
# Named crop settings: what a pretrained network's weights expect (`networks.Network.crop_preset`)
# or a common recipe. `CropSettings.preset(name, **overrides)`.
PRESETS: dict[str, dict[str, Any]] = {
  "arcface112": {"template": "arcface112", "align_margin": 0.0, "fit": "lmeds"},
  "dlib150": {"template": "dlib5", "crop_size": 150, "align_margin": 0.25, "fit": "lstsq"},
}
# Fields added after the first release, with the value that reproduces older crops: written into
# the crop settings (manifests, exports) only when they differ, so older folders stay the same run.
LATER_FIELDS = {"fit": "lmeds", "try_turned": False}
# Ways a crop was made (`CropResult.method`, record `face/method`, manifest counts): the detector
# that found the face, or 'center' when none did.
METHODS = detectors.NAMES + ("center",)
PAD = "black"  # Pixels of the margin box outside the image are zeros (documented in the manifest).


@dataclasses.dataclass(frozen=True)
class CropSettings:
  """How faces are found and cropped; stored in the manifest and the export metadata.

  Attributes:
    detector: a `facetriplet.data.detectors` name: 'mtcnn' (aligned on five landmarks; the
      default: alignment lifted LFW top-1 of every feature, see BENCHMARKS.md), 'haar' (OpenCV
      frontal-face cascade, box crop), 'none' (centred square of the whole image, for sets that
      are already cropped), ...
    margin: fraction of the face box added on every side before squaring (0.2 → 1.4x the box).
    crop_size: side in pixels of the square crop (what the records store and the model takes).
    on_no_face: 'center' keeps the centred square and marks face/found=0; 'skip' drops the photo.
    pick: which face of a photo with several: 'largest' or 'center' (see the module docstring).
    template: the 5-point alignment template (`TEMPLATES`), used for faces with landmarks.
    align_margin: zoom-out of the aligned crop: 0 puts the template's points where they are in a
      112-px ArcFace crop scaled to `crop_size`; 0.1 shrinks the face by 1/1.2 around the centre.
    fit: how the alignment is fitted (`FITS`).
    try_turned: where the detector finds no face upright, search the photo turned by 90 degrees
      either way and by 180 (`facetriplet.data.turns`) before the fallback detector. Settings
      written before this field existed read as False, which is what they did.
  """

  detector: str = detectors.DEFAULT
  margin: float = 0.2
  crop_size: int = 128
  on_no_face: str = "center"
  pick: str = "largest"
  template: str = "arcface112"
  align_margin: float = 0.0
  fit: str = "lmeds"
  try_turned: bool = True

  def __post_init__(self):
    detectors.check(self.detector)
    if self.on_no_face not in ON_NO_FACE:
      raise UserError(f"on_no_face={self.on_no_face!r} is not one of {', '.join(ON_NO_FACE)}")
    if not 0 <= float(self.margin) <= 2:
      raise UserError(f"margin={self.margin} must be between 0 and 2 (fraction of the face box)")
    if not 16 <= int(self.crop_size) <= 4096:
      raise UserError(f"crop_size={self.crop_size} must be between 16 and 4096 pixels")
    if self.pick not in PICKS:
      raise UserError(f"pick={self.pick!r} is not one of {', '.join(PICKS)}")
    if self.template not in TEMPLATES:
      raise UserError(f"template={self.template!r} is not one of {', '.join(TEMPLATES)}")
    if not 0 <= float(self.align_margin) <= 1:
      raise UserError(f"align_margin={self.align_margin} must be between 0 and 1")
    if self.fit not in FITS:
      raise UserError(f"fit={self.fit!r} is not one of {', '.join(FITS)}")
    if not isinstance(self.try_turned, (bool, np.bool_)):
      raise UserError(f"try_turned={self.try_turned!r} must be true or false")
    object.__setattr__(self, "try_turned", bool(self.try_turned))
    object.__setattr__(self, "align_margin", float(self.align_margin))
    object.__setattr__(self, "margin", float(self.margin))
    object.__setattr__(self, "crop_size", int(self.crop_size))

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    for key, old in LATER_FIELDS.items():
      if d[key] == old:
        del d[key]
    d.update(
      pad=PAD,
      detect_max_side=DETECT_MAX_SIDE,
      min_face_fraction=MIN_FACE_FRACTION,
      cascade=CASCADE_FILE,
    )
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "CropSettings":
    """Builds settings from `to_dict()` output; informational keys (pad, cascade...) are ignored.

    Settings written before a field of `LATER_FIELDS` existed get the value that reproduces
    their crops (e.g. `try_turned` False), other missing fields their defaults; the crop side
    written as `size` (before it was called crop_size) is read as crop_size.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    d = {**LATER_FIELDS, **d}
    if "crop_size" not in d and "size" in d:
      d["crop_size"] = d.pop("size")
    return cls(**{k: v for k, v in d.items() if k in names})

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> "CropSettings":
    """The settings of preset `name` (`PRESETS`), with `overrides` (detector, pick, ...)."""
    if name not in PRESETS:
      raise UserError(f"crop preset {name!r} is not one of {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

  def template_points(self) -> np.ndarray:
    """The alignment template in the pixel frame of the crop, float32 [5, 2]."""
    return alignment.template_points(self.template, self.crop_size, self.align_margin)


NO_LANDMARKS = (0.0,) * 10


def check_face_mode(faces_mode: str) -> str:
  """`faces_mode` if it is one of FACE_MODES; UserError naming them otherwise."""
  if faces_mode not in FACE_MODES:
    raise UserError(f"faces={faces_mode!r} is not one of {', '.join(FACE_MODES)}")
  return faces_mode


class CropResult(NamedTuple):
  """A square RGB face crop and how it was made.

  Attributes:
    image: uint8 [crop_size, crop_size, 3].
    box: face box (x, y, w, h) in source pixels (the centred square when no face was found).
    found: a face was detected (always True for a `whole_image` detector such as 'none').
    landmarks: (x1..x5, y1..y5) of the five points in source pixels, zeros without them.
    method: the detector that found the face, 'center' (none did) or 'none' (detector='none').
    turned: degrees counterclockwise the photo was turned for the face to be found (0, 90, 180,
      270; `CropSettings.try_turned`); the crop is upright, box and landmarks in the photo's own
      pixels.
  """

  image: np.ndarray
  box: tuple[float, float, float, float]
  found: bool
  landmarks: tuple[float, ...] = NO_LANDMARKS
  method: str = "haar"
  turned: int = 0


class FaceCropper:
  """Finds one face per photo and cuts its crop. Load once, call `crop` or `crop_batch`.

  Thread-safe: each detector guards what it cannot share (a Haar cascade per cropper, one
  process-wide MTCNN).
  """

  def __init__(self, settings: CropSettings = CropSettings(), detector: Optional[Detector] = None):
    """`detector` replaces the one the settings name (tests, experiments); its fallback stays."""
    self.settings = settings
    self.detector = detector or detectors.create(settings.detector)
    name = detectors.detector_class(settings.detector).fallback
    self.fallback = detectors.create(name) if name else None

  def _pick(self, boxes: Sequence[tuple[float, float, float, float]], h: int, w: int) -> int:
    """Index of the chosen face among `boxes` (x, y, w, h) of an h x w image."""
    areas = [b[2] * b[3] for b in boxes]
    if self.settings.pick == "center":
      big = max(areas)
      candidates = [i for i, a in enumerate(areas) if a >= 0.25 * big]
      return min(
        candidates,
        key=lambda i: (
          (boxes[i][0] + boxes[i][2] / 2 - w / 2) ** 2
          + (boxes[i][1] + boxes[i][3] / 2 - h / 2) ** 2,
          -areas[i],
          boxes[i][1],
          boxes[i][0],
        ),
      )
    # Largest area wins; ties broken by position so the choice never depends on detector order.
    return max(range(len(boxes)), key=lambda i: (areas[i], -boxes[i][1], -boxes[i][0]))

  def choose(self, found: Sequence[Face], h: int, w: int) -> Optional[Face]:
    """The face `pick` chooses among those found in an h x w photo (None when there are none)."""
    return found[self._pick([f.box for f in found], h, w)] if found else None

  def crop(self, rgb: np.ndarray) -> CropResult:
    """Crops one RGB uint8 image [H, W, 3]; see `crop_batch`."""
    return self.crop_batch([rgb])[0]

  def crop_batch(self, images: Sequence[np.ndarray]) -> list[CropResult]:
    """Crops RGB uint8 images [H, W, 3] to square faces (one detector call per batch).

    Returns:
      A CropResult per image; `found` is False when no face was detected and the centred square
      was used. With a `whole_image` detector ('none') the centred square is the intended crop
      and `found` is True.
    """
    _check_rgb(images)
    found = self.detector.find(list(images)) if images else []
    results = []
    for rgb, faces_found in zip(images, found):
      face = self.choose(faces_found, *rgb.shape[:2])
      if face is None:
        results.append(self._turned_crop(rgb) or self._fallback_crop(rgb))
        continue
      face = self.detector.finish(rgb, [face])[0]  # only the chosen face is finished
      results.append(self.crop_face(rgb, face, self.detector.name))
    return results

  def crop_faces(self, rgb: np.ndarray, min_face: float = MIN_FACE_FRACTION) -> list[CropResult]:
    """Every face of one photo; see `crop_faces_batch`."""
    return self.crop_faces_batch([rgb], min_face)[0]

  def crop_faces_batch(
    self, images: Sequence[np.ndarray], min_face: float = MIN_FACE_FRACTION
  ) -> list[list[CropResult]]:
    """Every face of each photo (one detector call for the batch), each cropped exactly as
    `crop` crops its chosen face, largest first; faces whose box is narrower than `min_face` x
    the photo's short side are left out. No face upright: the faces of the photo's turn the
    detector is surest of (`try_turned`), else its fallback's on that photo alone, else [the
    centred square] (`found` False)."""
    _check_rgb(images)
    hint = min(min_face, MIN_FACE_FRACTION)
    found = self.detector.find(list(images), hint) if images else []
    out = []
    for rgb, faces_found in zip(images, found):
      results = self._all_faces(rgb, faces_found, min_face, self.detector)
      best = None if results else self._best_turn(rgb, hint, min_face * min(rgb.shape[:2]))
      if best is not None:
        k, turned, found_turned = best
        results = _largest_first(
          turns.result_back(r, k, *rgb.shape[:2])
          for r in self._all_faces(turned, found_turned, min_face, self.detector)
        )
      if not results and self.fallback is not None:
        results = self._all_faces(rgb, self.fallback.find([rgb], hint)[0], min_face, self.fallback)
      out.append(results or [self._centre_crop(rgb)])
    return out

  def crop_each(
    self,
    decoded: Sequence[Any],
    faces_mode: str = "largest",
    min_face: float = MIN_FACE_FRACTION,
  ) -> list[Any]:
    """For each decoded photo (an RGB array, or the exception that made it unreadable, passed
    through in its place), its crops: [the chosen face's] ('largest') or every face's ('all',
    see `crop_faces_batch`). The photos go to the detector in batches of its `batch_size`."""
    check_face_mode(faces_mode)
    out = list(decoded)
    readable = [i for i, v in enumerate(out) if not isinstance(v, BaseException)]
    step = max(1, self.detector.batch_size)
    for start in range(0, len(readable), step):
      chunk = readable[start : start + step]
      rgbs = [out[i] for i in chunk]
      if faces_mode == "all":
        found = self.crop_faces_batch(rgbs, min_face)
      else:
        found = [[c] for c in self.crop_batch(rgbs)]
      for i, crops in zip(chunk, found):
        out[i] = crops
    return out

  def _all_faces(
    self, rgb: np.ndarray, found: Sequence[Face], min_face: float, detector: Detector
  ) -> list[CropResult]:
    smallest = min_face * min(rgb.shape[:2])
    kept = detector.finish(rgb, [face for face in found if face.box[2] >= smallest])
    results = [self.crop_face(rgb, face, detector.name) for face in kept]
    return _largest_first(results)

  def crop_face(self, rgb: np.ndarray, face: Face, method: str) -> CropResult:
    """The crop of one found face: aligned on its landmarks, else the margin square of its
    box."""
    box = tuple(round(float(v), 2) for v in face.box)
    if face.landmarks is not None:
      points = np.asarray(face.landmarks, np.float64).reshape(5, 2)
      landmarks = tuple(round(float(v), 2) for v in np.concatenate([points[:, 0], points[:, 1]]))
      return CropResult(align(rgb, points, self.settings), box, True, landmarks, method)
    bx, by, bw, bh = face.box
    side = max(bw, bh) * (1 + 2 * self.settings.margin)
    cx, cy = bx + bw / 2, by + bh / 2
    square = (cx - side / 2, cy - side / 2, side, side)
    image = alignment.cut_square(rgb, square, self.settings.crop_size)
    return CropResult(image, box, True, NO_LANDMARKS, method)

  def _best_turn(self, rgb: np.ndarray, min_face: float, smallest: float = 0.0):
    """`turns.best_turn` with the detector, or None when `try_turned` is off (or the detector
    finds nothing by design)."""
    if not self.settings.try_turned or self.detector.whole_image:
      return None
    return turns.best_turn(self.detector, rgb, min_face, smallest)

  def _turned_crop(self, rgb: np.ndarray) -> Optional[CropResult]:
    """The chosen face of the turn the detector is surest of, cut upright; None if none."""
    best = self._best_turn(rgb, MIN_FACE_FRACTION)
    if best is None:
      return None
    k, turned, found = best
    face = self.detector.finish(turned, [self.choose(found, *turned.shape[:2])])[0]
    return turns.result_back(self.crop_face(turned, face, self.detector.name), k, *rgb.shape[:2])

  def _fallback_crop(self, rgb: np.ndarray) -> CropResult:
    """The fallback detector's chosen face, else the centred square."""
    if self.fallback is not None:
      face = self.choose(self.fallback.find([rgb])[0], *rgb.shape[:2])
      if face is not None:
        return self.crop_face(rgb, self.fallback.finish(rgb, [face])[0], self.fallback.name)
    return self._centre_crop(rgb)

  def _centre_crop(self, rgb: np.ndarray) -> CropResult:
    """The centred square of side min(H, W): the intended crop of a `whole_image` detector,
    else the last resort (`found` False, method 'center')."""
    h, w = rgb.shape[:2]
    side = float(min(h, w))
    box = ((w - side) / 2, (h - side) / 2, side, side)
    image = alignment.cut_square(rgb, box, self.settings.crop_size)
    whole = self.detector.whole_image
    return CropResult(
      image,
      tuple(round(float(v), 2) for v in box),
      whole,
      NO_LANDMARKS,
      self.detector.name if whole else "center",
    )


def _largest_first(results: Iterable[CropResult]) -> list[CropResult]:
  """Crops by face area, largest first (ties by position: never by detector order)."""
  return sorted(results, key=lambda r: (-r.box[2] * r.box[3], r.box[1], r.box[0]))


def _check_rgb(images: Sequence[np.ndarray]) -> None:
  for rgb in images:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
      raise ValueError(f"expected RGB uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")


def align(rgb: np.ndarray, points: np.ndarray, settings: CropSettings) -> np.ndarray:
  """The aligned square crop of `rgb` for five landmarks [5, 2] (x, y) in its pixels."""
  return alignment.warp(rgb, points, settings.template_points(), settings.crop_size, settings.fit)


_CROPPERS: dict[CropSettings, FaceCropper] = {}
_CROPPERS_LOCK = threading.Lock()


def get_cropper(settings: CropSettings) -> FaceCropper:
  """A per-process cached `FaceCropper`, so the cascade is loaded once per process."""
  with _CROPPERS_LOCK:
    if settings not in _CROPPERS:
      _CROPPERS[settings] = FaceCropper(settings)
    return _CROPPERS[settings]


def load_and_crop(
  path: str, settings: CropSettings = CropSettings(), max_pixels: int = MAX_PIXELS
) -> CropResult:
  """Decodes `path` and crops its face: the single crop used by ingestion and by queries.

  Raises:
    ImageError: the file cannot be used (see `load_rgb`).
  """
  return get_cropper(settings).crop(load_rgb(path, max_pixels=max_pixels))


def crop_size_of(crop: Mapping[str, Any]) -> int:
  """The crop side of a stored CropSettings dict (a manifest's or an export's `crop`)."""
  return int(crop.get("crop_size", crop.get("size")))
