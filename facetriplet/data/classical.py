"""Classical CBIR features: baselines with the same interface as the learned `Embedder`.

Each extractor has `.name`, `.dim`, `.fingerprint` (a stable string naming the feature, its
version, its internal size and the crop, so an index is never searched with other features),
`.crop_settings` (a `faces.CropSettings`: how callers crop faces before `embed`), and
`.embed(images uint8 [N, S, S, 3]) -> float32 [N, D]` with unit rows, so a dot product is the
cosine similarity, as for the learned embeddings (and ScaNN's dot-product search).

  * `pixels`: grayscale thumbnail (32x32), mean-centred: cosine = Pearson correlation.
  * `color_hist`: HSV 8x8x8 joint histogram, normalised to sum 1, then square-rooted (Hellinger):
    the cosine of two such vectors is the Bhattacharyya coefficient sum_i sqrt(p_i q_i). It
    ranks like the histogram intersection sum_i min(p_i, q_i) (both measure the overlap of the
    two distributions; sqrt(p q) >= min(p, q)), and 1 - intersection is the weighted Jaccard-like
    distance often used in CBIR.
  * `lbp`: uniform local binary patterns (8 neighbours, radius 1, 59 labels) on a 64x64 grayscale,
    a histogram per cell of a 4x4 grid (Ahonen et al., 2006), each cell square-rooted.
  * `hog`: OpenCV HOG on a 64x64 grayscale (16 px blocks, 8 px cells, 9 orientations).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import cv2
import numpy as np

from facetriplet.data import faces
from facetriplet.errors import UserError

EXTRACTORS = ("pixels", "color_hist", "lbp", "hog")
_CHUNK = 256  # images converted at a time, to bound memory


class ClassicalExtractor:
  """Base class: input checks, chunking and row normalisation around `_features`."""

  name = ""
  version = 1

  def __init__(self, size: int, dim: int, crop: Optional[faces.CropSettings] = None):
    self.size = size
    self.dim = dim
    self.crop_settings = crop if crop is not None else faces.CropSettings()
    c = self.crop_settings
    # Turned faces (added later) name themselves, so older fingerprints stay as they were.
    self.fingerprint = (
      f"classical:{self.name}:v{self.version}:size{size}:"
      f"crop-{c.detector}-{c.margin:g}-{c.crop_size}-{c.on_no_face}-{c.pick}-{c.template}-"
      f"{c.align_margin:g}" + ("-turned" if c.try_turned else "")
    )

  def embed(self, images: np.ndarray) -> np.ndarray:
    """Features of a batch of RGB images.

    Args:
      images: uint8 [N, H, W, 3] (any H, W; normally the crop size).

    Returns:
      float32 [N, dim] with unit L2 rows; a row whose raw feature is all zero (e.g. `pixels` of a
      flat grey image) becomes the constant unit vector, so it is still a valid cosine input.

    Raises:
      ValueError: `images` is not a uint8 [N, H, W, 3] array.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    out = np.zeros((len(images), self.dim), np.float32)
    for start in range(0, len(images), _CHUNK):
      out[start : start + _CHUNK] = self._features(images[start : start + _CHUNK])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    flat = norms[:, 0] <= 1e-12
    out = out / np.where(flat[:, None], 1.0, norms)
    out[flat] = 1.0 / np.sqrt(self.dim)
    return out.astype(np.float32)

  def _features(self, images: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}(fingerprint={self.fingerprint!r}, dim={self.dim})"


class PixelsExtractor(ClassicalExtractor):
  """Mean-centred grayscale thumbnail (size x size)."""

  name = "pixels"

  def __init__(self, size: int = 32, crop: Optional[faces.CropSettings] = None):
    super().__init__(size, size * size, crop)

  def _features(self, images: np.ndarray) -> np.ndarray:
    gray = _resize(_gray(images), self.size).reshape(len(images), -1)
    return gray - gray.mean(axis=1, keepdims=True)


class ColorHistExtractor(ClassicalExtractor):
  """Square-rooted HSV joint histogram with `bins` bins per channel (whole image, no resize)."""

  name = "color_hist"

  def __init__(self, bins: int = 8, crop: Optional[faces.CropSettings] = None):
    self.bins = bins
    super().__init__(bins, bins**3, crop)
    self.fingerprint = self.fingerprint.replace(f"size{bins}", f"bins{bins}")

  def _features(self, images: np.ndarray) -> np.ndarray:
    b = self.bins
    hsv = np.stack([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2HSV) for im in images])
    hsv = hsv.reshape(len(images), -1, 3).astype(np.int64)
    h = np.minimum(hsv[..., 0] * b // 180, b - 1)  # OpenCV hue is 0..179
    s, v = hsv[..., 1] * b // 256, hsv[..., 2] * b // 256
    bins = (h * b + s) * b + v + (np.arange(len(images)) * b**3)[:, None]
    hist = np.bincount(bins.ravel(), minlength=len(images) * b**3).reshape(len(images), -1)
    return np.sqrt(hist / hist.sum(axis=1, keepdims=True))


def _uniform_lbp_table() -> np.ndarray:
  """Maps the 256 8-bit codes to 59 labels: 58 uniform patterns (<= 2 transitions), 1 other."""
  table = np.full(256, 58, np.int64)
  label = 0
  for code in range(256):
    bits = [(code >> i) & 1 for i in range(8)]
    if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
      table[code] = label
      label += 1
  return table


class LbpExtractor(ClassicalExtractor):
  """Uniform LBP histograms over a grid x grid of cells of a size x size grayscale."""

  name = "lbp"
  _TABLE = _uniform_lbp_table()
  # Neighbours in circular order (dy, dx), radius 1.
  _OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))

  def __init__(self, size: int = 64, grid: int = 4, crop: Optional[faces.CropSettings] = None):
    if size % grid:
      raise ValueError(f"size {size} must be a multiple of grid {grid}")
    self.grid = grid
    super().__init__(size, grid * grid * 59, crop)

  def _features(self, images: np.ndarray) -> np.ndarray:
    n, s, g = len(images), self.size, self.grid
    # Integer luminance and integer block sums keep a brightness offset an exact offset, so the
    # comparisons (and the feature) are invariant to it (when the crop size is a multiple of 64).
    gray = _resize(_gray(images, exact=True), s)
    padded = np.pad(gray, ((0, 0), (1, 1), (1, 1)), mode="edge")
    code = np.zeros((n, s, s), np.int64)
    for bit, (dy, dx) in enumerate(self._OFFSETS):
      neighbour = padded[:, 1 + dy : 1 + dy + s, 1 + dx : 1 + dx + s]
      code |= (neighbour >= gray).astype(np.int64) << bit
    labels = self._TABLE[code]
    cell = s // g
    cell_id = (np.arange(s) // cell)[:, None] * g + (np.arange(s) // cell)[None, :]
    index = (np.arange(n)[:, None, None] * g * g + cell_id[None]) * 59 + labels
    hist = np.bincount(index.ravel(), minlength=n * g * g * 59).reshape(n, g * g, 59)
    return np.sqrt(hist / float(cell * cell)).reshape(n, -1)


class HogExtractor(ClassicalExtractor):
  """OpenCV HOG descriptor of a size x size grayscale (size a multiple of 16)."""

  name = "hog"

  def __init__(self, size: int = 64, crop: Optional[faces.CropSettings] = None):
    if size % 16 or size < 16:
      raise ValueError(f"size {size} must be a positive multiple of 16")
    self._hog = cv2.HOGDescriptor((size, size), (16, 16), (8, 8), (8, 8), 9)
    super().__init__(size, int(self._hog.getDescriptorSize()), crop)

  def _features(self, images: np.ndarray) -> np.ndarray:
    gray = np.clip(np.round(_resize(_gray(images), self.size)), 0, 255).astype(np.uint8)
    return np.stack([self._hog.compute(im).reshape(-1) for im in gray])


_CLASSES = {
  cls.name: cls for cls in (PixelsExtractor, ColorHistExtractor, LbpExtractor, HogExtractor)
}


def get_extractor(
  name: str, crop: Union[faces.CropSettings, Mapping[str, Any], None] = None
) -> Any:
  """The classical extractor called `name` (one of `EXTRACTORS`), cropping with `crop` (a
  `CropSettings` or its dict; default `CropSettings()`). Which crop a caller should pass is
  decided by `facetriplet.search.features`.

  Raises:
    UserError: unknown name (the message lists the valid ones).
  """
  if name not in _CLASSES:
    raise UserError(
      f"unknown classical feature extractor {name!r}; valid names: {', '.join(EXTRACTORS)}"
    )
  if isinstance(crop, Mapping):
    crop = faces.CropSettings.from_dict(crop)
  return _CLASSES[name](crop=crop)


def _gray(images: np.ndarray, exact: bool = False) -> np.ndarray:
  """Luminance (ITU-R 601 weights) as float64; `exact` keeps it as integers scaled by 1000."""
  weights = np.array([299, 587, 114], np.int64)
  gray = images.astype(np.int64) @ weights
  return gray.astype(np.float64) if exact else gray / 1000.0


def _resize(gray: np.ndarray, size: int) -> np.ndarray:
  """[N, H, W] -> [N, size, size] by area averaging (exact block means when H, W divide)."""
  n, h, w = gray.shape
  if h == size and w == size:
    return gray
  if h % size == 0 and w % size == 0:
    fy, fx = h // size, w // size
    # Block sums of integers are exact in float64, and distinct sums stay distinct after the
    # division, so comparisons between pixels (LBP) survive a brightness offset unchanged.
    return gray.reshape(n, size, fy, size, fx).sum(axis=(2, 4)) / (fy * fx)
  return np.stack(
    [cv2.resize(g.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) for g in gray]
  ).astype(np.float64)
