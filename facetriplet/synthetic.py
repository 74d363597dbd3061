"""Drawn-face generator for tests and the demo: identities that a model can learn to tell apart.

Each identity has a fixed "genotype" (face shape, skin, hair colour and style, eye shape, colour
and spacing, eyebrows, nose, mouth, ears, glasses, beard, moles); each photo varies what a camera
and a person vary: pose (rotation, translation, scale), lighting (brightness, gradient, colour
cast), expression (smile, open mouth, raised eyebrows, blinking), clothing, background (colour,
gradient, noise) and occasional occlusion (scarf, hand, random block), plus sensor noise and JPEG
compression. The variation is large enough that raw-pixel nearest neighbour is far from perfect.

Everything is deterministic given the seed: the same call writes byte-identical files.
"""

from __future__ import annotations

import io
import os
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facetriplet import atomic
from facetriplet import synthetic_drawing as drawing

SUPERSAMPLE = 2
_SKIN = np.array(
  [
    [255, 224, 196],
    [241, 194, 160],
    [224, 172, 130],
    [198, 134, 90],
    [160, 102, 66],
    [110, 70, 45],
    [80, 52, 36],
  ],
  np.float64,
)
_HAIR = np.array(
  [
    [20, 16, 14],
    [60, 40, 25],
    [110, 70, 40],
    [180, 130, 70],
    [225, 200, 140],
    [150, 60, 30],
    [170, 170, 170],
    [240, 240, 235],
  ],
  np.float64,
)
_EYES = np.array(
  [[60, 40, 20], [90, 60, 30], [60, 110, 170], [70, 130, 80], [110, 110, 120]], np.float64
)
HAIR_STYLES = ("short", "long", "bald", "fringe", "spiky", "bun")


def make_face_dataset(
  output_dir: str,
  num_identities: int,
  photos_per_identity: int,
  size: int = 128,
  seed: int = 0,
  fmt: str = "jpg",
) -> Dict[str, int]:
  """Writes `output_dir/<identity>/<n>.<fmt>` (the `folders` layout) with drawn faces.

  Args:
    output_dir: folder to fill (created if needed); existing files with the same names are
      replaced atomically.
    num_identities: number of identity folders (`person_000`, ...).
    photos_per_identity: photos per identity (`000.jpg`, ...).
    size: image side in pixels.
    seed: generator seed; the same seed writes byte-identical files.
    fmt: `jpg` (quality varies per photo, adding compression noise) or `png`.

  Returns:
    {"identities": ..., "images": ...}.

  Raises:
    ValueError: `fmt` is not `jpg`/`png`, or a count or the size is out of range.
  """
  if fmt not in ("jpg", "png"):
    raise ValueError(f"unknown image format {fmt!r}; valid formats: jpg, png")
  _check_counts(num_identities, photos_per_identity, size)
  for identity in range(num_identities):
    folder = os.path.join(output_dir, identity_name(identity))
    os.makedirs(folder, exist_ok=True)
    genotype = make_genotype(seed, identity)
    for photo in range(photos_per_identity):
      rng = _rng(seed, identity, photo)
      image = Image.fromarray(render_face(genotype, rng, size))
      buffer = io.BytesIO()
      if fmt == "jpg":
        image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
      else:
        image.save(buffer, format="PNG")
      atomic.write_bytes(os.path.join(folder, f"{photo:03d}.{fmt}"), buffer.getvalue())
  return {"identities": num_identities, "images": num_identities * photos_per_identity}


def make_face_arrays(
  num_identities: int, photos_per_identity: int, size: int = 128, seed: int = 0, jpeg: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
  """The same faces as `make_face_dataset`, in memory.

  Args:
    num_identities: number of identities.
    photos_per_identity: photos per identity.
    size: image side in pixels.
    seed: generator seed (same faces as the files written with this seed).
    jpeg: pass each image through JPEG at the photo's quality, as the files are.

  Returns:
    (images uint8 [N, size, size, 3], labels int64 [N]), identity-major order.
  """
  _check_counts(num_identities, photos_per_identity, size)
  images, labels = [], []
  for identity in range(num_identities):
    genotype = make_genotype(seed, identity)
    for photo in range(photos_per_identity):
      rng = _rng(seed, identity, photo)
      image = render_face(genotype, rng, size)
      if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
        image = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
      images.append(image)
      labels.append(identity)
  return np.stack(images), np.asarray(labels, np.int64)


def identity_name(identity: int) -> str:
  """Folder name of identity number `identity`."""
  return f"person_{identity:03d}"


def make_genotype(seed: int, identity: int) -> Dict[str, object]:
  """The fixed traits of one identity (a plain dict of numbers and colours)."""
  rng = _rng(seed, identity)
  skin = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 8, 3)
  return {
    "face_width": rng.uniform(0.20, 0.26),  # half-width, fraction of the image
    "face_aspect": rng.uniform(0.70, 0.90),  # width / height
    "jaw": rng.uniform(0.0, 1.0),  # 0 round .. 1 pointed chin
    "skin": skin,
    "hair": _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3),
    "hair_style": HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
    "hair_height": rng.uniform(0.03, 0.09),
    "eye_y": rng.uniform(-0.12, 0.02),  # relative to face height, from the centre
    "eye_spacing": rng.uniform(0.32, 0.48),  # fraction of face half-width
    "eye_size": rng.uniform(0.11, 0.19),
    "eye_aspect": rng.uniform(0.45, 0.85),
    "eye_colour": _EYES[rng.integers(len(_EYES))] + rng.normal(0, 10, 3),
    "brow_thickness": rng.uniform(0.02, 0.06),
    "brow_angle": rng.uniform(-0.25, 0.25),
    "brow_gap": rng.uniform(0.08, 0.16),
    "nose_length": rng.uniform(0.14, 0.28),
    "nose_width": rng.uniform(0.10, 0.22),
    "mouth_y": rng.uniform(0.38, 0.52),
    "mouth_width": rng.uniform(0.30, 0.55),
    "lips": np.clip(skin * rng.uniform(0.55, 0.8) + np.array([40, 0, 0]), 0, 255),
    "ear_size": rng.uniform(0.12, 0.22),
    "glasses": bool(rng.random() < 0.25),
    "glasses_colour": rng.uniform(0, 120, 3),
    "beard": int(rng.choice([0, 0, 0, 1, 2])),  # 0 none, 1 moustache, 2 full beard
    "moles": rng.uniform(-0.6, 0.6, size=(int(rng.integers(0, 3)), 2)),
  }


def render_face(genotype: Dict[str, object], rng: np.random.Generator, size: int) -> np.ndarray:
  """Draws one photo of an identity; `rng` supplies the per-photo variation.

  Returns:
    uint8 [size, size, 3].
  """
  canvas = size * SUPERSAMPLE
  background = drawing.background(rng, canvas)
  layer = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
  drawing.draw_person(ImageDraw.Draw(layer), genotype, rng, canvas)
  angle = rng.normal(0, 8)
  scale = rng.uniform(0.85, 1.12)
  shift = rng.uniform(-0.07, 0.07, 2) * canvas
  layer = drawing.affine(layer, angle, scale, shift)
  image = Image.alpha_composite(background, layer)
  if rng.random() < 0.3:
    drawing.occlude(ImageDraw.Draw(image), genotype, rng, canvas, shift)
  image = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
  if rng.random() < 0.25:
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
  return drawing.light(np.asarray(image, np.float64), rng)


def _check_counts(num_identities: int, photos_per_identity: int, size: int) -> None:
  if num_identities < 1 or photos_per_identity < 1:
    raise ValueError("num_identities and photos_per_identity must be at least 1")
  if not 32 <= size <= 1024:
    raise ValueError(f"size must be between 32 and 1024 pixels, got {size}")


def _rng(seed: int, *keys: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), *[int(k) for k in keys], len(keys)])
