"""Tests for facetriplet/layouts.py: folders, celeba and flat listings and their problems."""

import os

import pytest

from facetriplet.data import layouts
from facetriplet.errors import UserError


def _touch(path, data=b"x"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def test_folders_layout(tmp_path):
  root = str(tmp_path)
  for rel in (
    "bob/2.jpg",
    "bob/1.PNG",
    "alice/sub/a.pgm",
    "alice/b.webp",
    "carol/only.tif",
    "stray.jpg",
    "README.md",
    "bob/notes.txt",
    ".hidden/x.jpg",
    "bob/.DS_Store",
  ):
    _touch(os.path.join(root, rel))
  os.makedirs(os.path.join(root, "empty_person"))
  listing = layouts.scan_images(root, "folders")
  assert [(e.rel_path, e.identity) for e in listing.entries] == [
    ("alice/b.webp", "alice"),
    ("alice/sub/a.pgm", "alice"),
    ("bob/1.PNG", "bob"),
    ("bob/2.jpg", "bob"),
    ("carol/only.tif", "carol"),
  ]
  assert all(os.path.isabs(e.path) and e.partition is None for e in listing.entries)
  assert listing.empty_identities == ["empty_person"]
  assert sorted(listing.ignored) == [
    (".hidden/", "hidden"),
    ("README.md", "not-an-image-file"),
    ("bob/.DS_Store", "hidden"),
    ("bob/notes.txt", "not-an-image-file"),
    ("stray.jpg", "outside-identity-folder"),
  ]
  assert layouts.list_images(root, "folders") == listing.entries
  assert any("empty identity" in line for line in layouts.describe(listing))


def test_flat_layout_is_recursive_and_unlabelled(tmp_path):
  for rel in ("q2.jpg", "q1.png", "more/q3.bmp", "list.csv"):
    _touch(str(tmp_path / rel))
  listing = layouts.scan_images(str(tmp_path), "flat")
  assert [e.rel_path for e in listing.entries] == ["more/q3.bmp", "q1.png", "q2.jpg"]
  assert all(e.identity is None and e.partition is None for e in listing.entries)
  assert listing.ignored == [("list.csv", "not-an-image-file")]


def test_celeba_layout_with_partitions(tmp_path):
  images = tmp_path / "Img" / "img_align_celeba"
  for i in range(1, 6):
    _touch(str(images / f"{i:06d}.jpg"))
  _touch(str(images / "000099.jpg"))  # on disk, not in the identity list
  _touch(
    str(tmp_path / "Img" / "Anno" / "identity_CelebA.txt"),
    b"000001.jpg 7\n000002.jpg 7\n000003.jpg 9\n000004.jpg 9\n000005.jpg 3\n000006.jpg 3\n",
  )
  _touch(
    str(tmp_path / "Img" / "Eval" / "list_eval_partition.txt"),
    b"000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n000004.jpg 1\n000005.jpg 2\n",
  )
  listing = layouts.scan_images(str(images), "celeba")
  assert [(e.rel_path, e.identity, e.partition) for e in listing.entries] == [
    ("000001.jpg", "7", "train"),
    ("000002.jpg", "7", "train"),
    ("000003.jpg", "9", "val"),
    ("000004.jpg", "9", "val"),
    ("000005.jpg", "3", "test"),
  ]
  assert listing.ignored == [("000099.jpg", "no-identity")]
  assert listing.missing == [("000006.jpg", "missing-file")]


def test_celeba_without_partition_file(tmp_path):
  _touch(str(tmp_path / "a.jpg"))
  _touch(str(tmp_path / "ids.txt"), b"a.jpg 1\n")
  listing = layouts.scan_images(str(tmp_path), "celeba", identity_file=str(tmp_path / "ids.txt"))
  assert [(e.identity, e.partition) for e in listing.entries] == [("1", None)]


def test_celeba_errors(tmp_path):
  _touch(str(tmp_path / "a.jpg"))
  with pytest.raises(UserError, match="identity_CelebA.txt not found"):
    layouts.scan_images(str(tmp_path), "celeba")
  _touch(str(tmp_path / "identity_CelebA.txt"), b"a.jpg 1 extra\n")
  with pytest.raises(UserError, match="identity_CelebA.txt:1"):
    layouts.scan_images(str(tmp_path), "celeba")
  with pytest.raises(UserError, match="nope.txt does not exist"):
    layouts.scan_images(str(tmp_path), "celeba", partition_file=str(tmp_path / "nope.txt"))


def test_missing_and_empty_inputs(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    layouts.scan_images(str(tmp_path / "nope"), "folders")
  os.makedirs(tmp_path / "person")
  with pytest.raises(UserError, match="no images found"):
    layouts.scan_images(str(tmp_path), "folders")
  with pytest.raises(UserError, match="not one of"):
    layouts.scan_images(str(tmp_path), "pairs")


def test_directory_links_loops_and_hidden_folders_are_listed_not_followed(tmp_path):
  """Issue: `s/loop -> .` repeated one person 41 times; `s/up -> ..` brought everyone in under
  the wrong identity; `.hidden/` vanished without a word."""
  root = tmp_path / "people"
  for person in ("ann", "bob"):
    os.makedirs(root / person)
    for i in range(2):
      (root / person / f"{i}.jpg").write_bytes(b"x")
  os.symlink(".", root / "ann" / "loop")
  os.symlink("..", root / "ann" / "up")
  outside = tmp_path / "elsewhere"
  os.makedirs(outside)
  (outside / "z.jpg").write_bytes(b"x")
  os.symlink(outside, root / "bob" / "away")
  os.symlink(root / "bob", root / "bob_again")  # a second identity path to the same folder
  os.makedirs(root / ".cache")
  (root / ".cache" / "c.jpg").write_bytes(b"x")
  (root / "bob" / ".DS_Store").write_bytes(b"x")
  listing = layouts.scan_images(str(root), "folders")
  assert [(e.rel_path, e.identity) for e in listing.entries] == [
    ("ann/0.jpg", "ann"),
    ("ann/1.jpg", "ann"),
    ("bob/0.jpg", "bob"),
    ("bob/1.jpg", "bob"),
    ("bob/away/z.jpg", "bob"),  # a link to a folder elsewhere is followed
  ]
  ignored = dict(listing.ignored)
  assert ignored["ann/loop/"] == "link-to-ancestor"
  assert ignored["ann/up/"] == "link-to-ancestor"
  assert ignored["bob_again/"] == "folder-reached-twice"
  assert ignored[".cache/"] == "hidden" and ignored["bob/.DS_Store"] == "hidden"
  # The same lister serves flat galleries and query folders.
  flat = layouts.scan_images(str(root / "ann"), "flat")
  assert [e.rel_path for e in flat.entries] == ["0.jpg", "1.jpg"]
  assert dict(flat.ignored)["up/"] == "link-to-ancestor"  # above the flat root `ann`


def test_a_folder_of_links_to_identity_folders_is_read_and_an_empty_one_says_why(tmp_path):
  """How many people assemble a dataset: a folder of symlinks to identity folders elsewhere."""
  store = tmp_path / "store"
  for person in ("ann", "bob", "cyd"):
    os.makedirs(store / person)
    for i in range(2):
      (store / person / f"{i}.jpg").write_bytes(b"x")
  linked = tmp_path / "linked"
  os.makedirs(linked)
  for person in ("ann", "bob", "cyd"):
    os.symlink(store / person, linked / person)
  os.symlink(tmp_path, linked / "everything")  # back above the root: refused, not walked
  listing = layouts.scan_images(str(linked), "folders")
  assert [(e.rel_path, e.identity) for e in listing.entries] == [
    (f"{p}/{i}.jpg", p) for p in ("ann", "bob", "cyd") for i in range(2)
  ]
  assert dict(listing.ignored) == {"everything/": "link-to-ancestor"}
  # Nothing found: the error says what was skipped, why, and the flag that changes it.
  loose = tmp_path / "loose"
  os.makedirs(loose)
  for i in range(3):
    (loose / f"{i}.jpg").write_bytes(b"x")
  with pytest.raises(UserError, match=r"skipped: 3 outside-identity-folder .*--layout=flat"):
    layouts.scan_images(str(loose), "folders")


def test_inputs_are_one_image_a_folder_or_a_list_and_anything_else_one_clear_error(tmp_path):
  _touch(str(tmp_path / "photos" / "a.jpg"))
  _touch(str(tmp_path / "photos" / "b b.png"))
  one = layouts.list_inputs(str(tmp_path / "photos" / "a.jpg"))
  assert [(e.path, e.rel_path) for e in one] == [(str(tmp_path / "photos" / "a.jpg"), "a.jpg")]
  assert [e.rel_path for e in layouts.list_inputs(str(tmp_path / "photos"))] == ["a.jpg", "b b.png"]
  listing = tmp_path / "queries.txt"
  listing.write_text("# two queries\nphotos/a.jpg\n\nphotos/b b.png\n", encoding="utf-8")
  assert [e.path for e in layouts.list_inputs(str(listing))] == [
    str(tmp_path / "photos" / "a.jpg"),
    str(tmp_path / "photos" / "b b.png"),
  ]
  blob = tmp_path / "photo.heic"  # not an image extension we read, and not text
  blob.write_bytes(bytes(range(256)) * 4)
  with pytest.raises(UserError) as err:
    layouts.list_inputs(str(blob))
  message = str(err.value)
  assert "photo.heic" in message and "\n" not in message and "image" in message
  with pytest.raises(UserError, match="does not exist"):
    layouts.list_inputs(str(tmp_path / "nope"))
  labels = tmp_path / "labels.txt"
  labels.write_text("a b.jpg alice\n# comment\nc.jpg\n", encoding="utf-8")
  with pytest.raises(UserError, match=r"labels.txt:3: expected '<file> <identity>'"):
    layouts.read_labels(str(labels))
  labels.write_text("a b.jpg alice\n", encoding="utf-8")
  assert layouts.read_labels(str(labels)) == {"a b.jpg": "alice"}  # spaces in file names
