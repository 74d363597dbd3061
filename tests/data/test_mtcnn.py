"""MTCNN as facetriplet runs it: its three networks as tf.functions must answer exactly as the
`mtcnn` package's eager pipeline, and the image pyramid that starts at the caller's smallest
face must still find a face smaller than that (by searching again)."""

import glob
import os

import cv2
import numpy as np
import pytest

from facetriplet.data.detectors import base
from facetriplet.data.detectors import mtcnn as mtcnn_detector

pytest.importorskip("mtcnn")


def _photos(root: str, n: int) -> list[np.ndarray]:
  paths = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))[::97][:n]
  return [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in paths]


def test_pyramid_scales_stop_at_the_networks_window():
  # 250-px photo, faces from 20 px: 12/20 = 0.6, x 0.709 while 250 x scale >= 12 -> 8 scales,
  # the count mtcnn 1.0.0 computes for 20 px.
  from mtcnn.utils.images import build_scale_pyramid  # pylint: disable=g-import-not-at-top

  full = mtcnn_detector._pyramid(250, 300, 20)
  np.testing.assert_allclose(full, 0.6 * 0.709 ** np.arange(8))
  np.testing.assert_allclose(full, build_scale_pyramid(300, 250, 20, 0.709))
  # From 100-px faces: 0.12 -> 30, 21.3, 15.1 px (the next, 10.7 px, is under P-Net's 12-px
  # window); the package would keep 8 scales, the last ones a pixel or two wide.
  np.testing.assert_allclose(mtcnn_detector._pyramid(250, 300, 100), 0.12 * 0.709 ** np.arange(3))
  assert len(build_scale_pyramid(300, 250, 100, 0.709)) == 8
  assert len(mtcnn_detector._pyramid(250, 250, 300)) == 0


def test_compiled_networks_answer_as_the_package(lfw_2to4):
  from mtcnn import MTCNN  # pylint: disable=g-import-not-at-top

  photos = _photos(lfw_2to4, 6)
  ours = mtcnn_detector.MtcnnDetector().detect(photos, min_face=0.0)  # 20-px pyramid, as theirs
  eager = MTCNN()  # the package's own pipeline, networks called eagerly
  for rgb, faces in zip(photos, ours):
    small, scale = base.downscale(rgb)
    rows = np.asarray(eager.detect_faces([small], output_type="numpy")).reshape(-1, 16)
    assert len(faces) == len(rows) >= 1
    for face, row in zip(faces, rows):
      np.testing.assert_allclose(np.asarray(face.box) * scale, row[1:5], atol=1e-3)
      np.testing.assert_allclose(face.landmarks[:, 0] * scale, row[6:11], atol=1e-3)


def test_a_face_smaller_than_min_face_is_searched_again(lfw_2to4):
  # An LFW photo shrunk to 90 px in a 640-px grey canvas: its face (~31 px) is under 3/4 of
  # 0.2 x 640 = 96 px, so the first, shorter pyramid finds nothing and the full one finds it.
  rgb = cv2.resize(_photos(lfw_2to4, 1)[0], (90, 90), interpolation=cv2.INTER_AREA)
  canvas = np.full((640, 640, 3), 128, np.uint8)
  canvas[300:390, 200:290] = rgb
  detector = mtcnn_detector.MtcnnDetector()
  assert len(detector._rows(canvas, 0.75 * 0.2 * 640)) == 0
  found = detector.detect([canvas], min_face=0.2)[0]
  full = detector.detect([canvas], min_face=0.0)[0]
  assert found and [f.box for f in found] == [f.box for f in full]
  x, y, w, h = found[0].box
  assert 200 <= x + w / 2 <= 290 and 300 <= y + h / 2 <= 390 and w < 48
