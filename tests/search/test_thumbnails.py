"""Face thumbnails: cut by hand-worked coordinates, served by id only, kept with enrolled items
across a restart and gone with them."""

import http.client
import io
import os

import numpy as np
from PIL import Image

from facetriplet.search import thumbnails
from facetriplet.search.searcher import Searcher
from facetriplet.serving import security
from facetriplet.serving.app import make_app
from facetriplet.serving.server import ServerThread
from tests.serving.test_serve import Client, _new_face
from tests.serving.test_serve import setup, writable  # noqa: F401  (the fixtures)


def _decoded(data):
  image = Image.open(io.BytesIO(data))
  assert image.format == "JPEG"
  return np.asarray(image.convert("RGB"), np.float64)


def _quadrants(h=80, w=100):
  """Four flat colours, so a crop's position shows in its pixels."""
  rgb = np.zeros((h, w, 3), np.uint8)
  rgb[: h // 2, : w // 2] = (250, 0, 0)
  rgb[: h // 2, w // 2 :] = (0, 250, 0)
  rgb[h // 2 :, : w // 2] = (0, 0, 250)
  rgb[h // 2 :, w // 2 :] = (250, 250, 0)
  return rgb


def test_thumbnail_is_the_box_with_its_margin():
  rgb = _quadrants()
  # Box 20 x 20 at (40, 30): side 20 * 1.5 = 30, centred on (50, 40): rows 25..54, cols 35..64.
  np.testing.assert_array_equal(
    thumbnails.face_square(rgb, (40, 30, 20, 20), 30), rgb[25:55, 35:65]
  )
  # A box at the corner: rows and columns -5..24; the part outside the photo is grey (128).
  corner = thumbnails.face_square(rgb, (0, 0, 20, 20), 30)
  assert (corner[:5] == 128).all() and (corner[:, :5] == 128).all()
  np.testing.assert_array_equal(corner[5:, 5:], rgb[:25, :25])
  # No box (no face found): the centred square of the photo, here scaled to half.
  centre = thumbnails.face_square(rgb, None, 40)
  np.testing.assert_array_equal(centre[2:18, 2:18], rgb[4:36, 14:46][::2, ::2])
  # The JPEG served is that square, within JPEG's loss.
  got = _decoded(thumbnails.face_thumbnail(rgb, (40, 30, 20, 20), size=30))
  assert np.median(np.abs(got - rgb[25:55, 35:65])) <= 3


def test_served_by_id_never_by_path(writable):  # noqa: F811
  client, searcher = writable["client"], writable["searcher"]
  item = next(i for i in searcher.index.items if i.identity == "bob")
  assert item.rel_path == "bob/bob_0.png"  # the id the service shows
  status, data = _raw(client, f"/thumbnails/{item.rel_path}")
  assert status == 200 and data == searcher.thumbs.of(item)
  want = thumbnails.face_thumbnail(np.asarray(Image.open(item.path).convert("RGB")), item.box)
  assert data == want and _decoded(data).shape == (thumbnails.SIZE, thumbnails.SIZE, 3)
  for bad in (item.path, "../../etc/passwd", "%2Fetc%2Fpasswd", "bob/nobody.png"):
    status, answer = client.call("GET", f"/thumbnails/{bad}")
    assert status == 404, (bad, answer)


def _raw(client, path):
  """(status, body bytes) of a GET; a 200 must be a JPEG."""
  conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
  try:
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.getheader("content-type") == "image/jpeg" or resp.status != 200
    return resp.status, resp.read()
  finally:
    conn.close()


def test_enrolled_thumbnail_kept_across_restart_and_removed_with_the_item(writable):  # noqa: F811
  client, index_dir = writable["client"], writable["index"]
  status, answer = client.post_image("/items", _new_face(3), {"id": "dora-1", "identity": "dora"})
  assert status == 201, answer
  status, data = _raw(client, "/thumbnails/dora-1")
  assert status == 200
  stored = os.path.join(index_dir, *thumbnails.file_name("dora-1").split("/"))
  with open(stored, "rb") as f:
    assert f.read() == data  # saved with the index before the enrolment was answered
  reopened = Searcher.open(index_dir)  # a restart: the checksums cover the thumbnail too
  assert reopened.thumbs.of(reopened.index.items[reopened.index.row_of("dora-1")]) == data
  assert client.call("DELETE", "/items/dora-1")[0] == 200
  assert not os.path.exists(stored) and _raw(client, "/thumbnails/dora-1")[0] == 404


def test_thumbnails_need_a_read_token(setup):  # noqa: F811
  tokens = security.Tokens.parse(f"viewer read {'r' * 24}", "test")
  searcher = Searcher.open(setup["index"])
  shown = "alice/alice_0.png"
  with ServerThread(make_app(searcher, tokens=tokens)) as server:
    client = Client(server.url)
    assert client.call("GET", f"/thumbnails/{shown}")[0] == 401
    status, _ = client.call(
      "GET", f"/thumbnails/{shown}", headers={"Authorization": "Bearer " + "r" * 24}
    )
    assert status == 200
    status, page = client.call("GET", "/")  # the page itself is public; what it shows is not
    assert status == 200 and "<title>facetriplet face search</title>" in page


def test_a_face_found_turned_is_shown_upright(orl_faces):
  from facetriplet.data import faces, turns  # pylint: disable=g-import-not-at-top

  # Hand-worked: eyes at y=10, mouth corners at y=30 is upright; mouth to the right of the eyes
  # (chin to the right) needs a quarter turn clockwise (k=3), to the left counterclockwise, eyes
  # below the mouth a half turn.
  upright = (10, 20, 15, 12, 18, 10, 10, 20, 30, 30)
  chin_right = (10, 10, 20, 30, 30, 10, 20, 15, 12, 18)
  chin_left = (30, 30, 20, 10, 10, 20, 10, 15, 18, 12)
  upside_down = (30, 20, 25, 28, 22, 30, 30, 20, 10, 10)
  cases = (upright, chin_right, chin_left, upside_down, None)
  assert [turns.upright_turn(v) for v in cases] == [0, 3, 1, 2, 0]
  # A real photo stored on its side: its thumbnail shows what the upright photo's shows.
  photo = faces.load_rgb(os.path.join(orl_faces, "s1", "1.pgm"))
  stored = np.ascontiguousarray(np.rot90(photo, -1))
  cropper = faces.FaceCropper(faces.CropSettings())
  want, got = cropper.crop(photo), cropper.crop(stored)
  assert got.turned == 90
  shown = thumbnails.face_square(stored, got.box, 64, landmarks=got.landmarks)
  expected = thumbnails.face_square(photo, want.box, 64, landmarks=want.landmarks)
  assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 3
  sideways = thumbnails.face_square(stored, got.box, 64)
  assert np.abs(sideways.astype(int) - expected.astype(int)).mean() > 10
