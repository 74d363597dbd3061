"""What training shows while it runs: Keras' progress bar (steps, loss, ETA) within each epoch in
a terminal, one line per epoch when the output is a log file, and the training throughput.

`verbosity(config_value)` turns `config.train.verbose` into Keras' `fit(verbose=...)`: -1 (the
default) is 1, the bar, when standard output is a terminal, else 2, one line per epoch.
`Throughput` adds `images_per_s` (training images a second over the epoch's steps, evaluation
excluded) to the epoch's logs, so the bar's last line, the epoch line and metrics.jsonl carry it.
"""

from __future__ import annotations

import sys
import time

import keras


def verbosity(value: int) -> int:
  """Keras' `verbose` for `config.train.verbose` (-1 = bar in a terminal, a line per epoch
  otherwise)."""
  value = int(value)
  if value >= 0:
    return value
  return 1 if sys.stdout.isatty() else 2


class Throughput(keras.callbacks.Callback):
  """Adds `images_per_s` to each epoch's logs (put it first among the callbacks)."""

  def __init__(self, global_batch: int):
    super().__init__()
    self.global_batch = int(global_batch)
    self._start = 0.0
    self._steps = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._start, self._steps = 0.0, 0

  def on_train_batch_end(self, batch, logs=None):
    # Timed from the end of the epoch's first step: its start-up (tracing) is not throughput.
    if not self._start:
      self._start = time.perf_counter()
    else:
      self._steps += 1

  def on_epoch_end(self, epoch, logs=None):
    elapsed = time.perf_counter() - self._start if self._start else 0.0
    if logs is not None and elapsed > 0:
      logs["images_per_s"] = self._steps * self.global_batch / elapsed
