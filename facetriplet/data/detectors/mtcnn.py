"""MTCNN (the `mtcnn` package, MIT; its P/R/O-Net weights ship inside the wheel): a box, a score
and five landmarks per face, for a whole batch of photos in one call.

The photos are downscaled to `base.DETECT_MAX_SIDE` first, and each is detected alone: MTCNN
runs its R-Net and O-Net on the proposals of every photo of a call as one tensor, and TensorFlow's
kernels give slightly different numbers at different batch sizes (1-2 float32 ulps on a landmark,
up to 5 grey levels once the crop is warped, and now and then another proposal wins: 77 levels),
so batched detection made a photo's crop depend on its company. Its O-Net also answers 1-2 ulps
apart at different TensorFlow thread counts: the ingest engines run it on one thread
(`detectors.limit_threads`); a query process keeps its threads, so its MTCNN crops may differ from
the gallery's by a grey level (YuNet, the default, has neither problem). The process holds one
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
  batch_size = 1  # photos are detected one at a time (see the module docstring)
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
    out: list[list[base.Face]] = []
    for image, scale in zip(small, scales):
      with _CALL_LOCK:
        rows = self._mtcnn.detect_faces([image], output_type="numpy")
      rows = np.asarray(rows, np.float64).reshape(-1, 16)  # image, x, y, w, h, score, 5 x, 5 y
      out.append(
        [
          base.Face(
            tuple(float(v) / scale for v in r[1:5]),
            np.stack([r[6:11], r[11:16]], axis=1) / scale,
            float(r[5]),
          )
          for r in rows
        ]
      )
    return out


DETECTOR = MtcnnDetector
