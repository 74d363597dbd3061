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
