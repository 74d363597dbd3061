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
import math
import os
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facetriplet import atomic

SUPERSAMPLE = 2
_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 90],
                  [160, 102, 66], [110, 70, 45], [80, 52, 36]], np.float64)
_HAIR = np.array([[20, 16, 14], [60, 40, 25], [110, 70, 40], [180, 130, 70], [225, 200, 140],
                  [150, 60, 30], [170, 170, 170], [240, 240, 235]], np.float64)
_EYES = np.array([[60, 40, 20], [90, 60, 30], [60, 110, 170], [70, 130, 80], [110, 110, 120]],
                 np.float64)
HAIR_STYLES = ("short", "long", "bald", "fringe", "spiky", "bun")


def make_face_dataset(output_dir: str, num_identities: int, photos_per_identity: int,
                      size: int = 128, seed: int = 0, fmt: str = "jpg") -> Dict[str, int]:
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


def make_face_arrays(num_identities: int, photos_per_identity: int, size: int = 128,
                     seed: int = 0, jpeg: bool = True) -> Tuple[np.ndarray, np.ndarray]:
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
  background = _background(rng, canvas)
  layer = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
  _draw_person(ImageDraw.Draw(layer), genotype, rng, canvas)
  angle = rng.normal(0, 8)
  scale = rng.uniform(0.85, 1.12)
  shift = rng.uniform(-0.07, 0.07, 2) * canvas
  layer = _affine(layer, angle, scale, shift)
  image = Image.alpha_composite(background, layer)
  if rng.random() < 0.3:
    _occlude(ImageDraw.Draw(image), genotype, rng, canvas, shift)
  image = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
  if rng.random() < 0.25:
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
  return _light(np.asarray(image, np.float64), rng)


def _check_counts(num_identities: int, photos_per_identity: int, size: int) -> None:
  if num_identities < 1 or photos_per_identity < 1:
    raise ValueError("num_identities and photos_per_identity must be at least 1")
  if not 32 <= size <= 1024:
    raise ValueError(f"size must be between 32 and 1024 pixels, got {size}")


def _rng(seed: int, *keys: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), *[int(k) for k in keys], len(keys)])


def _colour(rgb, alpha: int = 255) -> Tuple[int, int, int, int]:
  r, g, b = np.clip(np.round(rgb), 0, 255).astype(int)
  return (int(r), int(g), int(b), alpha)


def _background(rng: np.random.Generator, canvas: int) -> Image.Image:
  a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  t = np.linspace(0, 1, canvas)[:, None, None]
  if rng.random() < 0.5:
    t = t.transpose(1, 0, 2)
  pixels = a * (1 - t) + b * t
  pixels = pixels + rng.normal(0, rng.uniform(2, 18), (canvas, canvas, 1))
  pixels = np.broadcast_to(pixels, (canvas, canvas, 3))
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGBA")
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(0, 4))):  # clutter behind the person
    x0, y0 = rng.uniform(0, canvas, 2)
    w, h = rng.uniform(0.1, 0.4, 2) * canvas
    draw.rectangle([x0, y0, x0 + w, y0 + h], fill=_colour(rng.uniform(0, 255, 3)))
  return image


def _draw_person(draw: ImageDraw.ImageDraw, g: Dict[str, object], rng: np.random.Generator,
                 canvas: int) -> None:
  """Hair, neck, clothes, ears, face and features on a transparent layer."""
  cx, cy = canvas * 0.5, canvas * 0.5
  fw = g["face_width"] * canvas
  fh = fw / g["face_aspect"]
  skin, hair = g["skin"], g["hair"]
  shade = skin * 0.8
  style = g["hair_style"]
  hh = g["hair_height"] * canvas
  if style == "long":
    draw.rounded_rectangle([cx - fw * 1.25, cy - fh - hh, cx + fw * 1.25, cy + fh * 1.1],
                           radius=fw * 0.6, fill=_colour(hair))
  # Clothes and neck (clothing colour is per photo: people change shirts).
  draw.ellipse([cx - fw * 2.4, cy + fh * 0.95, cx + fw * 2.4, cy + fh * 3.2],
               fill=_colour(rng.uniform(0, 255, 3)))
  draw.rectangle([cx - fw * 0.45, cy + fh * 0.5, cx + fw * 0.45, cy + fh * 1.25],
                 fill=_colour(shade))
  ear = g["ear_size"] * fh
  for side in (-1, 1):
    ex = cx + side * fw * 0.97
    draw.ellipse([ex - ear * 0.45, cy - ear, ex + ear * 0.45, cy + ear * 0.6], fill=_colour(shade))
  if style == "bun":
    draw.ellipse([cx - fw * 0.45, cy - fh - hh * 2.6, cx + fw * 0.45, cy - fh + hh * 0.5],
                 fill=_colour(hair))
  # Face: an ellipse, with a chin that narrows as `jaw` grows.
  draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh * (1 - 0.1 * g["jaw"])], fill=_colour(skin))
  if g["jaw"] > 0.5:
    chin = fw * (1.2 - g["jaw"])
    draw.polygon([(cx - fw * 0.9, cy + fh * 0.3), (cx + fw * 0.9, cy + fh * 0.3),
                  (cx + chin * 0.5, cy + fh * 1.02), (cx - chin * 0.5, cy + fh * 1.02)],
                 fill=_colour(skin))
  _draw_hair_top(draw, style, hair, cx, cy, fw, fh, hh)
  for mx, my in g["moles"]:
    x, y = cx + mx * fw, cy + my * fh
    draw.ellipse([x - fw * 0.03, y - fw * 0.03, x + fw * 0.03, y + fw * 0.03],
                 fill=_colour(skin * 0.5))
  _draw_eyes_and_brows(draw, g, rng, cx, cy, fw, fh)
  # Nose.
  nose_top, nose_len, nose_w = cy - fh * 0.02, g["nose_length"] * fh, g["nose_width"] * fw
  draw.line([(cx, nose_top), (cx - nose_w * 0.3, nose_top + nose_len)], fill=_colour(shade),
            width=max(1, int(fw * 0.03)))
  draw.ellipse([cx - nose_w, nose_top + nose_len - nose_w * 0.35, cx + nose_w,
                nose_top + nose_len + nose_w * 0.35], fill=_colour(skin * 0.88))
  _draw_mouth_and_beard(draw, g, rng, cx, cy, fw, fh)
  if g["glasses"]:
    eye_y = cy + g["eye_y"] * fh
    r = g["eye_size"] * fw * 1.5
    width = max(2, int(fw * 0.035))
    for side in (-1, 1):
      ex = cx + side * g["eye_spacing"] * fw
      draw.ellipse([ex - r, eye_y - r * 0.8, ex + r, eye_y + r * 0.8],
                   outline=_colour(g["glasses_colour"]), width=width)
    spacing = g["eye_spacing"] * fw
    draw.line([(cx - spacing + r, eye_y), (cx + spacing - r, eye_y)],
              fill=_colour(g["glasses_colour"]), width=width)


def _draw_hair_top(draw, style, hair, cx, cy, fw, fh, hh) -> None:
  box = [cx - fw * 1.04, cy - fh - hh, cx + fw * 1.04, cy + fh * 0.6]
  if style in ("short", "long", "bun"):
    draw.chord(box, 180, 360, fill=_colour(hair))
  elif style == "fringe":
    draw.chord(box, 180, 360, fill=_colour(hair))
    draw.rectangle([cx - fw * 0.8, cy - fh * 0.7, cx + fw * 0.8, cy - fh * 0.35],
                   fill=_colour(hair))
  elif style == "spiky":
    draw.chord(box, 180, 360, fill=_colour(hair))
    for i in range(7):
      x = cx - fw + (i + 0.5) * 2 * fw / 7
      draw.polygon([(x - fw * 0.15, cy - fh * 0.75), (x + fw * 0.15, cy - fh * 0.75),
                    (x, cy - fh - hh * 2.2)], fill=_colour(hair))
  else:  # bald: side tufts only
    for side in (-1, 1):
      x = cx + side * fw * 0.9
      draw.ellipse([x - fw * 0.15, cy - fh * 0.4, x + fw * 0.15, cy], fill=_colour(hair))


def _draw_eyes_and_brows(draw, g, rng, cx, cy, fw, fh) -> None:
  eye_y = cy + g["eye_y"] * fh
  r = g["eye_size"] * fw
  openness = 0.08 if rng.random() < 0.08 else rng.uniform(0.6, 1.15)  # blinks now and then
  gaze = rng.uniform(-0.35, 0.35, 2) * r
  raise_ = rng.uniform(-0.04, 0.08) * fh
  for side in (-1, 1):
    ex = cx + side * g["eye_spacing"] * fw
    ry = r * g["eye_aspect"] * openness
    draw.ellipse([ex - r, eye_y - ry, ex + r, eye_y + ry], fill=(245, 245, 240, 255),
                 outline=_colour(g["skin"] * 0.45), width=max(1, int(r * 0.12)))
    if openness > 0.3:
      ir = min(r * 0.55, ry * 1.05)
      ix, iy = ex + gaze[0], eye_y + gaze[1] * g["eye_aspect"]
      draw.ellipse([ix - ir, iy - ir, ix + ir, iy + ir], fill=_colour(g["eye_colour"]))
      draw.ellipse([ix - ir * 0.45, iy - ir * 0.45, ix + ir * 0.45, iy + ir * 0.45],
                   fill=(10, 10, 10, 255))
    by = eye_y - g["brow_gap"] * fh - raise_
    tilt = g["brow_angle"] * r * side
    draw.line([(ex - r * 1.1, by + tilt), (ex + r * 1.1, by - tilt)],
              fill=_colour(g["hair"] * 0.8), width=max(1, int(g["brow_thickness"] * fh)))


def _draw_mouth_and_beard(draw, g, rng, cx, cy, fw, fh) -> None:
  my = cy + g["mouth_y"] * fh
  half = g["mouth_width"] * fw
  smile = rng.uniform(-0.25, 1.0)
  if g["beard"] == 2:
    draw.chord([cx - fw * 0.95, cy - fh * 0.2, cx + fw * 0.95, cy + fh * 1.05], 10, 170,
               fill=_colour(g["hair"]))
  if g["beard"] >= 1:
    draw.rounded_rectangle([cx - half * 1.1, my - fh * 0.12, cx + half * 1.1, my - fh * 0.03],
                           radius=fh * 0.04, fill=_colour(g["hair"]))
  if rng.random() < 0.3:  # open mouth
    draw.ellipse([cx - half * 0.7, my - fh * 0.03, cx + half * 0.7, my + fh * 0.12],
                 fill=(60, 20, 25, 255), outline=_colour(g["lips"]), width=max(1, int(fh * 0.02)))
    return
  points = [(cx + t * half, my - smile * 0.12 * fh * (1 - t * t)) for t in np.linspace(-1, 1, 9)]
  points = [(x, y - smile * 0.06 * fh) for x, y in points]
  draw.line(points, fill=_colour(g["lips"]), width=max(2, int(fh * 0.035)), joint="curve")


def _affine(layer: Image.Image, angle: float, scale: float, shift: np.ndarray) -> Image.Image:
  """Rotates by `angle` degrees and scales about the centre, then shifts."""
  c = layer.size[0] / 2.0
  theta = math.radians(angle)
  cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
  tx, ty = c + shift[0], c + shift[1]
  # PIL maps output to input: q = c + R^-1 (p - t) / s.
  data = (cos, sin, c - cos * tx - sin * ty, -sin, cos, c + sin * tx - cos * ty)
  return layer.transform(layer.size, Image.Transform.AFFINE, data,
                         resample=Image.Resampling.BILINEAR)


def _occlude(draw: ImageDraw.ImageDraw, g, rng: np.random.Generator, canvas: int,
             shift: np.ndarray) -> None:
  """A scarf over the lower face, a hand-like blob, or a random block."""
  cx, cy = canvas / 2 + shift[0], canvas / 2 + shift[1]
  fw = g["face_width"] * canvas
  kind = rng.integers(3)
  colour = _colour(rng.uniform(0, 255, 3))
  if kind == 0:
    top = cy + fw * rng.uniform(0.3, 0.8)
    draw.rectangle([cx - fw * 1.5, top, cx + fw * 1.5, top + fw * 0.9], fill=colour)
  elif kind == 1:
    x, y = cx + rng.uniform(-1, 1) * fw, cy + rng.uniform(-0.5, 1) * fw
    r = fw * rng.uniform(0.3, 0.55)
    draw.ellipse([x - r, y - r * 1.3, x + r, y + r * 1.3], fill=_colour(g["skin"] * 0.9))
  else:
    x, y = cx + rng.uniform(-1.2, 0.6) * fw, cy + rng.uniform(-1.2, 0.6) * fw
    w, h = rng.uniform(0.3, 0.7, 2) * fw
    draw.rectangle([x, y, x + w, y + h], fill=colour)


def _light(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Brightness, a directional gradient, a colour cast and sensor noise."""
  size = pixels.shape[0]
  yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
  direction = rng.uniform(0, 2 * math.pi)
  gradient = 1 + rng.uniform(0, 0.6) * (math.cos(direction) * xx + math.sin(direction) * yy)
  gain = rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, 3)
  pixels = pixels * gradient[..., None] * gain + rng.normal(0, rng.uniform(1, 6), pixels.shape)
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)
