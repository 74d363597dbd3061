r"""`make demo`: the whole job in one command, on a generated face set or on your own photos.

  facetriplet-demo --workdir=demo_run                 # drawn faces, ~6 min on 2 cores
  facetriplet-demo --workdir=my_run --data=~/photos   # <identity>/<photo> folders
  facetriplet-demo --workdir=/tmp/q --quick           # seconds-long smoke run (tests)

Steps, each an installed console script run in a subprocess and printed first, so the demo is also a
walk-through (full logs: <workdir>/logs/<step>.log): faces (facetriplet-make-demo-data; not with
--data) -> tfrecords (-build-tfrecords: crops, identity-disjoint train/val split) -> train (-train,
a short run of the shipped orl or lfw config) -> export -> heldout (query/gallery split, in this
process) -> index (-build-index of the held-out gallery) -> retrieve (-retrieve:
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

import types
from typing import Sequence

from absl import app
from absl import flags

from facetriplet.data import detectors
from facetriplet.demo import workflow
from facetriplet.errors import run_tool

_WORKDIR = flags.DEFINE_string("workdir", "demo_run", "Output folder of the run.")
_DATA = flags.DEFINE_string(
  "data",
  None,
  "Your photos: one sub-folder of photos per identity (default: generate drawn faces).",
)
_QUICK = flags.DEFINE_bool(
  "quick", False, "Tiny set and seconds-long training (checks that everything runs)."
)
_FRESH = flags.DEFINE_bool("fresh", False, "Start clean instead of resuming.")
_EPOCHS = flags.DEFINE_integer(
  "epochs", None, "Training epochs (default: 25 for drawn faces, from the data size for --data)."
)
_IDENTITIES = flags.DEFINE_integer("identities", None, "Generated identities (default 60).")
_PHOTOS = flags.DEFINE_integer("photos", None, "Generated photos per identity (default 12).")
_DETECTOR = flags.DEFINE_enum(
  "detector",
  None,
  list(detectors.NAMES),
  "Face detector (default: "
  f"{detectors.DEFAULT} for --data, none for drawn faces): " + detectors.help_text() + ".",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of data, split and training.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workflow.run_demo(
    types.SimpleNamespace(
      workdir=_WORKDIR.value,
      data=_DATA.value,
      quick=_QUICK.value,
      fresh=_FRESH.value,
      epochs=_EPOCHS.value,
      identities=_IDENTITIES.value,
      photos=_PHOTOS.value,
      detector=_DETECTOR.value,
      seed=_SEED.value,
    )
  )


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
