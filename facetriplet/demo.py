r"""`make demo`: the whole job in one command, on a generated face set or on your own photos.

  python -m facetriplet.demo --workdir=demo_run                 # drawn faces, ~5 min on 2 cores
  python -m facetriplet.demo --workdir=my_run --data=~/photos   # <identity>/<photo> folders
  python -m facetriplet.demo --workdir=/tmp/q --quick           # seconds-long smoke run (tests)

Steps, each an installed console script run in a subprocess and printed first, so the demo is
also a walk-through (full logs: <workdir>/logs/<step>.log): faces (facetriplet-make-demo-data;
not with --data) -> tfrecords (-build-tfrecords: crops, identity-disjoint train/val split) ->
train (-train, a short configs/orl.py or lfw.py run) -> export -> heldout (query/gallery split,
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

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Optional, Sequence

from facetriplet import atomic, layouts, metrics
from facetriplet.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
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
             "val_fraction": 0.2, "config": "orl.py", "p": 8, "k": 4, "base_lr": 0.01}
QUICK = {"identities": 8, "photos": 4, "image_size": 64, "crop_size": 32, "epochs": 2,
         "val_fraction": 0.25, "config": "orl.py:smoke", "p": 4, "k": 2, "base_lr": None}
TRAIN_IMAGES_BUDGET = 12000  # images seen in training for --data (~3 min on 2 busy CPU cores)


class DemoError(Exception):
  """A problem the user can fix; printed as one line, exit status 2."""


def plan_for_data(counts: dict[str, int], epochs: Optional[int] = None) -> dict[str, Any]:
  """Settings for identity folders with these photo counts: K and the config follow the median
  photo count, at least 2 identities are held out, and training sees about TRAIN_IMAGES_BUDGET
  images (a few minutes on a 2-core CPU).

  Raises:
    DemoError: fewer than 4 identities with 2+ photos.
  """
  usable = sorted(n for n in counts.values() if n >= 2)
  if len(usable) < 4:
    raise DemoError(f"the data has {len(usable)} identities with 2 or more photos; the demo needs "
                    "at least 4 (one sub-folder of photos per identity)")
  val_fraction = min(0.5, max(0.2, 2.0 / len(usable)))
  train_ids = max(2, int(len(usable) * (1 - val_fraction)))
  k = min(4, max(2, int(statistics.median(usable)) // 2))
  train_images = max(1, int(sum(usable) * (1 - val_fraction)))
  if not epochs:
    epochs = min(60, max(3, round(TRAIN_IMAGES_BUDGET / train_images)))
  # 2-4 photos a person: the LFW config (P=48 x K=2); more: the ORL one (P=8 x K=4).
  config, p = ("lfw.py", min(train_ids, 48)) if k == 2 else ("orl.py", min(train_ids, 8))
  return {"identities": len(counts), "photos": int(statistics.median(usable)), "crop_size": 64,
          "epochs": int(epochs), "val_fraction": round(val_fraction, 3), "config": config,
          "p": p, "k": k, "base_lr": None}


def check_split(tfrecord_dir: str) -> None:
  """Raises DemoError unless the TFRecords hold 2+ train identities with 2+ photos and a val
  identity (e.g. when every photo was rejected)."""
  with open(os.path.join(tfrecord_dir, "manifest.json"), encoding="utf-8") as f:
    splits = json.load(f)["splits"]
  groups = {s: [n for shard in splits.get(s, {}).get("shards", []) for _, n in shard["groups"]]
            for s in ("train", "val")}
  if sum(n >= 2 for n in groups["train"]) < 2 or not groups["val"]:
    raise DemoError(f"too few usable photos in {tfrecord_dir} (train identities with 2+ photos: "
                    f"{sum(n >= 2 for n in groups['train'])}, held-out identities: "
                    f"{len(groups['val'])}); see the rejected files in its manifest.json")


def split_heldout(tfrecord_dir: str, out_dir: str, seed: int = 0) -> dict[str, int]:
  """Writes heldout/{query,gallery}/ (flat, anonymous names, hard links or copies) and
  labels.txt from the val split; returns counts."""
  with open(os.path.join(tfrecord_dir, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  by_label = {label: name for name, label in manifest["labels"].items()}
  held = sorted({by_label[label] for shard in manifest["splits"].get("val", {}).get("shards", [])
                 for label, _ in shard["groups"]})
  if not held:
    raise DemoError(f"{tfrecord_dir} has no held-out (val) identities; use more identities")
  rejected = {r["path"] for r in manifest.get("rejected", [])}
  photos: dict[str, list] = {name: [] for name in held}
  for entry in layouts.list_images(manifest["input"], "folders"):
    if entry.identity in photos and entry.rel_path not in rejected:
      photos[entry.identity].append(entry)
  shutil.rmtree(out_dir, ignore_errors=True)
  for sub in ("query", "gallery"):
    os.makedirs(os.path.join(out_dir, sub))
  rng = random.Random(seed)
  # Queries are named round by round (one per identity, then the second ones, ...), so the first
  # rows of the grid show different people.
  picked = []  # (kind, round, identity index, entry)
  for n, name in enumerate(held):
    entries = photos[name]
    count = min(3, max(1, len(entries) // 4)) if len(entries) >= 2 else 0
    queries = rng.sample(range(len(entries)), count)
    for i, entry in enumerate(entries):
      picked.append(("q", queries.index(i), n, entry) if i in queries else ("g", 0, n, entry))
  lines, numbers = [], {"q": 0, "g": 0}
  for kind, _, _, entry in sorted(picked, key=lambda t: t[:3]):
    file_name = f"{kind}{numbers[kind]:05d}{os.path.splitext(entry.path)[1].lower()}"
    numbers[kind] += 1
    target = os.path.join(out_dir, "query" if kind == "q" else "gallery", file_name)
    try:
      os.link(entry.path, target)
    except OSError:
      shutil.copyfile(entry.path, target)
    lines.append(f"{file_name} {'_'.join(entry.identity.split())}\n")  # labels: no spaces
  atomic.write_text(os.path.join(out_dir, "labels.txt"), "".join(lines))
  return {"identities": len(held), "queries": numbers["q"], "gallery": numbers["g"]}


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
  raises DemoError if it fails."""
  command = _tool_command(tool) + list(args)
  print(f"\n$ {' '.join(['facetriplet-' + tool] + list(args))}", flush=True)
  log_path = os.path.join(workdir, "logs", f"{step}.log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
  # An editable install does not put the package's __init__ on console scripts' path.
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
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
    raise DemoError(f"step '{step}' failed (facetriplet-{tool} exit status {code}); full log: "
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
      raise DemoError(f"{workdir} is not empty and was not written by the demo (no {STATE}): "
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
    raise DemoError(str(e)) from None
  return dict(collections.Counter(entry.identity for entry in entries))


def _settings(args: argparse.Namespace) -> dict[str, Any]:
  if args.data:
    data = os.path.abspath(os.path.expanduser(args.data))
    if not os.path.isdir(data):
      raise DemoError(f"--data={args.data} is not a folder: pass a folder with one sub-folder of "
                      "photos per identity")
    s = plan_for_data(_count_photos(data), 2 if args.quick else None)
    s.update(data=data, detector=args.detector or "mtcnn",
             config=s["config"] + (":smoke" if args.quick else ""))
  else:
    s = dict(QUICK if args.quick else GENERATED)
    s.update({k: v for k, v in (("identities", args.identities), ("photos", args.photos)) if v})
    s.update(data=None, detector=args.detector or "none")  # Haar finds 12% of drawn faces
  s.update(epochs=args.epochs or s["epochs"], quick=bool(args.quick), seed=args.seed)
  return s


def run_demo(args: argparse.Namespace) -> None:
  settings = _settings(args)
  workdir = os.path.abspath(args.workdir)
  if settings["data"] and (settings["data"] + os.sep).startswith(workdir + os.sep):
    raise DemoError(f"--data={settings['data']} is inside --workdir={workdir}, whose folders the "
                    "demo may delete: pass a --workdir outside your photos")
  state = State(workdir, settings, args.fresh)
  start = time.time()
  print(f"workdir {workdir}\nsettings: " + ", ".join(f"{k}={v}" for k, v in settings.items()
                                                       if v is not None))
  data = settings["data"] or "faces"
  config = os.path.join(CONFIGS, settings["config"])  # configs/<x>.py[:variant]
  if not os.path.isfile(os.path.join(CONFIGS, settings["config"].partition(":")[0])):
    raise DemoError(f"{config} not found: run the demo from a source checkout (make demo)")

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
                 "--noprogress"], workdir) or check_split(os.path.join(workdir, "tfrecords")))
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
    n = split_heldout(os.path.join(workdir, "tfrecords"), os.path.join(workdir, "heldout"),
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
  print(metrics.to_markdown(shown))
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


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m facetriplet.demo", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="demo_run", help="Output folder of the run.")
  parser.add_argument("--data", help="Your photos: one sub-folder of photos per identity "
                      "(default: generate drawn faces).")
  parser.add_argument("--quick", action="store_true",
                      help="Tiny set and seconds-long training (checks that everything runs).")
  parser.add_argument("--fresh", action="store_true", help="Start clean instead of resuming.")
  parser.add_argument("--epochs", type=int, help="Training epochs (default: 25 for drawn faces, "
                      "from the data size for --data).")
  parser.add_argument("--identities", type=int, help="Generated identities (default 60).")
  parser.add_argument("--photos", type=int, help="Generated photos per identity (default 12).")
  parser.add_argument("--detector", choices=("mtcnn", "haar", "none"),
                      help="Face detector (default: mtcnn for --data, none for drawn faces).")
  parser.add_argument("--seed", type=int, default=0, help="Seed of data, split and training.")
  args = parser.parse_args(argv)
  try:
    run_demo(args)
  except DemoError as e:
    print(f"demo: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("\ndemo: interrupted; run the same command again to resume", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
