"""The YuNet detector: the shipped model is verified, the NumPy R-Net and O-Net that place its
five points compute what the `mtcnn` package's Keras models compute, the points are the
templates' points (checked against MTCNN's on real photos), and a photo's faces and crop do not
depend on the other photos of the call or on OpenCV's or NumPy's thread count."""

import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from facetriplet.data import detectors, faces
from facetriplet.data.detectors import landmarks, yunet
from facetriplet.errors import UserError


def _photos(root, n):
  paths = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))[:n]
  return [faces.load_rgb(p) for p in paths]


def test_a_damaged_or_missing_model_is_one_line_error(tmp_path, monkeypatch):
  damaged = tmp_path / "yunet.onnx"
  shutil.copy(yunet.MODEL_FILE, damaged)
  with open(damaged, "r+b") as f:
    f.seek(1000)
    byte = f.read(1)
    f.seek(1000)
    f.write(bytes([byte[0] ^ 1]))
  monkeypatch.setattr(yunet, "_VERIFIED", [])
  monkeypatch.setattr(yunet, "MODEL_FILE", str(damaged))
  with pytest.raises(UserError, match="damaged .*reinstall"):
    yunet.YunetDetector()
  monkeypatch.setattr(yunet, "MODEL_FILE", str(tmp_path / "absent.onnx"))
  with pytest.raises(UserError, match="cannot read the YuNet model"):
    yunet.YunetDetector()


def test_landmarks_are_the_templates_points_and_agree_with_mtcnn(lfw_2to4):
  photos = _photos(lfw_2to4, 8)
  ours = detectors.create("yunet").detect(photos)
  theirs = detectors.create("mtcnn").detect(photos)
  cropper = faces.FaceCropper(faces.CropSettings(detector="none"))
  compared = 0
  for rgb, a, b in zip(photos, ours, theirs):
    assert a, "YuNet found no face in a centred LFW photo"
    face = cropper.choose(a, *rgb.shape[:2])
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    assert lx < nx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry)
    x, y, w, h = face.box
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in face.landmarks)
    if b:
      ref = cropper.choose(b, *rgb.shape[:2])
      # The same O-Net places both sets of points, from nearby boxes: within 4% of the face.
      assert np.abs(face.landmarks - ref.landmarks).max() < 0.04 * ref.box[2]
      compared += 1
  assert compared >= 6


def test_a_photos_faces_and_crop_do_not_depend_on_its_company_or_threads(lfw_2to4, celeba_199):
  photos = _photos(lfw_2to4, 4) + [
    faces.load_rgb(p) for p in sorted(glob.glob(os.path.join(celeba_199, "img_celeba", "*")))[:4]
  ]
  cropper = faces.FaceCropper(faces.CropSettings(detector="yunet"))
  alone = [cropper.crop_batch([rgb])[0] for rgb in photos]
  threads = cv2.getNumThreads()
  try:
    for n in (1, 2, 4):
      cv2.setNumThreads(n)
      together = cropper.crop_batch(photos[::-1])[::-1]
      for a, b in zip(alone, together):
        assert a.landmarks == b.landmarks and a.box == b.box
        np.testing.assert_array_equal(a.image, b.image)
  finally:
    cv2.setNumThreads(threads)
  assert sum(r.method == "yunet" for r in alone) >= 7


def test_numpy_rnet_and_onet_compute_what_the_mtcnn_packages_keras_models_compute(lfw_2to4):
  tf = pytest.importorskip("tensorflow")
  from mtcnn.stages import StageONet, StageRNet  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for size, ours, stage in ((24, landmarks.rnet, StageRNet), (48, landmarks.onet, StageONet)):
    patches = rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
    theirs = [np.asarray(t) for t in stage()._model(tf.constant(patches))]
    for i, patch in enumerate(patches):
      got = ours(patch)
      np.testing.assert_allclose(got[0], theirs[0][i], atol=1e-5)  # box offsets
      if size == 48:
        np.testing.assert_allclose(got[1], theirs[1][i], atol=1e-5)  # landmarks
      assert abs(got[-1] - theirs[-1][i][1]) < 1e-5  # face probability
  # Patches are tf.image.crop_and_resize's, inside, across and beyond the photo's edges.
  rgb = _photos(lfw_2to4, 1)[0]
  image = landmarks.normalise(rgb)
  h, w = image.shape[:2]
  for box in (
    [60.3, 70.2, 180.7, 190.6],
    [-10.5, -5.2, 100.1, 105.4],
    [200.0, 210.0, 300.0, 310.0],
  ):
    x1, y1, x2, y2 = box
    want = tf.image.crop_and_resize(image[None], [[y1 / h, x1 / w, y2 / h, x2 / w]], [0], (48, 48))
    np.testing.assert_allclose(landmarks.patch(rgb, np.array(box), 48), want[0], atol=1e-4)


_POINTS = """
import json, sys
import numpy as np
from facetriplet.data import detectors, faces
found = detectors.create("yunet").detect([faces.load_rgb(p) for p in sys.argv[1:]])
print(json.dumps([[f.landmarks.tolist() for f in fs] for fs in found]))
"""


def test_points_do_not_depend_on_numpys_thread_count(lfw_2to4):
  paths = sorted(glob.glob(os.path.join(lfw_2to4, "*", "*.jpg")))[:4]
  runs = []
  for n in ("1", "2"):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    out = subprocess.run(
      [sys.executable, "-c", _POINTS, *paths], env=env, capture_output=True, text=True, check=True
    )
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
  assert runs[0] == runs[1] and all(runs[0])


def test_the_cropper_finishes_only_the_faces_it_crops(lfw_2to4, monkeypatch):
  """O-Net (~2-5 ms a face) places the points of the faces the cropper crops, not of every face
  YuNet finds; the crops are those of `detect`'s finished faces (the reference), byte for byte."""
  photos = _photos(lfw_2to4, 60)
  cropper = faces.FaceCropper(faces.CropSettings(detector="yunet"))
  found = cropper.detector.detect(photos)  # every face the cropper may use, finished
  found_all = cropper.detector.detect(photos, 0.1)  # ... with faces 0.1 x the short side wide
  assert sum(len(f) > 1 for f in found) >= 3  # photos with background faces
  calls = []
  five_points = landmarks.five_points
  monkeypatch.setattr(landmarks, "five_points", lambda *a: calls.append(1) or five_points(*a))
  copies = []
  downscale = yunet.base.downscale
  monkeypatch.setattr(yunet.base, "downscale", lambda *a: copies.append(1) or downscale(*a))
  crops = cropper.crop_batch(photos)
  assert len(calls) == sum(bool(f) for f in found)  # one face a photo
  assert len(copies) == len(photos)  # O-Net works on the copy YuNet searched, not a new one
  for rgb, faces_found, crop in zip(photos, found, crops):
    if faces_found:
      ref = cropper.crop_face(rgb, cropper.choose(faces_found, *rgb.shape[:2]), "yunet")
      assert crop.landmarks == ref.landmarks and crop.box == ref.box
      np.testing.assert_array_equal(crop.image, ref.image)
  calls.clear()
  every = cropper.crop_faces_batch(photos, 0.1)
  for rgb, faces_found, crops_all in zip(photos, found_all, every):
    wide = [f for f in faces_found if f.box[2] >= 0.1 * min(rgb.shape[:2])]
    if not wide:
      continue
    refs = [cropper.crop_face(rgb, f, "yunet") for f in wide]
    assert sorted(r.landmarks for r in refs) == sorted(c.landmarks for c in crops_all if c.found)
  assert len(calls) == sum(
    sum(f.box[2] >= 0.1 * min(rgb.shape[:2]) for f in ff) for rgb, ff in zip(photos, found_all)
  )
