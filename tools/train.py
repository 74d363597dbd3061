r"""Trains a face embedding model on TFRecord shards (the logic is facetriplet.training.train).

  facetriplet-train --config=lfw --config.data.tfrecord_dir=data/lfw_tfrecords --workdir=runs/lfw
  facetriplet-train --config=orl:smoke --config.data.tfrecord_dir=... --workdir=/tmp/smoke
  facetriplet-train --config=configs/lfw.py --config.train.epochs=10 ...   # a config file path

`--config` takes the name of a shipped config (default, lfw, orl) or the path of a config file;
`:smoke` selects the seconds-long variant; `--config.a.b=value` overrides any field. Starting
again with the same --workdir resumes an interrupted run.
"""

import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from facetriplet import config_files
from facetriplet.errors import UserError, run_tool

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config: a shipped name ("
  + ", ".join(config_files.shipped())
  + ") or a config file path, e.g. configs/lfw.py; append :smoke for the quick variant.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Output folder (checkpoints, logs, metrics); an existing one is resumed."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  try:
    config.data  # noqa: B018  (ml_collections reports an unreadable file on first use)
  except OSError as e:
    config_files.check_file(config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0])
    raise UserError(f"--config: {e}") from None
  from facetriplet.training import preflight  # pylint: disable=g-import-not-at-top

  preflight.training_data(config)  # a wrong data path is reported before TensorFlow loads
  from facetriplet.training import train  # pylint: disable=g-import-not-at-top  (TensorFlow)

  logging.info("workdir: %s", _WORKDIR.value)
  result = train.train_and_evaluate(config, _WORKDIR.value)
  shown = ", ".join(
    f"{k}={result[k]:.4f}" for k in ("top1", "top5", "top10", "map@r") if k in result
  )
  print(
    f"trained {result.get('steps', 0)} steps; final val {shown}; best mAP@R "
    f"{result.get('best_map@r', float('nan')):.4f} at epoch {result.get('best_epoch')}; "
    f"checkpoints in {_WORKDIR.value}/checkpoints"
  )


def run() -> None:
  sys.argv = config_files.resolve_argv(sys.argv)  # --config=lfw: a shipped config's name
  run_tool(main)


if __name__ == "__main__":
  run()
