"""The five points of a face from its box: MTCNN's R-Net and O-Net (Zhang et al. 2016), run in
NumPy on one face box at a time, with the weights that ship in the `mtcnn` wheel (MIT).

YuNet finds faces in milliseconds, but its own five points scatter about 4 px (at the 112-px
template) around MTCNN's, and on celeba_199's in-the-wild photos that cost dlib_resnet 0.02 mAP@R.
MTCNN's points come from its last two stages, which look at one face box each; its cost is its
first stage, the image pyramid. So `yunet` hands its boxes to these two networks: R-Net
(24 x 24) re-centres the box, O-Net (48 x 48) places the points, exactly as in the `mtcnn`
package's pipeline (its patch sampling, box arithmetic and normalisation are reproduced here;
tests/data/test_yunet.py compares the forward passes with the package's Keras models).

In NumPy (float32 layers, as the Keras models), one box at a time: no TensorFlow in the
process, and a face's points do not depend on the other faces of a call or on any thread count.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Optional

import numpy as np

from facetriplet.errors import UserError

_LOCK = threading.Lock()
_WEIGHTS: dict[str, list[np.ndarray]] = {}


def _weights(name: str) -> list[np.ndarray]:
  """The arrays of the `mtcnn` package's `<name>.lz4`, in its Keras models' order (the package
  itself is not imported: it imports TensorFlow)."""
  with _LOCK:
    if name not in _WEIGHTS:
      import joblib  # pylint: disable=g-import-not-at-top

      spec = importlib.util.find_spec("mtcnn")
      if spec is None or not spec.submodule_search_locations:
        raise UserError("the yunet detector needs the mtcnn package: pip install mtcnn==1.0.0")
      path = os.path.join(
        list(spec.submodule_search_locations)[0], "assets", "weights", f"{name}.lz4"
      )
      try:
        _WEIGHTS[name] = [np.asarray(a, np.float64) for a in joblib.load(path)]
      except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read MTCNN's weights {path} ({e}): reinstall mtcnn") from None
    return _WEIGHTS[name]


def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """A 'valid' stride-1 convolution of x [H, W, C] with a Keras kernel [kh, kw, C, O]."""
  kh, kw, c, o = kernel.shape
  h, w = x.shape[:2]
  oh, ow = h - kh + 1, w - kw + 1
  # The im2col matrix in float64, built from kh x kw shifted views (rows in (i, j, c) order,
  # the kernel's own), so `_affine` multiplies without another copy.
  cols = np.empty((oh, ow, kh, kw, c), np.float64)
  for i in range(kh):
    for j in range(kw):
      cols[:, :, i, j] = x[i : i + oh, j : j + ow]
  return _affine(cols.reshape(oh * ow, kh * kw * c), kernel.reshape(kh * kw * c, o), bias).reshape(
    oh, ow, o
  )


def _affine(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """x @ weights + bias in float64, rounded to float32. A BLAS splits a product differently at
  different thread counts: in float32 that moved a landmark by 1e-5 px between 1 and 2 threads;
  in float64 the difference stays far below float32's precision and the rounding removes it."""
  return (x.astype(np.float64, copy=False) @ weights + bias).astype(np.float32)


def _prelu(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  return np.where(x > 0, x, x * alpha.reshape(-1).astype(np.float32, copy=False))


def _maxpool(x: np.ndarray, size: int, stride: int, same: bool) -> np.ndarray:
  """Keras MaxPooling2D on x [H, W, C] ('same' pads with -inf, the extra pixel after)."""
  h, w = x.shape[:2]
  if same:
    oh, ow = -(-h // stride), -(-w // stride)
    ph, pw = max((oh - 1) * stride + size - h, 0), max((ow - 1) * stride + size - w, 0)
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    x = np.pad(x, pads, constant_values=-np.inf)
    h, w = x.shape[:2]
  oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
  rows = x[0 : (oh - 1) * stride + 1 : stride]
  for i in range(1, size):
    rows = np.maximum(rows, x[i : i + (oh - 1) * stride + 1 : stride])
  out = rows[:, 0 : (ow - 1) * stride + 1 : stride]
  for j in range(1, size):
    out = np.maximum(out, rows[:, j : j + (ow - 1) * stride + 1 : stride])
  return out


def rnet(patch: np.ndarray) -> tuple[np.ndarray, float]:
  """R-Net on one normalised 24 x 24 x 3 patch: box offsets [4] and face probability."""
  w = _weights("rnet")
  x = _maxpool(_prelu(_conv(patch, w[0], w[1]), w[2]), 3, 2, True)
  x = _maxpool(_prelu(_conv(x, w[3], w[4]), w[5]), 3, 2, False)
  x = _prelu(_conv(x, w[6], w[7]), w[8]).transpose(1, 0, 2).reshape(-1)
  x = _prelu(_affine(x, w[9], w[10]), w[11])
  return _affine(x, w[12], w[13]), _softmax(_affine(x, w[14], w[15]))[1]


def onet(patch: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """O-Net on one normalised 48 x 48 x 3 patch: box offsets [4], landmarks [10] (5 x, 5 y, as
  fractions of the box) and face probability."""
  w = _weights("onet")
  x = _maxpool(_prelu(_conv(patch, w[0], w[1]), w[2]), 3, 2, True)
  x = _maxpool(_prelu(_conv(x, w[3], w[4]), w[5]), 3, 2, False)
  x = _maxpool(_prelu(_conv(x, w[6], w[7]), w[8]), 2, 2, True)
  x = _prelu(_conv(x, w[9], w[10]), w[11]).transpose(1, 0, 2).reshape(-1)
  x = _prelu(_affine(x, w[12], w[13]), w[14])
  return _affine(x, w[15], w[16]), _affine(x, w[17], w[18]), _softmax(_affine(x, w[19], w[20]))[1]


def _softmax(z: np.ndarray) -> np.ndarray:
  e = np.exp(z - z.max())
  return e / e.sum()


def normalise(values: np.ndarray) -> np.ndarray:
  """Pixel values as the networks read them: (v - 127.5) / 128, float32."""
  return (values.astype(np.float32) - np.float32(127.5)) / np.float32(128.0)


def patch(rgb: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
  """`tf.image.crop_and_resize` (bilinear, 0 outside the image) of box (x1, y1, x2, y2) of the
  `normalise`d photo, with the `mtcnn` package's normalisation of the box (by W and H). Samples
  the uint8 photo and normalises the samples (the same values: both steps are affine)."""
  h, w = rgb.shape[:2]
  x1, y1, x2, y2 = box
  ys = (y1 / h) * (h - 1) + np.arange(size) * ((y2 - y1) / h) * (h - 1) / (size - 1)
  xs = (x1 / w) * (w - 1) + np.arange(size) * ((x2 - x1) / w) * (w - 1) / (size - 1)
  out = np.zeros((size, size, rgb.shape[2]), np.float32)
  vy, vx = (ys >= 0) & (ys <= h - 1), (xs >= 0) & (xs <= w - 1)
  if not vy.any() or not vx.any():
    return out
  y, x = ys[vy], xs[vx]
  y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
  y1i, x1i = np.ceil(y).astype(int), np.ceil(x).astype(int)
  dy, dx = (y - y0)[:, None, None], (x - x0)[None, :, None]
  a, b = rgb[np.ix_(y0, x0)].astype(np.float64), rgb[np.ix_(y0, x1i)].astype(np.float64)
  c, d = rgb[np.ix_(y1i, x0)].astype(np.float64), rgb[np.ix_(y1i, x1i)].astype(np.float64)
  top = a + (b - a) * dx
  bottom = c + (d - c) * dx
  out[np.ix_(vy, vx)] = normalise(top + (bottom - top) * dy)
  return out


def _square(box: np.ndarray) -> np.ndarray:
  x1, y1, x2, y2 = box
  w, h = x2 - x1, y2 - y1
  side = max(w, h)
  x1, y1 = x1 + w * 0.5 - side * 0.5, y1 + h * 0.5 - side * 0.5
  return np.array([x1, y1, x1 + side, y1 + side])


def _adjust(box: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
  return box + offsets * np.array([w, h, w, h])


def five_points(rgb: np.ndarray, box: tuple[float, float, float, float]) -> Optional[np.ndarray]:
  """The five points [5, 2] (x, y) of the face in box (x, y, w, h) of an RGB uint8 photo, in its
  pixels, or None for a box too small to sample."""
  x, y, w, h = box
  if w < 2 or h < 2:
    return None
  square = _square(np.array([x, y, x + w, y + h], np.float64))
  offsets, _ = rnet(patch(rgb, square, 24))
  square = _square(_adjust(square, offsets))
  _, marks, _ = onet(patch(rgb, square, 48))
  bw, bh = square[2] - square[0] + 1, square[3] - square[1] + 1
  xs = bw * marks[0:5] + square[0] - 1
  ys = bh * marks[5:10] + square[1] - 1
  return np.stack([xs, ys], axis=1)
