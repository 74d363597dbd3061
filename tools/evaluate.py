r"""Scores retrieval on labelled photos: top-1/5/10 accuracy, precision@k, recall@k, MAP@R; and
verification (same person or not, by cosine >= threshold): TAR at FAR 1e-1/1e-2/1e-3, EER, and the
threshold for the false accept rate --far.

  facetriplet-evaluate --model=runs/demo/export --queries=data/query --gallery=data/gallery \
      --output=runs/eval
  facetriplet-evaluate --index=runs/index --queries=data/query --output=runs/eval
  facetriplet-evaluate --model=runs/demo/export --leave_one_out --data=data/faces \
      --features=embedding,pixels,color_hist,lbp,hog --output=runs/eval     # comparison table
  facetriplet-evaluate --model=runs/lfw/export --leave_one_out --data=runs/lfw_tfrecords \
      --splits=val --far=0.001 --output=runs/eval_val     # people never seen in training

Identities come from identity folders, TFRecords, or --labels ("<file> <identity>" lines).
Writes metrics.json (retrieval under `results`, verification under `verification`, per feature),
metrics.md and grid.png (first --grid_queries queries) into --output.
The logic lives in `facetriplet.evaluation.evaluate`.
"""

import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from facetriplet.evaluation import evaluation
from facetriplet.evaluation import report as report_lib
from facetriplet.data import layouts
from facetriplet.search import features as features_lib
from facetriplet.errors import UserError, run_tool

_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Export folder written by facetriplet-export, or a pretrained network (dlib_resnet: dlib's "
  "face ResNet, exported once into the cache; extra 'pretrained').",
)
_FEATURES = flags.DEFINE_list(
  "features",
  None,
  "Comma-separated features to compare: embedding, pixels, "
  "color_hist, lbp, hog (default: embedding, or the index's).",
)
_QUERIES = flags.DEFINE_string("queries", None, "Query folder, TFRecord folder or list file.")
_GALLERY = flags.DEFINE_string("gallery", None, "Gallery folder or TFRecord folder.")
_INDEX = flags.DEFINE_string("index", None, "Index folder (instead of --gallery).")
_LEAVE_ONE_OUT = flags.DEFINE_bool(
  "leave_one_out", False, "Every photo of --data queries all the others."
)
_DATA = flags.DEFINE_string("data", None, "Labelled set for --leave_one_out.")
_LABELS = flags.DEFINE_string("labels", None, "File of '<file name> <identity>' lines.")
_LAYOUT = flags.DEFINE_enum(
  "layout", "auto", list(layouts.LAYOUT_CHOICES), "Layout of the folders."
)
_KS = flags.DEFINE_list("ks", ["1", "5", "10"], "Cut-offs k for top-k, precision@k, recall@k.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for metrics.json, metrics.md, grid.png.")
_GRID_QUERIES = flags.DEFINE_integer("grid_queries", 8, "Queries shown in grid.png (0: none).")
_GRID_K = flags.DEFINE_integer("grid_k", 10, "Results per query in grid.png.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per embedding batch.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Loading threads; 0 = CPU count.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_SPLITS = flags.DEFINE_list(
  "splits",
  None,
  "TFRecord splits to embed where a set is a TFRecord "
  "folder (default: all), e.g. --splits=val for the held-out people.",
)
_FAR = flags.DEFINE_float(
  "far",
  0.01,
  "False accept rate whose verification threshold is "
  "reported (threshold_at_far), e.g. 0.01 or 0.001.",
)


def _model():
  """--model: an export folder, or a pretrained network's name (its cached export)."""
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  return export.resolve_model(_MODEL.value)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _OUTPUT.value:
    raise UserError("--output=<folder> is required (metrics.json, metrics.md, grid.png go there)")
  try:
    ks = [int(k) for k in _KS.value]
  except ValueError:
    raise UserError(f"--ks={','.join(_KS.value)} must be integers, e.g. --ks=1,5,10") from None
  features = [f.strip() for f in _FEATURES.value or [] if f.strip()]
  if not features and not _INDEX.value:
    features = ["embedding"]
  for f in features:
    if f not in features_lib.FEATURES:
      raise UserError(f"--features: {f!r} is not one of {', '.join(features_lib.FEATURES)}")
  logging.info(
    "evaluate: features=%s model=%s queries=%s gallery=%s index=%s leave_one_out=%s "
    "data=%s labels=%s layout=%s ks=%s output=%s grid_queries=%d far=%g",
    features,
    _model(),
    _QUERIES.value,
    _GALLERY.value,
    _INDEX.value,
    _LEAVE_ONE_OUT.value,
    _DATA.value,
    _LABELS.value,
    _LAYOUT.value,
    ks,
    _OUTPUT.value,
    _GRID_QUERIES.value,
    _FAR.value,
  )
  report = evaluation.evaluate(
    features,
    _OUTPUT.value,
    model_dir=_model(),
    queries=_QUERIES.value,
    gallery_dir=_GALLERY.value,
    index_dir=_INDEX.value,
    data=_DATA.value,
    leave_one_out=_LEAVE_ONE_OUT.value,
    labels_file=_LABELS.value,
    layout=_LAYOUT.value,
    ks=ks,
    grid_queries=_GRID_QUERIES.value,
    grid_k=_GRID_K.value,
    batch_size=_BATCH_SIZE.value,
    workers=_WORKERS.value or os.cpu_count() or 1,
    progress=_PROGRESS.value,
    far=_FAR.value,
    splits=_SPLITS.value,
  )
  print(report_lib.markdown_table(report["results"]), end="")
  print("\nverification (" + report["setup"]["verification_pairs"] + "):")
  print(report_lib.verification_markdown(report["verification"], _FAR.value), end="")
  skipped = sum(1 for ps in report["problems"].values() for p in ps if not p["kept"])
  print(
    f"{report['setup']['mode']} evaluation; {skipped} unreadable file(s) skipped; wrote "
    f"metrics.json, metrics.md"
    + (", grid.png" if _GRID_QUERIES.value > 0 else "")
    + f" to {_OUTPUT.value}"
  )


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
