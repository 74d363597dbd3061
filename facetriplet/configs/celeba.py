r"""Your own people, starting from a network that already recognises faces: fine-tune dlib's
pretrained face ResNet (`dlib_resnet`, extra 'pretrained') with semi-hard triplets.

Build dlib-style chips (the `dlib150` preset: MTCNN landmarks, 150 px), then fine-tune:

  facetriplet-build-tfrecords --layout=celeba --input=../shared/data/celeba_199/img_celeba \
      --output=data/celeba_dlib --crop_preset=dlib150
  facetriplet-train --config=celeba --config.data.tfrecord_dir=data/celeba_dlib \
      --workdir=runs/celeba

Measured: see the docstring's last paragraph (filled in from BENCHMARKS.md, "Face networks on
real photos").

Smoke variant (seconds): `--config=celeba:smoke` (the smoke network, no pretrained weights).
"""

from typing import Optional

import ml_collections

from facetriplet import config_files

common = config_files.sibling(__file__, "common.py")


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The fine-tuning config; `arg='smoke'` gives the seconds-long variant."""
  default = common.default(__file__)
  config = default.get_config()
  common.pretrained_dlib(config)
  config.loss.kind = "semi_hard"
  config.loss.margin = 0.2
  config.train.p = 16
  config.train.k = 4
  config.train.base_lr = 1e-4
  config.train.epochs = 6
  config.train.warmup_epochs = 1.0
  config.train.weight_decay = 1e-4
  config.train.eval_every_epochs = 1
  config.data.cache = True
  config.data.max_group_size = 30
  if arg:
    default.apply_variant(config, arg)
  return config
