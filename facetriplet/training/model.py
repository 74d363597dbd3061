"""The embedding network: uint8 face crop in, unit-length float32 embedding out.

    image uint8 [N, S, S, 3]          S = the crop size (manifest `crop.crop_size`)
      -> CastToFloat                   float32 in [0, 255]
      -> Augmentation                  training only (identity at inference and export)
      -> CenterCrop                    `model.center_crop` < 1: the middle of the crop only
      -> Resize(image_size)            only when image_size != the side left (antialiased)
      -> BackbonePreprocess(mode)      what the backbone's ImageNet weights expect
      -> backbone (layer "backbone")   a `training.networks` name (resnet18, resnet50, ...)
      -> Dense(embedding_dim)          layer "projection" (none for a network that ends in its
                                       own embedding, e.g. dlib_resnet's 128-d)
      -> L2Normalize                   layer "embedding", float32 even under mixed precision

Everything a caller needs to embed a photo lives in the model, so a saved `.keras` file (custom
layers are registered) or the exported SavedModel takes the stored crops as they are.

The backbones are `facetriplet.training.networks` (one module each, chosen by name): `resnet18`
(defined here, width-scalable, trains from scratch on a CPU at 64-96 px) and Keras' ResNet50,
EfficientNet-B0, VGG16 and MobileNetV3-Small.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import keras
from keras import ops

from facetriplet.training import augment as augment_lib
from facetriplet.training import networks
from facetriplet.errors import UserError

BACKBONES = ("resnet50", "efficientnetb0", "vgg16", "mobilenetv3small", "resnet18")
BACKBONE_LAYER = "backbone"
# What each backbone's weights expect from [0, 255] RGB input.
_PREPROCESS = {
  "resnet50": "caffe",
  "vgg16": "caffe",
  "efficientnetb0": "none",
  "mobilenetv3small": "none",
  "resnet18": "tf",
}
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

  def __init__(self, augment_config: Optional[dict] = None, seed: Optional[int] = None, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    # Lists, not tuples: the config must equal itself after a JSON round trip (.keras files).
    self.augment_config = {
      k: list(v) if isinstance(v, tuple) else v for k, v in dict(augment_config or {}).items()
    }
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
    return ops.image.resize(
      ops.cast(inputs, "float32"), (self.size, self.size), interpolation="bilinear", antialias=True
    )

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


def center_crop_side(size: int, fraction: Any) -> int:
  """The side of the centre of a `size`-px crop that `model.center_crop=fraction` keeps: a
  smaller network input then spends its pixels on the face rather than the padding around it.
  Where `size - side` is odd, the window starts floor((size - side) / 2) px in (Keras'
  CenterCrop), one pixel off the exact middle."""
  fraction = 1.0 if fraction is None else float(fraction)
  if not 0.0 < fraction <= 1.0:
    raise UserError(
      f"model.center_crop={fraction} must be in (0, 1]: set --config.model.center_crop to the "
      "fraction of the crop's side the network sees (1 = all of it, 0.8 = its middle 80%)"
    )
  return max(1, int(round(size * fraction)))


def build_embedding_model(config: Any, crop_size: Optional[int] = None) -> keras.Model:
  """Builds the embedding model described in the module docstring.

  Args:
    config: the experiment ConfigDict; reads `config.model` (backbone, weights, image_size,
      embedding_dim, width, mixed_precision, crop_size, center_crop) and `config.augment`.
    crop_size: the crop side S of the input; defaults to `config.model.crop_size`.

  Returns:
    A `keras.Model` from uint8 [None, S, S, 3] to float32 [None, embedding_dim] unit rows.

  Raises:
    UserError: see `networks.build`; also a mixed precision policy other than '',
      'mixed_bfloat16' or 'mixed_float16', and a `center_crop` outside (0, 1].
  """
  m = config.model
  network = networks.get(m.backbone)
  size = int(crop_size or m.crop_size)
  image_size = int(m.image_size)
  policy = m.get("mixed_precision", "") or ""
  if policy not in ("", "mixed_bfloat16", "mixed_float16"):
    raise UserError(
      f"unknown mixed precision policy {policy!r}; valid: '' (off), mixed_bfloat16, mixed_float16"
    )
  augment_config = dict(
    config.augment.to_dict() if hasattr(config.augment, "to_dict") else config.augment
  )
  seed = config.get("seed", None)
  inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
  x = CastToFloat(name="cast")(inputs)
  x = Augmentation(augment_config, seed=seed, name="augmentation")(x)
  side = center_crop_side(size, m.get("center_crop", 1.0))
  if side != size:
    x = keras.layers.CenterCrop(side, side, dtype="float32", name="center_crop")(x)
  if image_size != side:
    x = Resize(image_size, name="resize")(x)
  x = BackbonePreprocess(network.preprocess, name="preprocess")(x)
  with _dtype_policy(policy):
    stem_pool = str(m.get("stem_pool", "auto")).lower()
    if stem_pool not in ("auto", "on", "off"):
      raise UserError(f"model.stem_pool={stem_pool!r} must be auto, on or off")
    backbone = networks.build(
      m.backbone,
      image_size,
      m.get("weights", None),
      float(m.get("width", 1.0)),
      None if stem_pool == "auto" else stem_pool == "on",
      int(m.get("blocks", 0) or 0),
    )
    x = backbone(x)
    if network.embedding_dim is None:
      x = keras.layers.Dense(int(m.embedding_dim), name="projection")(x)
    elif int(m.embedding_dim) != network.embedding_dim:
      raise UserError(
        f"{m.backbone} ends in its own {network.embedding_dim}-d embedding: set "
        f"--config.model.embedding_dim={network.embedding_dim}"
      )
  outputs = L2Normalize(name="embedding")(x)
  return keras.Model(inputs, outputs, name=f"facetriplet_{m.backbone}")


def set_backbone_trainable(model: keras.Model, trainable: bool, frozen_until: str = "") -> None:
  """Freezes or unfreezes the backbone (frozen BatchNorm layers also run in inference mode).

  Args:
    model: an embedding model.
    trainable: whether the backbone trains at all.
    frozen_until: with `trainable`, the backbone's layers before the one of this name stay
      frozen (fine-tuning a pretrained network's later blocks only); '' = none.

  Raises:
    UserError: `frozen_until` names no layer of the backbone.
  """
  backbone = model.get_layer(networks.LAYER)
  backbone.trainable = trainable
  if not trainable or not frozen_until:
    return
  names = [layer.name for layer in backbone.layers]
  if frozen_until not in names:
    raise UserError(
      f"model.frozen_until={frozen_until!r} is not a layer of {backbone.name}: "
      f"pick one of its layers (e.g. {names[len(names) // 2]})"
    )
  for layer in backbone.layers[: names.index(frozen_until)]:
    layer.trainable = False
