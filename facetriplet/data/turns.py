"""Photos turned on their side or upside down: the turned copies to search, and the way back.

Face detectors find upright faces (YuNet, MTCNN and Haar miss faces turned by 90 degrees). A
photo of someone lying down, or a scan stored sideways without an EXIF orientation, has no
upright face; `faces.FaceCropper` (with `CropSettings.try_turned`) searches its turned copies
`TURNS` for the face and crops it upright from the turned copy. Where the face was found is
reported in the photo's own pixels (`point_back`, `box_back`), like every other crop's. A face
found only turned must score at least the detector's `turned_min_score` (a stricter bar than
upright faces': blurred and faceless photos yield face-like blobs in some turn); detectors
without one (Haar, whose score says nothing) are not searched turned.

A turn `k` is `np.rot90`'s: the photo turned k x 90 degrees counterclockwise.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from facetriplet.data.detectors import base

# The turns tried, in order: a quarter counterclockwise, a quarter clockwise, upside down
# (ties in the detector's score keep the earlier one).
TURNS = (1, 3, 2)


def degrees(k: int) -> int:
  """The turn `k` in degrees counterclockwise (0, 90, 180, 270)."""
  return 90 * (k % 4)


def turn(rgb: np.ndarray, k: int) -> np.ndarray:
  """`rgb` turned k x 90 degrees counterclockwise (a contiguous copy)."""
  return np.ascontiguousarray(np.rot90(rgb, k))


def point_back(points: np.ndarray, k: int, h: int, w: int) -> np.ndarray:
  """Points [N, 2] (x, y) of the photo turned by `k`, in the pixels of the h x w photo itself
  (pixel centres on whole numbers, as OpenCV warps)."""
  p = np.asarray(points, np.float64).reshape(-1, 2)
  x, y = p[:, 0], p[:, 1]
  k %= 4
  if k == 1:
    x, y = (w - 1) - y, x
  elif k == 2:
    x, y = (w - 1) - x, (h - 1) - y
  elif k == 3:
    x, y = y, (h - 1) - x
  return np.stack([x, y], axis=1)


def box_back(box: tuple[float, ...], k: int, h: int, w: int) -> tuple[float, float, float, float]:
  """A box (x, y, w, h) of the photo turned by `k`, in the pixels of the h x w photo itself."""
  bx, by, bw, bh = (float(v) for v in box)
  # The box's edges, not its pixel centres: the same mapping with the sides w, h for w-1, h-1.
  corners = point_back(np.array([[bx, by], [bx + bw, by + bh]]), k, h + 1, w + 1)
  x0, y0 = corners.min(axis=0)
  x1, y1 = corners.max(axis=0)
  return (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def landmarks_back(landmarks: Sequence[float], k: int, h: int, w: int) -> tuple[float, ...]:
  """Landmarks (x1..x5, y1..y5) of the photo turned by `k`, in the h x w photo's own pixels
  (all zeros, for a face without landmarks, stay zeros)."""
  values = np.asarray(landmarks, np.float64)
  if not values.any():
    return tuple(float(v) for v in values)
  points = point_back(np.stack([values[:5], values[5:]], axis=1), k, h, w)
  return tuple(float(v) for v in np.concatenate([points[:, 0], points[:, 1]]))


def best_turn(
  detector: Any,
  rgb: np.ndarray,
  min_face: float,
  smallest: float = 0.0,
  min_score: Optional[float] = None,
) -> Optional[tuple[int, np.ndarray, list[Any]]]:
  """(k, the turned photo, its faces) for the turn in `TURNS` where `detector` finds the face it
  is surest of, counting faces at least `smallest` pixels wide that score at least `min_score`
  (default: the detector's `turned_min_score`); None when no turn has one, or when the detector
  has no `turned_min_score` (its faces are not searched for turned).

  The turns searched are of the copy detectors search anyway (`base.downscale`), so a large
  photo is turned in full only once, for the turn chosen; its faces are scaled back to it.
  """
  if min_score is None:
    min_score = detector.turned_min_score
    if min_score is None:
      return None
  small, scale = base.downscale(rgb, base.DETECT_MAX_SIDE)
  best = None
  for k in TURNS:
    found = [
      f
      for f in detector.find([turn(small, k)], min_face)[0]
      if f.box[2] / scale >= smallest and f.score >= min_score
    ]
    score = max((f.score for f in found), default=None)
    if score is not None and (best is None or score > best[0]):
      best = (score, k, found)
  if best is None:
    return None
  _, k, found = best
  if scale == 1.0:
    return k, turn(small, k), found
  return k, turn(rgb, k), [_scaled(f, 1.0 / scale) for f in found]


def _scaled(face: Any, factor: float) -> Any:
  """`face` (a `base.Face`) with its box and landmarks multiplied by `factor`."""
  return base.Face(
    tuple(v * factor for v in face.box),
    None if face.landmarks is None else np.asarray(face.landmarks) * factor,
    face.score,
  )


def upright_turn(landmarks: Optional[Sequence[float]]) -> int:
  """The turn k (`np.rot90`'s) that stands a face with these landmarks (x1..x5, y1..y5, in the
  photo's pixels) upright, its eyes above its mouth: 0 for a face within 45 degrees of upright
  or without landmarks. For showing a face found turned (thumbnails) the right way up."""
  values = np.zeros(10) if landmarks is None else np.asarray(landmarks, np.float64).ravel()
  if values.size != 10 or not values.any():
    return 0
  dx = values[3:5].mean() - values[0:2].mean()  # eyes to mouth: the face's "down"
  dy = values[8:10].mean() - values[5:7].mean()
  # After k quarter turns counterclockwise "down" points (dy, -dx), (-dx, -dy), (-dy, dx):
  # choose the turn that points it down the most.
  return int(np.argmax([dy, -dx, -dy, dx]))


def result_back(result: Any, k: int, h: int, w: int) -> Any:
  """A `faces.CropResult` cut from the photo turned by `k`, its box and landmarks in the h x w
  photo's own pixels and its `turned` set."""
  return result._replace(
    box=tuple(round(v, 2) for v in box_back(result.box, k, h, w)),
    landmarks=tuple(round(v, 2) for v in landmarks_back(result.landmarks, k, h, w)),
    turned=degrees(k),
  )
