"""Images that lie: a JPEG whose header claims more 8x8 blocks than its bytes can code is refused
as 'truncated' before decoding, and an image with nothing in it (under 8 pixels on a side, or
nearly one flat colour) is refused as 'blank', for files, uploads, arrays and engine queries.
"""

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from facetriplet.data import images
from facetriplet.errors import ImageError
from facetriplet.search import features, gallery
from facetriplet.search.searcher import Searcher
from tests.conftest import shared_dataset
from tests.search.test_retrieval import write_image_set
from tests.training.test_export import make_export

LFW_PHOTO = os.path.join("Aaron_Peirsol", "Aaron_Peirsol_0001.jpg")
SOF0, SOF2 = b"\xff\xc0", b"\xff\xc2"


def _refusal(decode, *args) -> ImageError:
  with pytest.raises(ImageError) as e:
    decode(*args)
  return e.value


def _jpeg(rgb: np.ndarray, **kwargs) -> bytes:
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, "JPEG", **kwargs)
  return out.getvalue()


def _png(rgb: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, "PNG")
  return out.getvalue()


def _smooth(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A photo-like image: coarse random colours, bilinearly enlarged."""
  coarse = np.random.default_rng(seed).integers(0, 256, (height // 16, width // 16, 3), np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def _lie(data: bytes, marker: bytes, width: int = 6000, height: int = 6000) -> bytes:
  """`data` with the frame header (the first `marker` segment) claiming width x height."""
  i = data.find(marker)
  assert i > 0, "no such frame marker"
  real = Image.open(io.BytesIO(data)).size
  assert (
    int.from_bytes(data[i + 7 : i + 9], "big"),
    int.from_bytes(data[i + 5 : i + 7], "big"),
  ) == (real), "the marker found is not the frame header"
  return data[: i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[i + 9 :]


def _lfw_bytes() -> bytes:
  with open(os.path.join(shared_dataset("lfw_2to4"), LFW_PHOTO), "rb") as f:
    return f.read()


# ---- truncated: the header says more than the file holds --------------------------------------


def test_lying_baseline_jpeg_is_refused_before_decoding(tmp_path, monkeypatch):
  data = _lfw_bytes()
  assert images.decode_rgb(data).shape == (250, 250, 3)
  lie = _lie(data, SOF0)
  (tmp_path / "lie.jpg").write_bytes(lie)

  def no_decoding(self):
    raise AssertionError("decoded a JPEG whose header lies")

  monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
  for e in (
    _refusal(images.decode_rgb, lie, "upload.jpg"),
    _refusal(images.load_rgb, str(tmp_path / "lie.jpg")),
    _refusal(images.to_rgb, lie),
  ):
    assert e.reason == "truncated", e
    assert "header says 6000x6000" in e.detail and "bytes of image data" in e.detail
  assert _refusal(images.decode_rgb, lie, "upload.jpg").path == "upload.jpg"


def test_lying_progressive_jpeg_is_refused():
  data = _jpeg(_smooth(256, 256), quality=90, progressive=True)
  assert SOF0 not in data and images.decode_rgb(data).shape == (256, 256, 3)
  e = _refusal(images.decode_rgb, _lie(data, SOF2, 6000, 4000))
  assert e.reason == "truncated" and "header says 6000x4000" in e.detail


def test_frame_header_arithmetic():
  """Blocks per component (no MCU padding) and the least bits a block, from the markers."""

  def frame(data):
    return images._jpeg_frame(io.BytesIO(data))  # pylint: disable=protected-access

  rgb = _smooth(250, 250)
  coded = lambda data: frame(data)[4]  # noqa: E731
  d420 = _jpeg(rgb, quality=90)
  assert frame(d420)[:4] == (250, 250, 2, 32 * 32 + 2 * 16 * 16)
  assert frame(_lie(d420, SOF0))[:4] == (6000, 6000, 2, 750 * 750 + 2 * 375 * 375)
  assert 0 < coded(d420) < len(d420) - 300  # bytes after the scan header: not the tables
  d444 = _jpeg(rgb, quality=90, subsampling=0)
  assert frame(d444)[:4] == (250, 250, 2, 3 * 32 * 32)
  grey = _jpeg(rgb[..., 0], quality=90)
  assert frame(grey)[:4] == (250, 250, 2, 32 * 32)
  progressive = _jpeg(rgb, quality=90, progressive=True)
  assert frame(progressive)[:4] == (250, 250, 1, 32 * 32 + 2 * 16 * 16)
  # Arithmetic-coded (SOF9) and lossless (SOF3) frames are left to the decoder.
  for marker in (b"\xff\xc9", b"\xff\xc3"):
    assert frame(d420.replace(SOF0, marker, 1)) is None
  assert frame(b"\x89PNG\r\n\x1a\n") is None and frame(d420[:100]) is None
  # Junk and fill bytes between segments, which libjpeg skips, do not hide the frame.
  i = d420.find(SOF0)
  assert frame(d420[:i] + b"junk\xff\x00\xff\xff" + d420[i:])[:4] == frame(d420)[:4]
  lie = _lie(d420, SOF0)
  e = _refusal(images.decode_rgb, lie[:i] + b"junk" + lie[i:])
  assert e.reason == "truncated" and "6000x6000" in e.detail


def test_progressive_is_held_to_one_bit_a_block():
  """A progressive JPEG codes at least a DC symbol a block; sequential at least two symbols."""
  small = _jpeg(_smooth(64, 64), quality=50, progressive=True, optimize=True)
  bits = 8 * images._jpeg_frame(io.BytesIO(small))[4]  # pylint: disable=protected-access
  side = next(n for n in range(16, 4000, 16) if 1.5 * (n // 8) ** 2 > 0.6 * bits)  # 4:2:0 blocks
  # Between the two bounds: allowed as progressive (it decodes, grey-filled), refused as baseline.
  assert images.decode_rgb(_lie(small, SOF2, side, side)).shape == (side, side, 3)
  as_baseline = _lie(small, SOF2, side, side).replace(SOF2, SOF0, 1)
  assert _refusal(images.decode_rgb, as_baseline).reason == "truncated"
  assert _refusal(images.decode_rgb, _lie(small, SOF2, 2 * side, 2 * side)).reason == "truncated"


def test_jpeg_cut_in_half_is_still_truncated(tmp_path):
  data = _jpeg(_smooth(240, 320, seed=3), quality=95)
  (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
  assert _refusal(images.load_rgb, str(tmp_path / "half.jpg")).reason == "truncated"
  assert _refusal(images.decode_rgb, data[: len(data) // 2]).reason == "truncated"


@pytest.mark.parametrize(
  "mode,kwargs",
  [
    ("RGB", {"quality": 95}),
    ("RGB", {"quality": 95, "optimize": True, "subsampling": 0}),
    ("RGB", {"quality": 95, "optimize": True, "subsampling": 2}),
    ("RGB", {"quality": 95, "progressive": True, "optimize": True, "subsampling": 0}),
    ("RGB", {"quality": 95, "progressive": True, "optimize": True}),
    ("L", {"quality": 95, "optimize": True}),
    ("CMYK", {"quality": 95, "optimize": True}),
  ],
)
def test_honest_flat_jpeg_is_blank_not_truncated(mode, kwargs):
  """The most compressible honest JPEGs (one colour, 2 bits a block sequential, 1 progressive)."""
  data = _jpeg(np.full((3000, 4000, 3), (90, 140, 200), np.uint8), **kwargs)
  if mode != "RGB":
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert(mode).save(out, "JPEG", **kwargs)
    data = out.getvalue()
  e = _refusal(images.decode_rgb, data)
  assert e.reason == "blank", e


def test_large_face_on_flat_background_decodes():
  canvas = Image.new("RGB", (4000, 3000), (200, 210, 220))
  draw = ImageDraw.Draw(canvas)
  draw.ellipse((1500, 700, 2500, 2300), fill=(224, 172, 130), outline=(60, 40, 20), width=12)
  for x in (1750, 2250):
    draw.ellipse((x - 90, 1250, x + 90, 1350), fill=(255, 255, 255))
    draw.ellipse((x - 35, 1265, x + 35, 1335), fill=(60, 40, 20))
  draw.polygon([(2000, 1400), (1940, 1700), (2060, 1700)], fill=(198, 134, 90))
  draw.arc((1800, 1750, 2200, 2000), 20, 160, fill=(150, 40, 40), width=20)
  data = _jpeg(np.asarray(canvas), quality=95, optimize=True)
  assert len(data) < 300_000  # extreme compressibility: ~0.2 bit a pixel
  rgb = images.decode_rgb(data)
  assert rgb.shape == (3000, 4000, 3) and rgb[1300, 1750].max() < 90  # a pupil


# ---- blank: nothing in the image to search for -------------------------------------------------


def _white_with_strays() -> np.ndarray:
  rgb = np.full((200, 200, 3), 255, np.uint8)
  rows, cols = np.random.default_rng(1).integers(0, 200, (2, 150))
  rgb[rows, cols] = (0, 0, 0)  # at most 150 stray pixels of 40,000
  return rgb


BLANK = {
  "1x1": np.full((1, 1, 3), 120, np.uint8),
  "7x200": _smooth(200, 208)[:, :7],
  "200x7": _smooth(208, 200)[:7],
  "grey": np.full((200, 200, 3), 128, np.uint8),
  "white-with-strays": _white_with_strays(),
  "black-with-noise": np.random.default_rng(2).integers(0, 5, (300, 300, 3), np.uint8),
}


@pytest.mark.parametrize("name", sorted(BLANK))
def test_blank_images_are_refused_everywhere(name, tmp_path):
  rgb = BLANK[name]
  Image.fromarray(rgb).save(tmp_path / "x.png")
  for e in (
    _refusal(images.to_rgb, rgb, "array"),
    _refusal(images.to_rgb, rgb[..., 0], "grey array"),
    _refusal(images.decode_rgb, _png(rgb), "upload"),
    _refusal(images.load_rgb, str(tmp_path / "x.png")),
    _refusal(images.check_content, rgb, "x"),
  ):
    assert e.reason == "blank", e
  assert "blank" in images.REASONS


@pytest.mark.parametrize(
  "rgb",
  [
    np.random.default_rng(3).integers(0, 256, (8, 8, 3), np.uint8),  # the smallest allowed
    np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2),  # ramp
    np.concatenate([np.full((40, 40, 3), (255, 0, 0)), np.full((40, 40, 3), (0, 0, 255))]).astype(
      np.uint8
    ),  # one grey level (85) but two colours
    np.where(np.random.default_rng(4).random((200, 200, 1)) < 0.02, 0, 255)
    .repeat(3, axis=2)
    .astype(np.uint8),  # 2% marks on white: over the 1% allowed
  ],
  ids=["8x8", "ramp", "red-blue", "two-percent"],
)
def test_images_with_content_are_not_blank(rgb):
  assert images.to_rgb(rgb).shape == rgb.shape
  assert images.decode_rgb(_png(rgb)).shape == rgb.shape


def test_a_real_photo_is_not_blank():
  rgb = images.decode_rgb(_lfw_bytes())
  assert rgb.shape == (250, 250, 3)
  images.check_content(rgb, "lfw")
  images.check_content(rgb[100:150, 100:150], "lfw face centre")


def test_the_test_suite_images_are_not_blank(tmp_path):
  write_image_set(str(tmp_path), np.random.default_rng(0), per_identity=2)
  for folder, _, names in os.walk(tmp_path):
    for name in names:
      assert images.load_rgb(os.path.join(folder, name)).shape == (40, 36, 3)


# ---- queries through the library get the problem, not confident matches -----------------------


@pytest.fixture(scope="module")
def searcher(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("images"))
  export_dir = make_export(root, seed=0)
  gallery_dir = os.path.join(root, "gallery")
  write_image_set(gallery_dir, np.random.default_rng(5), per_identity=2)
  Image.fromarray(BLANK["grey"]).save(os.path.join(gallery_dir, "alice", "placeholder.png"))
  extractor = features.make_extractor("embedding", export_dir)
  index_dir = os.path.join(root, "index")
  summary = gallery.build_gallery_index(
    extractor, gallery_dir, index_dir, progress=False, model_dir=export_dir
  )
  assert [(p.rel_path, p.reason) for p in summary.skipped] == [("alice/placeholder.png", "blank")]
  return Searcher.open(index_dir)


def test_queries_that_lie_or_are_blank_get_a_problem_and_no_matches(searcher, tmp_path):
  Image.fromarray(_white_with_strays()).save(tmp_path / "white.png")
  good = _smooth(40, 36, seed=6)
  queries = {
    "1x1": np.full((1, 1, 3), 120, np.uint8),
    "grey": _png(BLANK["grey"]),
    "white": str(tmp_path / "white.png"),
    "lie": _lie(_jpeg(_smooth(250, 250, seed=7), quality=90), SOF0),
    "good": good,
  }
  results = searcher.engine.search_images(list(queries.values()), k=3)
  got = {name: (r.problem, len(r.matches)) for name, r in zip(queries, results)}
  assert got == {
    "1x1": ("blank", 0),
    "grey": ("blank", 0),
    "white": ("blank", 0),
    "lie": ("truncated", 0),
    "good": (None, 3),
  }
