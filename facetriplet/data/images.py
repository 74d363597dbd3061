"""Decoding image files: any common format to RGB uint8, bounded, with a reason when it fails.

`load_rgb` decodes any common image file (JPEG, PNG, BMP, PGM/PPM, WebP, TIFF, GIF) into an RGB
uint8 array, honouring EXIF orientation; grayscale, RGBA, palette and 16-bit images are converted.
Images over `max_pixels` (from the header, before decoding) are refused with reason `too-large`
rather than downscaled, so a hostile or broken file never costs more memory than the bound.
A JPEG whose header claims more 8x8 blocks than its bytes could possibly code (a 13 KB file
saying 6000x6000, which libjpeg would silently fill with grey) is refused as `truncated` before
decoding. A decoded image, or an array given to `to_rgb`, that is nearly one flat colour or under
8 pixels on a side is refused as `blank` (`check_content`): there is no face to find in it.
`encode_jpeg` writes the deterministic JPEG bytes stored in the records.
"""

from __future__ import annotations

import io
import math
import os
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facetriplet.errors import ImageError, UserError

MAX_PIXELS = 50_000_000  # Refused above this (reason `too-large`); 50 MP RGB is 150 MB decoded.
JPEG_QUALITY = 95

# Reasons `load_rgb` may give in `ImageError.reason` (`blank`: see `check_content`).
REASONS = ("empty-file", "not-an-image", "truncated", "too-large", "unreadable", "blank")

MIN_SIDE = 8  # Images narrower or lower than this are `blank`.
FLAT_LEVELS = 4  # A pixel within this of the median colour in every channel is "flat" ...
FLAT_FRACTION = 0.99  # ... and an image with at least this fraction of flat pixels is `blank`.
FLAT_SAMPLE = 65_536  # `check_content` looks at a strided subsample of at most ~this many pixels.

# Least coded bits per 8x8 block of a Huffman-coded JPEG, by SOF marker: sequential (baseline and
# extended) codes a DC symbol and at least one AC symbol (EOB) per block, each of >= 1 bit;
# progressive codes at least the DC symbol of every block. Arithmetic-coded, lossless and
# hierarchical frames are not checked.
_MIN_BITS_PER_BLOCK = {0xC0: 2, 0xC1: 2, 0xC2: 1}
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames
_NO_LENGTH_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM


def load_rgb(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Decodes an image file into an RGB uint8 array.

  Args:
    path: image file (any format PIL reads).
    max_pixels: images with more pixels than this (read from the header) are refused.

  Returns:
    np.ndarray [H, W, 3] uint8, EXIF orientation applied.

  Raises:
    ImageError: reason `empty-file`, `not-an-image`, `truncated`, `too-large`, `unreadable` or
      `blank`.
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
        if im.format in ("JPEG", "MPO"):
          _check_jpeg_size(im.fp, path)
        try:
          im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
          reason = "truncated" if _looks_truncated(e) else "unreadable"
          raise ImageError(path, reason, str(e)) from None
        try:
          im = ImageOps.exif_transpose(im)
        except Exception:  # pylint: disable=broad-except
          pass  # A broken EXIF block only loses the orientation, never the photo.
        rgb = _to_rgb(im)
    except Image.DecompressionBombError as e:
      raise ImageError(path, "too-large", str(e)) from None
    except UnidentifiedImageError:
      raise ImageError(path, "not-an-image") from None
    except ImageError:
      raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
      reason = "truncated" if _looks_truncated(e) else "unreadable"
      raise ImageError(path, reason, str(e)) from None
  check_content(rgb, path)
  return rgb


def check_content(rgb: np.ndarray, name: str = "<image>") -> None:
  """Refuses an image with nothing in it to search for: tiny, or nearly one flat colour.

  Flat: on a strided subsample of at most ~`FLAT_SAMPLE` pixels, at least `FLAT_FRACTION` of the
  pixels lie within `FLAT_LEVELS` of the median colour in every channel (a blank page, a lens cap,
  a grey placeholder, a white frame with a few stray marks).

  Args:
    rgb: [H, W, C] uint8 image (C >= 1; channels after the third are ignored) or [H, W] grey.
    name: the image's name in the error.

  Raises:
    ImageError: reason `blank`.
  """
  height, width = rgb.shape[:2]
  if height < MIN_SIDE or width < MIN_SIDE:
    raise ImageError(name, "blank", f"{width}x{height}: fewer than {MIN_SIDE} pixels on a side")
  step = max(1, math.ceil(math.sqrt(height * width / FLAT_SAMPLE)))
  sample = rgb[::step, ::step]
  sample = np.ascontiguousarray(sample[..., :3] if sample.ndim == 3 else sample[..., None])
  count = sample.shape[0] * sample.shape[1]
  low, high = [], []
  for c in range(sample.shape[2]):
    cumulative = np.cumsum(cv2.calcHist([sample], [c], None, [256], [0, 256]).ravel())
    median = int(np.searchsorted(cumulative, (count + 1) // 2))
    low.append(max(0, median - FLAT_LEVELS))
    high.append(min(255, median + FLAT_LEVELS))
    in_channel = cumulative[high[-1]] - (cumulative[low[-1] - 1] if low[-1] else 0)
    if in_channel / count < FLAT_FRACTION:
      return  # Not flat in this channel, so not flat (a photo usually stops at the first).
  near = cv2.inRange(sample, np.array(low, np.uint8), np.array(high, np.uint8))
  flat = cv2.countNonZero(near) / count
  if flat >= FLAT_FRACTION:
    raise ImageError(
      name, "blank", f"{flat:.1%} of the pixels are one flat colour (within {FLAT_LEVELS} levels)"
    )


def _check_jpeg_size(fp, path: str) -> None:
  """Refuses (`truncated`) a JPEG too small to hold the 8x8 blocks its frame header claims.

  Reads only the marker segments before the first scan (seeking past their payloads), so it costs
  a few small reads whatever the file's size; the file position is restored. A file it cannot
  parse, or a frame it does not check, is left to the decoder.
  """
  position = fp.tell()
  try:
    found = _jpeg_frame(fp)
  except (OSError, ValueError):
    found = None
  finally:
    fp.seek(position)
  if found is None:
    return
  width, height, bits_per_block, blocks, coded_bytes = found
  if coded_bytes * 8 < blocks * bits_per_block:
    raise ImageError(
      path,
      "truncated",
      f"header says {width}x{height} but the file holds only {coded_bytes} bytes of image data,"
      f" at least {math.ceil(blocks * bits_per_block / 8)} needed",
    )


def _jpeg_frame(fp):
  """(width, height, least bits per block, blocks, bytes after the first scan header) of a
  Huffman-coded sequential or progressive JPEG, from its markers; None when not checkable."""
  fp.seek(0)
  if fp.read(2) != b"\xff\xd8":
    return None
  frame = None
  while True:
    marker = _next_marker(fp)
    if marker in _NO_LENGTH_MARKERS:
      continue
    if marker < 0 or marker == 0xD9:  # End of file, or EOI before any scan.
      return None
    raw = fp.read(2)
    if len(raw) < 2 or int.from_bytes(raw, "big") < 2:
      return None
    length = int.from_bytes(raw, "big") - 2
    if marker == 0xDA:  # SOS: the coded data follows its header.
      if frame is None:
        return None
      data_start = fp.tell() + length
      fp.seek(0, io.SEEK_END)
      return (*frame, max(0, fp.tell() - data_start))
    if marker in _SOF_MARKERS:
      if frame is not None or marker not in _MIN_BITS_PER_BLOCK:
        return None  # A second frame (hierarchical), or a frame coding we do not check.
      frame = _parse_sof(fp.read(length), _MIN_BITS_PER_BLOCK[marker])
      if frame is None:
        return None
    else:
      fp.seek(length, io.SEEK_CUR)


def _next_marker(fp) -> int:
  """The code of the next marker, skipping junk, fill bytes and FF00 as libjpeg does (in chunks,
  never byte by byte); -1 at the end of the file. Leaves the file just after the marker."""
  start = fp.tell()
  head = fp.read(2)
  if len(head) == 2 and head[0] == 0xFF and head[1] not in (0x00, 0xFF):
    return head[1]  # The usual case: a marker right where the previous segment ended.
  fp.seek(start)
  after_ff = False
  while True:
    start = fp.tell()
    chunk = fp.read(4096)
    if not chunk:
      return -1
    i = 0 if after_ff else chunk.find(b"\xff")
    if i < 0:
      continue
    rest = chunk[i:].lstrip(b"\xff")
    after_ff = True
    if rest:
      fp.seek(start + len(chunk) - len(rest) + 1)
      if rest[0]:
        return rest[0]
      after_ff = False  # FF00 is a coded 0xFF byte, not a marker.


def _parse_sof(segment: bytes, bits_per_block: int):
  """(width, height, bits_per_block, blocks) of an SOF payload; None when malformed or when the
  height is left to a DNL marker. Blocks are counted per component, without MCU padding."""
  if len(segment) < 6:
    return None
  height = int.from_bytes(segment[1:3], "big")
  width = int.from_bytes(segment[3:5], "big")
  count = segment[5]
  if not height or not width or not count or len(segment) < 6 + 3 * count:
    return None
  factors = [(b >> 4, b & 15) for b in segment[7 : 6 + 3 * count : 3]]
  if any(not h or not v for h, v in factors):
    return None
  h_max = max(h for h, _ in factors)
  v_max = max(v for _, v in factors)
  blocks = sum(
    _ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)
    for h, v in factors
  )
  return width, height, bits_per_block, blocks


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


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
    ImageError: unreadable file or bytes, or a `blank` image (`check_content`, arrays too);
      UserError: an array of another shape or type.
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
  rgb = np.ascontiguousarray(array[..., :3])
  check_content(rgb, name)
  return rgb
