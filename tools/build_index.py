r"""Embeds a gallery with an exported model (or classical features) and saves a search index
(ScaNN by default, or faiss); or adds photos to / removes items from an existing index without
rebuilding it.

  facetriplet-build-index --model=runs/demo/export --gallery=data/gallery --index_dir=runs/index
  facetriplet-build-index --model=runs/demo/export --gallery=runs/tfrecords --index_dir=...
  facetriplet-build-index --features=hog --gallery=data/gallery --index_dir=runs/index_hog
  facetriplet-build-index --model=dlib_resnet --gallery=party.mp4 --index_dir=runs/party \
      --every=0.5                                     # every face of a frame each half second
  facetriplet-build-index --model=runs/demo/export --gallery=data/gallery --index_dir=runs/exact \
      --backend=faiss-flat                                             # exact search with faiss
  facetriplet-build-index --index_dir=runs/index --add=new_photos/     # enrol: only new photos
  facetriplet-build-index --index_dir=runs/index --remove=gone.txt     # ids or paths, one a line
  facetriplet-build-index --index_dir=runs/index --forget="Jane Doe"   # erase a person
  facetriplet-build-index --index_dir=runs/index --rebuild             # retrain the partitions
  facetriplet-build-index --model=runs/demo/export --gallery=data/gallery --index_dir=runs/index \
      --runner=DirectRunner -- --direct_num_workers=2 --direct_running_mode=multi_processing

The face crop is the one the model was trained with (the export's metadata). --faces=all (the
default for a flat folder of photos) indexes every face of each photo with its box; identity
folders and TFRecords index each photo's chosen face. A video (--gallery=clip.mp4) is indexed
as its frames sampled every --every seconds, every face of each, named '<video>@<seconds>s'
(matches carry their time). --forget erases every item of an identity
and their name and ids from every file of the index, its audit trail (audit.jsonl, which records
every --add, --remove and --forget) included. The logic lives in
`facetriplet.search.gallery.build_gallery_index` and `facetriplet.search.searcher.Searcher`.

With --runner the gallery is cropped and embedded by an Apache Beam pipeline (RunInference; extra
`beam`; Beam options after `--`) into embedding shards, and the index is built from them
(`facetriplet.search.beam_index`): the same items and embeddings as without it.
"""

import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from facetriplet import pipelines
from facetriplet.data import faces, layouts
from facetriplet.errors import UserError, run_tool
from facetriplet.search import backends, features, gallery, video
from facetriplet.search.searcher import Searcher

_GALLERY = flags.DEFINE_string(
  "gallery", None, "Gallery: a folder of images, a facetriplet TFRecord folder or a video file."
)
_EVERY = flags.DEFINE_float("every", 0.5, "With a video --gallery: seconds between sampled frames.")
_INDEX_DIR = flags.DEFINE_string("index_dir", None, "Output index folder (replaced whole).")
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Export folder written by facetriplet-export, or a pretrained network (dlib_resnet: dlib's "
  "face ResNet, exported once into the cache; extra 'pretrained').",
)
_FEATURES = flags.DEFINE_enum(
  "features",
  "embedding",
  list(features.FEATURES),
  "Features to index: the exported model, or a classical baseline.",
)
_LAYOUT = flags.DEFINE_enum(
  "layout",
  "auto",
  list(layouts.LAYOUT_CHOICES),
  "Layout of a gallery folder (auto: folders when it holds only sub-folders, else flat).",
)
_SPLITS = flags.DEFINE_list("splits", None, "TFRecord splits to index (default: all).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per embedding batch.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Loading threads; 0 = CPU count.")
_TARGET_RECALL = flags.DEFINE_float(
  "target_recall",
  0.95,
  "Wanted recall@10 relative to exact search (sets the backend's automatic search settings).",
)
_BACKEND = flags.DEFINE_enum(
  "backend",
  backends.DEFAULT,
  list(backends.NAMES),
  "Search backend of a new index: " + backends.help_text() + ".",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


_FACES = flags.DEFINE_enum(
  "faces",
  "auto",
  list(gallery.FACE_MODES),
  "Faces indexed per photo: all (every face, with its box), largest "
  "(the chosen one), auto (all for a flat folder, else largest).",
)
_MIN_FACE = flags.DEFINE_float(
  "min_face",
  faces.MIN_FACE_FRACTION,
  "With --faces=all: smallest face indexed, as a fraction of the photo's short side.",
)
_ADD = flags.DEFINE_string(
  "add",
  None,
  "Add the photos of this folder, image or list file to "
  "the existing --index_dir (photos already indexed are skipped).",
)
_REMOVE = flags.DEFINE_string(
  "remove",
  None,
  "Remove the items listed in this file (item ids or "
  "photo paths, one a line) from the existing --index_dir.",
)
_FORGET = flags.DEFINE_multi_string(
  "forget",
  None,
  "Erase every item of this identity from the existing --index_dir, and the name and its "
  "ids from the index's files and audit trail (repeat for several people).",
)
_REBUILD = flags.DEFINE_bool(
  "rebuild",
  False,
  "Retrain the existing index's search partitions (after it grew or shrank a lot).",
)


_RUNNER = flags.DEFINE_string(
  "runner",
  None,
  "Crop and embed the gallery as an Apache Beam pipeline on this runner "
  "(DirectRunner, PrismRunner, FlinkRunner, SparkRunner, DataflowRunner; needs the 'beam' "
  "extra), then index its embedding shards; Beam pipeline options follow '--'.",
)
_EMBEDDINGS_DIR = flags.DEFINE_string(
  "embeddings_dir",
  None,
  "With --runner: keep the embedding shards in this folder (empty, or "
  "one of an earlier run); default: a temporary folder beside --index_dir, removed after.",
)
_TRAIN_SAMPLE = flags.DEFINE_integer(
  "train_sample",
  250_000,
  "With --runner: a gallery larger than this has its partitions "
  "trained on a random sample of this many items, the rest added (ScaNN upsert).",
)


def _model():
  """--model: an export folder, or a pretrained network's name (its cached export)."""
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  return export.resolve_model(_MODEL.value)


def update(workers: int) -> None:
  """--add / --remove / --forget / --rebuild on an existing index, saved atomically once at the
  end."""
  if _GALLERY.value:
    raise UserError(
      "--gallery builds a new index; with --add/--remove/--forget/--rebuild pass only "
      "--index_dir=<existing index>"
    )
  # The inputs are read before the index and its model load (TensorFlow): a wrong path is
  # reported at once. --add is listed again by `Searcher.add`, a trifle beside embedding it.
  keys = []
  if _REMOVE.value:
    keys = [
      fields[0]
      for _, fields in layouts.read_list_file(
        _REMOVE.value, 1, "<item id or photo path>", "list one item id or photo path a line"
      )
    ]
  if _ADD.value:
    layouts.list_inputs(_ADD.value, _LAYOUT.value)
  searcher = Searcher.open(_INDEX_DIR.value, _model())
  before = len(searcher)
  if _REMOVE.value:
    print(f"removed {searcher.remove(keys)} item(s) listed in {_REMOVE.value}")
  for identity in _FORGET.value or []:
    print(f"forgot {identity!r}: {searcher.forget(identity)} item(s) erased")
  if _ADD.value:
    s = searcher.add(
      _ADD.value,
      _FACES.value,
      _MIN_FACE.value,
      _LAYOUT.value,
      batch_size=_BATCH_SIZE.value,
      workers=workers,
      progress=_PROGRESS.value,
    )
    print(
      f"added {s.added} item(s) from {_ADD.value} ({s.replaced} replaced, "
      f"{s.already_indexed} photo(s) already indexed, {len(s.problems)} problem(s))"
    )
    for p in s.problems:
      print(f"  {p.rel_path}: {p.reason}" + (" (kept, centred crop)" if p.kept else " (skipped)"))
  if _REBUILD.value:
    searcher.rebuild()
    print(f"rebuilt the search partitions for {len(searcher)} items: {searcher.index.config}")
  elif searcher.index.needs_rebuild:
    print(f"advice: {searcher.index.needs_rebuild}; run with --rebuild for full speed/recall")
  searcher.save()
  print(f"index {_INDEX_DIR.value}: {before} -> {len(searcher)} items (saved)")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1 and not _RUNNER.value:
    raise app.UsageError(
      f"unexpected arguments: {' '.join(argv[1:])} (Beam pipeline options need --runner)"
    )
  workers = _WORKERS.value or os.cpu_count() or 1
  if _ADD.value or _REMOVE.value or _FORGET.value or _REBUILD.value:
    if not _INDEX_DIR.value:
      raise UserError("--add/--remove/--forget/--rebuild need --index_dir=<existing index folder>")
    if _RUNNER.value:
      raise UserError(
        "--runner builds a new index from --gallery; --add/--remove/--forget/--rebuild "
        "change an existing one in this process: leave --runner out"
      )
    update(workers)
    return
  if not _GALLERY.value or not _INDEX_DIR.value:
    raise UserError("--gallery=<folder> and --index_dir=<output folder> are required")
  gallery.check_source(_GALLERY.value)  # before the model loads (TensorFlow)
  if _EVERY.value <= 0:
    raise UserError(f"--every={_EVERY.value}: the seconds between sampled frames must be > 0")
  if _RUNNER.value and video.is_video(_GALLERY.value):
    raise UserError("--runner indexes folders of photos or TFRecords; index a video without it")
  extractor = features.make_extractor(_FEATURES.value, _model(), source=_GALLERY.value)
  logging.info(
    "build_index: gallery=%s layout=%s features=%s model=%s fingerprint=%s crop=%s "
    "index_dir=%s batch_size=%d workers=%d target_recall=%s backend=%s runner=%s "
    "pipeline_args=%s embeddings_dir=%s train_sample=%d",
    _GALLERY.value,
    _LAYOUT.value,
    _FEATURES.value,
    _model(),
    extractor.fingerprint,
    extractor.crop_settings.to_dict(),
    _INDEX_DIR.value,
    _BATCH_SIZE.value,
    workers,
    _TARGET_RECALL.value,
    _BACKEND.value,
    _RUNNER.value,
    argv[1:],
    _EMBEDDINGS_DIR.value,
    _TRAIN_SAMPLE.value,
  )
  common = dict(
    layout=_LAYOUT.value,
    splits=_SPLITS.value,
    batch_size=_BATCH_SIZE.value,
    target_recall=_TARGET_RECALL.value,
    model_dir=_model(),
    faces_mode=_FACES.value,
    min_face=_MIN_FACE.value,
    backend=_BACKEND.value,
  )
  if _RUNNER.value:
    pipelines.require_beam()
    from facetriplet.search import beam_index  # pylint: disable=g-import-not-at-top

    s = beam_index.build_gallery_index_beam(
      extractor,
      _GALLERY.value,
      _INDEX_DIR.value,
      _RUNNER.value,
      argv[1:],
      embeddings_dir=_EMBEDDINGS_DIR.value,
      train_sample=_TRAIN_SAMPLE.value,
      **common,
    )
  else:
    s = gallery.build_gallery_index(
      extractor,
      _GALLERY.value,
      _INDEX_DIR.value,
      workers=workers,
      progress=_PROGRESS.value,
      every_s=_EVERY.value,
      **common,
    )
  print(
    f"index {s.index_dir}: {s.items} items, {len(s.skipped)} skipped, {len(s.no_face)} "
    f"without a detected face (fallback crop), dim {s.dim}, features {_FEATURES.value}\n"
    f"  {s.backend} {s.settings}\n  {s.images_per_second:.1f} images/s, {s.seconds:.1f} s"
  )
  for p in s.skipped:
    print(f"  skipped {p.rel_path}: {p.reason}" + (f" ({p.detail})" if p.detail else ""))


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
