"""The checkpoints a training run keeps: `checkpoints/last.keras` after every epoch and
`checkpoints/best.keras` whenever the val mAP@R of `RetrievalEvaluation` improves.

`Checkpoints` is the Keras callback after the evaluation in `fit`'s list: it reads the epoch's
metrics from the evaluation callback and saves the embedding model (never a training-only head),
each file written under a temporary name and renamed (`workdir.save_model_atomically`). Beside
each checkpoint it records the verification thresholds the same evaluation measured for those
weights (`Workdir.write_calibration`: `<which>.calibration.json`, written after the checkpoint
and naming its weights by `weights_digest`, so a kill in between never pairs a checkpoint with
another one's thresholds); a last.keras saved after an epoch that was not evaluated has none.
"""

from __future__ import annotations

from typing import Optional

import keras

from facetriplet.training.validation import RetrievalEvaluation, calibration_record
from facetriplet.training.workdir import Workdir, save_model_atomically, weights_digest


class Checkpoints(keras.callbacks.Callback):
  """Saves last.keras every epoch and best.keras on a new best val mAP@R, each with its
  calibration.

  Args:
    workdir: the run's `Workdir`.
    evaluation: the run's `RetrievalEvaluation` (placed before this callback).
  """

  def __init__(self, workdir: Workdir, evaluation: RetrievalEvaluation):
    super().__init__()
    self.workdir = workdir
    self.evaluation = evaluation
    workdir.recover_checkpoints()  # temporaries of a killed run's saves
    trained = [r for r in workdir.read_metrics() if r["epoch"] > 0 and "map@r" in r]
    best: Optional[dict] = max(trained, key=lambda r: r["map@r"], default=None)
    self.best_map = best["map@r"] if best else -1.0
    self.best_epoch = best["epoch"] if best else 0

  def on_epoch_end(self, epoch, logs=None):
    model = self.evaluation.scored_model
    result = self.evaluation.last_result
    calibration = None
    if result is not None:
      calibration = calibration_record(
        result, epoch + 1, weights_digest(model), self.evaluation.flip
      )
    save_model_atomically(model, self.workdir.checkpoint("last"))
    self.workdir.write_calibration("last", calibration)
    if result is not None and result.get("map@r", -1.0) > self.best_map:
      self.best_map, self.best_epoch = result["map@r"], epoch + 1
      save_model_atomically(model, self.workdir.checkpoint("best"))
      self.workdir.write_calibration("best", calibration)

  def best_summary(self) -> dict:
    return {"best_map@r": self.best_map, "best_epoch": self.best_epoch}
