"""Embeds a gallery with an exported model (or classical features) and saves a ScaNN index.

  facetriplet-build-index --model=runs/demo/export --gallery=data/gallery --index_dir=runs/index
  facetriplet-build-index --model=runs/demo/export --gallery=runs/tfrecords --index_dir=...
  facetriplet-build-index --features=hog --gallery=data/gallery --index_dir=runs/index_hog

The face crop is the one the model was trained with (the export's metadata). The logic lives in
`facetriplet.search.gallery.build_gallery_index`.
"""

import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from facetriplet.data import layouts
from facetriplet.search import features, gallery
from facetriplet.errors import UserError, run_tool

_GALLERY = flags.DEFINE_string("gallery", None,
                               "Gallery: a folder of images or a facetriplet TFRecord folder.")
_INDEX_DIR = flags.DEFINE_string("index_dir", None, "Output index folder (replaced whole).")
_MODEL = flags.DEFINE_string("model", None, "Export folder written by facetriplet-export.")
_FEATURES = flags.DEFINE_enum("features", "embedding", list(features.FEATURES),
                              "Features to index: the exported model, or a classical baseline.")
_LAYOUT = flags.DEFINE_enum("layout", "auto", list(layouts.LAYOUT_CHOICES),
                            "Layout of a gallery folder (auto: folders when it holds only "
                            "sub-folders, else flat).")
_SPLITS = flags.DEFINE_list("splits", None, "TFRecord splits to index (default: all).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per embedding batch.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Loading threads; 0 = CPU count.")
_TARGET_RECALL = flags.DEFINE_float("target_recall", 0.95,
                                    "Wanted ScaNN recall@10 relative to exact search.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _GALLERY.value or not _INDEX_DIR.value:
    raise UserError("--gallery=<folder> and --index_dir=<output folder> are required")
  workers = _WORKERS.value or os.cpu_count() or 1
  extractor = features.make_extractor(_FEATURES.value, _MODEL.value, source=_GALLERY.value)
  logging.info("build_index: gallery=%s layout=%s features=%s model=%s fingerprint=%s crop=%s "
               "index_dir=%s batch_size=%d workers=%d target_recall=%s", _GALLERY.value,
               _LAYOUT.value, _FEATURES.value, _MODEL.value, extractor.fingerprint,
               extractor.crop_settings.to_dict(), _INDEX_DIR.value, _BATCH_SIZE.value, workers,
               _TARGET_RECALL.value)
  s = gallery.build_gallery_index(
      extractor, _GALLERY.value, _INDEX_DIR.value, layout=_LAYOUT.value, splits=_SPLITS.value,
      batch_size=_BATCH_SIZE.value, workers=workers, progress=_PROGRESS.value,
      target_recall=_TARGET_RECALL.value, model_dir=_MODEL.value)
  print(f"index {s.index_dir}: {s.items} items, {len(s.skipped)} skipped, {len(s.no_face)} "
        f"without a detected face (fallback crop), dim {s.dim}, features {_FEATURES.value}\n"
        f"  ScaNN {s.scann}\n  {s.images_per_second:.1f} images/s, {s.seconds:.1f} s")
  for p in s.skipped:
    print(f"  skipped {p.rel_path}: {p.reason}" + (f" ({p.detail})" if p.detail else ""))


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
