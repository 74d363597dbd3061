"""A ResNet-18-style network defined here: basic blocks [2, 2, 2, 2] (or `blocks` per stage: 1
gives a ResNet-10), a 3x3 stem, widths scaled by `width`. It has no pretrained weights and trains
well from scratch on a CPU at 64-96 px."""

from __future__ import annotations

from typing import Optional

import keras

from facetriplet.training.networks import Network, load_weights_file


def build(
  image_size: int,
  weights: Optional[str],
  width: float = 1.0,
  stem_pool: Optional[bool] = None,
  blocks: int = 2,
) -> keras.Model:
  """The network with global average pooling; a local weights file is loaded when given.

  `stem_pool` (the 3x3 stride-2 max-pool after the stem): None = only at 96 px and above; True
  quarters the cost of every later stage (the CPU lever for small inputs). `blocks`: basic blocks
  per stage (1 halves the depth: at batch 1 a CPU pays mostly per layer, not per pixel).
  """
  widths = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
  inputs = keras.Input((image_size, image_size, 3))
  x = keras.layers.Conv2D(
    widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv"
  )(inputs)
  x = keras.layers.BatchNormalization(name="stem_bn")(x)
  x = keras.layers.ReLU(name="stem_relu")(x)
  if stem_pool if stem_pool is not None else image_size >= 96:
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
  for stage, filters in enumerate(widths):
    for block in range(int(blocks)):
      strides = 2 if stage > 0 and block == 0 else 1
      prefix = f"stage{stage + 1}_block{block + 1}"
      shortcut = x
      y = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{prefix}_conv1"
      )(x)
      y = keras.layers.BatchNormalization(name=f"{prefix}_bn1")(y)
      y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
      y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(y)
      y = keras.layers.BatchNormalization(name=f"{prefix}_bn2", gamma_initializer="zeros")(y)
      if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
          filters, 1, strides=strides, use_bias=False, name=f"{prefix}_proj"
        )(shortcut)
        shortcut = keras.layers.BatchNormalization(name=f"{prefix}_proj_bn")(shortcut)
      x = keras.layers.ReLU(name=f"{prefix}_out")(keras.layers.Add()([shortcut, y]))
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  model = keras.Model(inputs, x, name="resnet18")
  if weights is not None:
    load_weights_file(model, weights, "resnet18")
  return model


NETWORKS = {"resnet18": Network("resnet18", build, preprocess="tf", options=("blocks",))}
