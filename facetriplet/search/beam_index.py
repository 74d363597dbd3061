"""Gallery embedding as an Apache Beam pipeline (RunInference), and the gallery index built from the
embedding shards it writes: `gallery.build_gallery_index` spread over a Beam runner's workers.

The driver (the tool's process) lists the gallery as the local path does (`layouts.list_images`,
or the shards of a TFRecord folder) and writes the work as JSON lines (`tasks.jsonl`) into the
embeddings folder. The pipeline:

  read the tasks -> reshuffle -> load + crop each photo (`embedding.crop_entry`, one
  `FaceCropper` per worker) or read + decode each TFRecord shard (`tfrecords.decode_image`,
  `embedding.record_crop`) -> RunInference with `ExtractorHandler` (the export's
  `serving_default` signature through `export.Embedder`, or a classical extractor; batches of
  `batch_size`) -> group by embedding shard -> write `embeddings-NNNNN-of-MMMMM.npz` (atomic):
  `keys` int64 [n, 3] (gallery order), `embeddings` float32 [n, D], `items` (the index items,
  `items.Item.of_face`, as JSON) and `problems` (skipped / no-face photos, as JSON).

Then `sharded_index.index_from_shards` reads the shards back in gallery order and builds the index
with the very items, embeddings and gallery.json of the local path. Up to `train_sample` items
(250,000, ScaNN's own training-sample cap) it is one `GalleryIndex.build`, the same index as the
local path's. Above it, the scale-out shape: the backend's settings are chosen for the whole gallery
(ScaNN: about sqrt(n) leaves) but its structure is built from a random sample of `train_sample`
items, and the other items are added slice by slice (`GalleryIndex.add`, an upsert), so partition
training never holds more than the sample. Rows then come sample first; ids, items and scores are
the same. `index.json` records `trained_on` (the gallery size the settings were chosen for) and
`training_sample`.

Why not `apache_beam.ml.inference.tensorflow_inference.TFModelHandlerTensor`: it imports
`tensorflow_hub` (which pulls in `tf-keras`, Keras 2) and loads with `tf.keras.models.load_model`,
which Keras 3 refuses for a SavedModel folder. `ExtractorHandler` loads the export with
`export.load_embedder`, which also checks its fingerprint.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference import base as inference
import numpy as np

from facetriplet import atomic, pipelines
from facetriplet.data import faces, layouts, tfrecords
from facetriplet.errors import UserError
from facetriplet.search import backends, embedding, features, gallery
from facetriplet.search.items import Item
from facetriplet.search.sharded_index import (
  EMBEDDINGS_FILE,
  TRAIN_SAMPLE,
  index_from_shards,
  shard_name,
)

SHARD_ROWS = 10_000  # photos per embedding shard (folder galleries; TFRecords: one per shard)
TASKS_FILE = "tasks.jsonl"
_OURS = re.compile(
  r"^(embeddings-\d{5}-of-\d{5}\.npz|embeddings\.json|tasks\.jsonl|"
  r"\..+\.tmp-\d+(\.old)?)$"
)
_ROWS, _PROBLEMS = "rows", "problems"


def build_gallery_index_beam(
  extractor,
  gallery_dir: str,
  index_dir: str,
  runner: str,
  pipeline_args: Sequence[str] = (),
  layout: str = "auto",
  splits: Optional[Sequence[str]] = None,
  batch_size: int = 64,
  target_recall: float = 0.95,
  model_dir: Optional[str] = None,
  faces_mode: str = "auto",
  min_face: float = faces.MIN_FACE_FRACTION,
  embeddings_dir: Optional[str] = None,
  shard_rows: int = SHARD_ROWS,
  train_sample: int = TRAIN_SAMPLE,
  backend: str = backends.DEFAULT,
  **settings: Any,
) -> gallery.GallerySummary:
  """`gallery.build_gallery_index` with the cropping and embedding run on Beam.

  Args:
    extractor, gallery_dir, index_dir, layout, splits, batch_size, target_recall, model_dir,
      faces_mode, min_face, backend, settings: as for `gallery.build_gallery_index`.
    runner: Beam runner name (`DirectRunner`, `PrismRunner`, `FlinkRunner`, ...).
    pipeline_args: further Beam pipeline options.
    embeddings_dir: where the embedding shards are written and kept (empty or missing, or one
      written by an earlier run, which is replaced); None = a temporary folder beside the index,
      removed afterwards.
    shard_rows: photos per embedding shard for a folder gallery.
    train_sample: most items the partitions are trained on; the rest are added (upsert).

  Raises:
    UserError: as `build_gallery_index`, plus a missing Beam, a bad runner or option, or a
      foreign embeddings folder.
  """
  start = time.time()
  pipelines.pipeline_options(runner, pipeline_args)
  gallery.check_source(gallery_dir)
  if shard_rows < 1 or train_sample < 1:
    raise UserError(f"shard_rows={shard_rows} and train_sample={train_sample} must be >= 1")
  faces_mode = gallery.resolve_faces(faces_mode, gallery_dir, layout)
  staging = embeddings_dir
  if not staging:
    parent = os.path.dirname(os.path.abspath(index_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(index_dir)}.embeddings-")
  try:
    embed_to_shards(
      extractor,
      gallery_dir,
      staging,
      runner,
      pipeline_args,
      layout,
      splits,
      batch_size,
      faces_mode,
      min_face,
      model_dir,
      shard_rows,
    )
    return index_from_shards(
      staging,
      index_dir,
      extractor,
      gallery_dir,
      layout,
      faces_mode,
      min_face,
      model_dir,
      target_recall,
      train_sample,
      start,
      backend,
      **settings,
    )
  finally:
    if not embeddings_dir:
      atomic.remove(staging)


def embed_to_shards(
  extractor,
  gallery_dir: str,
  out_dir: str,
  runner: str,
  pipeline_args: Sequence[str],
  layout: str,
  splits: Optional[Sequence[str]],
  batch_size: int,
  faces_mode: str,
  min_face: float,
  model_dir: Optional[str],
  shard_rows: int = SHARD_ROWS,
) -> list[str]:
  """Runs the pipeline; writes the embedding shards and `embeddings.json` into `out_dir`.
  Returns the shard file names."""
  _prepare(out_dir)
  tasks, num_shards, on_no_face = _tasks(
    extractor, gallery_dir, layout, splits, faces_mode, shard_rows
  )
  path = os.path.join(out_dir, TASKS_FILE)
  pipelines.write_tasks(path, tasks)
  crop = extractor.crop_settings.to_dict()
  handler = inference.KeyedModelHandler(
    ExtractorHandler(
      getattr(extractor, "name", "embedding"), model_dir, crop, extractor.fingerprint, batch_size
    )
  )
  dim = int(extractor.dim)
  out = os.path.abspath(out_dir)

  def pipeline(p):
    crops = pipelines.read_tasks(p, path) | "Crop" >> beam.ParDo(
      CropFn(crop, faces_mode, min_face, on_no_face)
    ).with_outputs(_PROBLEMS, main=_ROWS)
    rows = (
      crops[_ROWS]
      | "Embed" >> inference.RunInference(handler)
      | "Row"
      >> beam.Map(
        lambda kv: (kv[0][0], ("row", kv[0][1], kv[0][2], np.asarray(kv[1].inference, np.float32)))
      )
    )
    _ = (
      (rows, crops[_PROBLEMS])
      | "Flatten" >> beam.Flatten()
      | "ByShard" >> beam.GroupByKey()
      | "WriteShard" >> beam.ParDo(WriteShardFn(out, num_shards, dim))
    )

  pipelines.run(pipeline, runner, pipeline_args)
  os.remove(path)
  names = [shard_name(i, num_shards) for i in range(num_shards)]
  missing = [n for n in names if not os.path.isfile(os.path.join(out_dir, n))]
  if missing:
    raise RuntimeError(f"the pipeline finished without writing {missing[:3]} in {out_dir}")
  atomic.write_json(
    os.path.join(out_dir, EMBEDDINGS_FILE),
    {
      "fingerprint": extractor.fingerprint,
      "dim": dim,
      "crop": crop,
      "faces": faces_mode,
      "gallery": os.path.abspath(gallery_dir),
      "shards": names,
    },
  )
  return names


def _prepare(out_dir: str) -> None:
  """An empty embeddings folder: refuses foreign files, removes an earlier run's."""
  for name in atomic.claim_folder(
    out_dir, _OURS.match, "embeddings folder", "facetriplet-build-index"
  ):
    atomic.remove(os.path.join(out_dir, name))


def _tasks(
  extractor,
  gallery_dir: str,
  layout: str,
  splits: Optional[Sequence[str]],
  faces_mode: str,
  shard_rows: int,
) -> tuple[list[dict[str, Any]], int, str]:
  """(tasks, embedding shard count, on_no_face): one task per TFRecord shard (its own embedding
  shard) or per photo (`shard_rows` photos per embedding shard), in gallery order."""
  if tfrecords.is_shard_folder(gallery_dir):
    shard_set, splits = gallery.open_records(gallery_dir, extractor, splits)
    files = [(split, path) for split in splits for path in shard_set.shards(split)]
    tasks = [
      {
        "kind": "records",
        "shard": k,
        "path": os.path.abspath(path),
        "split": split,
        "root": shard_set.input_root,
        "crop_size": shard_set.crop_size,
      }
      for k, (split, path) in enumerate(files)
    ]
    return tasks, len(tasks), "center"  # as gallery.embed_gallery embeds records
  entries = layouts.list_images(gallery_dir, layouts.resolve_layout(gallery_dir, layout))
  if not entries:
    raise UserError(
      f"no usable image in gallery {gallery_dir} (0 skipped): check the folder and --layout"
    )
  tasks = [
    {"kind": "photo", "shard": i // shard_rows, "row": i, "entry": list(e)}
    for i, e in enumerate(entries)
  ]
  return tasks, math.ceil(len(entries) / shard_rows), extractor.crop_settings.on_no_face


class CropFn(beam.DoFn):
  """A task's crops: (shard, key, item JSON) -> image rows for RunInference, and per shard
  problems and one marker (so a shard with nothing kept is still written)."""

  def __init__(self, crop: dict[str, Any], faces_mode: str, min_face: float, on_no_face: str):
    super().__init__()
    self._crop, self._faces_mode, self._min_face = crop, faces_mode, min_face
    self._on_no_face = on_no_face
    self._cropper = None

  def process(self, task):
    shard = task["shard"]
    yield beam.pvalue.TaggedOutput(_PROBLEMS, (shard, ("task",)))
    for order, entry, result in self._results(task):
      rows = embedding.entry_rows(entry, result, self._on_no_face, with_faces=True)
      for face, (row, image, problem) in enumerate(rows):
        key = (*order, face)
        if problem is not None:
          yield beam.pvalue.TaggedOutput(_PROBLEMS, (shard, ("problem", key, problem.to_dict())))
        if row is not None:
          item = json.dumps(Item.of_face(row, self._faces_mode == "all").to_json(), sort_keys=True)
          yield (shard, key, item), image

  def _results(self, task) -> Iterator[tuple[tuple[int, int], Any, Any]]:
    if task["kind"] == "photo":
      if self._cropper is None:  # not in setup: a TFRecord gallery needs no detector
        self._cropper = faces.FaceCropper(faces.CropSettings.from_dict(self._crop))
      entry = layouts.ImageEntry(*task["entry"])
      yield (
        (task["row"], 0),
        entry,
        embedding.crop_entry(self._cropper, entry, self._faces_mode, self._min_face),
      )
      return
    size = faces.crop_size_of(self._crop)
    for i, rec in enumerate(tfrecords.read_records([task["path"]])):
      rgb = tfrecords.decode_image(rec.pop("image"), task["crop_size"]).numpy()
      entry, crop = embedding.record_crop(task["root"], dict(rec, split=task["split"]), rgb, size)
      yield (task["shard"], i), entry, crop


class ExtractorHandler(inference.ModelHandler):
  """RunInference's model: the export (`export.Embedder`: the SavedModel's `serving_default`,
  uint8 [N, S, S, 3] -> `embeddings`) or a classical extractor, as `features.make_extractor`
  makes it, checked against the driver's fingerprint."""

  def __init__(
    self,
    name: str,
    model_dir: Optional[str],
    crop: dict[str, Any],
    fingerprint: str,
    batch_size: int = 64,
  ):
    super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
    self._name, self._model_dir, self._crop = name, model_dir, crop
    self._fingerprint = fingerprint

  def load_model(self):
    extractor = features.make_extractor(self._name, self._model_dir, self._crop)
    if extractor.fingerprint != self._fingerprint:
      raise UserError(
        f"the workers' {self._name} extractor has fingerprint "
        f"{extractor.fingerprint}, the driver's {self._fingerprint}: give the "
        "workers the same export"
      )
    return extractor

  def run_inference(self, batch, model, inference_args=None):
    vectors = np.asarray(model.embed(np.stack(batch)), np.float32)
    return [inference.PredictionResult(None, v) for v in vectors]

  def get_num_bytes(self, batch) -> int:
    return sum(int(x.nbytes) for x in batch)

  def get_metrics_namespace(self) -> str:
    return "facetriplet_embed"


class WriteShardFn(beam.DoFn):
  """Writes one embedding shard (rows and problems in gallery order) atomically."""

  def __init__(self, out_dir: str, num_shards: int, dim: int):
    super().__init__()
    self._out_dir, self._num_shards, self._dim = out_dir, num_shards, dim

  def process(self, element):
    shard, values = element
    rows = sorted((v for v in values if v[0] == "row"), key=lambda v: tuple(v[1]))
    problems = sorted((v for v in values if v[0] == "problem"), key=lambda v: tuple(v[1]))
    path = os.path.join(self._out_dir, shard_name(shard, self._num_shards))
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
      np.savez(
        f,
        keys=np.array([v[1] for v in rows], np.int64).reshape(-1, 3),
        embeddings=(
          np.stack([v[3] for v in rows]) if rows else np.zeros((0, self._dim), np.float32)
        ),
        items=np.array([v[2] for v in rows], np.str_),
        problems=np.array([json.dumps([list(v[1]), v[2]]) for v in problems], np.str_),
      )
    yield shard, len(rows)
