r"""Retrieval quality: trained triplet models (three mining strategies) vs the untrained network vs
classical features, on LFW held-out people and on ORL (never seen in training).

Steps (all under --workdir_root, default runs/bench_quality; every step is resumable):
  1. TFRecords of --lfw (`build_tfrecords`, Haar crops, 20% of the people held out as `val` by its
     identity split) and of --orl (`detector=none` by default: ORL photos are already face crops;
     `val_fraction=0`, so all 400 photos are in one split).
  2. For each --kinds loss (`config.loss.kind`: semi_hard, batch_hard, random = the report's random
     triplets), `train.train_and_evaluate` with --config (configs/lfw.py) in
     `<root>/<kind>_e<epochs>_<hash of the config>`. A workdir whose run finished (metrics.jsonl
     reached the last epoch and checkpoints/best.keras exists) is reused; an unfinished one resumes.
     Training time is summed per epoch by a callback (includes the per-epoch val evaluation,
     excludes the epoch-0 evaluation) into bench_train_seconds.json.
  3. `export.export_model(workdir, <workdir>/export_best, which='best')` (--checkpoint=last for the
     final epoch instead: `best` is chosen on the LFW val set that is also scored), plus an export
     of the untrained network built from the same config (same seed).
  4. Scoring, the path the tools use (`gallery.embed_gallery` over the TFRecords: the records'
     crops, resized to the extractor's crop size, then `.embed`): each trained export, the
     untrained one and `classical.get_extractor(pixels|color_hist|lbp|hog)` with the records' crop
     settings;
     `metrics.retrieval_metrics(..., leave_one_out=True)`: every LFW val photo queries all other val
     photos; every ORL photo queries the 399 others.

  python -m benchmarks.bench_quality        # 3 x configs/lfw.py (30 epochs): ~60 min on 2 cores
  python -m benchmarks.bench_quality --skip_train   # rescore existing workdirs: ~3 min
  python -m benchmarks.bench_quality --config_variant=smoke --epochs=1 --limit_identities=60 \
      --workdir_root=/tmp/bq --name_prefix=scratch_quality            # ~2 min check

It writes benchmarks/results/quality_lfw.json and quality_orl.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from typing import Any, Sequence


from benchmarks import common
from benchmarks.bench_embed import load_config
from benchmarks.bench_ingest import subset_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
CLASSICAL = ("pixels", "color_hist", "lbp", "hog")
KIND_NAMES = {
  "semi_hard": "semi-hard mining",
  "batch_hard": "batch-hard mining",
  "batch_all": "batch-all",
  "random": "random triplets",
}
TIME_FILE = "bench_train_seconds.json"
COLUMNS = ["method", "top-1", "top-5", "top-10", "mAP@R", "train min"]


def _log(msg: str) -> None:
  print(f"[bench_quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def apply_overrides(config, overrides: Sequence[str]) -> None:
  """Applies 'a.b=value' strings, the value parsed as the field's current type."""
  for item in overrides:
    key, _, text = item.partition("=")
    *parents, leaf = key.strip().split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[leaf]
    if isinstance(old, bool):
      value: Any = text.lower() in ("1", "true", "yes")
    elif isinstance(old, (int, float)) and not isinstance(old, bool):
      value = type(old)(float(text)) if isinstance(old, int) and "." not in text else float(text)
    else:
      value = text
    node[leaf] = value


def build_records(input_dir: str, output: str, detector: str, val_fraction: float) -> dict:
  """TFRecords of `input_dir` in `output` (resumed when complete); returns the manifest."""
  from facetriplet.data import faces, ingest, tfrecords  # pylint: disable=g-import-not-at-top

  start = time.time()
  summary = ingest.build_tfrecords(
    input_dir,
    output,
    crop=faces.CropSettings(detector=detector),
    val_fraction=val_fraction,
    progress=False,
  )
  _log(
    f"records {output}: {summary.written} images, {summary.shards_written} shards written, "
    f"{summary.shards_skipped} reused, {time.time() - start:.0f} s"
  )
  return tfrecords.read_manifest(output)


def run_finished(workdir: str) -> bool:
  """True when the run in `workdir` reached its last epoch and kept a best checkpoint."""
  from facetriplet.training.workdir import read_metrics  # pylint: disable=g-import-not-at-top

  cfg_path = os.path.join(workdir, "config.json")
  if not (
    os.path.isfile(cfg_path) and os.path.isfile(os.path.join(workdir, "checkpoints", "best.keras"))
  ):
    return False
  with open(cfg_path, encoding="utf-8") as f:
    epochs = int(json.load(f)["train"]["epochs"])
  return any(r.get("epoch") == epochs for r in read_metrics(workdir))


def best_epoch(workdir: str) -> tuple[int, int] | None:
  """(epoch of the best val mAP@R, last epoch) of a run, from its metrics.jsonl."""
  from facetriplet.training.workdir import read_metrics  # pylint: disable=g-import-not-at-top

  records = [r for r in read_metrics(workdir) if r.get("epoch", 0) > 0 and "map@r" in r]
  if not records:
    return None
  return max(records, key=lambda r: r["map@r"])["epoch"], records[-1]["epoch"]


def train_seconds(workdir: str) -> float | None:
  path = os.path.join(workdir, TIME_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return float(json.load(f)["seconds"])


def _timing_callback(workdir: str):
  """A Keras callback adding each epoch's wall time to workdir/bench_train_seconds.json."""
  import keras  # pylint: disable=g-import-not-at-top
  from facetriplet import atomic  # pylint: disable=g-import-not-at-top

  class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
      total = (train_seconds(workdir) or 0.0) + time.time() - self._start
      atomic.write_json(os.path.join(workdir, TIME_FILE), {"seconds": total, "epoch": epoch + 1})

  return EpochTimer()


def train_kind(base_config, kind: str, root: str, skip_train: bool) -> str | None:
  """Trains (or reuses) the model of one loss kind; returns its workdir, None when unusable."""
  from facetriplet.training import train  # pylint: disable=g-import-not-at-top

  config = base_config.copy_and_resolve_references()
  config.loss.kind = kind
  key = json.dumps(config.to_dict(), sort_keys=True, default=str)
  workdir = os.path.join(
    root, f"{kind}_e{config.train.epochs}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"
  )
  if run_finished(workdir):
    _log(f"{kind}: reusing the finished run in {workdir}")
    return workdir
  if skip_train:
    if os.path.isfile(os.path.join(workdir, "checkpoints", "best.keras")):
      _log(f"{kind}: --skip_train, using the unfinished run's best checkpoint in {workdir}")
      return workdir
    _log(f"{kind}: --skip_train and no checkpoint in {workdir}: skipped")
    return None
  _log(f"{kind}: training in {workdir} ({config.train.epochs} epochs)")
  import keras  # pylint: disable=g-import-not-at-top

  keras.backend.clear_session()
  result = train.train_and_evaluate(config, workdir, extra_callbacks=[_timing_callback(workdir)])
  _log(
    f"{kind}: done, best val mAP@R {result.get('best_map@r', float('nan')):.4f} at epoch "
    f"{result.get('best_epoch')}, {train_seconds(workdir) or 0:.0f} s"
  )
  return workdir


def export_workdir(workdir: str, which: str = "best") -> str:
  """workdir/export_<which> from checkpoints/<which>.keras (redone when the checkpoint is newer)."""
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  out = os.path.join(workdir, f"export_{which}")
  ckpt = export.resolve_checkpoint(workdir, which)
  pb = os.path.join(out, "saved_model.pb")
  if not os.path.isfile(pb) or os.path.getmtime(pb) < os.path.getmtime(ckpt):
    export.export_model(workdir, out, which=which)
  return out


def export_untrained(config, root: str, crop: dict, input_size: int) -> str:
  """Export of the untrained network of `config` (weights from its seed), made once."""
  import keras  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top
  from facetriplet.training import model as model_lib  # pylint: disable=g-import-not-at-top

  config = config.copy_and_resolve_references()
  key = json.dumps(config.model.to_dict(), sort_keys=True) + str(config.seed) + str(input_size)
  folder = os.path.join(root, f"untrained_{hashlib.sha256(key.encode()).hexdigest()[:8]}")
  out = os.path.join(folder, "export")
  if os.path.isfile(os.path.join(out, "saved_model.pb")):
    return out
  os.makedirs(folder, exist_ok=True)
  keras.backend.clear_session()
  keras.utils.set_random_seed(int(config.seed))
  model = model_lib.build_embedding_model(config, input_size)
  ckpt = os.path.join(folder, "untrained.keras")
  model.save(ckpt)
  export.export_model(ckpt, out, crop=crop)
  return out


def score(extractor, tfrecord_dir: str, splits: Sequence[str]) -> dict:
  """Leave-one-out retrieval metrics of `extractor` over the records of `splits`."""
  from facetriplet import metrics  # pylint: disable=g-import-not-at-top
  from facetriplet.search import gallery  # pylint: disable=g-import-not-at-top

  emb, kept, problems = gallery.embed_gallery(
    extractor, tfrecord_dir, splits=list(splits), batch_size=128, progress=False
  )
  skipped = [p for p in problems if not p.kept]
  if skipped:
    _log(f"{len(skipped)} records skipped while embedding {tfrecord_dir}")
  labels = [e.identity for e in kept]
  return metrics.retrieval_metrics(emb, labels, emb, labels, ks=(1, 5, 10), leave_one_out=True)


def _row(method: str, m: dict, minutes: float | None) -> list:
  return [
    method,
    float(m["top1"]),
    float(m["top5"]),
    float(m["top10"]),
    float(m["map@r"]),
    round(minutes, 1) if minutes is not None else "-",
  ]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--lfw", default=os.path.join(DATA, "lfw_2to4"))
  parser.add_argument("--orl", default=os.path.join(DATA, "orl_faces"))
  parser.add_argument("--workdir_root", default=os.path.join(REPO, "runs", "bench_quality"))
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "lfw.py"))
  parser.add_argument("--config_variant", default="", help="e.g. smoke")
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="a.b=value",
    help="config override, repeatable (e.g. --set=train.p=16)",
  )
  parser.add_argument("--kinds", default="semi_hard,batch_hard,random")
  parser.add_argument("--epochs", type=int, default=0, help="override train.epochs (0 = config)")
  parser.add_argument(
    "--steps_per_epoch", type=int, default=-1, help="override train.steps_per_epoch (-1 = config)"
  )
  parser.add_argument(
    "--skip_train",
    action="store_true",
    help="never train: score the checkpoints already in the workdirs",
  )
  parser.add_argument(
    "--limit_identities",
    type=int,
    default=0,
    help="LFW: use only the first N people (quick checks)",
  )
  parser.add_argument(
    "--checkpoint",
    default="best",
    choices=("best", "last"),
    help="best = highest LFW val mAP@R (what facetriplet-export ships; chosen "
    "on the same val set it is scored on), last = final epoch",
  )
  parser.add_argument("--orl_detector", default="none", choices=("none", "haar"))
  parser.add_argument("--classical", default=",".join(CLASSICAL))
  parser.add_argument("--skip_lfw", action="store_true")
  parser.add_argument("--skip_orl", action="store_true")
  parser.add_argument(
    "--name_prefix", default="quality", help="results <prefix>_lfw and <prefix>_orl"
  )
  args = parser.parse_args(argv)
  start = time.time()
  root = os.path.abspath(args.workdir_root)
  os.makedirs(root, exist_ok=True)
  from facetriplet.data import classical, faces  # pylint: disable=g-import-not-at-top
  from facetriplet.search import embedder  # pylint: disable=g-import-not-at-top

  # 1. Records.
  lfw_input, lfw_tag = args.lfw, "lfw"
  if args.limit_identities:
    lfw_tag = f"lfw_first{args.limit_identities}"
    lfw_input = subset_folder(
      args.lfw, args.limit_identities, os.path.join(root, "data", lfw_tag + "_input")
    )
  lfw_dir = os.path.join(root, "data", lfw_tag)
  lfw_manifest = build_records(lfw_input, lfw_dir, "haar", 0.2)
  orl_dir = os.path.join(root, "data", f"orl_{args.orl_detector}")
  orl_manifest = None if args.skip_orl else build_records(args.orl, orl_dir, args.orl_detector, 0.0)

  # 2. Training.
  config = load_config(args.config, args.config_variant or None)
  config.data.tfrecord_dir = lfw_dir
  if args.epochs:
    config.train.epochs = args.epochs
  if args.steps_per_epoch >= 0:
    config.train.steps_per_epoch = args.steps_per_epoch
  apply_overrides(config, args.set)
  failures, trained = [], []
  for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
    try:
      workdir = train_kind(config, kind, root, args.skip_train)
      if workdir:
        trained.append((kind, workdir, export_workdir(workdir, args.checkpoint)))
    except Exception:  # pylint: disable=broad-except  (one failed kind must not stop the rest)
      failures.append(kind)
      _log(f"{kind}: FAILED\n{traceback.format_exc()}")

  # 3. Exports to score: (method, export folder, training minutes or None).
  input_size = int(config.model.crop_size or faces.crop_size_of(lfw_manifest["crop"]))
  untrained = export_untrained(config, root, lfw_manifest["crop"], input_size)
  methods, best_epochs = [], []
  for kind, workdir, out in trained:
    seconds = train_seconds(workdir)
    methods.append(
      (
        f"triplet, {KIND_NAMES.get(kind, kind)} (trained)",
        out,
        seconds / 60 if seconds is not None else None,
      )
    )
    best = best_epoch(workdir)
    if best:
      best_epochs.append(f"{kind} {best[0]}/{best[1]}")
  methods.append(("untrained network", untrained, None))

  # 4. Scoring.
  sets = []
  if not args.skip_lfw:
    sets.append(("lfw", lfw_dir, ["val"], lfw_manifest))
  if orl_manifest is not None:
    sets.append(("orl", orl_dir, list(orl_manifest["splits"]), orl_manifest))
  classical_names = [c.strip() for c in args.classical.split(",") if c.strip()]
  for set_name, records, splits, manifest in sets:
    rows = []
    for method, export_dir, minutes in methods:
      m = score(embedder.load_embedder(export_dir, batch_size=128), records, splits)
      rows.append(_row(method, m, minutes))
      _log(
        f"{set_name} {method}: top-1 {m['top1']:.4f}, mAP@R {m['map@r']:.4f} "
        f"({m['num_queries']} queries)"
      )
    for name in classical_names:
      m = score(classical.get_extractor(name, crop=manifest["crop"]), records, splits)
      rows.append(_row(f"{name} (classical)", m, None))
      _log(f"{set_name} {name}: top-1 {m['top1']:.4f}, mAP@R {m['map@r']:.4f}")
    n_img = sum(manifest["splits"][s]["images"] for s in splits)
    n_id = sum(manifest["splits"][s]["identities"] for s in splits)
    setup = (
      f"config `{os.path.relpath(args.config, REPO)}`"
      + (f":{args.config_variant}" if args.config_variant else "")
      + f" ({config.model.backbone} width {config.model.width}, {config.model.image_size} "
      f"px, {config.model.embedding_dim}-d, P={config.train.p} x K={config.train.k}, "
      f"{config.train.epochs} epochs"
      + (f", overrides {args.set}" if args.set else "")
      + "), trained on the LFW `train` split; "
      + (
        "the checkpoint of the best LFW val mAP@R (selected on the LFW val set scored "
        "here, so the LFW rows are slightly optimistic; ORL is unaffected)"
        if args.checkpoint == "best"
        else "the last checkpoint"
      )
      + " is exported and scored through the SavedModel"
      + (f" (best epoch / epochs: {', '.join(best_epochs)})" if best_epochs else "")
    )
    if set_name == "lfw":
      subset = f"the first {args.limit_identities} people of " if args.limit_identities else ""
      where = (
        f"{subset}`lfw_2to4`: the `val` split of build_tfrecords' identity split "
        f"(20% of the people, seed 0, Haar crops): {n_img} photos of {n_id} people, never "
        "seen in training; every photo queries all other val photos (leave-one-out)"
      )
      title = "Retrieval quality: LFW held-out people (leave-one-out)"
    else:
      where = (
        f"`orl_faces` (all {n_img} photos of {n_id} people, `detector={args.orl_detector}`"
        " crops), never seen in training; every photo queries the other "
        f"{n_img - 1} (leave-one-out)"
      )
      title = "Retrieval quality: ORL faces, model trained on LFW (leave-one-out)"
    notes = (
      f"Data: {where}. Models: {setup}. `train min`: wall minutes of training on the "
      f"benchmark machine, including the per-epoch val evaluation. Classical rows: "
      "`facetriplet.data.classical` features of the same crops. top-k: a photo of the same "
      "person among the first k results; mAP@R: Musgrave et al. 2020."
    )
    path = common.write_result(f"{args.name_prefix}_{set_name}", title, COLUMNS, rows, notes)
    _log(f"wrote {path}")
  _log(
    f"total {time.time() - start:.0f} s"
    + (f"; FAILED kinds: {', '.join(failures)}" if failures else "")
  )
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
