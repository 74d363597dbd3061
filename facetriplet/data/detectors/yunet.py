"""YuNet (OpenCV's `cv2.FaceDetectorYN`, the 2023mar model shipped in this package, MIT) finds
the faces; MTCNN's R-Net and O-Net (`landmarks`, in NumPy) place each face's five points. About
15-25 ms a photo on one CPU core, against ~150-200 ms for MTCNN, at MTCNN's ranking quality.

YuNet's own five points scatter about 4 px around MTCNN's (at the 112-px template): kept, they
cost dlib_resnet 0.02 mAP@R on celeba_199 (averaging YuNet over scales and mirror images won back
half of it); placed by O-Net on YuNet's box they rank as MTCNN's do (BENCHMARKS.md, "Face
detectors"). The cropper asks O-Net only for the faces it crops (`find`, then `finish`);
`detect` finishes every face the cropper might use (at least a quarter of the largest face's
area or the `min_face` hint wide). YuNet's own points remain on the others and where O-Net
cannot sample a box.

The model file `models/face_detection_yunet_2023mar.onnx` is checked against its sha256 when it
is first loaded (a damaged install is a one-line error, not a silently worse detector); its
licence and provenance are in `models/LICENSE.yunet`.

Each photo is detected alone, at its own size (downscaled to `base.DETECT_MAX_SIDE`), and each
face's points from its own box: unlike MTCNN there is no padded batch, so a photo's faces never
depend on the other photos of a call, and the detector gives the same numbers at any OpenCV or
BLAS thread count (tests/data/test_yunet.py). YuNet finds faces of about 10 to 300 pixels: a
photo in which it finds none is tried once more at `_RETRY_SIDE` (a close-up whose face fills a
640-px copy), then the Haar fallback applies. `cv2.FaceDetectorYN` holds per-input-size state,
so every thread keeps its own nets.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from typing import Sequence

import cv2
import numpy as np

from facetriplet.data.detectors import base, landmarks
from facetriplet.errors import UserError

MODEL_FILE = os.path.join(os.path.dirname(__file__), "models", "face_detection_yunet_2023mar.onnx")
MODEL_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
SCORE_THRESHOLD = 0.6  # opencv_zoo's default; the Haar fallback catches what it misses
NMS_THRESHOLD = 0.3
_RETRY_SIDE = 320
_NETS_PER_THREAD = 8
_VERIFIED: list[bytes] = []
_VERIFY_LOCK = threading.Lock()


def model_bytes() -> bytes:
  """The ONNX model, read and checked against `MODEL_SHA256` once per process."""
  with _VERIFY_LOCK:
    if not _VERIFIED:
      try:
        with open(MODEL_FILE, "rb") as f:
          data = f.read()
      except OSError as e:
        raise UserError(
          f"cannot read the YuNet model {MODEL_FILE} ({e.strerror}): reinstall facetriplet, "
          "or pass --detector=mtcnn"
        ) from None
      digest = hashlib.sha256(data).hexdigest()
      if digest != MODEL_SHA256:
        raise UserError(
          f"the YuNet model {MODEL_FILE} is damaged (sha256 {digest[:12]}..., expected "
          f"{MODEL_SHA256[:12]}...): reinstall facetriplet, or pass --detector=mtcnn"
        )
      _VERIFIED.append(data)
    return _VERIFIED[0]


class YunetDetector(base.Detector):
  """YuNet boxes and landmarks; the Haar cascade is tried where it finds nothing."""

  name = "yunet"
  batch_size = 16  # photos are detected one by one; batches only save the callers' overhead
  fallback = "haar"
  # Real faces found turned scored 0.83-0.93, false ones on blurred photos 0.60-0.82
  # (BENCHMARKS.md, "Faces found only in the photo turned"): a round bar below every real one,
  # not one fitted into that narrow gap on so few photos.
  turned_min_score = 0.8

  def __init__(self):
    self._model = np.frombuffer(model_bytes(), np.uint8)
    self._local = threading.local()

  def _net(self, w: int, h: int):
    """This thread's `cv2.FaceDetectorYN` for input size w x h (re-planning a net for another
    size costs several ms, so each thread keeps one per recent size)."""
    nets = getattr(self._local, "nets", None)
    if nets is None or len(nets) > _NETS_PER_THREAD:
      nets = self._local.nets = {}
    net = nets.get((w, h))
    if net is None:
      net = nets[(w, h)] = cv2.FaceDetectorYN.create(
        "onnx", self._model, np.array([], np.uint8), (w, h), SCORE_THRESHOLD, NMS_THRESHOLD, 5000
      )
    return net

  def detect(
    self, images: Sequence[np.ndarray], min_face: float = base.MIN_FACE_FRACTION
  ) -> list[list[base.Face]]:
    """YuNet's faces, O-Net's points on those the cropper may use: at least a quarter of the
    largest face's area (the most `pick` looks at) or `min_face` wide (where it takes every
    face). Smaller faces in the background keep YuNet's own."""
    out = []
    for rgb, faces in zip(images, self.find(images, min_face)):
      smallest = min_face * min(rgb.shape[:2])
      largest = max((f.box[2] * f.box[3] for f in faces), default=0.0)
      used = [
        i
        for i, f in enumerate(faces)
        if f.box[2] * f.box[3] >= 0.25 * largest or f.box[2] >= smallest
      ]
      faces = list(faces)
      for i, face in zip(used, self.finish(rgb, [faces[i] for i in used])):
        faces[i] = face
      out.append(faces)
    return out

  def find(
    self, images: Sequence[np.ndarray], min_face: float = base.MIN_FACE_FRACTION
  ) -> list[list[base.Face]]:
    """YuNet's faces with its own five points (`finish` places O-Net's). The downscaled copies
    searched are kept for `finish` until this thread's next call."""
    del min_face
    copies = [(rgb, *base.downscale(rgb, base.DETECT_MAX_SIDE)) for rgb in images]
    self._local.copies = [(weakref.ref(rgb), small, scale) for rgb, small, scale in copies]
    return [self._find_one(rgb, small, scale) for rgb, small, scale in copies]

  def finish(self, rgb: np.ndarray, faces: Sequence[base.Face]) -> list[base.Face]:
    """`faces` with the points MTCNN's R-Net and O-Net place on each box (~2-5 ms a face), in
    the same downscaled copy YuNet searched; YuNet's own where a box is too small to sample."""
    if not faces:
      return []
    small, scale = self._copy(rgb)
    out = []
    for face in faces:
      points = landmarks.five_points(small, tuple(v * scale for v in face.box))
      out.append(face if points is None else base.Face(face.box, points / scale, face.score))
    return out

  def _copy(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The copy of `rgb` that `find` searched (made again for a photo it did not see)."""
    for ref, small, scale in getattr(self._local, "copies", ()):
      if ref() is rgb:
        return small, scale
    return base.downscale(rgb, base.DETECT_MAX_SIDE)

  def _find_one(self, rgb: np.ndarray, small: np.ndarray, scale: float) -> list[base.Face]:
    faces = self._found(small, scale)
    if not faces and max(small.shape[:2]) > _RETRY_SIDE:
      faces = self._found(*base.downscale(rgb, _RETRY_SIDE))
    return faces

  def _found(self, small: np.ndarray, scale: float) -> list[base.Face]:
    """YuNet's faces in `small`, a copy of the photo scaled by `scale`, in the photo's pixels."""
    h, w = small.shape[:2]
    _, rows = self._net(w, h).detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    # x, y, w, h, then (x, y) of the eyes, nose tip and mouth corners in the photo's left-to-
    # right order (the templates' order), then the score.
    return [
      base.Face(
        tuple(float(v) / scale for v in r[0:4]),
        np.asarray(r[4:14], np.float64).reshape(5, 2) / scale,
        float(r[14]),
      )
      for r in ([] if rows is None else rows)
    ]


DETECTOR = YunetDetector
