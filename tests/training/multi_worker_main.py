"""One worker of tests/training/test_multi_worker.py: trains the smoke config under the TF_CONFIG
of its environment (MultiWorkerMirroredStrategy, one CPU replica per worker) and leaves evidence
in --out:

  batches.task<i>.npz         --check_batches=N: the labels of this worker's replica in the first
                              N steps of the distributed training set (`chunk<step>`), and on the
                              chief the N global batches of the same pipeline undistributed
                              (`global<step>`)
  weights.task<i>.epoch<e>.npz  the model's variables after epoch e, keyed
                              `<trainable|non_trainable|optimizer>/<index>/<variable path>`
  files.task<i>.epoch<e>.json   the files under this worker's own output folder after epoch e
  epoch<e>.task<i>            written after epoch e (after its backup) when e == --pause_after;
                              a worker given --pause then sleeps there until it is killed
  result.task<i>.json         what train_and_evaluate returned

Run as a script (`python tests/training/multi_worker_main.py ...`): the strategy must be the
first TensorFlow thing the process makes.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from facetriplet import config_files  # noqa: E402
from facetriplet.data import input_pipeline  # noqa: E402
from facetriplet.training import multi_worker, train  # noqa: E402
from facetriplet.training.workdir import Workdir  # noqa: E402


class Evidence(keras.callbacks.Callback):
  """Records weights and written files after every epoch; optionally stops after one."""

  def __init__(self, out, task_id, own_dir, pause_after, pause):
    super().__init__()
    self.out, self.task_id, self.own_dir = out, task_id, own_dir
    self.pause_after, self.pause = pause_after, pause

  def on_epoch_end(self, epoch, logs=None):
    done = epoch + 1
    stem = os.path.join(self.out, f"{{}}.task{self.task_id}.epoch{done}")
    groups = {
      "trainable": self.model.trainable_weights,
      "non_trainable": self.model.non_trainable_weights,
      "optimizer": self.model.optimizer.variables,
    }
    arrays = {
      f"{group}/{i:04d}/{v.path}": np.asarray(v.numpy())
      for group, variables in groups.items()
      for i, v in enumerate(variables)
    }
    np.savez(stem.format("weights") + ".npz", **arrays)
    files = sorted(
      os.path.relpath(os.path.join(d, f), self.own_dir)
      for d, _, names in os.walk(self.own_dir)
      for f in names
    )
    with open(stem.format("files") + ".json", "w", encoding="utf-8") as f:
      json.dump(files, f)
    if done == self.pause_after:
      with open(
        os.path.join(self.out, f"epoch{done}.task{self.task_id}"), "w", encoding="utf-8"
      ) as f:
        f.write(str(os.getpid()))
      while self.pause:
        time.sleep(1)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--check_batches", type=int, default=0)
  parser.add_argument("--pause_after", type=int, default=0)
  parser.add_argument("--pause", action="store_true")
  parser.add_argument("--heartbeat_timeout_s", type=float, default=60.0)
  args = parser.parse_args()

  config = config_files.load_config(os.path.join(REPO, "configs", "default.py"), "smoke")
  config.data.tfrecord_dir = args.data
  config.train.update(dict(num_replicas=2, p=2, k=2, epochs=args.epochs, projector_points=8))
  config.train.heartbeat_timeout_s = args.heartbeat_timeout_s
  strategy = train.make_strategy(config.train)
  assert multi_worker.in_multi_worker_mode(strategy) and strategy.num_replicas_in_sync == 2
  task_id = multi_worker.task(strategy)[1]
  chief = multi_worker.is_chief(strategy)
  assert chief == (task_id == 0)

  if args.check_batches:

    def pipeline():
      return input_pipeline.train_dataset(args.data, "train", p=2, k=2, num_replicas=2, seed=3)

    found = {}
    chunks = iter(strategy.experimental_distribute_dataset(pipeline()))
    for step in range(args.check_batches):
      labels = strategy.experimental_local_results(next(chunks)[1])
      assert len(labels) == 1
      found[f"chunk{step}"] = labels[0].numpy()
    if chief:
      for step, (_, labels) in enumerate(pipeline().take(args.check_batches)):
        found[f"global{step}"] = labels.numpy()
    np.savez(os.path.join(args.out, f"batches.task{task_id}.npz"), **found)

  run_dir = Workdir(args.workdir)
  own_dir = run_dir.path if chief else run_dir.worker_temp(task_id).path
  evidence = Evidence(args.out, task_id, own_dir, args.pause_after, args.pause)
  result = train.train_and_evaluate(config, args.workdir, extra_callbacks=[evidence])
  with open(os.path.join(args.out, f"result.task{task_id}.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, default=str)


if __name__ == "__main__":
  tf.get_logger().setLevel("ERROR")
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  main()
