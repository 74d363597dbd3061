"""Five-point alignment: the templates, the similarity that maps a face's five landmarks (eyes,
nose tip, mouth corners) onto one, and the warp that cuts the aligned crop.

A template is five points in the frame of a `side` x `side` face crop; `template_points` scales
it to the crop size and shrinks it towards the centre by `1 / (1 + 2 * align_margin)`. The
similarity (rotation, uniform scale, shift) is fitted by least median of squares (`lmeds`,
robust to one bad landmark) or least squares over all five (`lstsq`, as dlib fits its chips).
Photos much larger than the crop are area-downscaled first so the warp does not alias. A face
with a box only is cut as a square around it (`cut_square`).
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from facetriplet.errors import UserError

# Five-point templates (left eye, right eye, nose tip, left and right mouth corner) in the pixel
# frame of a `side` x `side` face crop. `arcface112` is the template of the ArcFace/InsightFace
# 112 x 112 crops, the usual target of 5-point alignment.
TEMPLATES = {
  "arcface112": {
    "side": 112.0,
    "points": (
      (38.2946, 51.6963),
      (73.5318, 51.5014),
      (56.0252, 71.7366),
      (41.5493, 92.3655),
      (70.7299, 92.2041),
    ),
  },
  # dlib's 5-point face chip (`dlib.get_face_chip`, what dlib's face ResNet was trained on),
  # expressed in this detector's points: where eye centres, nose tip and mouth corners fall in
  # dlib's unit-square mean face, measured over dlib's own chips (HOG box + dlib's 5-point
  # predictor) of real photos: the median over 983 faces of the training people of lfw_2to4 and
  # celeba_199 (benchmarks/calibrate_dlib_template.py). With align_margin 0.25
  # (dlib's padding), point p lands at (p + 0.25) / 1.5 * crop_size, as in dlib.
  "dlib5": {
    "side": 1.0,
    "points": (
      (0.2240, 0.2016),
      (0.7588, 0.1997),
      (0.4878, 0.5238),
      (0.2535, 0.7792),
      (0.7315, 0.7781),
    ),
  },
}
# How the similarity onto the template is fitted: 'lmeds' (least median of squares, robust to one
# bad point; what the arcface112 crops always used) or 'lstsq' (least squares over all five, as
# dlib fits its chips).
FITS = ("lmeds", "lstsq")


def similarity_transform(points: np.ndarray, dst: np.ndarray, fit: str = "lmeds") -> np.ndarray:
  """The 2 x 3 similarity matrix mapping five source landmarks [5, 2] onto the template points
  `dst` [5, 2], fitted as `fit` says (`FITS`)."""
  src = np.asarray(points, np.float32).reshape(5, 2)
  dst = np.asarray(dst, np.float32)
  matrix = None
  if fit == "lmeds":
    matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
  if matrix is None:  # least squares on all five points (also when LMEDS found no consensus)
    matrix = least_squares_similarity(src, dst)
  if matrix is None:
    raise ValueError("landmarks do not define a similarity transform")
  return matrix


def least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> Optional[np.ndarray]:
  """The 2 x 3 similarity (rotation, uniform scale, shift; no reflection) minimising the squared
  distances from the mapped `src` points to `dst` (Umeyama 1991), or None when the `src` points
  coincide. (OpenCV 4.14's estimateAffinePartial2D has no least-squares method: method=0
  raises.)"""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  mu_s, mu_d = src.mean(0), dst.mean(0)
  a, b = src - mu_s, dst - mu_d
  var = (a**2).sum() / len(src)
  if var < 1e-12:
    return None
  u, d, vt = np.linalg.svd(b.T @ a / len(src))
  flip = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
  rotation = u @ flip @ vt
  scale = float(np.trace(np.diag(d) @ flip)) / var
  shift = mu_d - scale * rotation @ mu_s
  return np.hstack([scale * rotation, shift[:, None]]).astype(np.float64)


def warp(
  rgb: np.ndarray, points: np.ndarray, dst: np.ndarray, side: int, fit: str = "lmeds"
) -> np.ndarray:
  """The `side` x `side` crop of `rgb` whose five landmarks [5, 2] (x, y) land on the template
  points `dst` (black outside the photo)."""
  matrix = similarity_transform(points, dst, fit)
  scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
  if scale < 0.5:  # Shrinking a lot: area-downscale first so the warp does not alias.
    factor = min(1.0, 2.0 * scale)
    h, w = rgb.shape[:2]
    rgb = cv2.resize(
      rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA
    )
    matrix = similarity_transform(
      np.asarray(points, np.float64) * [rgb.shape[1] / w, rgb.shape[0] / h], dst, fit
    )
  out = cv2.warpAffine(
    rgb,
    matrix,
    (side, side),
    flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_CONSTANT,
    borderValue=(0, 0, 0),
  )
  return np.ascontiguousarray(out)


def template_points(template: str, crop_size: int, align_margin: float = 0.0) -> np.ndarray:
  """Template `template` in the pixel frame of a `crop_size` crop, float32 [5, 2]."""
  if template not in TEMPLATES:
    raise UserError(f"template={template!r} is not one of {', '.join(TEMPLATES)}")
  t = TEMPLATES[template]
  points = np.asarray(t["points"], np.float64) / t["side"] * crop_size
  centre = crop_size / 2.0
  return ((points - centre) / (1.0 + 2.0 * align_margin) + centre).astype(np.float32)


def cut_square(rgb: np.ndarray, square: tuple[float, float, float, float], size: int) -> np.ndarray:
  """The square (x, y, side, side) of `rgb`, black outside the image, resized to size x size."""
  h, w = rgb.shape[:2]
  x0, y0 = int(round(square[0])), int(round(square[1]))
  side = max(1, int(round(square[2])))
  x1, y1 = x0 + side, y0 + side
  inner = rgb[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
  if inner.size == 0:
    patch = np.zeros((side, side, 3), np.uint8)
  else:
    patch = cv2.copyMakeBorder(
      inner,
      max(0, -y0),
      max(0, y1 - h),
      max(0, -x0),
      max(0, x1 - w),
      cv2.BORDER_CONSTANT,
      value=(0, 0, 0),
    )
  interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
  return np.ascontiguousarray(cv2.resize(patch, (size, size), interpolation=interp))
