"""Ingest as an Apache Beam pipeline: the same listing, plan, crops, shards and manifest as
`ingest.build_tfrecords`, with decoding and face detection spread over a Beam runner's workers.

The driver (the tool's process) lists the input and plans the shards exactly as the local path
does (`ingest.plan_build`: `layouts`, `shard_plan`, plan.json, resume of complete shards), and
writes the photos of the shards still to do as chunks, one JSON line each, to
`<output>/.facetriplet_build/tasks.jsonl`. The pipeline then:

  read the chunks -> reshuffle -> decode + detect + crop each chunk (`crop_workers.crop_chunk`,
  one `FaceCropper` per worker from `DoFn.setup`) -> group by planned shard -> write each shard in
  plan order (`ingest.write_planned_shard`: `tfrecords.write_shard`, atomic, plus its result file)

and the driver writes the manifest from the result files (`ingest.finish_build`). Chunks are the
local path's (`batches.chunks` of the detector's batch_size photos; MTCNN boxes depend on which
photos share a call, else one), and photos over `crop_workers.LARGE_PIXELS` are cropped alone as
the local pool does, so a Beam run writes byte-identical shards and the same manifest as a local
run of the same input and settings, and either resumes the other's folder. A bundle the runner
retries rewrites the same bytes (each shard and result file is replaced atomically).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Iterator, Sequence

import apache_beam as beam

from facetriplet import pipelines
from facetriplet.batches import chunks
from facetriplet.data import crop_workers, detectors, faces, ingest, layouts, shard_plan

TASKS_FILE = "tasks.jsonl"
# One large photo at a time per worker process (the local pool's gate spans all its workers).
_LARGE_GATE = threading.Lock()


def build_tfrecords_beam(
  input_dir: str,
  output_dir: str,
  runner: str,
  pipeline_args: Sequence[str] = (),
  layout: str = "folders",
  crop: faces.CropSettings = faces.CropSettings(),
  val_fraction: float = 0.2,
  seed: int = 0,
  num_shards: int = 0,
  overwrite: bool = False,
  identity_file: str | None = None,
  partition_file: str | None = None,
  max_pixels: int = faces.MAX_PIXELS,
) -> ingest.IngestSummary:
  """`ingest.build_tfrecords` with the decoding, cropping and shard writing run on Beam.

  Args:
    input_dir, output_dir, layout, crop, val_fraction, seed, num_shards, overwrite,
      identity_file, partition_file, max_pixels: as for `ingest.build_tfrecords`.
    runner: Beam runner name (`DirectRunner`, `PrismRunner`, `FlinkRunner`, ...).
    pipeline_args: further Beam pipeline options (`--direct_num_workers=2`, ...).

  Returns:
    IngestSummary (its `engine` is the runner).

  Raises:
    UserError: as `build_tfrecords`, plus a missing Beam or a bad runner or option.
  """
  pipelines.pipeline_options(runner, pipeline_args)  # refuse bad options before any work
  build = ingest.plan_build(
    input_dir,
    output_dir,
    layout,
    crop,
    val_fraction,
    seed,
    num_shards,
    overwrite,
    identity_file,
    partition_file,
    max_pixels,
  )
  if build.todo:
    tasks = os.path.join(output_dir, ingest.STATE_DIR, TASKS_FILE)
    count = pipelines.write_tasks(tasks, task_chunks(build.todo, crop))

    def pipeline(p):
      _ = (
        pipelines.read_tasks(p, tasks)
        | "Crop" >> beam.ParDo(CropChunkFn(crop.to_dict(), max_pixels))
        | "ByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.ParDo(WriteShardFn(os.path.abspath(output_dir)))
      )

    pipelines.run(pipeline, runner, pipeline_args)
    os.remove(tasks)
    missing = [s.file for s in build.todo if not _complete(output_dir, s)]
    if missing:
      raise RuntimeError(f"the pipeline ({count} chunks) finished without writing {missing}")
  decoded = sum(_decoded(output_dir, s) for s in build.todo)
  return ingest.finish_build(build, decoded, workers=0, engine=runner)


def task_chunks(
  shards: Sequence[shard_plan.PlannedShard], crop: faces.CropSettings
) -> Iterator[list[list[Any]]]:
  """The photos of `shards` in the local path's chunks, each photo as a JSON-able list
  [file, split, position, size of its shard, absolute path, rel_path, identity, partition, label,
  identity name] (only the absolute path differs from the plan's entry: workers may run
  elsewhere, and the records hold rel_path only)."""
  tasks = [
    [
      s.file,
      s.split,
      i,
      len(s.items),
      os.path.abspath(e.path),
      e.rel_path,
      e.identity,
      e.partition,
      label,
      name,
    ]
    for s in shards
    for i, (e, label, name) in enumerate(s.items)
  ]
  for chunk in chunks(tasks, crop_workers.chunk_size(crop)):
    yield list(chunk)


class CropChunkFn(beam.DoFn):
  """Decodes, detects and crops one chunk of photos; emits (shard file, (task, result))."""

  def __init__(self, crop: dict[str, Any], max_pixels: int):
    super().__init__()
    self._crop = crop
    self._max_pixels = max_pixels
    self._cropper = None
    self._gate = None

  def setup(self):
    # One thread for OpenCV and TensorFlow, as in the local pool's workers, in an SDK worker
    # process and in the driver (DirectRunner runs setup there): MTCNN's numbers depend on
    # TensorFlow's thread count, and a crop must not depend on its engine. (In a driver that
    # already ran TensorFlow its threads cannot change any more; limit_threads keeps them.)
    detectors.limit_threads(self._crop["detector"])
    self._cropper = faces.FaceCropper(faces.CropSettings.from_dict(self._crop))
    self._gate = _LARGE_GATE

  def process(self, chunk):
    results = crop_workers.crop_chunk(
      self._cropper, [(t[4], t[5]) for t in chunk], self._max_pixels, self._gate
    )
    for task, result in zip(chunk, results):
      yield task[0], (tuple(task), result)


class WriteShardFn(beam.DoFn):
  """Writes one planned shard from its grouped (task, result) pairs, in plan order."""

  def __init__(self, output_dir: str):
    super().__init__()
    self._output_dir = output_dir

  def process(self, element):
    file, values = element
    values = sorted(values, key=lambda v: v[0][2])
    split, size = values[0][0][1], values[0][0][3]
    if [v[0][2] for v in values] != list(range(size)):
      raise RuntimeError(f"{file}: got positions {[v[0][2] for v in values][:10]}... of {size}")
    items = tuple((layouts.ImageEntry(t[4], t[5], t[6], t[7]), t[8], t[9]) for t, _ in values)
    shard = shard_plan.PlannedShard(split, file, items)
    decoded = ingest.write_planned_shard(self._output_dir, shard, iter(r for _, r in values))
    yield file, decoded


def _complete(output_dir: str, shard: shard_plan.PlannedShard) -> bool:
  return os.path.exists(os.path.join(output_dir, shard.file)) and os.path.exists(
    os.path.join(output_dir, ingest.STATE_DIR, shard.file + ".json")
  )


def _decoded(output_dir: str, shard: shard_plan.PlannedShard) -> int:
  """Photos of a written shard that were decoded (all but the unreadable ones), from its result
  file: what the local path counts while writing."""
  with open(
    os.path.join(output_dir, ingest.STATE_DIR, shard.file + ".json"), encoding="utf-8"
  ) as f:
    info = json.load(f)
  return len(shard.items) - sum(1 for r in info["rejected"] if r["reason"] != "no-face")
