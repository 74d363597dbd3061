"""The drawing of one synthetic photo (`synthetic.render_face` composes these): a background, a
person drawn from a genotype (face, hair, eyes and brows, nose, mouth and beard, ears, glasses,
moles), a pose, an occlusion and the light. PIL on a supersampled canvas; NumPy for the light.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw


def _colour(rgb, alpha: int = 255) -> Tuple[int, int, int, int]:
  r, g, b = np.clip(np.round(rgb), 0, 255).astype(int)
  return (int(r), int(g), int(b), alpha)


def background(rng: np.random.Generator, canvas: int) -> Image.Image:
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


def draw_person(
  draw: ImageDraw.ImageDraw, g: Dict[str, object], rng: np.random.Generator, canvas: int
) -> None:
  """Hair, neck, clothes, ears, face and features on a transparent layer."""
  cx, cy = canvas * 0.5, canvas * 0.5
  fw = g["face_width"] * canvas
  fh = fw / g["face_aspect"]
  skin, hair = g["skin"], g["hair"]
  shade = skin * 0.8
  style = g["hair_style"]
  hh = g["hair_height"] * canvas
  if style == "long":
    draw.rounded_rectangle(
      [cx - fw * 1.25, cy - fh - hh, cx + fw * 1.25, cy + fh * 1.1],
      radius=fw * 0.6,
      fill=_colour(hair),
    )
  # Clothes and neck (clothing colour is per photo: people change shirts).
  draw.ellipse(
    [cx - fw * 2.4, cy + fh * 0.95, cx + fw * 2.4, cy + fh * 3.2],
    fill=_colour(rng.uniform(0, 255, 3)),
  )
  draw.rectangle(
    [cx - fw * 0.45, cy + fh * 0.5, cx + fw * 0.45, cy + fh * 1.25], fill=_colour(shade)
  )
  ear = g["ear_size"] * fh
  for side in (-1, 1):
    ex = cx + side * fw * 0.97
    draw.ellipse([ex - ear * 0.45, cy - ear, ex + ear * 0.45, cy + ear * 0.6], fill=_colour(shade))
  if style == "bun":
    draw.ellipse(
      [cx - fw * 0.45, cy - fh - hh * 2.6, cx + fw * 0.45, cy - fh + hh * 0.5], fill=_colour(hair)
    )
  # Face: an ellipse, with a chin that narrows as `jaw` grows.
  draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh * (1 - 0.1 * g["jaw"])], fill=_colour(skin))
  if g["jaw"] > 0.5:
    chin = fw * (1.2 - g["jaw"])
    draw.polygon(
      [
        (cx - fw * 0.9, cy + fh * 0.3),
        (cx + fw * 0.9, cy + fh * 0.3),
        (cx + chin * 0.5, cy + fh * 1.02),
        (cx - chin * 0.5, cy + fh * 1.02),
      ],
      fill=_colour(skin),
    )
  _draw_hair_top(draw, style, hair, cx, cy, fw, fh, hh)
  for mx, my in g["moles"]:
    x, y = cx + mx * fw, cy + my * fh
    draw.ellipse(
      [x - fw * 0.03, y - fw * 0.03, x + fw * 0.03, y + fw * 0.03], fill=_colour(skin * 0.5)
    )
  _draw_eyes_and_brows(draw, g, rng, cx, cy, fw, fh)
  # Nose.
  nose_top, nose_len, nose_w = cy - fh * 0.02, g["nose_length"] * fh, g["nose_width"] * fw
  draw.line(
    [(cx, nose_top), (cx - nose_w * 0.3, nose_top + nose_len)],
    fill=_colour(shade),
    width=max(1, int(fw * 0.03)),
  )
  draw.ellipse(
    [
      cx - nose_w,
      nose_top + nose_len - nose_w * 0.35,
      cx + nose_w,
      nose_top + nose_len + nose_w * 0.35,
    ],
    fill=_colour(skin * 0.88),
  )
  _draw_mouth_and_beard(draw, g, rng, cx, cy, fw, fh)
  if g["glasses"]:
    eye_y = cy + g["eye_y"] * fh
    r = g["eye_size"] * fw * 1.5
    width = max(2, int(fw * 0.035))
    for side in (-1, 1):
      ex = cx + side * g["eye_spacing"] * fw
      draw.ellipse(
        [ex - r, eye_y - r * 0.8, ex + r, eye_y + r * 0.8],
        outline=_colour(g["glasses_colour"]),
        width=width,
      )
    spacing = g["eye_spacing"] * fw
    draw.line(
      [(cx - spacing + r, eye_y), (cx + spacing - r, eye_y)],
      fill=_colour(g["glasses_colour"]),
      width=width,
    )


def _draw_hair_top(draw, style, hair, cx, cy, fw, fh, hh) -> None:
  box = [cx - fw * 1.04, cy - fh - hh, cx + fw * 1.04, cy + fh * 0.6]
  if style in ("short", "long", "bun"):
    draw.chord(box, 180, 360, fill=_colour(hair))
  elif style == "fringe":
    draw.chord(box, 180, 360, fill=_colour(hair))
    draw.rectangle(
      [cx - fw * 0.8, cy - fh * 0.7, cx + fw * 0.8, cy - fh * 0.35], fill=_colour(hair)
    )
  elif style == "spiky":
    draw.chord(box, 180, 360, fill=_colour(hair))
    for i in range(7):
      x = cx - fw + (i + 0.5) * 2 * fw / 7
      draw.polygon(
        [(x - fw * 0.15, cy - fh * 0.75), (x + fw * 0.15, cy - fh * 0.75), (x, cy - fh - hh * 2.2)],
        fill=_colour(hair),
      )
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
    draw.ellipse(
      [ex - r, eye_y - ry, ex + r, eye_y + ry],
      fill=(245, 245, 240, 255),
      outline=_colour(g["skin"] * 0.45),
      width=max(1, int(r * 0.12)),
    )
    if openness > 0.3:
      ir = min(r * 0.55, ry * 1.05)
      ix, iy = ex + gaze[0], eye_y + gaze[1] * g["eye_aspect"]
      draw.ellipse([ix - ir, iy - ir, ix + ir, iy + ir], fill=_colour(g["eye_colour"]))
      draw.ellipse(
        [ix - ir * 0.45, iy - ir * 0.45, ix + ir * 0.45, iy + ir * 0.45], fill=(10, 10, 10, 255)
      )
    by = eye_y - g["brow_gap"] * fh - raise_
    tilt = g["brow_angle"] * r * side
    draw.line(
      [(ex - r * 1.1, by + tilt), (ex + r * 1.1, by - tilt)],
      fill=_colour(g["hair"] * 0.8),
      width=max(1, int(g["brow_thickness"] * fh)),
    )


def _draw_mouth_and_beard(draw, g, rng, cx, cy, fw, fh) -> None:
  my = cy + g["mouth_y"] * fh
  half = g["mouth_width"] * fw
  smile = rng.uniform(-0.25, 1.0)
  if g["beard"] == 2:
    draw.chord(
      [cx - fw * 0.95, cy - fh * 0.2, cx + fw * 0.95, cy + fh * 1.05],
      10,
      170,
      fill=_colour(g["hair"]),
    )
  if g["beard"] >= 1:
    draw.rounded_rectangle(
      [cx - half * 1.1, my - fh * 0.12, cx + half * 1.1, my - fh * 0.03],
      radius=fh * 0.04,
      fill=_colour(g["hair"]),
    )
  if rng.random() < 0.3:  # open mouth
    draw.ellipse(
      [cx - half * 0.7, my - fh * 0.03, cx + half * 0.7, my + fh * 0.12],
      fill=(60, 20, 25, 255),
      outline=_colour(g["lips"]),
      width=max(1, int(fh * 0.02)),
    )
    return
  points = [(cx + t * half, my - smile * 0.12 * fh * (1 - t * t)) for t in np.linspace(-1, 1, 9)]
  points = [(x, y - smile * 0.06 * fh) for x, y in points]
  draw.line(points, fill=_colour(g["lips"]), width=max(2, int(fh * 0.035)), joint="curve")


def affine(layer: Image.Image, angle: float, scale: float, shift: np.ndarray) -> Image.Image:
  """Rotates by `angle` degrees and scales about the centre, then shifts."""
  c = layer.size[0] / 2.0
  theta = math.radians(angle)
  cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
  tx, ty = c + shift[0], c + shift[1]
  # PIL maps output to input: q = c + R^-1 (p - t) / s.
  data = (cos, sin, c - cos * tx - sin * ty, -sin, cos, c + sin * tx - cos * ty)
  return layer.transform(
    layer.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
  )


def occlude(
  draw: ImageDraw.ImageDraw, g, rng: np.random.Generator, canvas: int, shift: np.ndarray
) -> None:
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


def light(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Brightness, a directional gradient, a colour cast and sensor noise."""
  size = pixels.shape[0]
  yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
  direction = rng.uniform(0, 2 * math.pi)
  gradient = 1 + rng.uniform(0, 0.6) * (math.cos(direction) * xx + math.sin(direction) * yy)
  gain = rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, 3)
  pixels = pixels * gradient[..., None] * gain + rng.normal(0, rng.uniform(1, 6), pixels.shape)
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)
