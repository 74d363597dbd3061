"""Grid image: size, frame colours at the right cells, captions, PNG round trip."""

import os

import numpy as np
from PIL import Image

from facetriplet.evaluation import grid


def _img(value, shape=(50, 40, 3)):
  return np.full(shape, value, np.uint8)


def test_grid_size_and_frames(tmp_path):
  rows = [
    grid.GridRow(
      _img(10),
      "query_one_with_a_very_long_file_name.jpg",
      [
        grid.GridCell(_img(100), True, "1  0.95"),
        grid.GridCell(_img(120), False, "2  0.80"),
        grid.GridCell(_img(140), None, "3  0.70"),
      ],
    ),
    grid.GridRow(None, "q2.png", [grid.GridCell(_img(90), False)]),
  ]
  image = grid.make_grid(rows, thumb=32, frame=3)
  geo = grid.Geometry(rows=2, columns=3, thumb=32, frame=3)
  assert image.size == geo.size
  path = os.path.join(tmp_path, "grid.png")
  grid.save_grid(path, image)
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size == geo.size
    pixels = np.asarray(im.convert("RGB"))

  def frame_pixel(row, col):
    x0, y0, _, _ = geo.cell_box(row, col)
    return tuple(int(v) for v in pixels[y0 + 1, x0 + 1])

  def centre_pixel(row, col):
    x0, y0, x1, y1 = geo.cell_box(row, col)
    return tuple(int(v) for v in pixels[(y0 + y1) // 2, (x0 + x1) // 2])

  assert frame_pixel(0, 1) == grid.GREEN
  assert frame_pixel(0, 2) == grid.RED
  assert frame_pixel(0, 3) == grid.GREY
  assert frame_pixel(1, 1) == grid.RED
  assert frame_pixel(0, 0) == grid.QUERY_FRAME
  assert centre_pixel(0, 1) == (100, 100, 100)  # the thumbnail sits inside its frame
  assert centre_pixel(1, 2) == grid.BACKGROUND  # row 2 has one result only
  # Captions are drawn below the cells.
  _, _, x1, y1 = geo.cell_box(0, 0)
  caption = pixels[y1 + 1 : y1 + grid.CAPTION, geo.cell_box(0, 0)[0] : x1]
  assert (caption != grid.BACKGROUND).any(axis=-1).any()


def test_photo_with_box_draws_the_face_box_where_it_is():
  photo = np.zeros((50, 100, 3), np.uint8)  # wide: fitted into 40 px with bars above and below
  out = grid.photo_with_box(photo, (50, 10, 20, 20), 40, color=(255, 0, 0))
  assert out.shape == (40, 40, 3)
  scale, top = 40 / 100, (40 - 20) // 2
  x0, y0 = round(50 * scale), top + round(10 * scale)
  assert tuple(out[y0, x0 + 3]) == (255, 0, 0)  # the top edge of the box
  assert tuple(out[y0 + 4, x0 + 4]) == (0, 0, 0)  # inside it: the photo
  assert tuple(out[2, 2]) == (0, 0, 0) and not out[: top - 1].any()  # the bar stays black
