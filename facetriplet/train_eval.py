"""The per-epoch retrieval evaluation of training, and the checkpoints it keeps.

`RetrievalEvaluation` is the Keras callback `train.py` adds to `fit`: at the start of a fresh run
it scores the untrained network (epoch 0, with the raw-pixel baseline beside it where
`facetriplet.classical` is installed); after every `every` epochs it embeds the val split,
scores leave-one-out retrieval with `metrics.retrieval_metrics` (every val photo queries all the
others), logs the numbers to the console and TensorBoard (`logs/retrieval`), rewrites
`metrics.jsonl` and keeps `checkpoints/best.keras` (highest mAP@R) and `checkpoints/last.keras`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from facetriplet import atomic

METRICS_FILE = "metrics.jsonl"
KS = (1, 5, 10)
_SHOWN = ("top1", "top5", "top10", "map@r")


def read_metrics(workdir: str) -> list[dict]:
  """The records of workdir/metrics.jsonl, in epoch order ([] when absent)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def write_metrics_record(workdir: str, record: Mapping[str, Any]) -> None:
  """Adds `record` to metrics.jsonl atomically, dropping records of its epoch or later.

  Records at or after the epoch come from a run that was killed before its backup; the re-run
  repeats those epochs, so their old lines would be stale.
  """
  kept = [r for r in read_metrics(workdir) if r["epoch"] < record["epoch"]]
  kept.append(dict(record))
  atomic.write_text(os.path.join(workdir, METRICS_FILE),
                    "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in kept))


def save_model_atomically(model: keras.Model, path: str) -> None:
  """Saves a `.keras` file under a temporary name in the same folder, then renames it."""
  with atomic.atomic_path(path) as tmp:
    staging = tmp + ".keras"  # Keras insists on the extension
    try:
      model.save(staging)
      os.replace(staging, tmp)
    finally:
      if os.path.exists(staging):
        os.remove(staging)


def _retrieval(embeddings: np.ndarray, labels: np.ndarray) -> dict:
  from facetriplet import metrics  # pylint: disable=g-import-not-at-top
  result = metrics.retrieval_metrics(embeddings, labels, embeddings, labels, ks=KS,
                                     leave_one_out=True)
  return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in result.items()}


class RetrievalEvaluation(keras.callbacks.Callback):
  """Scores val retrieval each `every` epochs and keeps last/best checkpoints.

  Args:
    workdir: training workdir.
    val_dataset: `input_pipeline.eval_dataset` of the val split.
    every: evaluate every this many epochs (and always after the last one).
    steps_per_epoch: to report the step of each record.
    crop: the manifest's crop settings (for the raw-pixel baseline).
    embedding_model: the model to score and checkpoint when the fitted model is another one (the
      embedding model under a training-only classifier head); default: the fitted model.
    flip: the primary metrics embed each image and its mirror and average (test-time flip, as
      the export will); the other variant is recorded too, under `noflip/` or `flip/`.
  """

  def __init__(self, workdir: str, val_dataset: tf.data.Dataset, every: int = 1,
               steps_per_epoch: int = 1, crop: Optional[Mapping[str, Any]] = None,
               embedding_model: Optional[keras.Model] = None, flip: bool = False):
    super().__init__()
    self.embedding_model = embedding_model
    self.flip = bool(flip)
    self.workdir = workdir
    self.val_dataset = val_dataset
    self.every = max(1, int(every))
    self.steps_per_epoch = steps_per_epoch
    self.crop = crop
    self._labels: Optional[np.ndarray] = None
    self._writer = None
    self.checkpoint_dir = os.path.join(workdir, "checkpoints")
    for name in ("last.keras", "best.keras"):  # temporaries of a killed run's saves
      atomic.recover(os.path.join(self.checkpoint_dir, name))
    trained = [r for r in read_metrics(workdir) if r["epoch"] > 0 and "map@r" in r]
    best = max(trained, key=lambda r: r["map@r"], default=None)
    self.best_map = best["map@r"] if best else -1.0
    self.best_epoch = best["epoch"] if best else 0

  def _images(self) -> tf.data.Dataset:
    return self.val_dataset.map(lambda d: d["image"])

  def _labels_array(self) -> np.ndarray:
    if self._labels is None:
      self._labels = np.concatenate([b.numpy() for b in self.val_dataset.map(
          lambda d: d["label"])]).astype(np.int64)
    return self._labels

  @property
  def scored_model(self) -> keras.Model:
    return self.embedding_model if self.embedding_model is not None else self.model

  def evaluate(self) -> dict:
    """Val retrieval metrics of the model as it is now (inference mode), with and without the
    test-time flip (`flip` picks which is primary)."""
    start = time.time()
    model = self.scored_model
    plain = np.asarray(model.predict(self._images(), verbose=0), np.float32)
    mirrored = np.asarray(model.predict(self._images().map(lambda x: tf.reverse(x, axis=[2])),
                                        verbose=0), np.float32)
    both = plain + mirrored
    both /= np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    main, other, prefix = (both, plain, "noflip") if self.flip else (plain, both, "flip")
    result = _retrieval(main, self._labels_array())
    result.update({f"{prefix}/{k}": v for k, v in _retrieval(other, self._labels_array()).items()
                   if k in _SHOWN})
    result["eval_seconds"] = round(time.time() - start, 2)
    return result

  def _pixel_baseline(self) -> dict:
    try:
      from facetriplet import classical  # pylint: disable=g-import-not-at-top
      extractor = classical.get_extractor("pixels", crop=self.crop)
      embeddings = np.concatenate([extractor.embed(b.numpy()) for b in self._images()])
      return {f"pixels/{k}": v for k, v in _retrieval(embeddings, self._labels_array()).items()
              if k in _SHOWN}
    except Exception as e:  # pylint: disable=broad-except
      logging.info("raw-pixel baseline skipped (%s: %s)", type(e).__name__, e)
      return {}

  def _record(self, epoch: int, result: dict, logs: Optional[Mapping[str, Any]] = None) -> None:
    step = int(self.model.optimizer.iterations.numpy()) if self.model.optimizer else 0
    record = {"epoch": epoch, "step": step, "time": round(time.time(), 1)}
    for key, value in (logs or {}).items():
      record[key] = float(value)
    if self.model.optimizer is not None:
      lr = self.model.optimizer.learning_rate
      record["learning_rate"] = float(np.asarray(lr(step) if callable(lr) else lr))
    record.update(result)
    write_metrics_record(self.workdir, record)
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(os.path.join(self.workdir, "logs",
                                                                "retrieval"))
    with self._writer.as_default():
      for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          tf.summary.scalar(key, value, step=epoch)
    self._writer.flush()
    shown = "  ".join(f"{k}={result[k]:.4f}" for k in _SHOWN if k in result)
    logging.info("epoch %d (step %d) val retrieval: %s", epoch, step, shown)

  def on_train_begin(self, logs=None):
    if any(r["epoch"] == 0 for r in read_metrics(self.workdir)):
      return
    result = self.evaluate()
    result.update(self._pixel_baseline())
    self._record(0, result)

  def on_epoch_end(self, epoch, logs=None):
    done = epoch + 1
    save_model_atomically(self.scored_model, os.path.join(self.checkpoint_dir, "last.keras"))
    if done % self.every and done != self.params.get("epochs"):
      return
    result = self.evaluate()
    self._record(done, result, logs)
    if result.get("map@r", -1.0) > self.best_map:
      self.best_map, self.best_epoch = result["map@r"], done
      save_model_atomically(self.scored_model, os.path.join(self.checkpoint_dir, "best.keras"))

  def best_summary(self) -> dict:
    return {"best_map@r": self.best_map, "best_epoch": self.best_epoch}
