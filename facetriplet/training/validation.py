"""The per-epoch retrieval evaluation of training.

`RetrievalEvaluation` is the Keras callback `train.py` adds to `fit`: at the start of a fresh run
it scores the untrained network (epoch 0, with the raw-pixel baseline beside it); after every
`every` epochs it embeds the val split, scores leave-one-out retrieval with
`metrics.retrieval_metrics` (every val photo queries all the others) and verification with
`verification.verification_metrics` over the pairs of val photos (`verification/tar@far=0.01`,
`verification/threshold@far=0.01`, `verification/eer`, ...: scalars only), logs the numbers to
the console and TensorBoard (`logs/retrieval`) and rewrites `metrics.jsonl`. It keeps no
checkpoint: `checkpoints.Checkpoints`, the next callback, reads its `last_result` (and records
the thresholds beside the checkpoint with `calibration_record`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from facetriplet import metrics, verification
from facetriplet.data import classical
from facetriplet.training.workdir import Workdir

KS = (1, 5, 10)
_SHOWN = ("top1", "top5", "top10", "map@r")
_LOGGED = _SHOWN + ("verification/tar@far=0.01", "verification/eer")


VERIFICATION = "verification/"


def _retrieval(embeddings: np.ndarray, labels: np.ndarray) -> dict:
  result = metrics.retrieval_metrics(
    embeddings, labels, embeddings, labels, ks=KS, leave_one_out=True
  )
  return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in result.items()}


def _verification(embeddings: np.ndarray, labels: np.ndarray) -> dict:
  """The scalars of verification over the val pairs, under `verification/` (None: too few
  different-identity pairs to resolve that FAR)."""
  result = verification.verification_metrics(embeddings, labels)
  keys = [
    f"{kind}@far={verification.far_key(f)}"
    for f in verification.FARS
    for kind in ("tar", "threshold")
  ]
  keys += ["eer", "eer_threshold", "auc", "num_positive_pairs", "num_negative_pairs"]
  return {VERIFICATION + k: result[k] for k in keys}


def calibration_record(
  result: Mapping[str, Any], epoch: int, weights: str, flip: bool
) -> Optional[dict]:
  """What `Workdir.write_calibration` keeps for a checkpoint: the thresholds an evaluation
  `result` measured, the epoch, and `weights` (`workdir.weights_digest` of the checkpoint's
  model) so an export can tell whether they belong to the model it exports. None when the result
  holds no verification."""
  if result.get(VERIFICATION + "num_positive_pairs") is None:
    return None
  fars = [verification.far_key(f) for f in verification.FARS]
  return {
    "version": 1,
    "epoch": int(epoch),
    "weights_sha256_16": weights,
    "test_time_flip": bool(flip),
    "pairs": "val photos, leave-one-out",
    "accept": "cosine similarity >= threshold",
    "thresholds": {f: result[f"{VERIFICATION}threshold@far={f}"] for f in fars},
    "tar": {f: result[f"{VERIFICATION}tar@far={f}"] for f in fars},
    **{
      k: result[VERIFICATION + k]
      for k in ("eer", "eer_threshold", "num_positive_pairs", "num_negative_pairs")
    },
  }


def embed_images(model: keras.Model, images: np.ndarray, flip: bool = False) -> np.ndarray:
  """Unit embeddings of a batch of uint8 images (inference mode); with `flip`, of each image and
  its mirror summed and normalised, as the evaluation and the export do."""
  out = np.asarray(model(images, training=False), np.float32)
  if flip:
    mirrored = np.ascontiguousarray(np.asarray(images)[:, :, ::-1])
    out = out + np.asarray(model(mirrored, training=False), np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
  return out


class RetrievalEvaluation(keras.callbacks.Callback):
  """Scores val retrieval each `every` epochs (and after the last one) into metrics.jsonl.

  After each epoch `last_result` holds that epoch's metrics, or None when it was not evaluated.

  Args:
    workdir: training workdir (a path or a `Workdir`).
    val_dataset: `input_pipeline.eval_dataset` of the val split.
    every: evaluate every this many epochs (and always after the last one).
    steps_per_epoch: to report the step of each record.
    crop: the manifest's crop settings (for the raw-pixel baseline).
    embedding_model: the model to score and checkpoint when the fitted model is another one (the
      embedding model under a training-only classifier head); default: the fitted model.
    flip: the primary metrics embed each image and its mirror and average (test-time flip, as
      the export will); the other variant is recorded too, under `noflip/` or `flip/`.
    local: embed by calling the model on this process's CPU/GPU instead of `model.predict`
      (multi-worker training, where `predict` is a collective that shards the val split across
      the workers; see `multi_worker`).
  """

  def __init__(
    self,
    workdir: str,
    val_dataset: tf.data.Dataset,
    every: int = 1,
    steps_per_epoch: int = 1,
    crop: Optional[Mapping[str, Any]] = None,
    embedding_model: Optional[keras.Model] = None,
    flip: bool = False,
    local: bool = False,
  ):
    super().__init__()
    self.local = bool(local)
    self._local_call = None
    self.embedding_model = embedding_model
    self.flip = bool(flip)
    self.workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    self.last_result: Optional[dict] = None
    self.val_dataset = val_dataset
    self.every = max(1, int(every))
    self.steps_per_epoch = steps_per_epoch
    self.crop = crop
    self._labels: Optional[np.ndarray] = None
    self._writer = None

  def _images(self) -> tf.data.Dataset:
    return self.val_dataset.map(lambda d: d["image"])

  def _labels_array(self) -> np.ndarray:
    if self._labels is None:
      self._labels = np.concatenate(
        [b.numpy() for b in self.val_dataset.map(lambda d: d["label"])]
      ).astype(np.int64)
    return self._labels

  @property
  def scored_model(self) -> keras.Model:
    return self.embedding_model if self.embedding_model is not None else self.model

  def _embed(self, images: tf.data.Dataset) -> np.ndarray:
    model = self.scored_model
    if not self.local:
      return np.asarray(model.predict(images, verbose=0), np.float32)
    if self._local_call is None or self._local_call[0] is not model:
      self._local_call = (
        model,
        tf.function(lambda x: model(x, training=False), reduce_retracing=True),
      )
    return np.concatenate([np.asarray(self._local_call[1](b), np.float32) for b in images])

  def evaluate(self) -> dict:
    """Val retrieval metrics of the model as it is now (inference mode), with and without the
    test-time flip (`flip` picks which is primary)."""
    start = time.time()
    plain = self._embed(self._images())
    mirrored = self._embed(self._images().map(lambda x: tf.reverse(x, axis=[2])))
    both = plain + mirrored
    both /= np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    main, other, prefix = (both, plain, "noflip") if self.flip else (plain, both, "flip")
    result = _retrieval(main, self._labels_array())
    result.update(_verification(main, self._labels_array()))
    result.update(
      {
        f"{prefix}/{k}": v
        for k, v in _retrieval(other, self._labels_array()).items()
        if k in _SHOWN
      }
    )
    result["eval_seconds"] = round(time.time() - start, 2)
    return result

  def _pixel_baseline(self) -> dict:
    try:
      extractor = classical.get_extractor("pixels", crop=self.crop)
      embeddings = np.concatenate([extractor.embed(b.numpy()) for b in self._images()])
      return {
        f"pixels/{k}": v
        for k, v in _retrieval(embeddings, self._labels_array()).items()
        if k in _SHOWN
      }
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
    self.workdir.write_metrics_record(record)
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(os.path.join(self.workdir.logs_dir, "retrieval"))
    with self._writer.as_default():
      for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          tf.summary.scalar(key, value, step=epoch)
    self._writer.flush()
    shown = "  ".join(f"{k}={result[k]:.4f}" for k in _LOGGED if result.get(k) is not None)
    logging.info("epoch %d (step %d) val retrieval: %s", epoch, step, shown)

  def on_train_begin(self, logs=None):
    if any(r["epoch"] == 0 for r in self.workdir.read_metrics()):
      return
    result = self.evaluate()
    result.update(self._pixel_baseline())
    self._record(0, result)

  def on_epoch_end(self, epoch, logs=None):
    done = epoch + 1
    self.last_result = None
    if done % self.every and done != self.params.get("epochs"):
      return
    self.last_result = self.evaluate()
    self._record(done, self.last_result, logs)
