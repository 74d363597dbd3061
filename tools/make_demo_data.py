r"""Writes a folder of drawn faces (one sub-folder per identity) for the demo and for tests.

The logic lives in `facetriplet.synthetic`; this is a thin absl main. Example (40 identities x 12
photos, a few seconds):

  facetriplet-make-demo-data --output=/tmp/faces --identities=40 --photos=12

The result uses the `folders` layout: `facetriplet-build-tfrecords --layout=folders
--detector=none --input=/tmp/faces ...`. The same --seed writes byte-identical files.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from facetriplet import synthetic
from facetriplet.errors import UserError, run_tool

_OUTPUT = flags.DEFINE_string("output", None, "Folder to write <identity>/<n>.<format> into.")
_IDENTITIES = flags.DEFINE_integer("identities", 40, "Number of identities (sub-folders).")
_PHOTOS = flags.DEFINE_integer("photos", 12, "Photos per identity.")
_SIZE = flags.DEFINE_integer("size", 128, "Image side in pixels (32 to 1024).")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed; the same seed writes the same files.")
_FORMAT = flags.DEFINE_enum("format", "jpg", ["jpg", "png"], "Image file format.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _OUTPUT.value:
    raise UserError("--output is required: the folder to write the faces into")
  if _IDENTITIES.value < 1 or _PHOTOS.value < 1:
    raise UserError("--identities and --photos must be at least 1")
  if not 32 <= _SIZE.value <= 1024:
    raise UserError(f"--size={_SIZE.value} is out of range: use 32 to 1024 pixels")
  logging.info(
    "output=%s identities=%d photos=%d size=%d seed=%d format=%s",
    _OUTPUT.value,
    _IDENTITIES.value,
    _PHOTOS.value,
    _SIZE.value,
    _SEED.value,
    _FORMAT.value,
  )
  counts = synthetic.make_face_dataset(
    _OUTPUT.value,
    _IDENTITIES.value,
    _PHOTOS.value,
    size=_SIZE.value,
    seed=_SEED.value,
    fmt=_FORMAT.value,
  )
  print(
    f"wrote {counts['images']} drawn faces of {counts['identities']} identities "
    f"({_SIZE.value}x{_SIZE.value} {_FORMAT.value}) to {_OUTPUT.value}"
  )


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
