"""Embedding networks (backbones) by name: one module each, listed in `REGISTRY`.

A network is what `facetriplet.training.model.build_embedding_model` puts between the
preprocessing and the projection: [N, image_size, image_size, 3] preprocessed pixels in, pooled
features out. Its `Network` spec says how to build it, what pixels it expects (`preprocess`), the
input side it needs (`image_size`, None = any, from `config.model.image_size`), the crop it was
trained on (`crop`, CropSettings fields a pretrained network expects; None = the manifest's) and
which named weights it knows.

To add a network, write `facetriplet/training/networks/<name>.py` with a `NETWORKS` dict of
`Network`s and add one line per name to `REGISTRY`. Modules are imported on first use, so
listing names costs nothing (no Keras import).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, NamedTuple, Optional

from facetriplet.errors import UserError

LAYER = "backbone"  # the layer name of the network inside the embedding model
PREPROCESS_MODES = ("caffe", "tf", "none")


@dataclasses.dataclass(frozen=True)
class Network:
  """How to build one network and what it expects.

  Attributes:
    name: the registry name (`config.model.backbone`).
    build: (image_size, weights, width, stem_pool, **options) -> keras.Model from preprocessed
      images to pooled features. `weights` is None, a named weight set of `weights`, or an
      existing file.
    preprocess: what the weights expect from [0, 255] RGB: 'caffe' (BGR minus the ImageNet mean),
      'tf' ([-1, 1]) or 'none' (normalised inside the network).
    weights: named weight sets it can load (e.g. 'imagenet').
    image_size: the input side it needs, or None for any.
    crop_preset: the crop its weights were trained on (a `faces.PRESETS` name; pretrained face
      networks), or None.
    embedding_dim: the network ends in its own embedding of this size (a pretrained face
      network): the model adds no projection. None: pooled features, projected to
      `config.model.embedding_dim`.
    calibration: for a pretrained network, the "same person" thresholds of its weights as this
      project measured them (an export's `verification`), given to its exports made with the
      preset crop and test-time flip; None when not measured.
    options: the keyword options its build takes beyond those (e.g. resnet18's 'blocks').
  """

  name: str
  build: Callable[..., Any]
  preprocess: str = "none"
  weights: tuple[str, ...] = ()
  image_size: Optional[int] = None
  crop_preset: Optional[str] = None
  embedding_dim: Optional[int] = None
  calibration: Optional[dict[str, Any]] = None
  options: tuple[str, ...] = ()


class Entry(NamedTuple):
  module: str
  summary: str
  pretrained: bool = False  # comes with face weights of its own: usable with no training


REGISTRY: dict[str, Entry] = {
  "resnet50": Entry(
    "facetriplet.training.networks.keras_applications",
    "Keras ResNet50 (ImageNet weights downloadable)",
  ),
  "efficientnetb0": Entry(
    "facetriplet.training.networks.keras_applications",
    "Keras EfficientNet-B0 (ImageNet weights downloadable)",
  ),
  "vgg16": Entry(
    "facetriplet.training.networks.keras_applications",
    "Keras VGG16 (ImageNet weights downloadable)",
  ),
  "mobilenetv3small": Entry(
    "facetriplet.training.networks.keras_applications",
    "Keras MobileNetV3-Small (ImageNet weights downloadable)",
  ),
  "resnet18": Entry(
    "facetriplet.training.networks.resnet18",
    "ResNet-18-style net defined here, width-scalable, trains from scratch",
  ),
  "dlib_resnet": Entry(
    "facetriplet.training.networks.dlib_resnet",
    "dlib's face ResNet (150-px dlib150 chips, 128-d), pretrained on ~3M faces: weights "
    "'dlib_resnet' (extra 'pretrained')",
    pretrained=True,
  ),
}
NAMES = tuple(REGISTRY)


def register_layers() -> None:
  """Imports every network module, so that the custom Keras layers of each are registered
  before a checkpoint that holds them is loaded."""
  for module in sorted({entry.module for entry in REGISTRY.values()}):
    importlib.import_module(module)


def check(name: str) -> str:
  """`name` if it is a registered network; UserError naming the choices otherwise."""
  if name not in REGISTRY:
    raise UserError(
      f"unknown backbone {name!r}; valid: {', '.join(NAMES)} (set --config.model.backbone)"
    )
  return name


def get(name: str) -> Network:
  """The `Network` registered as `name` (its module imported)."""
  return importlib.import_module(REGISTRY[check(name)].module).NETWORKS[name]


def build(
  name: str,
  image_size: int,
  weights: Optional[str] = None,
  width: float = 1.0,
  stem_pool: Optional[bool] = None,
  blocks: int = 0,
):
  """The network `name` as a keras.Model named `LAYER`, its weights checked and loaded.

  Args:
    name: a registered network.
    image_size: input side in pixels.
    weights: None (random), a named weight set of the network (e.g. 'imagenet') or the path of
      a local weights file of this network.
    width: channel multiplier (networks that have one).
    stem_pool: max-pool after the stem (networks that have one; None = their default).
    blocks: blocks per stage (networks with a 'blocks' option; 0 = their default).

  Raises:
    UserError: unknown network, unknown weights, or a weights file that is missing or does not
      fit.
  """
  network = get(name)
  if weights in ("", "none", "None"):
    weights = None
  if weights is not None and weights not in network.weights and not os.path.exists(weights):
    known = "".join(f", '{w}'" for w in network.weights)
    if os.sep in weights or "." in weights:
      raise UserError(
        f"weights file {weights} not found: set --config.model.weights to an "
        f"existing file{known} or none"
      )
    raise UserError(
      f"{name} has no {weights!r} weights (it has {list(network.weights) or 'none'})"
      f": set --config.model.weights=none, a local weights file, or pick another "
      "backbone"
    )
  if network.image_size is not None and int(image_size) != network.image_size:
    raise UserError(
      f"{name} takes {network.image_size}-px input, not {image_size}: set "
      f"--config.model.image_size={network.image_size}"
    )
  options = {}
  if blocks:
    if "blocks" not in network.options:
      raise UserError(
        f"model.blocks={blocks} does not apply to {name}: set --config.model.blocks=0"
      )
    if int(blocks) < 1:
      raise UserError(
        f"model.blocks={blocks}: set --config.model.blocks to 1 or more (0 = default)"
      )
    options["blocks"] = int(blocks)
  model = network.build(int(image_size), weights, float(width), stem_pool, **options)
  model.name = LAYER
  return model


def cache_dir() -> str:
  """Where converted weights and pretrained exports are kept: $FACETRIPLET_CACHE, else
  ~/.cache/facetriplet."""
  return os.environ.get("FACETRIPLET_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "facetriplet"
  )


def pretrained_names() -> list[str]:
  """The networks that come with pretrained face weights (usable as exports with no training)."""
  return [n for n in NAMES if REGISTRY[n].pretrained]


def load_weights_file(model, path: str, name: str) -> None:
  """Loads a local weights file into a freshly built network (UserError when it does not fit)."""
  try:
    model.load_weights(path)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot load weights file {path} into {name}: {e}") from e
