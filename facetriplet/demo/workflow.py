"""The demo's workflow: generate or take the photos, then every tool in turn (see
`facetriplet_tools.demo` for the steps), resumable through `state.State`."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from facetriplet.data import tfrecords
from facetriplet.demo import heldout as heldout_lib
from facetriplet.demo import settings as settings_lib
from facetriplet.demo import steps
from facetriplet.demo.state import State
from facetriplet.errors import UserError
from facetriplet.evaluation import report

FEATURES = "embedding,pixels,color_hist,lbp,hog"
SHOWN = ("top1", "top5", "top10", "precision@5", "recall@10", "map@r", "num_queries")


def run_demo(args: Any) -> None:
  """Runs (or resumes) the demo for the tool's options `args` (workdir, data, quick, fresh,
  epochs, identities, photos, detector, seed).

  Raises:
    UserError: bad options or data, a workdir the demo did not write, a failed step.
  """
  settings = settings_lib.settings(
    args.data, args.quick, args.detector, args.epochs, args.identities, args.photos, args.seed
  )
  workdir = os.path.abspath(args.workdir)
  if settings["data"] and (settings["data"] + os.sep).startswith(workdir + os.sep):
    raise UserError(
      f"--data={settings['data']} is inside --workdir={workdir}, whose folders the "
      "demo may delete: pass a --workdir outside your photos"
    )
  state = State(workdir, settings, args.fresh)
  start = time.time()
  print(
    f"workdir {workdir}\nsettings: "
    + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
  )
  data = settings["data"] or "faces"
  config = settings["config"]  # a shipped config's name, e.g. orl or orl:smoke

  if not settings["data"]:
    state.step(
      "faces",
      "generate a labelled set of drawn faces",
      lambda: steps.run(
        "faces",
        "make-demo-data",
        [
          "--output=faces",
          f"--identities={settings['identities']}",
          f"--photos={settings['photos']}",
          f"--size={settings['photo_size']}",
          f"--seed={settings['seed']}",
        ],
        workdir,
      ),
    )
  state.step(
    "tfrecords",
    "face crops -> TFRecord shards, identity-disjoint train/val split",
    lambda: (
      steps.run(
        "tfrecords",
        "build-tfrecords",
        [
          "--layout=folders",
          f"--input={data}",
          "--output=tfrecords",
          f"--detector={settings['detector']}",
          f"--crop_size={settings['crop_size']}",
          *([f"--crop_preset={settings['crop_preset']}"] if settings.get("crop_preset") else []),
          f"--val_fraction={settings['val_fraction']}",
          f"--seed={settings['seed']}",
          "--noprogress",
        ],
        workdir,
      )
      or tfrecords.ShardSet.open(os.path.join(workdir, "tfrecords")).check_trainable("train", "val")
    ),
  )
  epochs = int(settings["epochs"])
  train_args = [
    f"--config={config}",
    "--config.data.tfrecord_dir=tfrecords",
    "--workdir=train",
    f"--config.seed={settings['seed']}",
    f"--config.train.epochs={epochs}",
    f"--config.train.p={settings['p']}",
    f"--config.train.k={settings['k']}",
    f"--config.train.warmup_epochs={min(2.0, max(0.5, epochs / 10))}",
  ]
  if settings["base_lr"] and not settings["quick"]:
    train_args.append(f"--config.train.base_lr={settings['base_lr']}")
  state.step(
    "train",
    "train the embedding network (triplet loss; val = held-out identities)",
    lambda: steps.run("train", "train", train_args, workdir),
  )
  state.step(
    "export",
    "export the best checkpoint as a SavedModel",
    lambda: steps.run("export", "export", ["--workdir=train", "--export_dir=export"], workdir),
  )

  def heldout():
    n = heldout_lib.split_heldout(
      os.path.join(workdir, "tfrecords"), os.path.join(workdir, "heldout"), settings["seed"]
    )
    print(
      f"  {n['queries']} queries -> heldout/query, {n['gallery']} gallery photos -> heldout/"
      f"gallery, of {n['identities']} identities never seen in training (heldout/labels.txt)"
    )

  state.step("heldout", "query/gallery split of the held-out identities", heldout)
  state.step(
    "index",
    "embed the gallery and build a ScaNN index",
    lambda: steps.run(
      "index",
      "build-index",
      [
        "--model=export",
        "--gallery=heldout/gallery",
        "--layout=flat",
        "--index_dir=index",
        "--noprogress",
      ],
      workdir,
    ),
  )
  state.step(
    "retrieve",
    "top-10 gallery photos per query -> submission.json",
    lambda: steps.run(
      "retrieve",
      "retrieve",
      [
        "--index=index",
        "--queries=heldout/query",
        "--layout=flat",
        "--output=submissions",
        "--groupname=facetriplet-demo",
        "--k=10",
        "--noprogress",
      ],
      workdir,
    ),
  )
  state.step(
    "evaluate",
    "score learned embedding vs classical features; retrieval grid",
    lambda: steps.run(
      "evaluate",
      "evaluate",
      [
        "--model=export",
        "--queries=heldout/query",
        "--gallery=heldout/gallery",
        "--labels=heldout/labels.txt",
        "--layout=flat",
        f"--features={FEATURES}",
        "--output=eval",
        "--grid_queries=8",
        "--noprogress",
      ],
      workdir,
    ),
  )

  # Fine-tuning the pretrained network (its plan's config): the start scored on the same photos,
  # so the table says whether fine-tuning helped on people it never saw.
  fine_tuned = config == settings_lib.PRETRAINED_CONFIG
  if fine_tuned:
    state.step(
      "evaluate_start",
      f"score the pretrained start ({settings_lib.PRETRAINED_NETWORK}, not fine-tuned) alike",
      lambda: steps.run(
        "evaluate_start",
        "evaluate",
        [
          f"--model={settings_lib.PRETRAINED_NETWORK}",
          "--queries=heldout/query",
          "--gallery=heldout/gallery",
          "--labels=heldout/labels.txt",
          "--layout=flat",
          "--features=embedding",
          "--output=eval_start",
          "--grid_queries=0",
          "--noprogress",
        ],
        workdir,
      ),
    )
  shown = _shown(os.path.join(workdir, "eval"), FEATURES.split(","))
  if fine_tuned:
    start_row = _shown(os.path.join(workdir, "eval_start"), ["embedding"])
    shown = {
      "embedding (fine-tuned)": shown.pop("embedding"),
      "embedding (pretrained start)": start_row["embedding"],
      **shown,
    }
  print(
    "\n=== results: queries vs gallery, identities never seen in training "
    "(all columns: eval/metrics.md)\n"
  )
  print(report.markdown_table(shown))
  if fine_tuned:
    tuned, begun = shown["embedding (fine-tuned)"], shown["embedding (pretrained start)"]
    if tuned["map@r"] < begun["map@r"]:
      print(
        "note: on these people, never seen in training, the fine-tuned network ranks below its "
        "pretrained start (mAP@R); that is common for a network trained on millions of faces. "
        "Fine-tuning helps find new photos of the people it trained on (BENCHMARKS.md, "
        "'Fine-tuning for the people it learns'); to search people you have not labelled, use "
        f"--model={settings_lib.PRETRAINED_NETWORK}\n"
      )
  else:
    best = max(
      (name for name in shown if name != "embedding"),
      key=lambda name: shown[name].get("map@r", 0),
      default=None,
    )
    if best and "embedding" in shown and shown["embedding"]["map@r"] < shown[best]["map@r"]:
      print(
        f"note: this short run's embedding is below {best} (mAP@R); train longer "
        f"(--epochs={2 * epochs}) or with more photos per identity\n"
      )
  print(
    "step times: "
    + ", ".join(f"{k} {state.done[k]:.0f} s" for k in state.order)
    + f" (sum {sum(state.done[k] for k in state.order):.0f} s)"
  )
  print(f"retrieval grid:  {os.path.join(workdir, 'eval', 'grid.png')}  (green = same identity)")
  print(f"submission:      {os.path.join(workdir, 'submissions', 'submission.json')}")
  print(f"total time:      {time.time() - start:.0f} s")


def _shown(eval_dir: str, names: list[str]) -> dict[str, dict[str, Any]]:
  """The SHOWN columns of each of `names` in `eval_dir`/metrics.json, in that order."""
  with open(os.path.join(eval_dir, "metrics.json"), encoding="utf-8") as f:
    results = json.load(f)["results"]
  return {
    name: {k: results[name][k] for k in SHOWN if k in results[name]}
    for name in names
    if name in results
  }
