"""Exports a trained embedding model, or a pretrained one, as a SavedModel with its metadata.

  facetriplet-export --workdir=runs/demo --export_dir=runs/demo/export        # best.keras
  facetriplet-export --workdir=runs/demo --which=last --export_dir=...
  facetriplet-export --checkpoint=runs/demo/checkpoints/best.keras --export_dir=...
  facetriplet-export --pretrained=dlib_resnet --export_dir=runs/dlib          # no training

--pretrained exports a network that comes with face weights of its own (dlib_resnet: dlib's face
ResNet, extra 'pretrained') with the crop it expects (its preset, e.g. dlib150); build-index,
retrieve, evaluate, search and serve then work on real photos at once.

The logic lives in `facetriplet.training.export.export_model`; signatures and metadata are
described there.
"""

from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from facetriplet.training import export
from facetriplet.errors import UserError, run_tool

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A .keras checkpoint (instead of --workdir).")
_PRETRAINED = flags.DEFINE_string(
  "pretrained",
  None,
  "A pretrained face network to export as it is (instead of --workdir): dlib_resnet.",
)
_DETECTOR = flags.DEFINE_string(
  "detector", None, "With --pretrained: the face detector of its crop (default: the preset's)."
)
_WHICH = flags.DEFINE_enum(
  "which",
  "best",
  list(export.WHICH),
  "Checkpoint of the workdir to export (best falls back to last).",
)
_FLIP = flags.DEFINE_enum(
  "flip",
  "config",
  ["config", "on", "off"],
  "Test-time flip: embed each image and its mirror and average. 'config' = the training "
  "config's model.test_time_flip.",
)
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Output SavedModel folder (replaced whole).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if sum(bool(v) for v in (_WORKDIR.value, _CHECKPOINT.value, _PRETRAINED.value)) != 1:
    raise UserError(
      "pass exactly one of --workdir=<training workdir>, --checkpoint=<file.keras> or "
      "--pretrained=<network> (dlib_resnet)"
    )
  if not _EXPORT_DIR.value:
    raise UserError("--export_dir is required: the folder to write the SavedModel to")
  source = _CHECKPOINT.value or _WORKDIR.value or _PRETRAINED.value
  logging.info("export: source=%s which=%s export_dir=%s", source, _WHICH.value, _EXPORT_DIR.value)
  flip = {"config": None, "on": True, "off": False}[_FLIP.value]
  if _PRETRAINED.value:  # 'config' = on: the pretrained network's own default
    s = export.export_pretrained(
      _PRETRAINED.value, _EXPORT_DIR.value, flip=flip is not False, detector=_DETECTOR.value
    )
  else:
    s = export.export_model(source, _EXPORT_DIR.value, which=_WHICH.value, flip=flip)
  print(
    f"exported {s.checkpoint} -> {s.export_dir}\n"
    f"  fingerprint {s.fingerprint}, embedding dim {s.embedding_dim}, input "
    f"{s.crop_size}x{s.crop_size} uint8\n"
    f"  signatures: {export.SIGNATURE_IMAGES} ({export.INPUT_IMAGES} uint8 [N,H,W,3]), "
    f"{export.SIGNATURE_BYTES} ({export.INPUT_BYTES} string [N]) -> {export.OUTPUT} float32 "
    f"[N,{s.embedding_dim}]\n  {s.seconds:.1f} s"
  )


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
