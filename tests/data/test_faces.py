"""Tests for facetriplet/faces.py: decoding any image, the Haar face crop, JPEG encoding."""

import glob
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from facetriplet.data import detectors, faces
from facetriplet.errors import ImageError, UserError


def _rng_image(h=48, w=64, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_huge_png_header(path, width=100_000, height=100_000):
  """A tiny PNG whose header claims width x height pixels (never decodable in memory)."""

  def chunk(tag, data):
    return (
      struct.pack(">I", len(data))
      + tag
      + data
      + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )

  with open(path, "wb") as f:
    f.write(
      b"\x89PNG\r\n\x1a\n"
      + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
      + chunk(b"IDAT", zlib.compress(b"\0" * 64))
      + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
  "ext,kwargs", [("png", {}), ("bmp", {}), ("ppm", {}), ("webp", {"lossless": True}), ("tiff", {})]
)
def test_lossless_formats_round_trip(tmp_path, ext, kwargs):
  rgb = _rng_image()
  path = str(tmp_path / f"x.{ext}")
  Image.fromarray(rgb).save(path, **kwargs)
  np.testing.assert_array_equal(faces.load_rgb(path), rgb)


def test_jpeg_grayscale_pgm_become_rgb(tmp_path):
  rgb = cv2.resize(_rng_image(6, 8), (64, 48), interpolation=cv2.INTER_LINEAR)  # smooth
  Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
  out = faces.load_rgb(str(tmp_path / "x.jpg"))
  assert out.shape == (48, 64, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(int) - rgb).mean() < 4
  gray = rgb[..., 0]
  Image.fromarray(gray).save(tmp_path / "g.pgm")
  out = faces.load_rgb(str(tmp_path / "g.pgm"))
  assert out.shape == (48, 64, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], gray)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
  # 8 x 8 (smaller images are refused as blank), rows of the four levels.
  values = np.tile(np.array([[0, 257, 32896, 65535]], dtype=np.uint16), (8, 2))
  Image.fromarray(values).save(tmp_path / "g16.png")
  out = faces.load_rgb(str(tmp_path / "g16.png"))
  np.testing.assert_array_equal(out[0, :4, 0], [0, 1, 128, 255])
  with open(tmp_path / "g16.pgm", "wb") as f:
    f.write(b"P5\n8 8\n65535\n" + values.astype(">u2").tobytes())
  np.testing.assert_array_equal(
    faces.load_rgb(str(tmp_path / "g16.pgm"))[0, :4, 1], [0, 1, 128, 255]
  )


def test_rgba_over_black_and_palette(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:4, :, 3] = 255
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  out = faces.load_rgb(str(tmp_path / "a.png"))
  assert out[0, 0].tolist() == [200, 0, 0] and out[7, 7].tolist() == [0, 0, 0]
  pal = Image.fromarray(_rng_image()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  pal.save(tmp_path / "p.png")
  pal.save(tmp_path / "p.gif")
  for name in ("p.png", "p.gif"):
    out = faces.load_rgb(str(tmp_path / name))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_exif_orientation_is_honoured(tmp_path):
  img = np.zeros((20, 40, 3), np.uint8)
  img[:10] = (255, 0, 0)  # top half red, bottom half blue
  img[10:] = (0, 0, 255)
  exif = Image.Exif()
  exif[0x0112] = 6  # display rotated 90° clockwise: the stored top becomes the right side
  Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
  out = faces.load_rgb(str(tmp_path / "r.jpg"))
  assert out.shape == (40, 20, 3)
  assert out[20, 17, 0] > 200 and out[20, 17, 2] < 60  # right: red
  assert out[20, 2, 2] > 200 and out[20, 2, 0] < 60  # left: blue


@pytest.mark.parametrize(
  "name,reason",
  [
    ("zero.jpg", "empty-file"),
    ("text.jpg", "not-an-image"),
    ("trunc.jpg", "truncated"),
    ("huge.png", "too-large"),
    ("missing.jpg", "unreadable"),
  ],
)
def test_bad_files_have_reasons(tmp_path, name, reason):
  Image.fromarray(_rng_image(200, 200)).save(tmp_path / "good.jpg", quality=95)
  data = (tmp_path / "good.jpg").read_bytes()
  (tmp_path / "zero.jpg").write_bytes(b"")
  (tmp_path / "text.jpg").write_text("not an image\n")
  (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
  write_huge_png_header(str(tmp_path / "huge.png"))
  with pytest.raises(ImageError) as e:
    faces.load_rgb(str(tmp_path / name))
  assert e.value.reason == reason and e.value.reason in faces.REASONS


def test_max_pixels_bound(tmp_path):
  Image.fromarray(_rng_image(100, 100)).save(tmp_path / "x.png")
  assert faces.load_rgb(str(tmp_path / "x.png"), max_pixels=10_000).shape == (100, 100, 3)
  with pytest.raises(ImageError, match="too-large"):
    faces.load_rgb(str(tmp_path / "x.png"), max_pixels=9_999)


def test_crop_settings_validate_and_round_trip():
  s = faces.CropSettings(detector="none", margin=0.3, crop_size=96, on_no_face="skip")
  d = s.to_dict()
  assert d["pad"] == "black" and d["crop_size"] == 96
  assert faces.CropSettings.from_dict(d) == s
  for bad in ({"detector": "dlib"}, {"on_no_face": "drop"}, {"crop_size": 4}, {"margin": -1}):
    with pytest.raises(UserError):
      faces.CropSettings(**bad)


def test_no_face_gives_centred_square_and_detector_none():
  noise = _rng_image(60, 100, seed=3)
  expected = cv2.resize(noise[:, 20:80], (32, 32), interpolation=cv2.INTER_AREA)
  result = faces.FaceCropper(faces.CropSettings(detector="haar", crop_size=32)).crop(noise)
  assert not result.found
  assert result.box == (20.0, 0.0, 60.0, 60.0)
  np.testing.assert_array_equal(result.image, expected)
  result = faces.FaceCropper(faces.CropSettings(detector="none", crop_size=32)).crop(noise)
  assert result.found and result.box == (20.0, 0.0, 60.0, 60.0)
  np.testing.assert_array_equal(result.image, expected)


class _FixedBox(detectors.Detector):
  """A detector that always finds one face at `box` (tests the cropper behind the seam)."""

  name = "fixed"

  def __init__(self, box, landmarks=None):
    self.box, self.landmarks = box, landmarks

  def detect(self, images, min_face=detectors.MIN_FACE_FRACTION):
    return [[detectors.Face(self.box, self.landmarks, 0.9)] for _ in images]


def test_margin_box_outside_image_is_padded_black():
  rgb = np.full((100, 100, 3), 255, np.uint8)
  # Face in the corner: the square runs off the top.
  cropper = faces.FaceCropper(
    faces.CropSettings(detector="haar", margin=0.5, crop_size=40),
    detector=_FixedBox((0.0, 0.0, 40.0, 40.0)),
  )
  result = cropper.crop(rgb)  # square side 80 centred on (20, 20): (-20, -20) .. (60, 60)
  assert result.found and result.box == (0.0, 0.0, 40.0, 40.0) and result.method == "fixed"
  assert result.image[:9, :9].max() == 0 and result.image[-5:, -5:].min() == 255


def test_a_face_with_landmarks_is_aligned_whatever_its_detector():
  settings = faces.CropSettings(detector="none", crop_size=56)
  points = np.array([[30, 40], [60, 40], [45, 55], [33, 70], [57, 70]], np.float64)
  rgb = _rng_image(100, 100, seed=5)
  result = faces.FaceCropper(settings, detector=_FixedBox((20.0, 25.0, 50.0, 60.0), points)).crop(
    rgb
  )
  np.testing.assert_array_equal(result.image, faces.align(rgb, points, settings))
  assert result.landmarks == tuple(points[:, 0]) + tuple(points[:, 1])


def test_every_registered_detector_loads_and_answers_per_image():
  images = [_rng_image(60, 80, seed=1), _rng_image(90, 70, seed=2)]
  for name in detectors.NAMES:
    cls = detectors.detector_class(name)
    assert cls.name == name and cls.batch_size >= 1 and name in detectors.help_text()
    found = detectors.create(name).detect(images)
    assert len(found) == 2 and all(isinstance(f, list) for f in found)
  with pytest.raises(UserError, match="mtcnn"):
    detectors.check("dlib")


def test_rgb_order_survives_crop_and_jpeg():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  red = np.zeros((50, 50, 3), np.uint8)
  red[..., 0] = 250
  result = faces.FaceCropper(faces.CropSettings(detector="none", crop_size=32)).crop(red)
  encoded = faces.encode_jpeg(result.image)
  assert encoded == faces.encode_jpeg(result.image)  # deterministic
  decoded = tf.io.decode_jpeg(encoded).numpy()
  assert decoded[..., 0].min() > 230 and decoded[..., 2].max() < 20


def test_haar_finds_faces_on_real_photos(lfw_2to4):
  paths = sorted(glob.glob(os.path.join(lfw_2to4, "*", "*.jpg")))[:6]
  settings = faces.CropSettings(detector="haar", crop_size=64)
  results = [faces.load_and_crop(p, settings) for p in paths]
  found = [r for r in results if r.found]
  assert len(found) >= 5
  for r in found:
    x, y, w, h = r.box  # LFW photos are 250x250 centred on the face
    assert 60 < w < 200 and abs(x + w / 2 - 125) < 40 and abs(y + h / 2 - 125) < 40
    assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8


def test_haar_on_orl(orl_faces):
  paths = [os.path.join(orl_faces, f"s{i}", "1.pgm") for i in range(1, 11)]
  results = [faces.load_and_crop(p, faces.CropSettings(detector="haar")) for p in paths]
  assert sum(r.found for r in results) >= 7
  assert all(r.image.shape == (128, 128, 3) for r in results)
