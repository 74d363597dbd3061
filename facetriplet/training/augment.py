"""On-device photo augmentation for training: Keras 3 core preprocessing layers.

`build_augmentation(config.augment)` returns a `keras.Sequential` that `model.py` places inside the
embedding model, right after the uint8 -> float32 cast. Keras' random preprocessing layers act
only when called with `training=True`, so the same model is the identity map at inference and in
the exported SavedModel, and augmentation runs on the accelerator inside the train step (never in
tf.data on the host CPU).

Images are float32 in [0, 255] at the stored crop size. Every strength comes from the config and
a strength of 0 (or False) leaves that layer out:

  flip        bool   horizontal flip with probability 1/2
  translate   float  random shift, fraction of height/width (a random crop with reflect padding)
  zoom        float  random zoom in/out, fraction of the size
  rotation    float  random rotation, fraction of a full turn (0.03 ~ +-11 degrees)
  brightness  float  additive brightness jitter, fraction of the value range
  contrast    float  contrast jitter factor
  saturation  float  saturation jitter (0.2 -> factor in about [0.3, 0.7] of Keras' scale)
  hue         float  hue jitter
  grayscale   float  probability of turning the photo gray
  erasing     float  probability of erasing a random rectangle (occlusion)
  erasing_scale  (lo, hi) erased area as a fraction of the image
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import keras


def _get(config: Any, name: str, default: Any) -> Any:
  if isinstance(config, Mapping):
    return config.get(name, default)
  return getattr(config, name, default) if config is not None else default


def build_augmentation(
  config: Any, seed: Optional[int] = None, name: str = "augmentation"
) -> keras.Sequential:
  """Builds the training augmentation from `config` (a ConfigDict or a dict).

  Args:
    config: `config.augment`; fields as in the module docstring. Missing fields count as off.
    seed: base seed of the random layers (each layer gets `seed + i`); None for unseeded.
    name: name of the returned Sequential.

  Returns:
    A `keras.Sequential` over float32 [N, H, W, 3] images in [0, 255]; it is empty (the identity)
    when every strength is 0. The layers compute in float32 even under a mixed precision policy.
  """
  layers = []

  def seed_for() -> Optional[int]:
    return None if seed is None else int(seed) + len(layers)

  common = {"dtype": "float32"}
  if _get(config, "flip", False):
    layers.append(keras.layers.RandomFlip("horizontal", seed=seed_for(), **common))
  translate = float(_get(config, "translate", 0.0))
  if translate > 0:
    layers.append(
      keras.layers.RandomTranslation(
        translate, translate, fill_mode="reflect", seed=seed_for(), **common
      )
    )
  zoom = float(_get(config, "zoom", 0.0))
  if zoom > 0:
    layers.append(
      keras.layers.RandomZoom(zoom, zoom, fill_mode="reflect", seed=seed_for(), **common)
    )
  rotation = float(_get(config, "rotation", 0.0))
  if rotation > 0:
    layers.append(
      keras.layers.RandomRotation(rotation, fill_mode="reflect", seed=seed_for(), **common)
    )
  brightness = float(_get(config, "brightness", 0.0))
  if brightness > 0:
    layers.append(
      keras.layers.RandomBrightness(brightness, value_range=(0, 255), seed=seed_for(), **common)
    )
  contrast = float(_get(config, "contrast", 0.0))
  if contrast > 0:
    layers.append(
      keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=seed_for(), **common)
    )
  saturation = float(_get(config, "saturation", 0.0))
  if saturation > 0:
    # Keras' factor maps 0.5 to "unchanged"; a strength s gives factors in [0.5 - s, 0.5 + s].
    s = min(saturation, 0.5)
    layers.append(
      keras.layers.RandomSaturation(
        (0.5 - s, 0.5 + s), value_range=(0, 255), seed=seed_for(), **common
      )
    )
  hue = float(_get(config, "hue", 0.0))
  if hue > 0:
    layers.append(keras.layers.RandomHue(hue, value_range=(0, 255), seed=seed_for(), **common))
  grayscale = float(_get(config, "grayscale", 0.0))
  if grayscale > 0:
    layers.append(keras.layers.RandomGrayscale(grayscale, seed=seed_for(), **common))
  erasing = float(_get(config, "erasing", 0.0))
  if erasing > 0:
    scale = tuple(float(v) for v in _get(config, "erasing_scale", (0.02, 0.2)))
    layers.append(
      keras.layers.RandomErasing(
        erasing, scale=scale, value_range=(0, 255), seed=seed_for(), **common
      )
    )
  return keras.Sequential(layers, name=name)


def layer_names(augmentation: keras.Sequential) -> list[str]:
  """Class names of the layers of an augmentation, in order (for logs and tests)."""
  return [type(layer).__name__ for layer in augmentation.layers]
