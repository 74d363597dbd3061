"""The embedding network: uint8 face crop in, unit-length float32 embedding out.

    image uint8 [N, S, S, 3]          S = stored crop size (manifest `crop.size`)
      -> CastToFloat                   float32 in [0, 255]
      -> Augmentation                  training only (identity at inference and export)
      -> Resize(image_size)            only when image_size != S (bilinear, antialiased)
      -> BackbonePreprocess(mode)      what the backbone's ImageNet weights expect
      -> backbone (layer "backbone")   resnet50 | efficientnetb0 | vgg16 | mobilenetv3small | resnet18
      -> Dense(embedding_dim)          layer "projection"
      -> L2Normalize                   layer "embedding", float32 even under mixed precision

Everything a caller needs to embed a photo lives in the model, so a saved `.keras` file (custom
layers are registered) or the exported SavedModel takes the stored crops as they are.

`resnet18` is a ResNet-18-style network defined here (basic blocks, a 3x3 stem without max-pool
below 96 px, widths scaled by `model.width`); it has no ImageNet weights and trains well from
scratch on a CPU at 64-96 px.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Optional

import keras
from keras import ops

from facetriplet.training import augment as augment_lib
from facetriplet.errors import UserError

BACKBONES = ("resnet50", "efficientnetb0", "vgg16", "mobilenetv3small", "resnet18")
BACKBONE_LAYER = "backbone"
# What each backbone's weights expect from [0, 255] RGB input.
_PREPROCESS = {"resnet50": "caffe", "vgg16": "caffe", "efficientnetb0": "none",
               "mobilenetv3small": "none", "resnet18": "tf"}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="facetriplet")
class CastToFloat(keras.layers.Layer):
  """Casts uint8 pixels to float32 (values stay in [0, 255])."""

  def call(self, inputs):
    return ops.cast(inputs, "float32")


@keras.saving.register_keras_serializable(package="facetriplet")
class Augmentation(keras.layers.Layer):
  """Runs `augment.build_augmentation(config)` when `training` is True, else the identity.

  Keras' random layers default to augmenting when called without `training`; this wrapper
  defaults to off, so `model(images)` in a serving function never augments.
  """

  def __init__(self, augment_config: Optional[dict] = None, seed: Optional[int] = None,
               **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    # Lists, not tuples: the config must equal itself after a JSON round trip (.keras files).
    self.augment_config = {k: list(v) if isinstance(v, tuple) else v
                           for k, v in dict(augment_config or {}).items()}
    self.seed = seed
    self.pipeline = augment_lib.build_augmentation(self.augment_config, seed=seed)

  def build(self, input_shape):
    if self.pipeline.layers:
      self.pipeline.build(input_shape)
    self.built = True

  def call(self, inputs, training=False):
    if training and self.pipeline.layers:
      return self.pipeline(inputs, training=True)
    return inputs

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({"augment_config": self.augment_config, "seed": self.seed})
    return config


@keras.saving.register_keras_serializable(package="facetriplet")
class Resize(keras.layers.Layer):
  """Bilinear resize to `size` x `size`.

  Not `keras.layers.Resizing`: its `call(training=True)` default leaks `training=True` into the
  layers after it when the model is called without `training` (BatchNorm would then update).
  """

  def __init__(self, size: int, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.size = int(size)

  def call(self, inputs):
    return ops.image.resize(ops.cast(inputs, "float32"), (self.size, self.size),
                            interpolation="bilinear", antialias=True)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.size, self.size, input_shape[-1])

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({"size": self.size})
    return config


@keras.saving.register_keras_serializable(package="facetriplet")
class BackbonePreprocess(keras.layers.Layer):
  """Maps [0, 255] RGB to what a backbone expects: `caffe` (BGR minus ImageNet mean), `tf`
  ([-1, 1]) or `none` (backbones that normalise inside themselves)."""

  def __init__(self, mode: str = "none", **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    if mode not in ("caffe", "tf", "none"):
      raise ValueError(f"unknown preprocessing mode {mode!r}; valid: caffe, tf, none")
    self.mode = mode

  def call(self, inputs):
    x = ops.cast(inputs, "float32")
    if self.mode == "caffe":
      return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, "float32")
    if self.mode == "tf":
      return x / 127.5 - 1.0
    return x

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({"mode": self.mode})
    return config


@keras.saving.register_keras_serializable(package="facetriplet")
class L2Normalize(keras.layers.Layer):
  """Scales each row to unit L2 norm, in float32 (`epsilon` bounds the squared norm below)."""

  def __init__(self, epsilon: float = 1e-24, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.epsilon = float(epsilon)

  def call(self, inputs):
    x = ops.cast(inputs, "float32")
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), self.epsilon))
    return x / norm

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({"epsilon": self.epsilon})
    return config


@contextlib.contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
  """Sets the global Keras dtype policy for the block (mixed precision), then restores it."""
  if not name:
    yield
    return
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def _resnet18(image_size: int, width: float, stem_pool: Optional[bool] = None) -> keras.Model:
  """A ResNet-18-style backbone (basic blocks [2, 2, 2, 2]) with global average pooling.

  `stem_pool` (the 3x3 stride-2 max-pool after the stem): None = only at 96 px and above; True
  quarters the cost of every later stage (the CPU lever for small inputs).
  """
  widths = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
  inputs = keras.Input((image_size, image_size, 3))
  x = keras.layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False,
                          name="stem_conv")(inputs)
  x = keras.layers.BatchNormalization(name="stem_bn")(x)
  x = keras.layers.ReLU(name="stem_relu")(x)
  if stem_pool if stem_pool is not None else image_size >= 96:
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
  for stage, filters in enumerate(widths):
    for block in range(2):
      strides = 2 if stage > 0 and block == 0 else 1
      prefix = f"stage{stage + 1}_block{block + 1}"
      shortcut = x
      y = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                              name=f"{prefix}_conv1")(x)
      y = keras.layers.BatchNormalization(name=f"{prefix}_bn1")(y)
      y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
      y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              name=f"{prefix}_conv2")(y)
      y = keras.layers.BatchNormalization(name=f"{prefix}_bn2", gamma_initializer="zeros")(y)
      if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                       name=f"{prefix}_proj")(shortcut)
        shortcut = keras.layers.BatchNormalization(name=f"{prefix}_proj_bn")(shortcut)
      x = keras.layers.ReLU(name=f"{prefix}_out")(keras.layers.Add()([shortcut, y]))
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  return keras.Model(inputs, x, name="resnet18")


def _application(name: str, image_size: int, weights: Optional[str]) -> keras.Model:
  shape = (image_size, image_size, 3)
  apps = keras.applications
  if name == "resnet50":
    return apps.ResNet50(include_top=False, weights=weights, input_shape=shape, pooling="avg")
  if name == "efficientnetb0":
    return apps.EfficientNetB0(include_top=False, weights=weights, input_shape=shape,
                               pooling="avg")
  if name == "vgg16":
    return apps.VGG16(include_top=False, weights=weights, input_shape=shape, pooling="avg")
  return apps.MobileNetV3Small(include_top=False, weights=weights, input_shape=shape,
                               pooling="avg", include_preprocessing=True)


def build_backbone(name: str, image_size: int, weights: Optional[str] = None,
                   width: float = 1.0, stem_pool: Optional[bool] = None) -> keras.Model:
  """Builds a backbone that maps preprocessed [N, size, size, 3] images to pooled features.

  Args:
    name: one of `BACKBONES`.
    image_size: input side in pixels.
    weights: None (random), 'imagenet' (downloaded by Keras to ~/.keras/models on first use) or
      the path of a local weights file of this backbone.
    width: channel multiplier of `resnet18` (ignored by the others).
    stem_pool: `resnet18` only: max-pool after the stem (None = from 96 px up).

  Returns:
    A `keras.Model` named "backbone".

  Raises:
    UserError: unknown backbone, ImageNet weights that cannot be downloaded or do not exist for
      this backbone, or a weights file that is missing or does not fit.
  """
  if name not in BACKBONES:
    raise UserError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)} "
                    "(set --config.model.backbone)")
  if weights in ("", "none", "None"):
    weights = None
  if weights is not None and weights != "imagenet" and not os.path.exists(weights):
    raise UserError(f"weights file {weights} not found: set --config.model.weights to an existing "
                    "file, 'imagenet' or none")
  if name == "resnet18":
    if weights == "imagenet":
      raise UserError("resnet18 has no ImageNet weights: set --config.model.weights=none or pick "
                      "another backbone")
    backbone = _resnet18(image_size, width, stem_pool)
    if weights is not None:
      try:
        backbone.load_weights(weights)
      except Exception as e:  # pylint: disable=broad-except
        raise UserError(f"cannot load weights file {weights} into resnet18: {e}") from e
  else:
    try:
      backbone = _application(name, image_size, weights)
    except Exception as e:  # pylint: disable=broad-except
      if weights == "imagenet":
        raise UserError(
            f"could not download the ImageNet weights of {name} ({type(e).__name__}: {e}); "
            "without network access put the file into ~/.keras/models, pass its path with "
            "--config.model.weights=/path/to/file.h5, or train from scratch with "
            "--config.model.weights=none") from e
      if weights is not None:
        raise UserError(f"cannot load weights file {weights} into {name}: {e}") from e
      raise
  backbone.name = BACKBONE_LAYER
  return backbone


def build_embedding_model(config: Any, input_size: Optional[int] = None) -> keras.Model:
  """Builds the embedding model described in the module docstring.

  Args:
    config: the experiment ConfigDict; reads `config.model` (backbone, weights, image_size,
      embedding_dim, width, mixed_precision, input_size) and `config.augment`.
    input_size: stored crop size S of the input; defaults to `config.model.input_size`.

  Returns:
    A `keras.Model` from uint8 [None, S, S, 3] to float32 [None, embedding_dim] unit rows.

  Raises:
    UserError: see `build_backbone`; also a mixed precision policy other than '',
      'mixed_bfloat16' or 'mixed_float16'.
  """
  m = config.model
  if m.backbone not in BACKBONES:
    raise UserError(f"unknown backbone {m.backbone!r}; valid: {', '.join(BACKBONES)} "
                    "(set --config.model.backbone)")
  size = int(input_size or m.input_size)
  image_size = int(m.image_size)
  policy = m.get("mixed_precision", "") or ""
  if policy not in ("", "mixed_bfloat16", "mixed_float16"):
    raise UserError(f"unknown mixed precision policy {policy!r}; valid: '' (off), "
                    "mixed_bfloat16, mixed_float16")
  augment_config = dict(config.augment.to_dict() if hasattr(config.augment, "to_dict")
                        else config.augment)
  seed = config.get("seed", None)
  inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
  x = CastToFloat(name="cast")(inputs)
  x = Augmentation(augment_config, seed=seed, name="augmentation")(x)
  if image_size != size:
    x = Resize(image_size, name="resize")(x)
  x = BackbonePreprocess(_PREPROCESS[m.backbone], name="preprocess")(x)
  with _dtype_policy(policy):
    stem_pool = str(m.get("stem_pool", "auto")).lower()
    if stem_pool not in ("auto", "on", "off"):
      raise UserError(f"model.stem_pool={stem_pool!r} must be auto, on or off")
    backbone = build_backbone(m.backbone, image_size, m.get("weights", None),
                              float(m.get("width", 1.0)),
                              None if stem_pool == "auto" else stem_pool == "on")
    x = backbone(x)
    x = keras.layers.Dense(int(m.embedding_dim), name="projection")(x)
  outputs = L2Normalize(name="embedding")(x)
  return keras.Model(inputs, outputs, name=f"facetriplet_{m.backbone}")


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
  """Freezes or unfreezes the backbone (frozen BatchNorm layers also run in inference mode)."""
  model.get_layer(BACKBONE_LAYER).trainable = trainable
