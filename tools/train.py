r"""Trains a face embedding model on TFRecord shards (thin tool; the logic is facetriplet.train).

  facetriplet-train --config=configs/lfw.py --config.data.tfrecord_dir=data/lfw_tfrecords \
      --workdir=runs/lfw

`--config=configs/<x>.py:smoke` runs the seconds-long variant; `--config.a.b=value` overrides any
field. Starting again with the same --workdir resumes an interrupted run.
"""

from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from facetriplet.errors import run_tool

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/lfw.py (append :smoke for the quick "
    "variant).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, logs, metrics); an "
                               "existing one is resumed.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from facetriplet import train  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  logging.info("workdir: %s", _WORKDIR.value)
  result = train.train_and_evaluate(config, _WORKDIR.value)
  shown = ", ".join(f"{k}={result[k]:.4f}" for k in ("top1", "top5", "top10", "map@r")
                    if k in result)
  print(f"trained {result.get('steps', 0)} steps; final val {shown}; best mAP@R "
        f"{result.get('best_map@r', float('nan')):.4f} at epoch {result.get('best_epoch')}; "
        f"checkpoints in {_WORKDIR.value}/checkpoints")


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
