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

Speed (issue 20, point 4): the package runs its three networks eagerly, op by op; here each is
one `tf.function` with a fixed input signature (P-Net [1, H, W, 3] for every pyramid scale,
R-Net [N, 24, 24, 3], O-Net [N, 48, 48, 3]), traced once per process. And the image pyramid
starts at the smallest face the caller needs (`min_face` x the short side, see `detect`) instead
of at 20 px, with the package's count of scales corrected (mtcnn 1.0.0 keeps the 20-px count for
any `min_face_size`, so its last scales shrink below P-Net's 12-px window and fail).
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
_SMALLEST_PX = 20.0  # MTCNN's own smallest face


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

      model = MTCNN(device="GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0")
      stages = model.stages  # the package's list: its detect_faces calls each in turn
      stages[0] = _PNet(_compiled(tf, stages[0].model, [1, None, None, 3]))
      for stage, side in zip(stages[1:], (24, 48)):
        stage._model = _compiled(tf, stage.model, [None, side, side, 3])  # pylint: disable=protected-access
      _MODEL.append(model)
    return _MODEL[0]


def _compiled(tf, network, shape: list):
  """`network` (a Keras model) as one tf.function of one float32 input of `shape`."""
  return tf.function(
    lambda x: network(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)]
  )


class _PNet:
  """The package's `StagePNet` call (mtcnn 1.0.0, one photo a call) with `_pyramid`'s scales."""

  def __init__(self, network):
    self._network = network

  def __call__(  # pylint: disable=unused-argument
    self,
    images_normalized,
    images_oshapes,
    min_face_size=20,
    threshold_pnet=0.6,
    nms_pnet1=0.5,
    nms_pnet2=0.7,
    **kwargs,
  ):
    from mtcnn.utils import bboxes, images  # pylint: disable=g-import-not-at-top

    h, w = (int(v) for v in images_oshapes[0][:2])
    # From 20 px, the package's own scales (its count is right there; `_pyramid` keeps one more
    # ~12-px scale for a few photo sizes), so the full search is the package's, bit for bit.
    if min_face_size == _SMALLEST_PX:
      scales = images.build_scale_pyramid(w, h, min_face_size, 0.709)
    else:
      scales = _pyramid(h, w, min_face_size)
    found = []
    for scale in scales:
      reg, cls = self._network(images.scale_images(images_normalized, scale))
      boxes = bboxes.upscale_bboxes(
        bboxes.generate_bounding_box(reg, cls, threshold_pnet), np.asarray([scale])
      )
      found.append(
        bboxes.smart_nms_from_bboxes(boxes, threshold=nms_pnet1, method="union", initial_sort=False)
      )
    found = np.concatenate(found, axis=0) if found else np.empty((0, 6))
    found = bboxes.smart_nms_from_bboxes(
      found, threshold=nms_pnet2, method="union", initial_sort=True
    )
    return bboxes.resize_to_square(found)


def _pyramid(h: int, w: int, min_face_px: float) -> np.ndarray:
  """P-Net's scales for an h x w photo searched down to faces `min_face_px` wide: 12 / min_face_px
  times powers of 0.709, as many as keep the short side at least 12 px (the package's
  `build_scale_pyramid` with the number of scales that fit)."""
  first, n = 12.0 / min_face_px, 0
  while min(h, w) * first * 0.709**n >= 12:
    n += 1
  return first * 0.709 ** np.arange(n)


class MtcnnDetector(base.Detector):
  """MTCNN boxes and landmarks; the Haar cascade is tried where it finds nothing."""

  name = "mtcnn"
  batch_size = 1  # photos are detected one at a time (see the module docstring)
  uses_tensorflow = True
  fallback = "haar"
  # Real faces found turned scored 0.94-1.00, false ones on blurred photos 0.83-0.93
  # (BENCHMARKS.md, "Faces found only in the photo turned"): a round bar above every false one
  # (it drops the real face at 0.940), not one fitted into that narrow gap on so few photos.
  turned_min_score = 0.95

  def __init__(self):
    self._mtcnn = _model()

  def detect(
    self, images: Sequence[np.ndarray], min_face: float = base.MIN_FACE_FRACTION
  ) -> list[list[base.Face]]:
    """Faces of each photo. The pyramid first searches faces at least 3/4 of `min_face` x the
    short side wide; where the widest face found is under twice that (so faces a quarter of its
    area, which `pick='center'` weighs, might be missed) or none is, the photo is searched again
    down to MTCNN's own 20 px. The cropper uses faces `min_face` wide ('all') or the largest."""
    if not images:
      return []
    small, scales = zip(*[base.downscale(rgb) for rgb in images])
    out: list[list[base.Face]] = []
    for image, scale in zip(small, scales):
      smallest = max(_SMALLEST_PX, 0.75 * min_face * min(image.shape[:2]))
      rows = self._rows(image, smallest)
      if smallest > _SMALLEST_PX and (not len(rows) or rows[:, 3].max() < 2 * smallest):
        rows = self._rows(image, _SMALLEST_PX)
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

  def _rows(self, image: np.ndarray, smallest: float) -> np.ndarray:
    """The package's rows for one photo: image, x, y, w, h, score, 5 x, 5 y."""
    with _CALL_LOCK:
      rows = self._mtcnn.detect_faces([image], output_type="numpy", min_face_size=smallest)
    return np.asarray(rows, np.float64).reshape(-1, 16)


DETECTOR = MtcnnDetector
