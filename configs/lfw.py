r"""LFW-like sets (most people have 2-4 photos): ResNet-18-style net from scratch, 48 px, K=2.

Build the shards, then train (about 15 min of training on this project's 2-core CPU when it is
not shared; ~28 s per epoch + ~3 s of val evaluation):

  facetriplet-build-tfrecords --input=../shared/data/lfw_2to4 --output=data/lfw_tfrecords
  facetriplet-train --config=configs/lfw.py \
      --config.data.tfrecord_dir=data/lfw_tfrecords --workdir=runs/lfw

Design: with 2-4 photos per person every identity is a group of K=2 (groups of 2-4 photos are
sampled two at a time), and P=48 identities per batch give enough negatives. From scratch the
batch-all loss escapes the collapsed start faster than semi-hard mining, and light augmentation
(flip, small shift, default brightness/contrast jitter) learns faster than the default heavy set. A half-width
ResNet-18-style net at 48 px; 2538 train photos -> 26 steps per epoch, 30 epochs, decoded crops
cached in memory.

Expected: val retrieval (leave-one-out over the 641 val photos of 251 identities) rising above
both the untrained network and raw-pixel cosine, which metrics.jsonl records at epoch 0
(`pixels/top1` ~0.080, `pixels/map@r` ~0.056 on lfw_2to4 with Haar crops at 128 px). Measured in
a 2.5-minute sanity run on the shared CPU: untrained top1 0.027 / mAP@R 0.017; after 5 epochs
top1 0.042 / mAP@R 0.029, still rising. Compare the final and best lines of metrics.jsonl with
the epoch-0 `pixels/...` numbers.

Smoke variant (seconds): `--config=configs/lfw.py:smoke`.
"""

from typing import Optional

import ml_collections

from facetriplet import config_files


def _default():
  """configs/default.py (config files are loaded by path, not as a package)."""
  return config_files.sibling(__file__, "default.py")


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The LFW config; `arg='smoke'` gives the seconds-long variant."""
  default = _default()
  config = default.get_config()
  config.model.backbone = "resnet18"
  config.model.weights = "none"
  config.model.width = 0.5
  config.model.image_size = 48
  config.model.embedding_dim = 128
  config.augment.translate = 0.05
  config.augment.zoom = 0.0
  config.augment.rotation = 0.0
  config.augment.saturation = 0.0
  config.augment.hue = 0.0
  config.augment.grayscale = 0.0
  config.augment.erasing = 0.0
  config.loss.kind = "batch_all"
  config.train.p = 48
  config.train.k = 2
  config.train.base_lr = 4e-3
  config.train.epochs = 30
  config.train.warmup_epochs = 1.0
  config.train.freeze_backbone_epochs = 0
  config.train.steps_per_epoch = 0
  config.data.cache = True
  config.data.max_group_size = 8
  if arg:
    default.apply_variant(config, arg)
  return config
