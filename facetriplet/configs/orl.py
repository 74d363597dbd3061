r"""ORL / AT&T faces (40 people x 10 grey photos): ResNet-18-style net from scratch, 64 px, P=8,
K=4.

  facetriplet-build-tfrecords --input=../shared/data/orl_faces --output=data/orl_tfrecords \
      --detector=none
  facetriplet-train --config=configs/orl.py \
      --config.data.tfrecord_dir=data/orl_tfrecords --workdir=runs/orl

ORL photos are already face crops (grey, 92x112), so ingest without face detection. With 20%
of the 40 identities held out there are 32 train identities: P=8 identities x K=4 photos,
~10 steps per epoch, 40 epochs: a few minutes on the 2-core CPU. Colour jitter is off (grey
photos). Expected: val top-1 well above the untrained network (epoch-0 line of metrics.jsonl).

Smoke variant (seconds): `--config=configs/orl.py:smoke`.
"""

from typing import Optional

import ml_collections

from facetriplet import config_files

common = config_files.sibling(__file__, "common.py")


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The ORL config; `arg='smoke'` gives the seconds-long variant."""
  default = common.default(__file__)
  config = default.get_config()
  common.from_scratch_cpu(config)
  config.train.p = 8
  config.train.k = 4
  config.train.epochs = 40
  config.train.warmup_epochs = 2.0
  config.data.shuffle_groups = 64
  if arg:
    default.apply_variant(config, arg)
  return config
