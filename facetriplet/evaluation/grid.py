"""The retrieval grid: each query beside its top-k results, framed by whether they are right.

One row per query: the query thumbnail (white frame, its file name underneath), a gap, then its
k results in rank order, each framed green (same identity as the query), red (another identity)
or grey (identity unknown), with rank and similarity underneath. Written as a PNG with PIL.

  make_grid([GridRow(query_image, "q1.jpg", [GridCell(img, True, "1  0.93"), ...]), ...])
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facetriplet import atomic

GREEN = (0, 176, 80)
RED = (220, 30, 30)
GREY = (150, 150, 150)
QUERY_FRAME = (255, 255, 255)
BACKGROUND = (32, 32, 32)
TEXT = (235, 235, 235)
PAD = 6  # space between cells
GAP = 18  # extra space between the query and its results
CAPTION = 14  # caption line height


@dataclasses.dataclass
class GridCell:
  """A result thumbnail; `correct` is True/False when identities are known, else None."""

  image: Optional[np.ndarray]
  correct: Optional[bool] = None
  caption: str = ""


@dataclasses.dataclass
class GridRow:
  """A query thumbnail, its caption (the file name) and its results in rank order."""

  image: Optional[np.ndarray]
  caption: str
  results: Sequence[GridCell]


def frame_color(correct: Optional[bool]) -> tuple[int, int, int]:
  return GREY if correct is None else (GREEN if correct else RED)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Pixel layout of a grid; `cell_box` gives the frame rectangle of any cell."""

  rows: int
  columns: int  # results per row (k)
  thumb: int = 96
  frame: int = 4

  @property
  def cell(self) -> int:
    return self.thumb + 2 * self.frame

  @property
  def row_height(self) -> int:
    return self.cell + CAPTION + PAD

  @property
  def size(self) -> tuple[int, int]:
    width = PAD + self.cell + GAP + self.columns * (self.cell + PAD)
    return width, PAD + self.rows * self.row_height

  def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the framed cell; column 0 is the query, 1..k the results."""
    x = PAD if column == 0 else PAD + self.cell + GAP + (column - 1) * (self.cell + PAD)
    y = PAD + row * self.row_height
    return x, y, x + self.cell - 1, y + self.cell - 1


def _thumbnail(image: Optional[np.ndarray], size: int) -> Image.Image:
  if image is None:
    return Image.new("RGB", (size, size), (70, 70, 70))
  im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
  return im.resize((size, size), Image.Resampling.BILINEAR)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
  """`text` shortened with '…' from the left (file names differ at their end) to fit `width`."""
  if draw.textlength(text, font=font) <= width:
    return text
  while text and draw.textlength("…" + text, font=font) > width:
    text = text[1:]
  return "…" + text


def make_grid(rows: Sequence[GridRow], thumb: int = 96, frame: int = 4) -> Image.Image:
  """Draws the grid; the number of result columns is the longest row's.

  Args:
    rows: one GridRow per query.
    thumb: thumbnail side in pixels.
    frame: frame width in pixels.

  Returns:
    RGB PIL image of size `Geometry(len(rows), k, thumb, frame).size`.
  """
  columns = max([len(r.results) for r in rows] + [1])
  geo = Geometry(len(rows), columns, thumb, frame)
  canvas = Image.new("RGB", geo.size, BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for r, row in enumerate(rows):
    cells = [(row.image, QUERY_FRAME, row.caption)]
    cells += [(c.image, frame_color(c.correct), c.caption) for c in row.results]
    for c, (image, color, caption) in enumerate(cells):
      x0, y0, x1, y1 = geo.cell_box(r, c)
      draw.rectangle((x0, y0, x1, y1), fill=color)
      canvas.paste(_thumbnail(image, thumb), (x0 + frame, y0 + frame))
      if caption:
        draw.text((x0, y1 + 2), _fit(draw, caption, geo.cell, font), fill=TEXT, font=font)
  return canvas


def save_grid(path: str, image: Image.Image) -> None:
  """Writes the grid as PNG, atomically."""
  with atomic.atomic_path(path) as tmp:
    image.save(tmp, format="PNG")


def photo_with_box(
  rgb: np.ndarray, box: Sequence[float], size: int, color: tuple[int, int, int] = (255, 210, 0)
) -> np.ndarray:
  """The whole photo fitted into a size x size square (black bars) with the face box drawn:
  how a result of a several-faces-per-photo index shows which face matched."""
  h, w = rgb.shape[:2]
  scale = size / max(h, w)
  im = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))))
  canvas = Image.new("RGB", (size, size))
  ox, oy = (size - im.width) // 2, (size - im.height) // 2
  canvas.paste(im, (ox, oy))
  x, y, bw, bh = (float(v) * scale for v in box)
  ImageDraw.Draw(canvas).rectangle(
    [ox + x, oy + y, ox + x + bw, oy + y + bh], outline=color, width=max(1, size // 48)
  )
  return np.asarray(canvas)
