r"""Training speed: images/s per step from the TFRecord pipeline vs the same steps on in-memory
tensors (if the two match, the input pipeline is not the bottleneck).

  python -m benchmarks.bench_train [--backbone=resnet18 --image_size=64 --batch=64 --steps=10
                                    --mixed_precision= --config=configs/default.py]

Builds the model of `--config` (backbone, image size, batch and precision overridable by flags),
compiles it exactly as `facetriplet.training.train` does, warms up (tracing) and times `--steps`
training steps fed (a) by `input_pipeline.train_dataset` over synthetic random shards and (b) by one
batch held in memory. Results: benchmarks/results/train_<backbone>.json. Defaults finish in
about a minute on a 2-core CPU; ResNet50 at 112 px trains at ~24 img/s there.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags

from benchmarks import common
from benchmarks.bench_input_pipeline import make_shards

_CONFIG = flags.DEFINE_string("config", "configs/default.py", "Config file (model + augment).")
_BACKBONE = flags.DEFINE_string("backbone", "resnet18", "Backbone (overrides the config).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Backbone input side.")
_STORED = flags.DEFINE_integer("stored_size", 128, "Stored crop side of the synthetic shards.")
_BATCH = flags.DEFINE_integer("batch", 64, "Global batch (P x K with K=4).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per feed.")
_MIXED = flags.DEFINE_string("mixed_precision", "", "'', mixed_bfloat16 or mixed_float16.")
_WIDTH = flags.DEFINE_float("width", 0.5, "resnet18 channel multiplier.")
_STEM_POOL = flags.DEFINE_enum(
  "stem_pool", "auto", ["auto", "on", "off"], "resnet18: max-pool after the stem."
)
_JIT = flags.DEFINE_bool("jit", False, "XLA (jit_compile=True); one replica only on a CPU.")
_FLOPS_PER_CYCLE = flags.DEFINE_integer(
  "flops_per_cycle",
  32,
  "Peak float32 FLOPs per core per cycle: 32 for two 256-bit FMA pipes (AMD Zen 3/4, Intel "
  "AVX2 cores), 64 for two 512-bit FMA pipes (Intel server cores with AVX-512).",
)


def forward_flops(model, input_size: int) -> float:
  """Float operations of one image through the inference graph (TensorFlow's profiler)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import
  from tensorflow.python.profiler import model_analyzer  # pylint: disable=g-direct-tensorflow-import
  from tensorflow.python.profiler import option_builder  # pylint: disable=g-direct-tensorflow-import

  fn = tf.function(lambda x: model(x, training=False))
  concrete = fn.get_concrete_function(tf.TensorSpec([1, input_size, input_size, 3], tf.uint8))
  graph = convert_to_constants.convert_variables_to_constants_v2(concrete).graph
  opts = (
    option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
    .with_empty_output()
    .build()
  )
  return float(model_analyzer.profile(graph, options=opts).total_float_ops)


def cpu_peak_flops() -> float:
  """Cores × clock (from /proc/cpuinfo, the nominal clock) × --flops_per_cycle."""
  mhz = 0.0
  with open("/proc/cpuinfo", encoding="utf-8") as f:
    for line in f:
      if line.startswith("cpu MHz"):
        mhz = float(line.split(":")[1])
        break
  return (os.cpu_count() or 1) * mhz * 1e6 * _FLOPS_PER_CYCLE.value


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from facetriplet.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from facetriplet.training import model as model_lib  # pylint: disable=g-import-not-at-top
  from facetriplet.training import train  # pylint: disable=g-import-not-at-top
  from facetriplet import config_files  # pylint: disable=g-import-not-at-top

  config = config_files.load_config(_CONFIG.value)
  config.model.backbone = _BACKBONE.value
  config.model.weights = "none"
  config.model.width = _WIDTH.value
  config.model.stem_pool = _STEM_POOL.value
  config.model.image_size = _IMAGE_SIZE.value
  config.model.mixed_precision = _MIXED.value
  k = 4
  p = max(1, _BATCH.value // k)
  batch, steps = p * k, _STEPS.value
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    make_shards(tmp, max(4 * batch, 256), _STORED.value)
    model = model_lib.build_embedding_model(config, _STORED.value)
    # A training step costs about three forward passes (forward, and backward for activations
    # and for weights).
    train_flops = 3 * forward_flops(model, _STORED.value)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    peak = None if gpu else cpu_peak_flops()
    train._compile(
      model,
      config.loss,
      keras.optimizers.AdamW(1e-4),  # pylint: disable=protected-access
      jit_compile=_JIT.value,
    )
    pipeline = input_pipeline.train_dataset(tmp, "train", p, k, seed=0)
    in_memory = tf.data.Dataset.from_tensors(next(iter(pipeline))).repeat()
    for name, ds in (("TFRecord pipeline", pipeline), ("in-memory batch", in_memory)):
      model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # tracing + warm-up
      start = time.perf_counter()
      model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
      seconds = time.perf_counter() - start
      ips = steps * batch / seconds
      rows.append(
        [
          name + (" (XLA)" if _JIT.value else ""),
          config.model.backbone,
          config.model.image_size,
          batch,
          _MIXED.value or "float32",
          round(ips, 1),
          round(1000 * seconds / steps, 1),
          round(ips * train_flops / 1e9, 1),
          f"{100 * ips * train_flops / peak:.0f}%" if peak else "n/a",
        ]
      )
  for row in rows:
    print(
      f"{row[0]:20s} {row[1]} {row[2]}px batch {row[3]} {row[4]}: {row[5]} images/s, "
      f"{row[6]} ms/step"
    )
  path = common.write_result(
    f"train_{config.model.backbone}",
    f"Training speed: {config.model.backbone} at {config.model.image_size} px",
    [
      "feed",
      "backbone",
      "image_size",
      "batch",
      "precision",
      "images/s",
      "ms/step",
      "GFLOP/s",
      "of CPU peak",
    ],
    rows,
    notes=f"{steps} timed steps after 2 warm-up steps; augmentation as in {_CONFIG.value}; "
    f"stored crops {_STORED.value} px resized inside the model. Training FLOPs = 3 × "
    f"the forward pass counted by TensorFlow's profiler "
    f"({train_flops / 3e9:.3f} GFLOP/image forward); CPU peak = cores × nominal clock × "
    f"{_FLOPS_PER_CYCLE.value} float32 FLOPs/cycle"
    + (
      f" = {peak / 1e9:.0f} GFLOP/s (boost clocks make the true peak higher, so the "
      "share is an upper bound)."
      if peak
      else "."
    ),
  )
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
