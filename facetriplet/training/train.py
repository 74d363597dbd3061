"""Training: strategy, optimizer, fit with resumable checkpoints, per-epoch retrieval evaluation.

`train_and_evaluate(config, workdir)` writes the files of a `workdir.Workdir` (config.json,
manifest.json, metrics.jsonl with epoch 0 the untrained network beside the raw-pixel baseline,
checkpoints/{last,best}.keras, backup/<phase>/, logs/). The optimizer and its phases are `optim`;
the per-epoch evaluation `validation`; the kept checkpoints `checkpoints`.

A run killed at any point and started again with the same workdir continues from the last
backup: the epoch count, optimizer state and step counter come back, so the finished run has the
same number of steps as an uninterrupted one (a kill between two backups repeats that part).

Loss scaling: Keras 3 divides each replica's mean loss by the number of replicas before the
gradient all-reduce (a sum), so the applied gradient is that of the mean of the per-replica
losses, and the reported loss is that mean too (tests/training/test_train.py checks both numbers).
Triplet mining sees one replica's sub-batch, which the input pipeline fills with whole identities.

Transfer learning: with `train.freeze_backbone_epochs = N > 0` the first N epochs train only the
projection (backbone frozen, its BatchNorm in inference mode); then the backbone is unfrozen and
training continues with the learning rate times `train.finetune_lr_multiplier`, on the same
warm-up + cosine schedule and step counter.

Two stages in one run: `loss.kind` may be a margin softmax (`cosface`, `arcface`; see
`margin_softmax`), trained through a `CosineClassifier` head over the training identities (labels
remapped to 0..C-1) stacked on the embedding model; with `finetune.epochs = F > 0` the last F of
`train.epochs` epochs then fine-tune the embedding alone with the triplet loss `finetune.kind` on
the same P x K batches, on a schedule of their own (warm-up `finetune.warmup_epochs`, cosine to the
end, peak lr times `finetune.lr_multiplier`). Each stage has its own backup folder, so a run killed
in either stage resumes where it was. The head is never part of `checkpoints/*.keras` nor of the
export: those hold the embedding model only.

Several machines: under `MultiWorkerMirroredStrategy` (TF_CONFIG naming several tasks) every
worker runs this same function with the same workdir; only the chief writes it, the others write
the same files into a temporary folder removed at the end, and every worker restores the chief's
backup (see `multi_worker`; the input pipeline gives every step the same global batch as one
machine would, see `input_pipeline`).

Warm start: `train.init_from` (a training workdir, a `.keras` checkpoint or an export folder)
copies that model's embedding weights into the new model before the first step (same backbone,
width, image size and embedding size), to fine-tune a trained model on a user's own people.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional, Sequence

import keras
import tensorflow as tf
from absl import logging

from facetriplet import atomic
from facetriplet.data import input_pipeline, tfrecords
from facetriplet.errors import UserError
from facetriplet.training import (
  distill,
  losses,
  margin_softmax,
  multi_worker,
  optim,
  preflight,
  progress,
  projector,
  warm_start,
)
from facetriplet.training import model as model_lib
from facetriplet.training.checkpoints import Checkpoints
from facetriplet.training.validation import RetrievalEvaluation
from facetriplet.training.workdir import Workdir


class _Backup(keras.callbacks.BackupAndRestore):
  """BackupAndRestore that records the right epoch in mid-epoch saves after a resume.

  Keras 3.15 tracks the epoch only in `on_epoch_end`, so a `save_freq=<steps>` backup written in
  the first epoch of a resumed run would claim epoch 0.

  Multi-worker: a non-chief worker restores from `restore_from` (the chief's backup) and writes
  its own saves into `backup_dir` (its temporary folder); at the start all workers check that they
  restored the same epoch.
  """

  def __init__(self, backup_dir: str, restore_from: Optional[str] = None, **kwargs):
    super().__init__(backup_dir, **kwargs)
    if restore_from:
      for name in ("_weights_path", "_training_metadata_path"):
        setattr(self, name, os.path.join(restore_from, os.path.basename(getattr(self, name))))
      self._prev_weights_path = f"{self._weights_path}.bkp"
      self._prev_training_metadata_path = f"{self._training_metadata_path}.bkp"

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    restored = self.model._initial_epoch  # pylint: disable=protected-access
    multi_worker.check_agree(
      self.model.distribute_strategy,
      -1 if restored is None else restored,
      f"the epoch restored from {self._training_metadata_path} (-1: none)",
      "the workdir must be on storage every worker sees (every worker restores the chief's backup)",
    )

  def on_epoch_begin(self, epoch, logs=None):
    self._current_epoch = epoch

  def _save_model(self):
    """Weights and epoch written together into a new folder that replaces the backup folder in
    one step (`atomic.atomic_path`): a kill at any moment leaves the previous complete backup.
    (Keras writes the two files in place, one after the other: a kill in between left weights
    that would not load, or weights one epoch ahead of the recorded epoch.)"""
    os.makedirs(os.path.dirname(os.path.abspath(self.backup_dir)), exist_ok=True)
    with atomic.atomic_path(self.backup_dir) as tmp:
      os.makedirs(tmp)
      self.model.save_weights(
        os.path.join(tmp, os.path.basename(self._weights_path)), overwrite=True
      )
      with open(
        os.path.join(tmp, os.path.basename(self._training_metadata_path)), "w", encoding="utf-8"
      ) as f:
        json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)


def split_cpu(replicas: int) -> None:
  """Splits the physical CPU into `replicas` logical devices (before TensorFlow starts).

  Raises:
    UserError: TensorFlow already started with fewer logical CPUs.
  """
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
      cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
    )
  except RuntimeError as e:
    have = len(tf.config.list_logical_devices("CPU"))
    if have < replicas:
      raise UserError(
        f"train.cpu_replicas={replicas} needs the CPU split before TensorFlow "
        f"starts, but it already runs with {have} CPU device(s): call "
        "train.split_cpu first or run in a fresh process"
      ) from e


_STRATEGIES: dict = {}


def make_strategy(train_config: Any) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy when TF_CONFIG names several tasks (chief and workers; Keras
  patched for it by `multi_worker.patch_keras`), else MirroredStrategy over all local GPUs, else
  over `train_config.cpu_replicas` logical CPUs (the default strategy for one CPU).

  One strategy per kind is kept for the life of the process: a second MirroredStrategy over the
  same CPUs reuses the first one's collective keys, and its all-reduces then abort with "Shape
  mismatch in the collective instance" (seen when a run resumes in the same process).
  """
  if multi_worker.configured():
    multi_worker.patch_keras()
    multi_worker.configure_heartbeat(float(train_config.get("heartbeat_timeout_s", 60)))
    key = ("multi_worker",)
    factory = tf.distribute.MultiWorkerMirroredStrategy
  elif tf.config.list_physical_devices("GPU"):
    key = ("gpus",)
    factory = tf.distribute.MirroredStrategy
  else:
    replicas = int(train_config.get("cpu_replicas", 1) or 1)
    if replicas <= 1:
      return tf.distribute.get_strategy()
    split_cpu(replicas)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
    key = ("cpu", replicas)
    factory = lambda: tf.distribute.MirroredStrategy(devices)  # noqa: E731
  if key not in _STRATEGIES:
    _STRATEGIES[key] = factory()
  return _STRATEGIES[key]


def _distilling(config: Any) -> bool:
  return bool(config.get("distill", {}) and config.distill.get("teacher", ""))


def _compile(
  model: keras.Model,
  loss_config: Any,
  optimizer: keras.optimizers.Optimizer,
  jit_compile: bool,
  distill_weight: float = 0.0,
) -> None:
  """Compiles `model` for `loss_config` (config.loss or config.finetune), plus the distillation
  term when `distill_weight`."""
  kind = loss_config.kind
  if kind in margin_softmax.KINDS:
    loss = margin_softmax.MarginSoftmaxLoss(
      kind, float(loss_config.scale), float(loss_config.class_margin)
    )
    metrics = [margin_softmax.HeadAccuracy()]
  else:
    loss = losses.TripletLoss(
      kind,
      loss_config.margin,
      loss_config.distance,
      soft=bool(loss_config.get("soft", False)),
      distill_weight=distill_weight,
      threshold=float(loss_config.get("threshold", losses.pair_loss.THRESHOLD)),
    )
    metrics = [losses.ActiveTripletFraction(loss_config.margin, loss_config.distance)]
    if distill_weight:
      metrics.append(losses.TeacherCosine())
  model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile, metrics=metrics)


def _check_loss(config: Any) -> None:
  kinds = losses.KINDS + margin_softmax.KINDS
  if config.loss.kind not in kinds:
    raise UserError(
      f"unknown loss.kind {config.loss.kind!r}; valid: {', '.join(kinds)} (set --config.loss.kind)"
    )


def train_and_evaluate(
  config: Any, workdir: str, extra_callbacks: Optional[Sequence[keras.callbacks.Callback]] = None
) -> dict:
  """Trains the embedding model of `config` and evaluates retrieval on the val split each epoch.

  Args:
    config: experiment ConfigDict (see configs/default.py).
    workdir: output folder; an existing one from an interrupted run is resumed.
    extra_callbacks: more Keras callbacks (tests use one to interrupt a run).

  Returns:
    The last metrics.jsonl record (val retrieval metrics of the final epoch) plus
    `best_map@r`, `best_epoch`, `steps` and `workdir`.

  Raises:
    UserError: missing data, bad settings, weights that cannot be loaded.
  """
  logging.info("config:\n%s", config)
  shard_set = preflight.training_data(config)
  _check_loss(config)
  phases = optim.phases(config)
  strategy = make_strategy(config.train)
  run_dir = Workdir(workdir)
  if multi_worker.is_chief(strategy):
    return _train(config, shard_set, phases, strategy, run_dir, run_dir, extra_callbacks)
  # Another worker of a multi-worker run: the same work, its files in a folder of its own.
  task_type, task_id = multi_worker.task(strategy)
  out = run_dir.worker_temp(task_id)
  logging.info(
    "%s %d of a multi-worker run: the chief writes %s, this worker %s (removed at the end)",
    task_type,
    task_id,
    run_dir.path,
    out.path,
  )
  shutil.rmtree(out.path, ignore_errors=True)  # left by a killed run
  try:
    return _train(config, shard_set, phases, strategy, run_dir, out, extra_callbacks)
  finally:
    shutil.rmtree(out.path, ignore_errors=True)


def _train(
  config: Any,
  shard_set: tfrecords.ShardSet,
  phases: Sequence[optim.Phase],
  strategy: tf.distribute.Strategy,
  run_dir: Workdir,
  out: Workdir,
  extra_callbacks: Optional[Sequence[keras.callbacks.Callback]],
) -> dict:
  """`train_and_evaluate` on this process: `run_dir` is the run's workdir, `out` the one this
  process writes (`run_dir` itself, or a non-chief worker's temporary folder)."""
  data_dir = config.data.tfrecord_dir
  out.start(config.to_dict(), shard_set.manifest)
  train = config.train
  replicas = strategy.num_replicas_in_sync
  p, k = int(train.p), int(train.k)
  global_batch = replicas * p * k
  steps = shard_set.steps_per_epoch(config.data.train_split, global_batch, train.steps_per_epoch)
  epochs = int(train.epochs)
  peak_lr = optim.peak_learning_rate(config, replicas)
  crop_size = int(config.model.crop_size or shard_set.crop_size)
  jit = bool(train.jit_compile) and not (
    replicas > 1 and not tf.config.list_physical_devices("GPU")
  )  # XLA fails under MirroredStrategy on CPU
  side = model_lib.center_crop_side(crop_size, config.model.get("center_crop", 1.0))
  logging.info(
    "%d replica(s) x P=%d x K=%d = global batch %d; %d steps/epoch x %d epochs; "
    "peak lr %.3g; stored crops %d px%s -> %d px",
    replicas,
    p,
    k,
    global_batch,
    steps,
    epochs,
    peak_lr,
    crop_size,
    f" (middle {side} px)" if side != crop_size else "",
    config.model.image_size,
  )

  teacher_targets = None
  if _distilling(config):
    teacher_targets = distill.targets(config, shard_set, out)
  dataset = input_pipeline.train_dataset(
    data_dir,
    config.data.train_split,
    p,
    k,
    replicas,
    int(config.seed),
    max_group_size=int(config.data.max_group_size),
    min_photos=int(config.data.min_photos),
    shuffle_groups=int(config.data.shuffle_groups),
    cache=bool(config.data.cache),
    targets=teacher_targets,
  )
  head_model = None
  if config.loss.kind in margin_softmax.KINDS:
    classes = shard_set.trainable_labels(config.data.train_split, int(config.data.min_photos))
    table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
        tf.constant(classes, tf.int64), tf.range(len(classes), dtype=tf.int64)
      ),
      default_value=-1,
    )
    dataset = dataset.map(lambda x, y: (x, table.lookup(tf.cast(y, tf.int64))))
    logging.info("margin softmax (%s) over %d training identities", config.loss.kind, len(classes))
  val = input_pipeline.eval_dataset(
    data_dir, config.data.val_split, int(train.eval_batch_size), cache=bool(config.data.cache)
  )
  with strategy.scope():
    model = model_lib.build_embedding_model(config, crop_size)
    if config.train.get("init_from", ""):
      warm_start.load_into(model, config.train.init_from)
    if config.loss.kind in margin_softmax.KINDS:
      head = margin_softmax.CosineClassifier(len(classes), name="class_head")
      head_model = keras.Model(model.inputs, head(model.outputs[0]), name="train_with_head")
  evaluation = RetrievalEvaluation(
    out,
    val,
    int(train.get("eval_every_epochs", 1) or 1),
    steps,
    crop=shard_set.crop,
    embedding_model=model,
    flip=bool(config.model.get("test_time_flip", False)),
    local=multi_worker.in_multi_worker_mode(strategy),
  )
  checkpoints = Checkpoints(out, evaluation)
  tensorboard = keras.callbacks.TensorBoard(out.logs_dir, write_graph=False, profile_batch=0)
  save_freq = int(train.checkpoint_every_steps) or "epoch"
  fitted = model
  for phase in phases:
    backup = _Backup(
      out.backup_dir(phase.backup),
      save_freq=save_freq,
      delete_checkpoint=False,
      restore_from=None if out is run_dir else run_dir.backup_dir(phase.backup),
    )
    fitted = head_model if phase.loss.kind in margin_softmax.KINDS else model
    with strategy.scope():
      model_lib.set_backbone_trainable(
        model, phase.trainable, str(config.model.get("frozen_until", "") or "")
      )
      optimizer = optim.make_optimizer(
        train, peak_lr, steps, phase, config.model.get("mixed_precision", "")
      )
      _compile(
        fitted,
        phase.loss,
        optimizer,
        jit,
        float(config.distill.weight) if _distilling(config) else 0.0,
      )
      optimizer.build(fitted.trainable_variables)
      # The schedules run on the global step: each phase starts where the last one stopped.
      optimizer.iterations.assign(phase.first * steps)
    # Keras keeps the epoch restored by BackupAndRestore on the model and never resets it.
    fitted._initial_epoch = None  # pylint: disable=protected-access
    logging.info(
      "%s: epochs %d-%d, loss %s, backbone %s, lr x %g",
      phase.backup,
      phase.first + 1,
      phase.last,
      phase.loss.kind,
      "trainable" if phase.trainable else "frozen",
      phase.multiplier,
    )
    fitted.fit(
      dataset,
      epochs=phase.last,
      initial_epoch=phase.first,
      steps_per_epoch=steps,
      shuffle=False,  # the pipeline shuffles
      # Evaluation first: an epoch is recorded before its backup, so a kill between
      # the two repeats the epoch (and its record) instead of losing the record; the
      # checkpoints read the evaluation's result.
      callbacks=[
        progress.Throughput(global_batch),
        evaluation,
        checkpoints,
        backup,
        tensorboard,
        *(extra_callbacks or []),
      ],
      verbose=progress.verbosity(train.get("verbose", -1)),
    )
  if out is run_dir:  # logs/projector: val embeddings of best.keras (the chief's only)
    projector.write_for_run(config, run_dir, model)
  records = out.read_metrics()
  final = dict(records[-1]) if records else {}
  final.update(checkpoints.best_summary())
  final.update({"steps": int(fitted.optimizer.iterations.numpy()), "workdir": run_dir.path})
  logging.info("done: %s", json.dumps(final, sort_keys=True, default=str))
  return final
