r"""Face networks on real photos: a pretrained network through the project's pipeline against dlib's
own pipeline, fine-tuned and distilled models, the from-scratch recipe and classical features;
on lfw_2to4 val, celeba_199 val and orl; and each network's embedding speed.

Sets (every photo queries all the others of its set: leave-one-out retrieval):
  lfw     lfw_2to4, the val people of the ingest tool's identity split (seed 0, 20%): 641 photos
          of 251 people never used for training here; pick=center (the named person is centred)
  celeba  celeba_199, its val people (the same split rule): 40 people; pick=largest
  orl     orl_faces, all 400 photos of 40 people; pick=largest

Each model (--models name=export folder or pretrained network name, ...) is scored the way the
tools embed a gallery (`gallery.embed_gallery` over TFRecords made with `ingest.build_tfrecords`
and the export's own crop settings, the set's pick; records cached under --workdir_root per crop),
plus HOG on the project's default aligned crops (mtcnn, arcface112, 128 px).

dlib's own pipeline, on the same photos: its HOG face detector (upsampled once; the set's pick
among the faces found; a centred square when none is found), its 5-point shape predictor,
`dlib.get_face_chip(size=150, padding=0.25)`, and the descriptor of dlib's face ResNet. The
descriptor is computed by the Keras port (`networks.dlib_resnet`: identical to dlib's
`compute_face_descriptor` within 2e-5, tests/training/test_dlib_resnet.py), or by dlib itself with
--dlib_reference (about 5 chips/s here). Ranked by cosine similarity, and also by Euclidean
distance on the raw descriptors (dlib's own rule).

Speed: faces/s through each export (`Embedder.embed`, the SavedModel's serving_default) at batch
1 and 64, on random crops of the export's size, median of --speed_rounds rounds (the models take
turns within each round), and relative to the first model.

  python -m benchmarks.bench_pretrained --models=pretrained=dlib_resnet
  python -m benchmarks.bench_pretrained --sets=lfw,celeba,orl \
      --models=pretrained=dlib_resnet,finetuned=runs/celeba/export,student=runs/student/export

It writes benchmarks/results/pretrained_quality.json and pretrained_speed.json (--name_prefix).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
DEFAULT_ROOT = os.path.join(REPO, "runs", "bench_pretrained")  # records cache
_BUILT: set[str] = set()  # record folders `records` built or checked in this process
MIN_SECONDS = 0.5  # the shortest timing window of embed_speeds
# name: (input folder, layout, pick, val_fraction, split scored)
SETS = {
  "lfw": (os.path.join(DATA, "lfw_2to4"), "folders", "center", 0.2, "val"),
  "celeba": (os.path.join(DATA, "celeba_199", "img_celeba"), "celeba", "largest", 0.2, "val"),
  "orl": (os.path.join(DATA, "orl_faces"), "folders", "largest", 0.0, "train"),
}


def log(msg: str) -> None:
  tool = os.path.splitext(os.path.basename(sys.argv[0]))[0]
  print(f"[{tool} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def records(root: str, set_name: str, crop: dict[str, Any], try_turned: str = "export") -> str:
  """TFRecords of `set_name` with `crop` (its pick replaced by the set's; its try_turned by
  `try_turned` unless that is 'export'), cached by settings."""
  from facetriplet.data import faces, ingest  # pylint: disable=g-import-not-at-top

  input_dir, layout, pick, val_fraction, _ = SETS[set_name]
  settings = faces.CropSettings.from_dict(dict(crop, pick=pick))
  if try_turned != "export":
    settings = dataclasses.replace(settings, try_turned=try_turned == "on")
  key = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
  out = os.path.join(root, "records", f"{set_name}_{key}")
  if out in _BUILT:  # checked against the photos once per process: every model shares it
    return out
  start = time.time()
  # The folder is this benchmark's own cache: rebuilt when the photos changed (a re-provisioned
  # data folder has new mtimes), resumed otherwise.
  s = ingest.build_tfrecords(
    input_dir,
    out,
    layout=layout,
    crop=settings,
    val_fraction=val_fraction,
    seed=0,
    progress=False,
    overwrite=True,
  )
  log(
    f"records {out}: {s.written} photos ({s.no_face} without a face found, {s.turned} found "
    "turned), "
    f"{time.time() - start:.0f} s"
  )
  _BUILT.add(out)
  return out


def score_embeddings(emb: np.ndarray, labels: Sequence[str], euclidean: bool = False) -> dict:
  """Leave-one-out metrics: cosine ranking, or Euclidean on the raw rows (`euclidean`)."""
  from facetriplet import metrics  # pylint: disable=g-import-not-at-top

  emb = np.asarray(emb, np.float64)
  if not euclidean:
    return metrics.retrieval_metrics(emb, labels, emb, labels, ks=(1, 5, 10), leave_one_out=True)
  # -||a - b||^2 ranks as Euclidean distance; as a "similarity" of rows it needs no unit length,
  # so rank with the metrics' ranked-label helpers through an explicit score matrix.
  sq = np.sum(emb**2, axis=1)
  score = -(sq[:, None] + sq[None, :] - 2 * emb @ emb.T)
  np.fill_diagonal(score, -np.inf)
  codes = {name: i for i, name in enumerate(sorted(set(labels)))}
  y = np.array([codes[name] for name in labels])
  counts = np.bincount(y)
  depth = int(counts.max())
  order = np.argsort(-score, axis=1, kind="stable")[:, : max(10, depth)]
  return metrics.metrics_from_ranked(y[order], y, counts[y] - 1, (1, 5, 10))


def score_export(extractor, tfrecord_dir: str, split: str) -> dict:
  from facetriplet.search import gallery  # pylint: disable=g-import-not-at-top

  emb, kept, _ = gallery.embed_gallery(
    extractor, tfrecord_dir, splits=[split], batch_size=64, progress=False
  )
  return score_embeddings(emb, [e.identity for e in kept])


def _choose(rects, pick: str, h: int, w: int):
  """The face `pick` chooses among dlib rectangles (the project's rule, `FaceCropper._pick`)."""
  from facetriplet.data import faces  # pylint: disable=g-import-not-at-top

  boxes = [(r.left(), r.top(), r.width(), r.height()) for r in rects]
  cropper = faces.FaceCropper(faces.CropSettings(detector="none", pick=pick))
  return rects[cropper._pick(boxes, h, w)]  # pylint: disable=protected-access


def dlib_pipeline(paths: Sequence[str], pick: str, reference: bool) -> tuple[np.ndarray, int]:
  """dlib's own descriptors of `paths` (see the module docstring) and how many had no HOG
  face."""
  import dlib  # pylint: disable=g-import-not-at-top
  import face_recognition_models as frm  # pylint: disable=g-import-not-at-top

  from facetriplet.data import faces  # pylint: disable=g-import-not-at-top
  from facetriplet.training import networks  # pylint: disable=g-import-not-at-top

  hog = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
  chips, missed = [], 0
  for path in paths:
    rgb = faces.load_rgb(path)
    h, w = rgb.shape[:2]
    found = list(hog(rgb, 1))
    if found:
      rect = _choose(found, pick, h, w)
    else:
      missed += 1
      side = min(h, w)
      x, y = (w - side) // 2, (h - side) // 2
      rect = dlib.rectangle(x, y, x + side - 1, y + side - 1)
    shape = predictor(rgb, rect)
    chips.append(dlib.get_face_chip(rgb, shape, size=150, padding=0.25))
  chips = np.stack(chips)
  if reference:
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    return np.stack([np.asarray(rec.compute_face_descriptor(c), np.float32) for c in chips]), missed
  net = networks.build("dlib_resnet", 150, "dlib_resnet")
  out = [
    net.predict_on_batch(chips[i : i + 64].astype(np.float32)) for i in range(0, len(chips), 64)
  ]
  return np.concatenate(out), missed


def set_photos(tfrecord_dir: str, split: str) -> tuple[list[str], list[str]]:
  """(paths, identities) of the records of `split`: the very photos the exports are scored on."""
  from facetriplet.data import tfrecords  # pylint: disable=g-import-not-at-top

  shard_set = tfrecords.ShardSet.open(tfrecord_dir)
  recs = list(tfrecords.read_records(shard_set.shards(split)))
  return [os.path.join(shard_set.input_root, r["path"]) for r in recs], [
    r["identity"] for r in recs
  ]


def embed_speeds(
  loaded: Sequence[Any], rounds: int, min_seconds: float = MIN_SECONDS
) -> list[dict[str, float]]:
  """faces/s through each loaded export (`embedder.Embedder`) at batch 1 and 64 (median of
  `rounds` rounds), and relative to the first ('vs first': the median of the per-round ratios).
  The exports take turns within each round, starting one further each round, so a slow spell of
  a shared host hits them alike; each timing calls one export until `min_seconds` have passed
  (64 batch-1 calls of a small student take under 0.1 s, short enough for one slow spell to move
  its ratio by a fifth)."""
  rng = np.random.default_rng(0)
  inputs = {}
  for i, emb in enumerate(loaded):
    for batch in (1, 64):
      x = rng.integers(0, 256, (batch, emb.crop_size, emb.crop_size, 3), np.uint8)
      emb.embed(x)  # warm-up (tracing)
      inputs[i, batch] = x
  keys = ("batch 1", "batch 64")
  rates = [[{} for _ in loaded] for _ in range(rounds)]
  for r in range(rounds):
    for j in range(len(loaded)):
      i = (j + r) % len(loaded)
      for batch in (1, 64):
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < min_seconds:
          loaded[i].embed(inputs[i, batch])
          calls += 1
        rates[r][i][f"batch {batch}"] = batch * calls / (time.perf_counter() - start)
  out = []
  for i in range(len(loaded)):
    row = {k: statistics.median(rates[r][i][k] for r in range(rounds)) for k in keys}
    for k in keys:
      row[f"{k} vs first"] = statistics.median(
        rates[r][i][k] / rates[r][0][k] for r in range(rounds)
      )
    out.append(row)
  return out


def _row(method: str, per_set: dict[str, dict], sets: Sequence[str]) -> list:
  row: list[Any] = [method]
  for s in sets:
    m = per_set.get(s)
    row += [round(float(m["top1"]), 4), round(float(m["map@r"]), 4)] if m else ["-", "-"]
  return row


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--models",
    default="pretrained=dlib_resnet",
    help="name=export folder or pretrained network, comma-separated",
  )
  parser.add_argument("--sets", default="lfw,celeba,orl")
  parser.add_argument("--workdir_root", default=DEFAULT_ROOT)
  parser.add_argument("--skip_dlib", action="store_true", help="no dlib-pipeline row")
  parser.add_argument("--skip_classical", action="store_true")
  parser.add_argument(
    "--dlib_reference",
    action="store_true",
    help="dlib's compute_face_descriptor instead of the Keras port (slow)",
  )
  parser.add_argument(
    "--try_turned",
    choices=("export", "on", "off"),
    default="export",
    help="crops of every model made with try_turned on or off, instead of each export's own "
    "setting (exports written before try_turned existed say off)",
  )
  parser.add_argument("--speed_rounds", type=int, default=7)
  parser.add_argument("--name_prefix", default="pretrained")
  parser.add_argument(
    "--extra_rows",
    default="",
    help="JSON file of earlier rows ([method, lfw top-1, lfw mAP@R, ...]) to keep",
  )
  args = parser.parse_args(argv)
  from facetriplet.data import classical, faces  # pylint: disable=g-import-not-at-top
  from facetriplet.search import embedder  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  sets = [s.strip() for s in args.sets.split(",") if s.strip()]
  models = [tuple(m.split("=", 1)) for m in args.models.split(",") if m.strip()]
  root = os.path.abspath(args.workdir_root)
  rows, speed_rows, notes, speed_models = [], [], [], []
  for name, source in models:
    export_dir = export.resolve_model(source)
    extractor = embedder.load_embedder(export_dir, batch_size=64)
    per_set = {}
    for s in sets:
      rec = records(root, s, extractor.metadata["crop"], args.try_turned)
      per_set[s] = score_export(extractor, rec, SETS[s][4])
      log(f"{name} on {s}: top-1 {per_set[s]['top1']:.4f} mAP@R {per_set[s]['map@r']:.4f}")
    rows.append(
      _row(
        f"{name} (project pipeline: {extractor.crop_settings.detector}, "
        f"{extractor.crop_settings.template} crop)",
        per_set,
        sets,
      )
    )
    speed_models.append((name, extractor))
  speeds = embed_speeds([e for _, e in speed_models], args.speed_rounds)
  for (name, extractor), speed in zip(speed_models, speeds):
    speed_rows.append(
      [name, extractor.crop_size]
      + [round(speed[k], 1) for k in ("batch 1", "batch 64")]
      + [round(speed[k], 2) for k in ("batch 1 vs first", "batch 64 vs first")]
    )
    log(f"{name} speed: {speed}")
  if not args.skip_dlib:
    per_cos, per_l2, missed = {}, {}, {}
    for s in sets:
      rec = records(root, s, faces.CropSettings.preset("dlib150").to_dict(), args.try_turned)
      paths, labels = set_photos(rec, SETS[s][4])
      emb, missed[s] = dlib_pipeline(paths, SETS[s][2], args.dlib_reference)
      per_cos[s] = score_embeddings(emb, labels)
      per_l2[s] = score_embeddings(emb, labels, euclidean=True)
      log(
        f"dlib pipeline on {s}: cosine top-1 {per_cos[s]['top1']:.4f} mAP@R "
        f"{per_cos[s]['map@r']:.4f}; HOG found no face in {missed[s]} of {len(paths)}"
      )
    rows.append(
      _row("dlib's own pipeline (HOG, 5-point predictor, get_face_chip), cosine", per_cos, sets)
    )
    rows.append(_row("dlib's own pipeline, Euclidean on raw descriptors", per_l2, sets))
    notes.append(
      "dlib's HOG found no face (centred square used) in "
      + ", ".join(f"{missed[s]} {s} photos" for s in sets)
    )
  if not args.skip_classical:
    crop = faces.CropSettings().to_dict()
    per_set = {}
    for s in sets:
      rec = records(root, s, crop, args.try_turned)
      per_set[s] = score_export(
        classical.get_extractor("hog", faces.CropSettings.from_dict(dict(crop, pick=SETS[s][2]))),
        rec,
        SETS[s][4],
      )
    rows.append(_row("HOG (classical; mtcnn, arcface112 crop)", per_set, sets))
  if args.extra_rows:
    with open(args.extra_rows, encoding="utf-8") as f:
      rows += json.load(f)
  columns = ["method"] + [f"{s} {m}" for s in sets for m in ("top-1", "mAP@R")]
  common.write_result(
    f"{args.name_prefix}_quality",
    "Face networks on real photos: leave-one-out retrieval on " + ", ".join(sets),
    columns,
    rows,
    notes=(
      "lfw = lfw_2to4 val people (641 photos, 251 people), celeba = celeba_199 val people, "
      "orl = all 400 photos; every photo queries the others of its set. "
      + (
        "Crops: each export's own settings. "
        if args.try_turned == "export"
        else f"Crops of every model made with try_turned {args.try_turned}. "
      )
      + " ".join(notes)
    ),
  )
  common.write_result(
    f"{args.name_prefix}_speed",
    "Embedding speed through the export (faces/s, CPU)",
    ["model", "crop px", "batch 1", "batch 64", "batch 1 vs first", "batch 64 vs first"],
    speed_rows,
    notes=f"Embedder.embed on random crops, median of {args.speed_rounds} rounds "
    f"(each timing: calls for at least {MIN_SECONDS} s) after one warm-up call; the models take "
    "turns within each round, starting one further each round; 'vs first' = the median of the "
    f"per-round ratios of faces/s to {models[0][0] if models else '-'}'s.",
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
