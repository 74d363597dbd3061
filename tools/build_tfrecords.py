r"""Builds TFRecord shards of face crops and a manifest from a folder of photos.

The logic lives in `facetriplet.data.ingest` (and `faces`, `layouts`, `shard_plan`); this is a thin
absl main. Example (3,179 LFW photos; about 2 minutes on 2 shared, busy cores):

  facetriplet-build-tfrecords --layout=folders --input=../shared/data/lfw_2to4 \
      --output=/tmp/lfw_tfr

Aligned crops (MTCNN landmarks; the named LFW person is the centred face):

  facetriplet-build-tfrecords --input=../shared/data/lfw_2to4 --output=/tmp/lfw_mtcnn \
      --detector=mtcnn --pick=center

A killed run resumes: re-run the same command and only missing shards are written.

As an Apache Beam pipeline (extra `beam`; same shards and manifest, decoding spread over the
runner's workers; Beam options after `--`):

  facetriplet-build-tfrecords --input=../shared/data/lfw_2to4 --output=/tmp/lfw_beam \
      --runner=DirectRunner -- --direct_num_workers=2 --direct_running_mode=multi_processing
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from facetriplet import pipelines
from facetriplet.data import detectors, faces, ingest, layouts
from facetriplet.errors import UserError, run_tool

_LAYOUT = flags.DEFINE_enum(
  "layout",
  "folders",
  list(layouts.LAYOUTS),
  "How identities are given: 'folders' = one sub-folder per identity (LFW, VGGFace2, "
  "CASIA-WebFace, ORL); 'celeba' = image folder + identity_CelebA.txt (and optional "
  "list_eval_partition.txt → train/val/test); 'flat' = unlabelled images (query/gallery), "
  "split 'all', label -1.",
)
_INPUT = flags.DEFINE_string("input", None, "Input folder of photos.")
_OUTPUT = flags.DEFINE_string(
  "output",
  None,
  "Output folder for the shards and manifest.json: empty or new, or the folder "
  "of an earlier run with the same inputs and settings (it is resumed).",
)
_DETECTOR = flags.DEFINE_enum(
  "detector", detectors.DEFAULT, list(detectors.NAMES), detectors.help_text() + "."
)
_PICK = flags.DEFINE_enum(
  "pick",
  "largest",
  list(faces.PICKS),
  "Which face of a photo with several: 'largest', or 'center' (nearest the photo's centre "
  "among faces at least 1/4 the largest's area; for centred sets such as LFW).",
)
_MARGIN = flags.DEFINE_float(
  "margin",
  0.2,
  "Detectors with boxes only (haar): fraction of the detected face box added on every side "
  "before squaring.",
)
_TEMPLATE = flags.DEFINE_enum(
  "template",
  "arcface112",
  list(faces.TEMPLATES),
  "Detectors with landmarks: five-point alignment template.",
)
_ALIGN_MARGIN = flags.DEFINE_float(
  "align_margin",
  0.0,
  "Detectors with landmarks: zoom-out of the aligned crop (0 = the template as is, 0.1 = "
  "face shrunk by 1/1.2 around the centre).",
)
_CROP_PRESET = flags.DEFINE_enum(
  "crop_preset",
  None,
  list(faces.PRESETS),
  "Named crop settings (template, crop size, margin, fit): 'dlib150' = the 150-px chip of dlib's "
  "face ResNet (--model=dlib_resnet, configs/celeba.py); flags given beside it override it.",
)
_CROP_SIZE = flags.DEFINE_integer(
  "crop_size",
  128,
  "Side in pixels of the square face crop stored in the records (--size is the same flag).",
)
flags.DEFINE_alias("size", "crop_size")
_ON_NO_FACE = flags.DEFINE_enum(
  "on_no_face",
  "center",
  list(faces.ON_NO_FACE),
  "When no face is detected: 'center' keeps the centred square crop and marks face/found=0; "
  "'skip' leaves the photo out (listed in the manifest as rejected, reason no-face).",
)
_TRY_TURNED = flags.DEFINE_bool(
  "try_turned",
  True,
  "Where no face is found upright, look for it in the photo turned by 90 degrees either way "
  "and upside down (people lying down, sideways scans) and crop it upright; the manifest lists "
  "those photos under 'turned'. A photo with no face at all then costs about 3x the detection "
  "time: --notry_turned keeps to upright faces (as folders built before this flag did).",
)
_VAL_FRACTION = flags.DEFINE_float(
  "val_fraction",
  0.2,
  "Fraction of identities (not photos) held out as split 'val'; 0 = none. "
  "Ignored for CelebA when a partition file is used.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the train/val identity split.")
_NUM_SHARDS = flags.DEFINE_integer(
  "num_shards", 0, "Shards per split (capped at its identity count); 0 = about one per 1500 photos."
)
_WORKERS = flags.DEFINE_integer("workers", 0, "Decoding processes; 0 = all available cores.")
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Replace the shards and manifest of a different earlier run in --output."
)
_IDENTITY_FILE = flags.DEFINE_string(
  "identity_file",
  "",
  "celeba: path of identity_CelebA.txt; empty = look in --input, its "
  "parent, and the Anno/ folder beside it.",
)
_PARTITION_FILE = flags.DEFINE_string(
  "partition_file",
  "",
  "celeba: path of list_eval_partition.txt; empty = look next to the "
  "identity file's usual places, and split by --val_fraction when absent.",
)
_MAX_MEGAPIXELS = flags.DEFINE_float(
  "max_megapixels",
  faces.MAX_PIXELS / 1e6,
  "Photos larger than this (read from the header) are rejected as too-large, never decoded.",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_RUNNER = flags.DEFINE_string(
  "runner",
  None,
  "Run the decoding and shard writing as an Apache Beam pipeline on this runner "
  "(DirectRunner, PrismRunner, FlinkRunner, SparkRunner, DataflowRunner; needs the 'beam' "
  "extra); Beam pipeline options follow '--'. --workers and --progress do not apply.",
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1 and not _RUNNER.value:
    raise app.UsageError(
      f"unexpected arguments: {' '.join(argv[1:])} (Beam pipeline options need --runner)"
    )
  if not _INPUT.value:
    raise UserError("--input is required: the folder of photos")
  if not _OUTPUT.value:
    raise UserError("--output is required: an empty folder for the shards")
  if not os.path.isdir(_INPUT.value):  # Checked here too so the error is the only stderr line.
    raise UserError(f"input folder {_INPUT.value} does not exist: pass --input=<folder of images>")
  chosen = {
    "detector": _DETECTOR,
    "margin": _MARGIN,
    "crop_size": _CROP_SIZE,
    "on_no_face": _ON_NO_FACE,
    "pick": _PICK,
    "template": _TEMPLATE,
    "align_margin": _ALIGN_MARGIN,
    "try_turned": _TRY_TURNED,
  }
  if _CROP_PRESET.value:  # the preset's fields, then the flags given on the command line
    given = {k: f.value for k, f in chosen.items() if flags.FLAGS[f.name].present}
    crop = faces.CropSettings.preset(_CROP_PRESET.value, **given)
  else:
    crop = faces.CropSettings(**{k: f.value for k, f in chosen.items()})
  logging.info(
    "layout=%s input=%s output=%s crop=%s val_fraction=%s seed=%d num_shards=%d "
    "workers=%d overwrite=%s max_megapixels=%s runner=%s pipeline_args=%s",
    _LAYOUT.value,
    _INPUT.value,
    _OUTPUT.value,
    crop.to_dict(),
    _VAL_FRACTION.value,
    _SEED.value,
    _NUM_SHARDS.value,
    _WORKERS.value,
    _OVERWRITE.value,
    _MAX_MEGAPIXELS.value,
    _RUNNER.value,
    argv[1:],
  )
  common = dict(
    layout=_LAYOUT.value,
    crop=crop,
    val_fraction=_VAL_FRACTION.value,
    seed=_SEED.value,
    num_shards=_NUM_SHARDS.value,
    overwrite=_OVERWRITE.value,
    identity_file=_IDENTITY_FILE.value or None,
    partition_file=_PARTITION_FILE.value or None,
    max_pixels=int(_MAX_MEGAPIXELS.value * 1e6),
  )
  if _RUNNER.value:
    pipelines.require_beam()
    from facetriplet.data import beam_ingest  # pylint: disable=g-import-not-at-top

    summary = beam_ingest.build_tfrecords_beam(
      _INPUT.value, _OUTPUT.value, _RUNNER.value, argv[1:], **common
    )
  else:
    summary = ingest.build_tfrecords(
      _INPUT.value, _OUTPUT.value, workers=_WORKERS.value, progress=_PROGRESS.value, **common
    )
  print(summary.format())
  if summary.written == 0:
    raise UserError(
      f"no image of {_INPUT.value} was written ({summary.rejected} rejected: "
      f"{summary.rejected_by_reason}); the reasons per file are in "
      f"{os.path.join(_OUTPUT.value, 'manifest.json')}"
    )


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
