"""MTCNN (the `mtcnn` package, MIT; its P/R/O-Net weights ship inside the wheel): a box, a score
and five landmarks per face, for a whole batch of photos in one call.

The photos are downscaled to `base.DETECT_MAX_SIDE` first. MTCNN pads a batch to its largest
photo, so a face's box may move slightly with the other photos of its call: every engine (the
local pool, Beam) cuts the work into the same batches of `batch_size`. The process holds one
MTCNN (it loads TensorFlow), called by one thread at a time: TensorFlow already spreads one call
over the cores.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from facetriplet.data.detectors import base
from facetriplet.errors import UserError

_LOAD_LOCK = threading.Lock()
_CALL_LOCK = threading.Lock()
_MODEL: list = []


def _model():
  """The process's MTCNN (loaded once)."""
  with _LOAD_LOCK:
    if not _MODEL:
      try:
        from mtcnn import MTCNN  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise UserError(
          f"--detector=mtcnn needs the mtcnn package ({e}): pip install "
          "'mtcnn==1.0.0' lz4 joblib, or pass --detector=haar"
        ) from None
      import tensorflow as tf  # pylint: disable=g-import-not-at-top

      _MODEL.append(MTCNN(device="GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"))
    return _MODEL[0]


class MtcnnDetector(base.Detector):
  """MTCNN boxes and landmarks; the Haar cascade is tried where it finds nothing."""

  name = "mtcnn"
  batch_size = 16  # photos per call: its stages run on the whole batch
  uses_tensorflow = True
  fallback = "haar"

  def __init__(self):
    self._mtcnn = _model()

  def detect(
    self, images: Sequence[np.ndarray], min_face: float = base.MIN_FACE_FRACTION
  ) -> list[list[base.Face]]:
    del min_face  # MTCNN's own 20-px smallest face: mtcnn 1.0.0 fails inside P-Net ("empty
    # output" of a Conv2D) with a larger `min_face_size` on 250-px photos.
    if not images:
      return []
    small, scales = zip(*[base.downscale(rgb) for rgb in images])
    with _CALL_LOCK:
      rows = self._mtcnn.detect_faces(list(small), output_type="numpy")
    rows = np.asarray(rows, np.float64).reshape(-1, 16)  # image, x, y, w, h, score, 5 x, 5 y
    out: list[list[base.Face]] = []
    for i, scale in enumerate(scales):
      out.append(
        [
          base.Face(
            tuple(float(v) / scale for v in r[1:5]),
            np.stack([r[6:11], r[11:16]], axis=1) / scale,
            float(r[5]),
          )
          for r in rows[rows[:, 0] == i]
        ]
      )
    return out


DETECTOR = MtcnnDetector
