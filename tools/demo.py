r"""`make demo`: the whole job in one command, on a generated face set or on your own photos.

  facetriplet-demo --workdir=demo_run                 # drawn faces, ~6 min on 2 cores
  facetriplet-demo --workdir=my_run --data=~/photos   # <identity>/<photo> folders
  facetriplet-demo --workdir=/tmp/q --quick           # seconds-long smoke run (tests)

Steps, each an installed console script run in a subprocess and printed first, so the demo is
also a walk-through (full logs: <workdir>/logs/<step>.log): faces (facetriplet-make-demo-data;
not with --data) -> tfrecords (-build-tfrecords: crops, identity-disjoint train/val split) ->
train (-train, a short run of the shipped orl or lfw config) -> export -> heldout (query/gallery split,
in this process) -> index (-build-index of the held-out gallery) -> retrieve (-retrieve:
submissions/submission.json) -> evaluate (-evaluate: learned embedding vs classical features,
eval/metrics.md, eval/grid.png).

Held-out split: the val identities of the TFRecords never enter training. Of each of them with
2+ photos, 1-3 photos (a quarter, at least one) become queries in `heldout/query/`, the rest go
to `heldout/gallery/`; both flat, with anonymous names, like a competition's. The identities are
in `heldout/labels.txt`.

Re-running: `<workdir>/demo.json` records the settings and the finished steps. The same command
skips finished steps and resumes an interrupted one (the tools resume their own work). Changed
training settings (--epochs) redo training and what follows; changed data settings or --fresh
start clean. Only the demo's own folders are ever deleted; a non-empty folder without demo.json
is refused.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from typing import Any, Optional, Sequence

from absl import app
from absl import flags

from facetriplet import atomic
from facetriplet.data import heldout as heldout_lib
from facetriplet.data import detectors, layouts, tfrecords
from facetriplet.errors import UserError, run_tool
from facetriplet.evaluation import report
from facetriplet.training import plan

STATE = "demo.json"
OUTPUTS = ("faces", "tfrecords", "heldout", "train", "export", "index", "retrieve", "submissions",
           "evaluate", "eval", "logs")  # steps and their folders
TRAINED = OUTPUTS[3:-1]  # redone when only training settings change (epochs, P, K, lr)
DATA_KEYS = ("data", "identities", "photos", "image_size", "crop_size", "detector",
             "val_fraction", "seed")
FEATURES = "embedding,pixels,color_hist,lbp,hog"
SHOWN = ("top1", "top5", "top10", "precision@5", "recall@10", "map@r", "num_queries")
# Echoed to the console (everything goes to the log file): a tool's stdout (its summary, Keras'
# epoch lines) less TensorFlow's C++ noise; of its stderr (absl logs) only these lines.
_ABSL = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_ABSL_SHOWN = re.compile(r"val retrieval|global batch|starting .* from scratch|resum")
_NOISE = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+: [IWE] |cuInit|^\s*$")

# The generated set: 60 identities x 12 photos (48 train / 12 held out), 64 px crops, the ORL
# config (ResNet-18-style, half width, 64 px, P=8 x K=4, colour jitter off: colour is identity in
# drawn faces) for 25 epochs at 2.5x its learning rate (measured on 2 busy cores: ~9 s an epoch;
# val mAP@R 0.03 untrained -> ~0.44, raw pixels 0.11). Quick: the smoke variant on a tiny set.
GENERATED = {"identities": 60, "photos": 12, "image_size": 128, "crop_size": 64, "epochs": 25,
             "val_fraction": 0.2, "config": "orl", "p": 8, "k": 4, "base_lr": 0.01}
QUICK = {"identities": 8, "photos": 4, "image_size": 64, "crop_size": 32, "epochs": 2,
         "val_fraction": 0.25, "config": "orl:smoke", "p": 4, "k": 2, "base_lr": None}


def _tool_command(name: str) -> list[str]:
  script = os.path.join(os.path.dirname(sys.executable), f"facetriplet-{name}")
  return [script] if os.path.isfile(script) else [
      sys.executable, "-m", f"facetriplet_tools.{name.replace('-', '_')}"]


def _pump(stream, log, lock, show) -> None:
  """Copies a child's stream to the log, echoing the lines `show` picks (with absl's prefix cut)."""
  for line in stream:
    with lock:
      log.write(line)
      line = line.rstrip()
      shown = show(line)
      if shown is not None:
        print("  " + shown, flush=True)


def _stdout_line(line: str) -> Optional[str]:
  return None if _NOISE.search(line) else line  # tool prints, Keras epoch lines


def _stderr_line(line: str) -> Optional[str]:
  """Of the logs, only the training plan and per-epoch val numbers, and one-line tool errors."""
  if _ABSL.match(line):
    return _ABSL.sub("", line) if _ABSL_SHOWN.search(line) else None
  return line if ": error: " in line else None


def run_step(step: str, tool: str, args: Sequence[str], workdir: str) -> None:
  """Runs facetriplet-<tool> in `workdir`, echoing its useful lines (all: logs/<step>.log);
  raises UserError if it fails."""
  command = _tool_command(tool) + list(args)
  print(f"\n$ {' '.join(['facetriplet-' + tool] + list(args))}", flush=True)
  log_path = os.path.join(workdir, "logs", f"{step}.log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
  lock = threading.Lock()
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, log, lock, _stdout_line)),
             threading.Thread(target=_pump, args=(proc.stderr, log, lock, _stderr_line))]
    for t in pumps:
      t.start()
    try:
      code = proc.wait()
    except KeyboardInterrupt:
      proc.send_signal(signal.SIGINT)
      proc.wait()
      raise
    finally:
      for t in pumps:
        t.join()
  if code != 0:
    with open(log_path, encoding="utf-8") as f:
      tail = f.read().splitlines()[-20:]
    print("\n".join("  | " + t for t in tail), file=sys.stderr)
    raise UserError(f"step '{step}' failed (facetriplet-{tool} exit status {code}); full log: "
                    f"{log_path}. Fix the cause and run the same command again to resume")


class State:
  """<workdir>/demo.json: the settings of the run and the seconds each finished step took."""

  def __init__(self, workdir: str, settings: dict[str, Any], fresh: bool):
    self.path = os.path.join(workdir, STATE)
    self.settings = settings
    self.done: dict[str, float] = {}
    self.order: list[str] = []
    old: Optional[dict[str, Any]] = None
    if os.path.isfile(self.path):
      with open(self.path, encoding="utf-8") as f:
        old = json.load(f)
    elif os.path.isdir(workdir) and os.listdir(workdir):
      raise UserError(f"{workdir} is not empty and was not written by the demo (no {STATE}): "
                      "pass another --workdir, or empty the folder")
    if old is not None and (fresh or old.get("settings") != settings):
      before = old.get("settings", {})
      same_data = all(before.get(k) == settings.get(k) for k in DATA_KEYS) and not fresh
      redo = TRAINED if same_data else OUTPUTS
      why = "--fresh" if fresh else f"the {'training' if same_data else 'data'} settings changed"
      print(f"{workdir}: {why}; removing {', '.join(redo)}")
      for name in redo:
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
      old["done"] = {k: v for k, v in old.get("done", {}).items() if k not in redo}
    self.done = dict((old or {}).get("done", {}))
    if self.done:
      print(f"{workdir}: resuming; finished earlier: {', '.join(self.done)}")
    os.makedirs(workdir, exist_ok=True)
    self.save()

  def save(self) -> None:
    atomic.write_json(self.path, {"version": 1, "settings": self.settings, "done": self.done})

  def step(self, name: str, title: str, fn) -> None:
    print(f"\n=== {name}: {title}", flush=True)
    self.order.append(name)
    if name in self.done:
      print(f"  done in an earlier run ({self.done[name]:.0f} s); skipped")
      return
    start = time.time()
    fn()
    self.done[name] = round(time.time() - start, 1)
    self.save()
    print(f"  [{name}: {self.done[name]:.0f} s]", flush=True)


def _count_photos(data: str) -> dict[str, int]:
  try:
    entries = layouts.list_images(data, "folders")
  except UserError as e:
    raise UserError(str(e)) from None
  return dict(collections.Counter(entry.identity for entry in entries))


def _settings(args: Any) -> dict[str, Any]:
  if args.data:
    data = os.path.abspath(os.path.expanduser(args.data))
    if not os.path.isdir(data):
      raise UserError(f"--data={args.data} is not a folder: pass a folder with one sub-folder of "
                      "photos per identity")
    s = plan.plan_for_data(_count_photos(data), 2 if args.quick else None)
    s.update(data=data, detector=args.detector or detectors.DEFAULT,
             config=s["config"] + (":smoke" if args.quick else ""))
  else:
    s = dict(QUICK if args.quick else GENERATED)
    s.update({k: v for k, v in (("identities", args.identities), ("photos", args.photos)) if v})
    s.update(data=None, detector=args.detector or "none")  # Haar finds 12% of drawn faces
  s.update(epochs=args.epochs or s["epochs"], quick=bool(args.quick), seed=args.seed)
  return s


def run_demo(args: Any) -> None:
  settings = _settings(args)
  workdir = os.path.abspath(args.workdir)
  if settings["data"] and (settings["data"] + os.sep).startswith(workdir + os.sep):
    raise UserError(f"--data={settings['data']} is inside --workdir={workdir}, whose folders the "
                    "demo may delete: pass a --workdir outside your photos")
  state = State(workdir, settings, args.fresh)
  start = time.time()
  print(f"workdir {workdir}\nsettings: " + ", ".join(f"{k}={v}" for k, v in settings.items()
                                                       if v is not None))
  data = settings["data"] or "faces"
  config = settings["config"]  # a shipped config's name, e.g. orl or orl:smoke

  if not settings["data"]:
    state.step("faces", "generate a labelled set of drawn faces", lambda: run_step(
        "faces", "make-demo-data",
        ["--output=faces", f"--identities={settings['identities']}",
         f"--photos={settings['photos']}", f"--size={settings['image_size']}",
         f"--seed={settings['seed']}"], workdir))
  state.step("tfrecords", "face crops -> TFRecord shards, identity-disjoint train/val split",
             lambda: run_step("tfrecords", "build-tfrecords", [
                 "--layout=folders", f"--input={data}", "--output=tfrecords",
                 f"--detector={settings['detector']}", f"--size={settings['crop_size']}",
                 f"--val_fraction={settings['val_fraction']}", f"--seed={settings['seed']}",
                 "--noprogress"], workdir) or tfrecords.ShardSet.open(
                     os.path.join(workdir, "tfrecords")).check_trainable("train", "val"))
  epochs = int(settings["epochs"])
  train_args = [f"--config={config}", "--config.data.tfrecord_dir=tfrecords", "--workdir=train",
                f"--config.seed={settings['seed']}", f"--config.train.epochs={epochs}",
                f"--config.train.p={settings['p']}", f"--config.train.k={settings['k']}",
                f"--config.train.warmup_epochs={min(2.0, max(0.5, epochs / 10))}"]
  if settings["base_lr"] and not settings["quick"]:
    train_args.append(f"--config.train.base_lr={settings['base_lr']}")
  state.step("train", "train the embedding network (triplet loss; val = held-out identities)",
             lambda: run_step("train", "train", train_args, workdir))
  state.step("export", "export the best checkpoint as a SavedModel", lambda: run_step(
      "export", "export", ["--workdir=train", "--export_dir=export"], workdir))

  def heldout():
    n = heldout_lib.split_heldout(os.path.join(workdir, "tfrecords"), os.path.join(workdir, "heldout"),
                      settings["seed"])
    print(f"  {n['queries']} queries -> heldout/query, {n['gallery']} gallery photos -> heldout/"
          f"gallery, of {n['identities']} identities never seen in training (heldout/labels.txt)")
  state.step("heldout", "query/gallery split of the held-out identities", heldout)
  state.step("index", "embed the gallery and build a ScaNN index", lambda: run_step(
      "index", "build-index", ["--model=export", "--gallery=heldout/gallery", "--layout=flat",
                               "--index_dir=index", "--noprogress"], workdir))
  state.step("retrieve", "top-10 gallery photos per query -> submission.json", lambda: run_step(
      "retrieve", "retrieve", ["--index=index", "--queries=heldout/query", "--layout=flat",
                               "--output=submissions", "--groupname=facetriplet-demo", "--k=10",
                               "--noprogress"], workdir))
  state.step("evaluate", "score learned embedding vs classical features; retrieval grid",
             lambda: run_step("evaluate", "evaluate", [
                 "--model=export", "--queries=heldout/query", "--gallery=heldout/gallery",
                 "--labels=heldout/labels.txt", "--layout=flat", f"--features={FEATURES}",
                 "--output=eval", "--grid_queries=8", "--noprogress"], workdir))

  with open(os.path.join(workdir, "eval", "metrics.json"), encoding="utf-8") as f:
    results = json.load(f)["results"]
  shown = {name: {k: results[name][k] for k in SHOWN if k in results[name]}
           for name in FEATURES.split(",") if name in results}
  print("\n=== results: queries vs gallery, identities never seen in training "
        "(all columns: eval/metrics.md)\n")
  print(report.markdown_table(shown))
  best = max((name for name in shown if name != "embedding"),
             key=lambda name: shown[name].get("map@r", 0), default=None)
  if best and "embedding" in shown and shown["embedding"]["map@r"] < shown[best]["map@r"]:
    print(f"note: this short run's embedding is below {best} (mAP@R); train longer "
          f"(--epochs={2 * epochs}) or with more photos per identity\n")
  print("step times: " + ", ".join(f"{k} {state.done[k]:.0f} s" for k in state.order)
        + f" (sum {sum(state.done[k] for k in state.order):.0f} s)")
  print(f"retrieval grid:  {os.path.join(workdir, 'eval', 'grid.png')}  (green = same identity)")
  print(f"submission:      {os.path.join(workdir, 'submissions', 'submission.json')}")
  print(f"total time:      {time.time() - start:.0f} s")


_WORKDIR = flags.DEFINE_string("workdir", "demo_run", "Output folder of the run.")
_DATA = flags.DEFINE_string("data", None, "Your photos: one sub-folder of photos per identity "
                            "(default: generate drawn faces).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny set and seconds-long training (checks that "
                           "everything runs).")
_FRESH = flags.DEFINE_bool("fresh", False, "Start clean instead of resuming.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs (default: 25 for drawn faces, "
                               "from the data size for --data).")
_IDENTITIES = flags.DEFINE_integer("identities", None, "Generated identities (default 60).")
_PHOTOS = flags.DEFINE_integer("photos", None, "Generated photos per identity (default 12).")
_DETECTOR = flags.DEFINE_enum("detector", None, list(detectors.NAMES), "Face detector (default: "
                              f"{detectors.DEFAULT} for --data, none for drawn faces): "
                              + detectors.help_text() + ".")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of data, split and training.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  run_demo(types.SimpleNamespace(
      workdir=_WORKDIR.value, data=_DATA.value, quick=_QUICK.value, fresh=_FRESH.value,
      epochs=_EPOCHS.value, identities=_IDENTITIES.value, photos=_PHOTOS.value,
      detector=_DETECTOR.value, seed=_SEED.value))


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
