"""Who is who: list the images of an input folder with their identity and partition.

Layouts:
  folders  one sub-folder per identity (LFW, VGGFace2, CASIA-WebFace, ORL); images anywhere below
           it. Files directly in the root are not used (listed as ignored).
  celeba   a folder of images plus `identity_CelebA.txt` ("000001.jpg 2880" per line) and an
           optional `list_eval_partition.txt` ("000001.jpg 0"; 0/1/2 → train/val/test).
  flat     an unlabelled folder (a competition's `query/` or `gallery/`), searched recursively.

Paths are reported relative to the root with "/" separators and sorted, so every later step is
deterministic. Nothing is decoded here; problems found while listing are returned, not raised.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple, Sequence

from facetriplet.data import folder_walk
from facetriplet.errors import UserError

LAYOUTS = ("folders", "celeba", "flat")
LAYOUT_CHOICES = ("auto",) + LAYOUTS  # what --layout accepts where a folder may be either
IMAGE_EXTENSIONS = frozenset(
  (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".bmp",
    ".dib",
    ".pgm",
    ".ppm",
    ".pbm",
    ".pnm",
    ".webp",
    ".tif",
    ".tiff",
    ".gif",
  )
)
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_PARTITIONS = {"0": "train", "1": "val", "2": "test"}


class ImageEntry(NamedTuple):
  """One image: absolute path, path relative to the root ("/"), identity and CelebA partition."""

  path: str
  rel_path: str
  identity: str | None
  partition: str | None


@dataclasses.dataclass
class ImageListing:
  """The images of a root plus what was found wrong while listing.

  Attributes:
    entries: images to decode, sorted by rel_path.
    empty_identities: identity folders (folders layout) holding no image file.
    ignored: [(rel_path, reason)] files not used: `not-an-image-file` (extension),
      `outside-identity-folder`, `no-identity` / `no-partition` (CelebA image missing from the
      identity / partition list), `hidden` (name starting with "."); and folders not entered
      (rel_path ending in "/"): `hidden`, `link-to-ancestor` (a directory link back to a folder
      above it, or above the input root: a loop), `folder-reached-twice` (the same device and
      inode met again: a second path to the same folder), `unreadable`.
    missing: [(rel_path, reason)] files named by a list file but absent (`missing-file`).
  """

  entries: list[ImageEntry]
  empty_identities: list[str] = dataclasses.field(default_factory=list)
  ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def is_image_file(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_list_file(
  path: str, fields: int, expected: str, fix: str = "", spaces_in_path: bool = True
) -> list[tuple[int, list[str]]]:
  """The one parser of list files: [(line number, fields)] of a UTF-8 text file.

  Blank lines and lines starting with '#' are skipped. The last `fields - 1` fields are split off
  at whitespace, so the first one (a file path) may hold spaces, unless `spaces_in_path=False`
  (CelebA's lists: a line with more fields is then an error).

  Args:
    path: the list file.
    fields: fields per line (1: a path per line).
    expected: the line format for the error message, e.g. "<file> <identity>".
    fix: what to do, appended to the error message.

  Raises:
    UserError: a line with another number of fields, or a file that is not UTF-8 text.
  """
  out = []
  try:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        line = line.strip()
        if not line or line.startswith("#"):
          continue
        if not spaces_in_path:
          parts = line.split()
        else:
          parts = line.rsplit(None, fields - 1) if fields > 1 else [line]
        if len(parts) != fields:
          raise UserError(
            f"{path}:{number}: expected '{expected}', got {line!r}" + (f": {fix}" if fix else "")
          )
        out.append((number, parts))
  except UnicodeDecodeError:
    raise UserError(
      f"{path} is not a UTF-8 text list file (one '{expected}' a line)"
      + (f": {fix}" if fix else "")
    ) from None
  except OSError as e:
    raise UserError(f"cannot read list file {path} ({e.strerror or e}): check the path") from None
  return out


def read_labels(path: str) -> dict[str, str]:
  """A labels file: "<file name or relative path> <identity>" per line ('#' comments)."""
  return {
    fields[0].replace(os.sep, "/"): fields[1]
    for _, fields in read_list_file(path, 2, "<file> <identity>")
  }


def read_path_list(path: str) -> list[ImageEntry]:
  """Entries of a text file listing image paths (one a line; '#' comments; relative to the file)."""
  base = os.path.dirname(os.path.abspath(path))
  entries = []
  for _, (line,) in read_list_file(
    path,
    1,
    "<image path>",
    "pass an image file (.jpg, .png, "
    "...), a folder of images or a text file with one image path "
    "a line",
  ):
    full = line if os.path.isabs(line) else os.path.join(base, line)
    entries.append(ImageEntry(full, line.replace(os.sep, "/"), None, None))
  if not entries:
    raise UserError(f"{path} lists no image paths: write one image path per line")
  return entries


def resolve_layout(root: str, layout: str = "auto") -> str:
  """'auto' -> 'folders' when `root` holds only sub-folders of images, else 'flat'."""
  if layout != "auto":
    return layout
  try:
    names = [n for n in os.listdir(root) if not n.startswith(".")]
  except OSError:
    return "flat"
  if any(is_image_file(n) and os.path.isfile(os.path.join(root, n)) for n in names):
    return "flat"
  return "folders" if any(os.path.isdir(os.path.join(root, n)) for n in names) else "flat"


def list_inputs(path: str, layout: str = "auto") -> list[ImageEntry]:
  """Images to embed: one image file, a folder (any layout, see `resolve_layout`) or a text file
  of paths (one a line).

  Raises:
    UserError: a path that does not exist, or a file that is neither an image (by extension)
      nor a UTF-8 list of paths; the message names the file and what is accepted.
  """
  if os.path.isfile(path):
    if is_image_file(path):
      return [ImageEntry(os.path.abspath(path), os.path.basename(path), None, None)]
    return read_path_list(path)
  if not os.path.isdir(path):
    raise UserError(
      f"{path} does not exist: pass an image, a folder of images or a text file listing image paths"
    )
  return list_images(path, resolve_layout(path, layout))


def list_images(
  root: str, layout: str, identity_file: str | None = None, partition_file: str | None = None
) -> list[ImageEntry]:
  """The images under `root` for `layout`, sorted by relative path (see `scan_images`)."""
  return scan_images(root, layout, identity_file, partition_file).entries


def scan_images(
  root: str, layout: str, identity_file: str | None = None, partition_file: str | None = None
) -> ImageListing:
  """Lists the images of `root` and the problems met on the way.

  Args:
    root: input folder.
    layout: 'folders', 'celeba' or 'flat'.
    identity_file: CelebA identity list; default: found beside or above `root` (see
      `find_celeba_file`).
    partition_file: CelebA partition list; default: found likewise when present, else none.

  Returns:
    ImageListing.

  Raises:
    UserError: unknown layout, missing root, missing or malformed CelebA list, or no images.
  """
  if layout not in LAYOUTS:
    raise UserError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
  if not os.path.isdir(root):
    raise UserError(f"input folder {root} does not exist: pass --input=<folder of images>")
  root = os.path.abspath(root)
  if layout == "folders":
    listing = _scan_folders(root)
    hint = "one sub-folder of images per identity"
  elif layout == "celeba":
    listing = _scan_celeba(root, identity_file, partition_file)
    hint = f"images named in {CELEBA_IDENTITY_FILE}"
  else:
    listing = _scan_flat(root)
    hint = "image files"
  if not listing.entries:
    raise UserError(
      f"no images found in {root} for layout={layout}: expected {hint} "
      f"({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))})"
      + folder_walk.skipped_summary(listing)
    )
  return listing


def _scan_folders(root: str) -> ImageListing:
  listing = ImageListing(entries=[])
  walk = folder_walk.Walk(root, listing)
  for name in sorted(os.listdir(root)):
    full = os.path.join(root, name)
    if not os.path.isdir(full):
      if name.startswith("."):
        listing.ignored.append((name, "hidden"))
        continue
      reason = "outside-identity-folder" if is_image_file(name) else "not-an-image-file"
      listing.ignored.append((name, reason))
      continue
    if not walk.enter(full):
      continue
    count = 0
    for rel in walk.files(full):
      if is_image_file(rel):
        listing.entries.append(ImageEntry(os.path.join(root, rel), rel, name, None))
        count += 1
      else:
        listing.ignored.append((rel, "not-an-image-file"))
    if count == 0:
      listing.empty_identities.append(name)
  listing.entries.sort(key=lambda e: e.rel_path)
  return listing


def _scan_flat(root: str) -> ImageListing:
  listing = ImageListing(entries=[])
  for rel in folder_walk.Walk(root, listing).files(root):
    if is_image_file(rel):
      listing.entries.append(ImageEntry(os.path.join(root, rel), rel, None, None))
    else:
      listing.ignored.append((rel, "not-an-image-file"))
  return listing


def find_celeba_file(root: str, name: str) -> str | None:
  """Where CelebA's list `name` lives: in `root`, its parent, or the official `Anno`/`Eval` folders
  beside `root` or one level up (`Img/img_align_celeba` next to `Anno/` and `Eval/`)."""
  parent = os.path.dirname(os.path.abspath(root))
  grand = os.path.dirname(parent)
  for folder in (
    root,
    parent,
    os.path.join(parent, "Anno"),
    os.path.join(parent, "Eval"),
    os.path.join(grand, "Anno"),
    os.path.join(grand, "Eval"),
  ):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  return None


def _read_pairs(path: str, what: str) -> dict[str, str]:
  """{file name: value} from a two-column list file (CelebA's)."""
  return {
    fields[0]: fields[1]
    for _, fields in read_list_file(
      path, 2, f"<image> <{what}>", f"pass the CelebA {what} list", spaces_in_path=False
    )
  }


def _scan_celeba(root: str, identity_file: str | None, partition_file: str | None) -> ImageListing:
  if identity_file:
    if not os.path.isfile(identity_file):
      raise UserError(
        f"identity file {identity_file} does not exist: pass "
        f"--identity_file=<path of {CELEBA_IDENTITY_FILE}>"
      )
  else:
    identity_file = find_celeba_file(root, CELEBA_IDENTITY_FILE)
    if identity_file is None:
      raise UserError(
        f"{CELEBA_IDENTITY_FILE} not found in or beside {root}: pass --identity_file=<path>"
      )
  if partition_file:
    if not os.path.isfile(partition_file):
      raise UserError(
        f"partition file {partition_file} does not exist: pass "
        f"--partition_file=<path of {CELEBA_PARTITION_FILE}> or leave it empty"
      )
  else:
    partition_file = find_celeba_file(root, CELEBA_PARTITION_FILE)
  identities = _read_pairs(identity_file, "identity")
  partitions = _read_pairs(partition_file, "partition") if partition_file else {}
  for name, value in partitions.items():
    if value not in CELEBA_PARTITIONS:
      raise UserError(f"{partition_file}: partition {value!r} of {name} is not 0, 1 or 2")
  listing = ImageListing(entries=[])
  on_disk = set()
  for rel in folder_walk.Walk(root, listing).files(root):
    if not is_image_file(rel):
      if os.path.join(root, rel) not in (identity_file, partition_file):
        listing.ignored.append((rel, "not-an-image-file"))
      continue
    on_disk.add(rel)
    identity = identities.get(rel)
    if identity is None:
      listing.ignored.append((rel, "no-identity"))
      continue
    partition = None
    if partitions:
      if rel not in partitions:
        listing.ignored.append((rel, "no-partition"))
        continue
      partition = CELEBA_PARTITIONS[partitions[rel]]
    listing.entries.append(ImageEntry(os.path.join(root, rel), rel, identity, partition))
  listing.missing = [(name, "missing-file") for name in sorted(identities) if name not in on_disk]
  return listing


def describe(listing: ImageListing, limit: int = 5) -> Sequence[str]:
  """Short human lines about the listing's problems, for logs."""
  lines = []
  if listing.empty_identities:
    lines.append(
      f"{len(listing.empty_identities)} empty identity folders, e.g. "
      f"{', '.join(listing.empty_identities[:limit])}"
    )
  if listing.ignored:
    lines.append(
      f"{len(listing.ignored)} files ignored, e.g. "
      f"{', '.join(f'{p} ({r})' for p, r in listing.ignored[:limit])}"
    )
  if listing.missing:
    lines.append(
      f"{len(listing.missing)} listed files missing, e.g. "
      f"{', '.join(p for p, _ in listing.missing[:limit])}"
    )
  return lines
