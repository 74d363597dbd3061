"""Tests for facetriplet.data.classical: shapes, unit rows, determinism, invariances, retrieval."""

import numpy as np
import pytest

from facetriplet import metrics, synthetic
from facetriplet.data import classical, faces
from facetriplet.errors import UserError
from facetriplet.search import features


@pytest.fixture(scope="module")
def drawn_faces():
  return synthetic.make_face_arrays(12, 5, size=64, seed=1)


@pytest.mark.parametrize("name", classical.EXTRACTORS)
def test_shape_unit_rows_and_determinism(name, drawn_faces):
  images, _ = drawn_faces
  extractor = classical.get_extractor(name)
  features = extractor.embed(images[:7])
  assert features.shape == (7, extractor.dim) and features.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(features, classical.get_extractor(name).embed(images[:7]))
  # A batch gives the same rows as single images, and other crop sizes work.
  np.testing.assert_allclose(extractor.embed(images[3:4])[0], features[3], atol=1e-6)
  big = np.repeat(np.repeat(images[:2], 2, axis=1), 2, axis=2)
  assert extractor.embed(big).shape == (2, extractor.dim)
  assert extractor.embed(images[:0]).shape == (0, extractor.dim)
  assert extractor.name == name
  assert extractor.fingerprint.startswith(f"classical:{name}:v1:")
  assert isinstance(extractor.crop_settings, faces.CropSettings)


def test_flat_image_still_gives_a_unit_row():
  grey = np.full((1, 64, 64, 3), 128, np.uint8)
  for name in classical.EXTRACTORS:
    features = classical.get_extractor(name).embed(grey)
    assert np.linalg.norm(features) == pytest.approx(1.0, abs=1e-5)


def test_color_hist_ignores_pixel_positions(drawn_faces):
  images, _ = drawn_faces
  rng = np.random.default_rng(0)
  flat = images[:3].reshape(3, -1, 3)
  shuffled = flat[:, rng.permutation(flat.shape[1])].reshape(images[:3].shape)
  extractor = classical.get_extractor("color_hist")
  np.testing.assert_array_equal(extractor.embed(images[:3]), extractor.embed(shuffled))


@pytest.mark.parametrize("size", [64, 128])
def test_lbp_ignores_a_brightness_offset(size):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 200, size=(2, size, size, 3)).astype(np.uint8)
  extractor = classical.get_extractor("lbp")
  np.testing.assert_array_equal(extractor.embed(images), extractor.embed(images + 40))


def test_pixels_ignores_brightness_and_contrast():
  rng = np.random.default_rng(2)
  images = rng.integers(50, 150, size=(2, 32, 32, 3)).astype(np.uint8)
  extractor = classical.get_extractor("pixels")
  np.testing.assert_allclose(extractor.embed(images), extractor.embed(images + 20), atol=1e-5)
  contrast = ((images.astype(np.int64) - 100) * 2 + 100).astype(np.uint8)  # 0..200, linear
  np.testing.assert_allclose(extractor.embed(images), extractor.embed(contrast), atol=1e-5)


@pytest.mark.parametrize("name", classical.EXTRACTORS)
def test_retrieves_same_identity_above_chance(name, drawn_faces):
  """12 identities x 5 photos, leave-one-out: a random ranking scores top1 = 4/59 on average."""
  images, labels = drawn_faces
  features = classical.get_extractor(name).embed(images)
  result = metrics.retrieval_metrics(
    features, labels, features, labels, ks=(1, 5), leave_one_out=True
  )
  chance = 4 / 59
  assert result["top1"] > 2 * chance
  assert result["map@r"] > chance


def test_get_extractor_names_and_crop(tmp_path):
  with pytest.raises(UserError, match="pixels, color_hist, lbp, hog"):
    classical.get_extractor("sift")
  with pytest.raises(UserError, match="embedding, pixels, color_hist, lbp, hog"):
    features.make_extractor("sift")
  with pytest.raises(UserError, match="export"):
    features.make_extractor("embedding")
  crop = faces.CropSettings(detector="none", crop_size=96)
  extractor = classical.get_extractor("hog", crop=crop.to_dict())
  assert extractor.crop_settings == crop
  assert extractor.fingerprint != classical.get_extractor("hog").fingerprint
  assert "crop-none" in extractor.fingerprint


def test_classical_extractor_takes_the_exports_crop(tmp_path):
  """Without `crop`, a classical extractor uses the crop recorded in the export's metadata."""
  from facetriplet import atomic  # pylint: disable=g-import-not-at-top

  crop = faces.CropSettings(detector="none", margin=0.1, crop_size=80)
  atomic.write_json(str(tmp_path / "assets" / "facetriplet.json"), {"crop": crop.to_dict()})
  assert features.make_extractor("lbp", model_dir=str(tmp_path)).crop_settings == crop
