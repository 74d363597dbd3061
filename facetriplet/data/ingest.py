"""Build TFRecord shards and `manifest.json` from a folder of face photos.

Flow: list the images (`layouts`), plan labels / splits / shards from the list alone
(`shard_plan`), decode + crop the photos of every shard not yet complete in a process pool
(`faces`, one cascade per worker), write each shard atomically (`tfrecords.write_shard`) followed
by a small per-shard result file, and finally the manifest. `plan_build` / `write_planned_shard` /
`finish_build` are those steps; `beam_ingest` runs the middle one as an Apache Beam pipeline.

Resume and safety: `plan.json`, written (atomically) before any shard, holds a fingerprint of the
input file list (names, sizes, mtimes) and of every setting that changes the bytes, plus the shard
plan. A folder from the same run resumes: a shard is complete when both it and its result file
(`.facetriplet_build/<shard>.json`: counts, groups, no-face and rejected files) exist. A folder
from a different run is refused unless `overwrite`; a folder holding anything else is always
refused (nothing of the user's is ever deleted).
Output bytes depend only on inputs and settings, never on the worker count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Iterable, Iterator

import cv2
import PIL
from absl import logging
import tqdm

from facetriplet import atomic
from facetriplet.data import crop_workers, faces, layouts, shard_plan, tfrecords
from facetriplet.data import manifest as manifest_lib
from facetriplet.data.manifest import FORMAT_VERSION, STATE_DIR, IngestSummary
from facetriplet.errors import UserError

PLAN_FILE = "plan.json"
_OURS = re.compile(
  r"^([A-Za-z0-9_]+-\d{5}-of-\d{5}\.tfrecord|manifest\.json|plan\.json|"
  + re.escape(STATE_DIR)
  + r"|\..+\.tmp-\d+(\.old)?)$"
)
_TEMP = re.compile(r"^\..+\.tmp-\d+(\.old)?$")


def build_tfrecords(
  input_dir: str,
  output_dir: str,
  layout: str = "folders",
  crop: faces.CropSettings = faces.CropSettings(),
  val_fraction: float = 0.2,
  seed: int = 0,
  num_shards: int = 0,
  workers: int = 0,
  overwrite: bool = False,
  identity_file: str | None = None,
  partition_file: str | None = None,
  max_pixels: int = faces.MAX_PIXELS,
  progress: bool = True,
) -> IngestSummary:
  """Writes `{split}-NNNNN-of-MMMMM.tfrecord` shards and `manifest.json` into `output_dir`.

  Args:
    input_dir: folder of photos in `layout` ('folders', 'celeba' or 'flat').
    output_dir: empty or missing folder, or one from the same run (resumed).
    layout: see `layouts`.
    crop: face detection and crop settings.
    val_fraction: fraction of identities held out as split `val`.
    seed: seed of the identity split.
    num_shards: shards per split; 0 = about one per 1500 photos.
    workers: decoding processes; 0 = every available core.
    overwrite: replace the shards and manifest of a different earlier run in `output_dir`.
    identity_file: CelebA identity list (default: found next to the images).
    partition_file: CelebA partition list (default: found next to the images when present).
    max_pixels: photos larger than this are rejected as `too-large` without being decoded.
    progress: show a tqdm progress bar.

  Returns:
    IngestSummary.

  Raises:
    UserError: missing or empty input, output folder from another run or with foreign files,
      bad settings.
  """
  build = plan_build(
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
  workers = crop_workers.resolve_workers(workers, sum(len(s.items) for s in build.todo))
  logging.info("%d workers", workers)
  decoded = 0
  if build.todo:
    tasks = [(e.path, e.rel_path) for s in build.todo for e, _, _ in s.items]
    results = crop_workers.crop_all(tasks, crop, max_pixels, workers)
    with tqdm.tqdm(
      total=len(tasks), unit="img", desc="build tfrecords", disable=not progress, smoothing=0.1
    ) as bar:
      for shard in build.todo:
        decoded += write_planned_shard(output_dir, shard, results, bar)
  return finish_build(build, decoded, workers)


@dataclasses.dataclass
class PlannedBuild:
  """What a build decided before decoding anything (`plan_build`): the listing, the shard plan,
  the run's settings and fingerprint, and the shards still `todo` (the others are complete).
  An engine (the process pool here, the Beam pipeline in `beam_ingest`) writes the `todo` shards
  with `write_planned_shard`, then `finish_build` writes the manifest from every shard's result
  file."""

  output_dir: str
  listing: layouts.ImageListing
  plan: shard_plan.ShardPlan
  settings: dict[str, Any]
  fingerprint: str
  todo: list[shard_plan.PlannedShard]
  start: float


def plan_build(
  input_dir: str,
  output_dir: str,
  layout: str = "folders",
  crop: faces.CropSettings = faces.CropSettings(),
  val_fraction: float = 0.2,
  seed: int = 0,
  num_shards: int = 0,
  overwrite: bool = False,
  identity_file: str | None = None,
  partition_file: str | None = None,
  max_pixels: int = faces.MAX_PIXELS,
) -> PlannedBuild:
  """Lists the input, plans the shards and prepares `output_dir` (see `build_tfrecords` for the
  arguments): refuses a foreign or other-run folder, records plan.json, finds what to write."""
  start = time.time()
  listing = layouts.scan_images(input_dir, layout, identity_file, partition_file)
  for line in layouts.describe(listing):
    logging.warning("%s: %s", input_dir, line)
  plan = shard_plan.make_plan(listing.entries, layout, val_fraction, seed, num_shards)
  settings = {
    "version": FORMAT_VERSION,
    "layout": layout,
    "input": os.path.abspath(input_dir),
    "crop": crop.to_dict(),
    "seed": seed,
    "val_fraction": val_fraction,
    "num_shards": num_shards,
    "max_pixels": max_pixels,
    "opencv": cv2.__version__,
    "pillow": PIL.__version__,
  }
  fingerprint = shard_plan.fingerprint(listing.entries, settings)
  _prepare_output(output_dir, fingerprint, settings, plan, overwrite)
  state = os.path.join(output_dir, STATE_DIR)
  todo = [
    s
    for s in plan.shards
    if not (
      os.path.exists(os.path.join(output_dir, s.file))
      and os.path.exists(os.path.join(state, s.file + ".json"))
    )
  ]
  logging.info(
    "%d images, %d shards planned, %d to write", len(listing.entries), len(plan.shards), len(todo)
  )
  return PlannedBuild(output_dir, listing, plan, settings, fingerprint, todo, start)


def finish_build(
  build: PlannedBuild, decoded: int, workers: int, engine: str = "local"
) -> IngestSummary:
  """Writes the manifest (every shard must be complete) and returns the run's summary."""
  manifest = manifest_lib.assemble(
    build.plan, build.listing, build.settings, build.fingerprint, build.output_dir
  )
  tfrecords.write_manifest(build.output_dir, manifest)
  return manifest_lib.summarize(
    manifest,
    build.output_dir,
    len(build.listing.entries),
    decoded,
    len(build.todo),
    len(build.plan.shards) - len(build.todo),
    workers,
    time.time() - build.start,
    engine,
  )


def _prepare_output(
  output_dir: str,
  fingerprint: str,
  settings: dict[str, Any],
  plan: shard_plan.ShardPlan,
  overwrite: bool,
) -> None:
  """Checks that `output_dir` is empty or from this run; records the run fingerprint first."""
  names = atomic.claim_folder(
    output_dir, _OURS.match, "output folder", "facetriplet-build-tfrecords"
  )
  run_path = os.path.join(output_dir, PLAN_FILE)
  previous = None
  if os.path.exists(run_path):
    try:
      with open(run_path, encoding="utf-8") as f:
        previous = json.load(f).get("fingerprint")
    except (OSError, ValueError):
      previous = None
  if names and previous != fingerprint:
    if not overwrite:
      raise UserError(
        f"output folder {output_dir} holds shards from a different run (other "
        "inputs or settings): choose an empty folder or pass --overwrite (a folder begun "
        "before --try_turned existed resumes with --notry_turned)"
      )
  if names and (overwrite or previous != fingerprint):
    # Only what a facetriplet run provably wrote (listed in its plan.json) is ever deleted.
    owned = _owned_names(run_path)
    unknown = [n for n in names if n not in owned and not _TEMP.match(n)]
    if unknown:
      raise UserError(
        f"output folder {output_dir} holds {unknown[0]}, which no plan.json of a "
        "facetriplet run there lists; --overwrite removes only files a run "
        "provably wrote: choose an empty folder or remove it yourself"
      )
  if overwrite or previous != fingerprint:
    for name in names:
      atomic.remove(os.path.join(output_dir, name))
    logging.info("starting %s from scratch", output_dir)
  else:
    for name in names:
      if _TEMP.match(name):  # Left by a killed run; never trusted.
        atomic.remove(os.path.join(output_dir, name))
    logging.info("resuming %s (same inputs and settings)", output_dir)
  shards = [
    {
      "file": s.file,
      "split": s.split,
      "images": len(s.items),
      "groups": _runs(item[1] for item in s.items),
    }
    for s in plan.shards
  ]
  atomic.write_json(run_path, {"fingerprint": fingerprint, "settings": settings, "shards": shards})
  os.makedirs(os.path.join(output_dir, STATE_DIR), exist_ok=True)


def _owned_names(plan_path: str) -> set[str]:
  """Names in the output folder that the run recorded in `plan_path` wrote (empty without one)."""
  try:
    with open(plan_path, encoding="utf-8") as f:
      plan = json.load(f)
    shards = {s["file"] for s in plan.get("shards", [])}
  except (OSError, ValueError, TypeError, KeyError, AttributeError):
    return set()
  if not all(isinstance(n, str) and _OURS.match(n) for n in shards):
    return set()
  return shards | {tfrecords.MANIFEST, PLAN_FILE, STATE_DIR}


def _runs(labels: Iterable[int]) -> list[list[int]]:
  """[[label, count], ...] for consecutive equal labels."""
  runs: list[list[int]] = []
  for label in labels:
    if runs and runs[-1][0] == label:
      runs[-1][1] += 1
    else:
      runs.append([label, 1])
  return runs


def write_planned_shard(
  output_dir: str,
  shard: shard_plan.PlannedShard,
  results: Iterator[tuple],
  bar: tqdm.tqdm | None = None,
) -> int:
  """Consumes this shard's crop results (`crop_workers.crop_tasks`'s tuples, one per item in
  plan order), writes the shard then its result file. Returns how many photos were decoded."""
  records: list[bytes] = []
  labels: list[int] = []
  info: dict[str, Any] = {
    "file": shard.file,
    "split": shard.split,
    "no_face": [],
    "turned": [],
    "methods": {},
    "rejected": [],
    "identity_counts": {},
  }
  decoded = 0
  for entry, label, identity in shard.items:
    result = next(results)
    if bar is not None:
      bar.update(1)
    if result[0] == "error":
      info["rejected"].append({"path": entry.rel_path, "reason": result[1], "detail": result[2]})
      continue
    decoded += 1
    if result[0] == "no-face":
      info["no_face"].append(entry.rel_path)
      info["rejected"].append(
        {"path": entry.rel_path, "reason": "no-face", "detail": "on_no_face=skip"}
      )
      continue
    _, jpeg, box, found, landmarks, method, turned = result
    if not found:
      info["no_face"].append(entry.rel_path)
    if turned:
      info["turned"].append(entry.rel_path)
    info["methods"][method] = info["methods"].get(method, 0) + 1
    records.append(
      tfrecords.make_example(jpeg, label, identity, entry.rel_path, box, found, landmarks, method)
    )
    labels.append(label)
    if identity:
      info["identity_counts"][identity] = info["identity_counts"].get(identity, 0) + 1
  info["records"] = tfrecords.write_shard(os.path.join(output_dir, shard.file), records)
  info["groups"] = _runs(iter(labels))
  atomic.write_json(os.path.join(output_dir, STATE_DIR, shard.file + ".json"), info)
  logging.info("wrote %s: %d records", shard.file, info["records"])
  return decoded
