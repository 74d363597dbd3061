"""The optimizer of a training run: its phases, the warm-up + cosine schedule, the peak rate.

A run is one to three `model.fit` calls (`Phase`): an optional frozen-backbone phase, the main
loss, and an optional triplet fine-tuning stage (see `train.py`). Every phase's schedule runs on
the global step, so a phase starts where the last one stopped and a resumed run continues on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from facetriplet.errors import UserError
from facetriplet.training import losses


@keras.saving.register_keras_serializable(package="facetriplet")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up to `peak` over `warmup_steps`, then cosine decay to `peak * min_fraction`,
  all times `multiplier` (the fine-tuning factor)."""

  def __init__(
    self,
    peak: float,
    warmup_steps: int,
    total_steps: int,
    min_fraction: float = 0.0,
    multiplier: float = 1.0,
    start_step: int = 0,
  ):
    self.start_step = int(start_step)  # the global step at which this schedule's step 0 is
    self.peak = float(peak)
    self.warmup_steps = int(warmup_steps)
    self.total_steps = max(1, int(total_steps))
    self.min_fraction = float(min_fraction)
    self.multiplier = float(multiplier)

  def __call__(self, step):
    step = tf.cast(step, tf.float32) - float(self.start_step)
    warmup = tf.cast(max(1, self.warmup_steps), tf.float32)
    decay_steps = tf.cast(max(1, self.total_steps - self.warmup_steps), tf.float32)
    progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
    cosine = 0.5 * (1.0 + tf.cos(np.pi * progress))
    decayed = self.min_fraction + (1.0 - self.min_fraction) * cosine
    rate = tf.where(step < self.warmup_steps, (step + 1.0) / warmup, decayed)
    return self.peak * self.multiplier * rate

  def get_config(self) -> dict:
    return {
      "peak": self.peak,
      "warmup_steps": self.warmup_steps,
      "total_steps": self.total_steps,
      "min_fraction": self.min_fraction,
      "multiplier": self.multiplier,
      "start_step": self.start_step,
    }


@dataclasses.dataclass(frozen=True)
class Phase:
  """One `model.fit` call: epochs [first, last), which loss, which learning-rate schedule."""

  backup: str  # backup sub-folder
  first: int
  last: int
  trainable: bool  # backbone trainable
  loss: Any  # config.loss or config.finetune
  multiplier: float  # lr factor
  schedule_start: int  # epoch at which this phase's schedule starts
  schedule_epochs: int  # epochs the schedule spans (warm-up + cosine)
  warmup_epochs: float


def phases(config: Any) -> list[Phase]:
  """The fit calls of a run: [frozen backbone], main loss, [triplet fine-tuning]."""
  train = config.train
  epochs = int(train.epochs)
  finetune = config.get("finetune", None)
  tail = int(finetune.epochs) if finetune is not None else 0
  if not 0 <= tail <= epochs:
    raise UserError(f"finetune.epochs={tail} must be between 0 and train.epochs={epochs}")
  if tail and finetune.kind not in losses.KINDS:
    raise UserError(
      f"finetune.kind={finetune.kind!r} must be a triplet loss: {', '.join(losses.KINDS)}"
    )
  main = epochs - tail
  freeze = min(int(train.freeze_backbone_epochs), main)
  warmup = float(train.warmup_epochs)
  out = []
  if freeze > 0:
    out.append(Phase("phase1", 0, freeze, False, config.loss, 1.0, 0, main, warmup))
  if main > freeze:
    out.append(
      Phase(
        "phase2",
        freeze,
        main,
        True,
        config.loss,
        float(train.finetune_lr_multiplier) if freeze > 0 else 1.0,
        0,
        main,
        warmup,
      )
    )
  if tail:
    out.append(
      Phase(
        "phase3",
        main,
        epochs,
        True,
        finetune,
        float(finetune.lr_multiplier),
        main,
        tail,
        float(finetune.warmup_epochs),
      )
    )
  return out


def make_optimizer(
  train: Any, peak_lr: float, steps_per_epoch: int, phase: "Phase", mixed_precision: str
) -> keras.optimizers.Optimizer:
  total = phase.schedule_epochs * steps_per_epoch
  schedule = WarmupCosine(
    peak_lr,
    int(phase.warmup_epochs * steps_per_epoch),
    total,
    float(train.min_lr_fraction),
    phase.multiplier,
    start_step=phase.schedule_start * steps_per_epoch,
  )
  if train.optimizer == "adamw":
    opt = keras.optimizers.AdamW(schedule, weight_decay=float(train.weight_decay))
  elif train.optimizer == "sgd":
    opt = keras.optimizers.SGD(schedule, momentum=float(train.momentum), nesterov=True)
  else:
    raise UserError(
      f"unknown optimizer {train.optimizer!r}; valid: adamw, sgd (set --config.train.optimizer)"
    )
  if mixed_precision == "mixed_float16":
    opt = keras.optimizers.LossScaleOptimizer(opt)
  return opt


def peak_learning_rate(config: Any, replicas: int) -> float:
  lr = float(config.train.learning_rate)
  planned = int(config.train.get("num_replicas", 1) or 1)
  if planned != replicas:
    logging.warning(
      "config.train.num_replicas=%d but the strategy has %d replicas: scaling the "
      "learning rate by %d/%d to keep lr = base_lr * global_batch / 256",
      planned,
      replicas,
      replicas,
      planned,
    )
    lr *= replicas / planned
  return lr
