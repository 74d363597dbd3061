"""Faces found only in the photo turned on its side or upside down (`CropSettings.try_turned`):
the crop is the upright photo's, to the byte; box and landmarks are in the stored photo's pixels;
ingest lists such photos; settings written before the field existed keep doing what they did."""

import dataclasses
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from facetriplet.data import classical, detectors, faces, ingest, turns
from facetriplet.errors import UserError


@pytest.mark.parametrize("k", [1, 2, 3])
def test_points_and_boxes_map_back_as_np_rot90_moves_pixels(k):
  h, w = 7, 11
  ys, xs = np.mgrid[0:h, 0:w]
  turned_x, turned_y = turns.turn(xs[..., None], k)[..., 0], turns.turn(ys[..., None], k)[..., 0]
  th, tw = turned_x.shape
  points = np.array([[c, r] for r in range(th) for c in range(tw)], np.float64)
  back = turns.point_back(points, k, h, w)
  # Each pixel of the turned copy holds its own coordinates in the photo: the reference.
  np.testing.assert_array_equal(back[:, 0], turned_x.ravel())
  np.testing.assert_array_equal(back[:, 1], turned_y.ravel())
  # A box is its pixels' edges: the box around pixels (2..4, 1..2) of the turned copy covers
  # exactly the photo's pixels that turn into them.
  mask = np.zeros((th, tw), bool)
  mask[1:3, 2:5] = True
  inside = np.zeros((h, w), bool)
  inside[turned_y[mask], turned_x[mask]] = True
  rows, cols = np.nonzero(inside)
  x, y, bw, bh = turns.box_back((2, 1, 3, 2), k, h, w)
  assert (x, y, x + bw, y + bh) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
  assert turns.landmarks_back((0.0,) * 10, k, h, w) == (0.0,) * 10


def _orl(orl_faces, person):
  return faces.load_rgb(os.path.join(orl_faces, person, "1.pgm"))


# (person, stored turn): photos of orl_faces in which YuNet finds no face when they are stored
# turned clockwise by k quarters (checked by the test with try_turned off).
CASES = [("s1", 1), ("s13", 3), ("s20", 2), ("s17", 1), ("s31", 2)]


@pytest.mark.parametrize("person,k", CASES)
def test_a_sideways_photo_gives_the_upright_photos_crop(orl_faces, person, k):
  upright = _orl(orl_faces, person)
  stored = np.ascontiguousarray(np.rot90(upright, -k))  # turned clockwise k quarters
  on = faces.FaceCropper(faces.CropSettings(crop_size=112))
  off = faces.FaceCropper(faces.CropSettings(crop_size=112, try_turned=False))
  missed = off.crop(stored)
  assert not missed.found and missed.method == "center" and missed.turned == 0
  want = on.crop(upright)
  assert want.found and want.turned == 0
  got = on.crop(stored)
  assert got.found and got.method == "yunet" and got.turned == 90 * k
  np.testing.assert_array_equal(got.image, want.image)
  # Where the face was found, in the stored photo's pixels: the upright landmarks moved by the
  # same clockwise turn (pixel centres on whole numbers).
  h, w = upright.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w]
  stored_x, stored_y = np.rot90(xs, -k), np.rot90(ys, -k)
  for x, y, ux, uy in zip(
    got.landmarks[:5], got.landmarks[5:], want.landmarks[:5], want.landmarks[5:]
  ):
    r, c = int(round(y)), int(round(x))
    assert abs(stored_x[r, c] - ux) <= 1 and abs(stored_y[r, c] - uy) <= 1
  # Every face of the photo (collections) is found the same way.
  every = on.crop_faces(stored)
  assert [r.turned for r in every] == [90 * k]
  np.testing.assert_array_equal(every[0].image, on.crop_faces(upright)[0].image)


def test_faces_found_only_turned_must_clear_the_detectors_bar(celeba_199):
  # A blurred photo (no face left to make out) in which YuNet sees a face-like blob only when it
  # is turned, less sure of it than of any real face found turned (BENCHMARKS.md).
  rgb = faces.load_rgb(os.path.join(celeba_199, "img_celeba", "000825.jpg"))
  blurred = cv2.GaussianBlur(cv2.resize(rgb, (640, 480)), (0, 0), 25)
  detector = detectors.create("yunet")
  assert detector.find([blurred])[0] == []
  k, _, found = turns.best_turn(detector, blurred, 0.2, min_score=0.0)
  score = max(f.score for f in found)
  assert 0.6 <= score < detector.turned_min_score
  assert turns.best_turn(detector, blurred, 0.2) is None
  result = faces.FaceCropper(faces.CropSettings()).crop(blurred)
  assert result.turned == 0 and result.method != "yunet"


def test_a_detector_without_a_bar_is_not_searched_turned(orl_faces):
  stored = np.ascontiguousarray(np.rot90(_orl(orl_faces, "s1"), -1))
  assert detectors.create("haar").turned_min_score is None
  result = faces.FaceCropper(faces.CropSettings(detector="haar")).crop(stored)
  assert result.turned == 0


def test_a_photo_without_any_face_still_gets_the_centred_square():
  noise = np.random.default_rng(3).integers(0, 256, (60, 100, 3), dtype=np.uint8)
  result = faces.FaceCropper(faces.CropSettings(crop_size=32)).crop(noise)
  assert not result.found and result.method == "center" and result.turned == 0
  assert result.box == (20.0, 0.0, 60.0, 60.0)


def test_settings_written_before_the_field_keep_upright_only():
  new = faces.CropSettings()
  assert new.try_turned and new.to_dict()["try_turned"] is True
  assert faces.CropSettings.from_dict(new.to_dict()) == new
  old = faces.CropSettings(try_turned=False)
  assert "try_turned" not in old.to_dict()  # the same dict (and fingerprint) as before
  written_before = {k: v for k, v in new.to_dict().items() if k != "try_turned"}
  assert faces.CropSettings.from_dict(written_before) == old
  with pytest.raises(UserError, match="try_turned"):
    faces.CropSettings(try_turned="yes")


def test_ingest_lists_photos_found_turned(tmp_path, orl_faces):
  src = tmp_path / "in"
  for person in ("s1", "s2"):
    os.makedirs(src / person)
    for i in (1, 2):
      shutil.copy(os.path.join(orl_faces, person, f"{i}.pgm"), src / person / f"{i}.pgm")
  sideways = np.ascontiguousarray(np.rot90(_orl(orl_faces, "s1"), -1))
  cv2.imwrite(str(src / "s1" / "1.pgm"), cv2.cvtColor(sideways, cv2.COLOR_RGB2GRAY))
  out = str(tmp_path / "out")
  summary = ingest.build_tfrecords(
    str(src), out, crop=faces.CropSettings(crop_size=64), workers=1, progress=False
  )
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["turned"] == ["s1/1.pgm"] and manifest["no_face"] == []
  assert manifest["crop"]["try_turned"] is True
  assert summary.turned == 1 and "found turned (on its side or upside down) 1" in summary.format()


def test_classical_fingerprints_of_older_crops_stay_as_they_were():
  # Written out by hand as they were before try_turned: a classical index built then still
  # matches its features (also with the dlib150 preset, whose fit was never in the fingerprint).
  before = {
    faces.CropSettings(try_turned=False): (
      "classical:hog:v1:size64:crop-yunet-0.2-128-center-largest-arcface112-0"
    ),
    faces.CropSettings.preset("dlib150", try_turned=False): (
      "classical:hog:v1:size64:crop-yunet-0.2-150-center-largest-dlib5-0.25"
    ),
  }
  for crop, fingerprint in before.items():
    assert classical.get_extractor("hog", crop).fingerprint == fingerprint
    turned = dataclasses.replace(crop, try_turned=True)
    assert classical.get_extractor("hog", turned).fingerprint == fingerprint + "-turned"


def test_a_large_sideways_photo_is_searched_on_the_detectors_copy(orl_faces):
  # Larger than the detectors' copy (base.DETECT_MAX_SIDE): the turns searched are of that copy,
  # and the face is cut from the photo itself, turned once.
  upright = cv2.resize(_orl(orl_faces, "s13"), (644, 784), interpolation=cv2.INTER_CUBIC)
  stored = np.ascontiguousarray(np.rot90(upright, -1))
  cropper = faces.FaceCropper(faces.CropSettings(crop_size=112))
  want, got = cropper.crop(upright), cropper.crop(stored)
  assert got.found and got.turned == 90
  assert np.abs(got.image.astype(int) - want.image.astype(int)).mean() < 2
  # The upright photo is the stored one turned a quarter counterclockwise (k=1); stored: 644 x 784.
  back = turns.point_back(np.stack([want.landmarks[:5], want.landmarks[5:]], 1), 1, 644, 784)
  np.testing.assert_allclose(np.stack([got.landmarks[:5], got.landmarks[5:]], 1), back, atol=1.5)
