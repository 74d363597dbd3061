"""What the shipped configs share; not a config itself (no `get_config`).

Config files are loaded by path (`facetriplet.config_files`), so a config reaches this module and
`default.py` through `config_files.sibling(__file__, ...)`.
"""

import ml_collections

from facetriplet import config_files


def default(config_file: str):
  """The `default.py` module beside `config_file` (every shipped config starts from it)."""
  return config_files.sibling(config_file, "default.py")


def from_scratch_cpu(config: ml_collections.ConfigDict) -> None:
  """A half-width ResNet-18-style net at 64 px trained from scratch on a CPU: no pretrained
  weights (nothing to freeze), decoded crops cached in memory (small sets), the default's 4x
  learning rate, no colour jitter (grey photos, or colour that is part of the face)."""
  config.model.backbone = "resnet18"
  config.model.weights = "none"
  config.model.width = 0.5
  config.model.image_size = 64
  config.augment.saturation = 0.0
  config.augment.hue = 0.0
  config.augment.grayscale = 0.0
  config.train.base_lr = 4e-3
  config.train.freeze_backbone_epochs = 0
  config.data.cache = True


def pretrained_dlib(config: ml_collections.ConfigDict) -> None:
  """dlib's pretrained face ResNet as the start (150-px dlib150 chips, its own 128-d embedding,
  no projection), light augmentation that keeps a chip a chip (flip, a small shift, brightness
  and contrast), nothing frozen first (no new head to warm up)."""
  config.model.backbone = "dlib_resnet"
  config.model.weights = "dlib_resnet"
  config.model.image_size = 150
  config.model.embedding_dim = 128
  config.model.test_time_flip = True
  config.augment.flip = True
  config.augment.translate = 0.03
  config.augment.zoom = 0.0
  config.augment.rotation = 0.0
  config.augment.brightness = 0.1
  config.augment.contrast = 0.1
  config.augment.saturation = 0.0
  config.augment.hue = 0.0
  config.augment.grayscale = 0.0
  config.augment.erasing = 0.0
  config.train.freeze_backbone_epochs = 0
