"""Decoding image files: any common format to RGB uint8, bounded, with a reason when it fails.

`load_rgb` decodes any common image file (JPEG, PNG, BMP, PGM/PPM, WebP, TIFF, GIF) into an RGB
uint8 array, honouring EXIF orientation; grayscale, RGBA, palette and 16-bit images are converted.
Images over `max_pixels` (from the header, before decoding) are refused with reason `too-large`
rather than downscaled, so a hostile or broken file never costs more memory than the bound.
`encode_jpeg` writes the deterministic JPEG bytes stored in the records.
"""

from __future__ import annotations

import io
import os
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facetriplet.errors import ImageError, UserError

MAX_PIXELS = 50_000_000  # Refused above this (reason `too-large`); 50 MP RGB is 150 MB decoded.
JPEG_QUALITY = 95

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
  return _decode(path, path, max_pixels)


def decode_rgb(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """`load_rgb` for an encoded image held in memory (an upload); `name` appears in errors."""
  if not data:
    raise ImageError(name, "empty-file")
  return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source, path: str, max_pixels: int) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
      with Image.open(source) as im:
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


def image_pixels(path: str) -> int:
  """Width x height from the file header (nothing decoded); 0 when it cannot be read."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as im:
        return int(im.size[0]) * int(im.size[1])
  except Exception:  # pylint: disable=broad-except  (load_rgb reports the reason)
    return 0


def _looks_truncated(e: BaseException) -> bool:
  text = str(e).lower()
  return any(
    w in text
    for w in (
      "truncated",
      "broken data stream",
      "premature",
      "end of file",
      "not enough data",
      "eof",
    )
  )


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


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """Deterministic JPEG bytes of an RGB uint8 image (OpenCV, baseline, no optimisation passes)."""
  ok, buf = cv2.imencode(
    ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
  )
  if not ok:
    raise RuntimeError("cv2.imencode failed to encode a JPEG")
  return buf.tobytes()


def to_rgb(image, name: str = "<image>") -> np.ndarray:
  """An RGB uint8 [H, W, 3] array from a path, encoded bytes or an array (gray or RGB[A]).

  Raises:
    ImageError: unreadable file or bytes; UserError: an array of another shape or type.
  """
  if isinstance(image, (str, os.PathLike)):
    return load_rgb(os.fspath(image))
  if isinstance(image, (bytes, bytearray)):
    return decode_rgb(bytes(image), name)
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise UserError(f"{name}: arrays must be uint8 RGB [H, W, 3], got {array.dtype}")
  if array.ndim == 2:
    array = np.stack([array] * 3, axis=-1)
  if array.ndim != 3 or array.shape[2] not in (3, 4):
    raise UserError(f"{name}: arrays must be RGB [H, W, 3], got shape {array.shape}")
  return np.ascontiguousarray(array[..., :3])
