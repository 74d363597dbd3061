"""Tests of the MTCNN five-point alignment in facetriplet/faces.py and its use by ingest."""

import glob
import json
import math
import os

import cv2
import numpy as np
import pytest

from facetriplet.data import alignment, faces, ingest, tfrecords
from facetriplet.errors import UserError

MTCNN = faces.CropSettings(detector="mtcnn", crop_size=112)


def test_template_points_scale_and_margin():
  s = faces.CropSettings(detector="mtcnn", crop_size=224)
  np.testing.assert_allclose(
    s.template_points(), np.array(faces.TEMPLATES["arcface112"]["points"]) * 2, atol=1e-4
  )
  zoomed = faces.CropSettings(detector="mtcnn", crop_size=224, align_margin=0.5).template_points()
  # Halfway to the centre with 1 + 2 * 0.5 = 2.
  np.testing.assert_allclose(zoomed, (s.template_points() - 112) / 2 + 112, atol=1e-4)


def test_align_maps_landmarks_onto_the_template():
  settings = faces.CropSettings(detector="mtcnn", crop_size=112)
  template = settings.template_points().astype(np.float64)
  # Landmarks = the template rotated by 20 degrees, scaled 2.5x and shifted: the similarity
  # transform found must undo exactly that.
  a, scale = math.radians(20), 2.5
  rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  points = template @ rot.T + [150.0, 80.0]
  matrix = alignment.similarity_transform(points, settings.template_points(), settings.fit)
  mapped = np.c_[points, np.ones(5)] @ matrix.T
  np.testing.assert_allclose(mapped, template, atol=1e-3)
  # And the warp moves pixel content accordingly: a white dot at the left eye lands on the
  # template's left eye.
  image = np.zeros((500, 500, 3), np.uint8)
  x, y = (int(round(v)) for v in points[0])
  cv2.circle(image, (x, y), 6, (255, 255, 255), -1)
  crop = faces.align(image, points, settings)
  ys, xs = np.nonzero(crop[..., 0] > 128)
  assert abs(xs.mean() - template[0, 0]) < 1.0 and abs(ys.mean() - template[0, 1]) < 1.0


def test_new_settings_validate_and_old_dicts_get_defaults():
  for bad in ({"pick": "leftmost"}, {"template": "dlib68"}, {"align_margin": 2.0}):
    with pytest.raises(UserError):
      faces.CropSettings(**bad)
  old = {"detector": "haar", "margin": 0.2, "size": 128, "on_no_face": "center", "pad": "black"}
  s = faces.CropSettings.from_dict(old)
  assert (s.pick, s.template, s.align_margin) == ("largest", "arcface112", 0.0)
  assert faces.CropSettings.from_dict(MTCNN.to_dict()) == MTCNN


def test_pick_center_prefers_the_middle_face():
  cropper = faces.FaceCropper(faces.CropSettings(detector="none"))
  boxes = [(0, 0, 100, 100), (170, 170, 60, 60), (190, 190, 10, 10)]  # big corner, mid centre, tiny
  assert cropper._pick(boxes, 400, 400) == 0  # pylint: disable=protected-access
  center = faces.FaceCropper(faces.CropSettings(detector="none", pick="center"))
  # The tiny centred box is under a quarter of the largest area: not a candidate.
  assert center._pick(boxes, 400, 400) == 1  # pylint: disable=protected-access


def test_no_face_falls_back_to_the_centred_square():
  noise = np.random.default_rng(0).integers(0, 256, (60, 100, 3), dtype=np.uint8)
  result = faces.FaceCropper(MTCNN).crop(noise)
  assert (result.found, result.method) == (False, "center")
  assert result.landmarks == faces.NO_LANDMARKS and result.image.shape == (112, 112, 3)


@pytest.mark.slow
def test_mtcnn_aligns_real_photos(lfw_2to4):
  paths = sorted(glob.glob(os.path.join(lfw_2to4, "*", "*.jpg")))[:6]
  cropper = faces.FaceCropper(MTCNN)
  results = cropper.crop_batch([faces.load_rgb(p) for p in paths])
  template = MTCNN.template_points()
  for path, result in zip(paths, results):
    assert result.method == "mtcnn" and result.found, path
    x, y, w, h = result.box
    points = np.array(result.landmarks).reshape(2, 5).T
    assert ((points[:, 0] > x - 5) & (points[:, 0] < x + w + 5)).all()
    # Independent check: MTCNN run again on the aligned crop finds the eyes and mouth where the
    # template put them.
    found = cropper.detector.detect([result.image])[0]
    again = cropper.choose(found, *result.image.shape[:2])
    assert again is not None, path
    error = np.abs(again.landmarks - template)
    assert error.mean() < 4.0 and error.max() < 10.0, (path, again.landmarks - template)
  # Batched and one-by-one detection agree exactly (each photo is detected alone).
  single = cropper.crop(faces.load_rgb(paths[0]))
  assert single.landmarks == results[0].landmarks


@pytest.mark.slow
def test_ingest_with_mtcnn_records_landmarks(tmp_path, lfw_2to4):
  people = sorted(os.listdir(lfw_2to4))[:3]
  root = tmp_path / "in"
  for person in people:
    os.makedirs(root / person)
    for path in sorted(glob.glob(os.path.join(lfw_2to4, person, "*.jpg"))):
      os.symlink(path, root / person / os.path.basename(path))
  (root / people[0] / "noise.png").write_bytes(
    cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8))[1]
  )
  out = str(tmp_path / "out")
  settings = faces.CropSettings(detector="mtcnn", crop_size=64, pick="center")
  summary = ingest.build_tfrecords(
    str(root), out, crop=settings, val_fraction=0.0, workers=2, progress=False
  )
  with open(os.path.join(out, tfrecords.MANIFEST), encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["crop"]["detector"] == "mtcnn" and manifest["crop"]["pick"] == "center"
  records = list(tfrecords.read_records(tfrecords.list_shards(out, "train")))
  assert len(records) == summary.written == summary.listed
  by_path = {r["path"]: r for r in records}
  noise = by_path[f"{people[0]}/noise.png"]
  assert noise["method"] == "center" and not noise["found"] and noise["landmarks"] == [0.0] * 10
  assert manifest["no_face"] == [f"{people[0]}/noise.png"]
  photos = [r for p, r in by_path.items() if p.endswith(".jpg")]
  assert photos and all(r["method"] == "mtcnn" and any(r["landmarks"]) for r in photos)
  assert manifest["crop_methods"] == {"center": 1, "mtcnn": len(photos)}
  # The record's crop is the library's crop of the same photo (one crop function).
  first = photos[0]
  direct = faces.load_and_crop(os.path.join(root, first["path"]), settings)
  decoded = cv2.cvtColor(
    cv2.imdecode(np.frombuffer(first["image"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
  )
  assert np.abs(decoded.astype(int) - direct.image.astype(int)).mean() < 3  # JPEG noise only
  np.testing.assert_allclose(first["landmarks"], direct.landmarks, atol=0.05)


@pytest.mark.slow
def test_query_time_crop_is_the_ingest_crop(tmp_path, lfw_2to4):
  """A gallery folder embedded at query time (build-index, retrieve, evaluate use this path) sees
  the same aligned crops as the TFRecords ingest wrote for the same photos."""
  from facetriplet.data import classical  # pylint: disable=g-import-not-at-top
  from facetriplet.search import gallery  # pylint: disable=g-import-not-at-top

  people = sorted(os.listdir(lfw_2to4))[3:6]
  root = tmp_path / "in"
  for person in people:
    os.makedirs(root / person)
    for path in sorted(glob.glob(os.path.join(lfw_2to4, person, "*.jpg"))):
      os.symlink(path, root / person / os.path.basename(path))
  settings = faces.CropSettings(detector="mtcnn", crop_size=64)
  out = str(tmp_path / "records")
  ingest.build_tfrecords(str(root), out, crop=settings, val_fraction=0.0, workers=1, progress=False)
  extractor = classical.get_extractor("pixels", crop=settings)
  from_folder, folder_items, _ = gallery.embed_gallery(extractor, str(root), progress=False)
  from_records, record_items, _ = gallery.embed_gallery(extractor, out, progress=False)
  by_path = {e.rel_path: v for e, v in zip(record_items, from_records)}
  assert len(by_path) == len(folder_items) > 0
  for entry, vector in zip(folder_items, from_folder):
    # Unit vectors of 32x32 pixels: equal up to the JPEG round trip of the stored crop.
    assert float(np.dot(vector, by_path[entry.rel_path])) > 0.995, entry.rel_path


def test_least_squares_similarity_recovers_a_known_transform():
  """The fallback when LMEDS finds no consensus: a hand-made similarity is recovered exactly,
  a reflection is never returned, and coincident points have none."""
  rng = np.random.default_rng(4)
  src = rng.uniform(0, 100, (5, 2))
  angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  dst = scale * src @ rot.T + shift
  matrix = alignment.least_squares_similarity(src, dst)
  np.testing.assert_allclose(matrix, np.hstack([scale * rot, shift[:, None]]), atol=1e-9)
  mirrored = alignment.least_squares_similarity(src, dst * [-1, 1])
  assert np.linalg.det(mirrored[:, :2]) > 0  # the best proper similarity, not the mirror
  assert alignment.least_squares_similarity(np.ones((5, 2)), dst) is None
