"""OpenCV's frontal-face Haar cascade (bundled with opencv-python-headless 4.x): boxes only.

Runs on a histogram-equalised grayscale copy downscaled to `base.DETECT_MAX_SIDE`. A cascade is
not safe to share between threads, so each `HaarDetector` holds its own and a lock.
"""

from __future__ import annotations

import threading
from typing import Sequence

import cv2
import numpy as np

from facetriplet.data.detectors import base
from facetriplet.errors import UserError

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class HaarDetector(base.Detector):
  """Viola-Jones face boxes (no landmarks: crops are margin squares)."""

  name = "haar"

  def __init__(self):
    path = cv2.data.haarcascades + CASCADE_FILE
    self._cascade = cv2.CascadeClassifier(path)
    if self._cascade.empty():
      raise UserError(
        f"cannot load the Haar cascade {path}: reinstall opencv-python-headless<5 "
        "or pass --detector=none"
      )
    self._lock = threading.Lock()

  def detect(
    self, images: Sequence[np.ndarray], min_face: float = base.MIN_FACE_FRACTION
  ) -> list[list[base.Face]]:
    return [self._detect_one(rgb, min_face) for rgb in images]

  def _detect_one(self, rgb: np.ndarray, min_face: float) -> list[base.Face]:
    gray, scale = base.downscale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    gray = cv2.equalizeHist(gray)
    min_side = max(24, int(min_face * min(gray.shape)))
    with self._lock:
      found = self._cascade.detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
      )
    return [base.Face(tuple(int(v) / scale for v in f)) for f in found]


DETECTOR = HaarDetector
