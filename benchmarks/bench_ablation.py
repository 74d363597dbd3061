r"""The quality ablation: crops (Haar vs MTCNN-aligned) x loss (triplet, margin softmax, margin
softmax -> triplet) x test-time flip, beside the classical descriptors on the same crops, on the
lfw_2to4 val split (251 held-out people) and on ORL (never seen in training).

Every run is an ordinary `facetriplet-train` workdir (trained beforehand by the commands in
BENCHMARKS.md, or by `--train` here); this script only exports and scores, so it can be re-run in
minutes. For each run:

  * its best checkpoint is exported twice (`export_model(..., flip=False|True)`, into
    `<workdir>/export_best` and `<workdir>/export_best_flip`),
  * both exports and `classical.get_extractor(pixels|color_hist|lbp|hog)` embed the records of the
    run's own LFW TFRecords (split `val`) and the ORL TFRecords made with the same detector
    (`--orl_records=haar=DIR,mtcnn=DIR`),
  * `metrics.retrieval_metrics(..., leave_one_out=True)` scores them (every photo queries all the
    others of its set), exactly as `benchmarks.bench_quality` does.

Training minutes come from the run's metrics.jsonl (time of the last record minus the epoch-0
record: training plus the per-epoch val evaluation).

  python -m benchmarks.bench_ablation \
      --runs=haar_semi=runs/exp/semi_haar,mtcnn_semi=runs/exp/semi_mt,... \
      --orl_records=haar=runs/orl_haar,mtcnn=runs/orl_mtcnn

Writes benchmarks/results/ablation_lfw.json and ablation_orl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Sequence

from benchmarks import common
from benchmarks.bench_quality import CLASSICAL, score

COLUMNS = ["crops", "method", "flip", "top-1", "top-5", "top-10", "mAP@R", "train min"]


def _log(msg: str) -> None:
  print(f"[bench_ablation {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _pairs(text: str) -> list[tuple[str, str]]:
  out = []
  for item in text.split(","):
    if item.strip():
      name, _, value = item.partition("=")
      out.append((name.strip(), value.strip()))
  return out


def run_info(workdir: str) -> dict:
  """Config, method description, crops and training minutes of a finished run."""
  from facetriplet.training.workdir import read_metrics  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  with open(os.path.join(workdir, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  records = read_metrics(workdir)
  minutes = (records[-1]["time"] - records[0]["time"]) / 60 if len(records) > 1 else None
  loss, tail = config["loss"]["kind"], int(config.get("finetune", {}).get("epochs", 0))
  epochs = int(config["train"]["epochs"])
  if tail:
    method = f"{loss} {epochs - tail} ep -> {config['finetune']['kind']} {tail} ep"
  else:
    method = f"{loss} {epochs} ep"
  m = config["model"]
  method += f" ({m['backbone']} x{m.get('width', 1)}, {m['image_size']} px)"
  return {
    "config": config,
    "method": method,
    "detector": manifest["crop"]["detector"],
    "records": config["data"]["tfrecord_dir"],
    "minutes": minutes,
  }


def write_curve(workdir: str, name: str) -> None:
  """The run's metrics.jsonl as a table: epoch, wall minutes, val top-1 / mAP@R (plain, flip)."""
  from facetriplet.training.workdir import read_metrics  # pylint: disable=g-import-not-at-top

  records = read_metrics(workdir)
  t0 = records[0]["time"]
  rows = []
  for r in records:
    flip_on = "noflip/top1" in r
    plain = (r["noflip/top1"], r["noflip/map@r"]) if flip_on else (r["top1"], r["map@r"])
    flip = (r["top1"], r["map@r"]) if flip_on else (r.get("flip/top1"), r.get("flip/map@r"))
    rows.append(
      [
        r["epoch"],
        round((r["time"] - t0) / 60, 1),
        float(plain[0]),
        float(plain[1]),
        float(flip[0]) if flip[0] is not None else "-",
        float(flip[1]) if flip[1] is not None else "-",
      ]
    )
  info = run_info(workdir)
  common.write_result(
    name,
    f"Learning curve of the recipe: {info['method']}, {info['detector']} crops, lfw_2to4 val split",
    ["epoch", "minutes", "top-1", "mAP@R", "top-1 (flip)", "mAP@R (flip)"],
    rows,
    notes=f"From {workdir}/metrics.jsonl (leave-one-out over the 641 val photos after every "
    "5th epoch; epoch 0 is the untrained network). Minutes are wall time on this "
    "machine since the epoch-0 record, training and evaluation together.",
  )
  _log(f"wrote the curve of {workdir}")


def export_variant(workdir: str, flip: bool) -> str:
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top
  from facetriplet import export_format  # pylint: disable=g-import-not-at-top

  out = os.path.join(workdir, "export_best_flip" if flip else "export_best")
  ckpt = export.resolve_checkpoint(workdir, "best")
  pb = os.path.join(out, "saved_model.pb")
  if (
    not os.path.isfile(pb)
    or os.path.getmtime(pb) < os.path.getmtime(ckpt)
    or export_format.read_metadata(out).get("test_time_flip", False) != flip
  ):
    export.export_model(workdir, out, which="best", flip=flip)
  return out


def _row(crops, method, flip, m, minutes):
  return [
    crops,
    method,
    flip,
    float(m["top1"]),
    float(m["top5"]),
    float(m["top10"]),
    float(m["map@r"]),
    round(minutes, 1) if minutes is not None else "-",
  ]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--runs", default="", help="name=workdir,... (finished training runs)")
  parser.add_argument(
    "--orl_records",
    default="",
    help="detector=tfrecord_dir,... ORL records per crop kind ('' = no ORL)",
  )
  parser.add_argument("--name_prefix", default="ablation")
  parser.add_argument(
    "--curve",
    default="",
    help="a run's workdir: also write its val learning curve (every evaluated "
    "epoch, with and without flip) as <name_prefix>_curve",
  )
  args = parser.parse_args(argv)
  if args.curve:
    write_curve(args.curve, f"{args.name_prefix}_curve")
  from facetriplet.data import classical, faces, tfrecords  # pylint: disable=g-import-not-at-top
  from facetriplet.search import embedder  # pylint: disable=g-import-not-at-top

  runs = [(name, run_info(workdir), workdir) for name, workdir in _pairs(args.runs)]
  orl = dict(_pairs(args.orl_records))
  lfw_rows, orl_rows = [], []
  classical_done = set()
  for name, info, workdir in runs:
    det = info["detector"]
    for flip in (False, True):
      extractor = embedder.load_embedder(export_variant(workdir, flip))
      m = score(extractor, info["records"], ["val"])
      lfw_rows.append(_row(det, info["method"], "on" if flip else "off", m, info["minutes"]))
      _log(f"{name} flip={flip} LFW top1 {m['top1']:.3f} mAP@R {m['map@r']:.3f}")
      if det in orl:
        m = score(extractor, orl[det], ["train"])
        orl_rows.append(_row(det, info["method"], "on" if flip else "off", m, info["minutes"]))
        _log(f"{name} flip={flip} ORL top1 {m['top1']:.3f} mAP@R {m['map@r']:.3f}")
    if det in classical_done:
      continue
    classical_done.add(det)
    for feature in CLASSICAL:
      crop = faces.CropSettings.from_dict(tfrecords.read_manifest(info["records"])["crop"])
      extractor = classical.get_extractor(feature, crop=crop)
      lfw_rows.append(_row(det, feature, "-", score(extractor, info["records"], ["val"]), None))
      if det in orl:
        orl_rows.append(_row(det, feature, "-", score(extractor, orl[det], ["train"]), None))
  for suffix, rows, where in (
    ("lfw", lfw_rows, "lfw_2to4 val split (641 photos of 251 held-out people, leave-one-out)"),
    ("orl", orl_rows, "orl_faces (400 photos of 40 people never seen in training, leave-one-out)"),
  ):
    if not rows:
      continue
    path = common.write_result(
      f"{args.name_prefix}_{suffix}",
      f"Ablation on {where}",
      COLUMNS,
      rows,
      notes="Same crops for every row of one `crops` value (the run's TFRecords); `flip` = "
      "test-time flip in the export; classical descriptors on the same crops; train min "
      "= wall minutes from the run's epoch-0 record to its last (training + per-epoch "
      "val evaluation) on this machine. Runs: " + "; ".join(f"{n} = {w}" for n, _, w in runs) + ".",
    )
    _log(f"wrote {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
