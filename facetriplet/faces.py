"""The one face crop used at training *and* query time: decode any image, find the face, crop it.

`load_rgb` decodes any common image file (JPEG, PNG, BMP, PGM/PPM, WebP, TIFF, GIF) into an RGB
uint8 array, honouring EXIF orientation; grayscale, RGBA, palette and 16-bit images are converted.
Images over `max_pixels` (from the header, before decoding) are refused with reason `too-large`
rather than downscaled, so a hostile or broken file never costs more memory than the bound.

`FaceCropper` finds the largest frontal face with OpenCV's bundled Haar cascade
(`cv2.data.haarcascades`, nothing downloaded) and cuts a square around it:

  side = max(w, h) * (1 + 2 * margin), centred on the detected box,

padded with black (zeros) where that square leaves the image, then resized to `size` x `size`.
Detection runs on a histogram-equalised grayscale copy downscaled to at most `DETECT_MAX_SIDE`
pixels and looks for faces at least `MIN_FACE_FRACTION` of the short side; the box is mapped back
to source pixels. When no face is found (or `detector='none'`, for sets that are already
cropped) the crop is the centred square of side min(H, W), with no margin. Everything stays RGB;
OpenCV's BGR order appears only inside `encode_jpeg`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from typing import Any, Mapping, NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facetriplet.errors import ImageError, UserError

MAX_PIXELS = 50_000_000  # Refused above this (reason `too-large`); 50 MP RGB is 150 MB decoded.
DETECT_MAX_SIDE = 640  # Haar runs on a copy no larger than this; faces stay well above 24 px.
# Faces narrower than this fraction of the short side are not searched for: the finest pyramid
# levels cost most of Haar's time (30 → 19 ms per LFW photo) and found no extra LFW/ORL faces.
MIN_FACE_FRACTION = 0.2
JPEG_QUALITY = 95
CASCADE_FILE = "haarcascade_frontalface_default.xml"
DETECTORS = ("haar", "none")
ON_NO_FACE = ("center", "skip")
PAD = "black"  # Pixels of the margin box outside the image are zeros (documented in the manifest).

# Reasons `load_rgb` may give in `ImageError.reason`.
REASONS = ("empty-file", "not-an-image", "truncated", "too-large", "unreadable")


def load_rgb(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Decodes an image file into an RGB uint8 array.

  Args:
    path: image file (any format PIL reads).
    max_pixels: images with more pixels than this (read from the header) are refused.

  Returns:
    np.ndarray [H, W, 3] uint8, EXIF orientation applied.

  Raises:
    ImageError: reason `empty-file`, `not-an-image`, `truncated`, `too-large` or `unreadable`.
  """
  try:
    if os.path.getsize(path) == 0:
      raise ImageError(path, "empty-file")
  except OSError as e:
    raise ImageError(path, "unreadable", str(e)) from None
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
      with Image.open(path) as im:
        width, height = im.size
        if width * height > max_pixels:
          raise ImageError(path, "too-large", f"{width}x{height} over {max_pixels} pixels")
        if width == 0 or height == 0:
          raise ImageError(path, "not-an-image", "zero width or height")
        try:
          im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
          reason = "truncated" if _looks_truncated(e) else "unreadable"
          raise ImageError(path, reason, str(e)) from None
        try:
          im = ImageOps.exif_transpose(im)
        except Exception:  # pylint: disable=broad-except
          pass  # A broken EXIF block only loses the orientation, never the photo.
        return _to_rgb(im)
    except Image.DecompressionBombError as e:
      raise ImageError(path, "too-large", str(e)) from None
    except UnidentifiedImageError:
      raise ImageError(path, "not-an-image") from None
    except ImageError:
      raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
      reason = "truncated" if _looks_truncated(e) else "unreadable"
      raise ImageError(path, reason, str(e)) from None


def _looks_truncated(e: BaseException) -> bool:
  text = str(e).lower()
  return any(w in text for w in ("truncated", "broken data stream", "premature", "end of file",
                                  "not enough data", "eof"))


def _to_rgb(im: Image.Image) -> np.ndarray:
  """Any PIL mode to RGB uint8; 16-bit and float images are scaled, alpha is laid over black."""
  mode = im.mode
  if mode.startswith("I;16") or mode in ("I", "F"):
    a = np.asarray(im).astype(np.float64)
    if mode.startswith("I;16"):
      a = a / 257.0
    elif mode == "F" and a.size and float(np.nanmax(a)) <= 1.0:
      a = a * 255.0
    elif a.size and float(a.max()) > 255:
      a = a / 257.0  # 32-bit 'I' holding 16-bit samples (PGM/PNG with maxval 65535).
    g = np.clip(np.nan_to_num(a) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.stack([g, g, g], axis=-1))
  if mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  elif mode in ("LA", "PA", "La", "RGBa"):
    im = im.convert("RGBA")
  if im.mode == "RGBA":
    rgba = np.asarray(im).astype(np.uint16)
    rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
    return np.ascontiguousarray(rgb.astype(np.uint8))
  if im.mode != "RGB":
    im = im.convert("RGB")
  return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


@dataclasses.dataclass(frozen=True)
class CropSettings:
  """How faces are found and cropped; stored in the manifest and the export metadata.

  Attributes:
    detector: 'haar' (OpenCV frontal-face cascade) or 'none' (centred square of the whole image,
      for sets that are already cropped).
    margin: fraction of the face box added on every side before squaring (0.2 → 1.4x the box).
    size: side in pixels of the stored square crop.
    on_no_face: 'center' keeps the centred square and marks face/found=0; 'skip' drops the photo.
  """
  detector: str = "haar"
  margin: float = 0.2
  size: int = 128
  on_no_face: str = "center"

  def __post_init__(self):
    if self.detector not in DETECTORS:
      raise UserError(f"detector={self.detector!r} is not one of {', '.join(DETECTORS)}")
    if self.on_no_face not in ON_NO_FACE:
      raise UserError(f"on_no_face={self.on_no_face!r} is not one of {', '.join(ON_NO_FACE)}")
    if not 0 <= float(self.margin) <= 2:
      raise UserError(f"margin={self.margin} must be between 0 and 2 (fraction of the face box)")
    if not 16 <= int(self.size) <= 4096:
      raise UserError(f"size={self.size} must be between 16 and 4096 pixels")
    object.__setattr__(self, "margin", float(self.margin))
    object.__setattr__(self, "size", int(self.size))

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(pad=PAD, detect_max_side=DETECT_MAX_SIDE, min_face_fraction=MIN_FACE_FRACTION,
             cascade=CASCADE_FILE)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "CropSettings":
    """Builds settings from `to_dict()` output; informational keys (pad, cascade...) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


class CropResult(NamedTuple):
  """A square RGB face crop, the face box (x, y, w, h) in source pixels, and whether found."""
  image: np.ndarray
  box: tuple[float, float, float, float]
  found: bool


class FaceCropper:
  """Finds the largest face and cuts the square crop. Load once, call `crop` for every image."""

  def __init__(self, settings: CropSettings = CropSettings()):
    self.settings = settings
    self._cascade = None
    if settings.detector == "haar":
      path = os.path.join(cv2.data.haarcascades, CASCADE_FILE)
      cascade = cv2.CascadeClassifier(path)
      if cascade.empty():
        raise UserError(f"cannot load the Haar cascade {path}: reinstall opencv-python-headless<5 "
                        "or pass --detector=none")
      self._cascade = cascade

  def detect(self, rgb: np.ndarray) -> tuple[float, float, float, float] | None:
    """The largest face box (x, y, w, h) in source pixels, or None (also for detector='none')."""
    if self._cascade is None:
      return None
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    if scale < 1.0:
      gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                        interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_side = max(24, int(MIN_FACE_FRACTION * min(gray.shape)))
    faces = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                           minSize=(min_side, min_side))
    if len(faces) == 0:
      return None
    # Largest area wins; ties broken by position so the choice never depends on detector order.
    x, y, fw, fh = max((tuple(int(v) for v in f) for f in faces),
                       key=lambda f: (f[2] * f[3], -f[1], -f[0]))
    return (x / scale, y / scale, fw / scale, fh / scale)

  def crop(self, rgb: np.ndarray) -> CropResult:
    """Crops one RGB uint8 image [H, W, 3] to a `size` x `size` face square.

    Returns:
      CropResult; `found` is False when no face was detected and the centred square was used.
      With detector='none' the centred square is the intended crop and `found` is True.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
      raise ValueError(f"expected RGB uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    box = self.detect(rgb)
    if box is None:
      side = float(min(h, w))
      box = ((w - side) / 2, (h - side) / 2, side, side)
      square = box
      found = self._cascade is None
    else:
      bx, by, bw, bh = box
      side = max(bw, bh) * (1 + 2 * self.settings.margin)
      cx, cy = bx + bw / 2, by + bh / 2
      square = (cx - side / 2, cy - side / 2, side, side)
      found = True
    image = _cut_square(rgb, square, self.settings.size)
    return CropResult(image, tuple(round(float(v), 2) for v in box), found)


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


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """Deterministic JPEG bytes of an RGB uint8 image (OpenCV, baseline, no optimisation passes)."""
  ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                         [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
  if not ok:
    raise RuntimeError("cv2.imencode failed to encode a JPEG")
  return buf.tobytes()
