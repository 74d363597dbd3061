"""Keras' own application networks (ResNet50, EfficientNet-B0, VGG16, MobileNetV3-Small):
ImageNet weights downloaded by Keras on first use, or a local weights file."""

from __future__ import annotations

import functools
from typing import Optional

import keras

from facetriplet.errors import UserError
from facetriplet.training.networks import Network

_CONSTRUCTORS = {
  "resnet50": ("ResNet50", {}),
  "efficientnetb0": ("EfficientNetB0", {}),
  "vgg16": ("VGG16", {}),
  "mobilenetv3small": ("MobileNetV3Small", {"include_preprocessing": True}),
}


def build(
  name: str,
  image_size: int,
  weights: Optional[str],
  width: float = 1.0,
  stem_pool: Optional[bool] = None,
) -> keras.Model:
  """`keras.applications.<name>` without its top, average-pooled (`width`, `stem_pool` unused)."""
  del width, stem_pool
  constructor, extra = _CONSTRUCTORS[name]
  try:
    return getattr(keras.applications, constructor)(
      include_top=False,
      weights=weights,
      input_shape=(image_size, image_size, 3),
      pooling="avg",
      **extra,
    )
  except Exception as e:  # pylint: disable=broad-except
    if weights == "imagenet":
      raise UserError(
        f"could not download the ImageNet weights of {name} ({type(e).__name__}: {e}); "
        "without network access put the file into ~/.keras/models, pass its path with "
        "--config.model.weights=/path/to/file.h5, or train from scratch with "
        "--config.model.weights=none"
      ) from e
    if weights is not None:
      raise UserError(f"cannot load weights file {weights} into {name}: {e}") from e
    raise


# What each one's ImageNet weights expect from [0, 255] RGB.
_PREPROCESS = {
  "resnet50": "caffe",
  "vgg16": "caffe",
  "efficientnetb0": "none",
  "mobilenetv3small": "none",
}
NETWORKS = {
  name: Network(
    name, functools.partial(build, name), preprocess=_PREPROCESS[name], weights=("imagenet",)
  )
  for name in _CONSTRUCTORS
}
