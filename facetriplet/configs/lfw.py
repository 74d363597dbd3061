r"""LFW-like sets (most people have 2-4 photos), from scratch on a CPU: aligned crops, a half-width
ResNet-18-style net at 64 px, semi-hard triplets over P=32 x K=4, 120 epochs, test-time flip.

Build aligned crops (MTCNN landmarks; the named LFW person is the centred face), then train:

  facetriplet-build-tfrecords --input=../shared/data/lfw_2to4 --output=data/lfw_mtcnn \
      --detector=mtcnn --pick=center
  facetriplet-train --config=configs/lfw.py \
      --config.data.tfrecord_dir=data/lfw_mtcnn --workdir=runs/lfw

Measured on this project's 2-core CPU (AMD EPYC, AVX2, nothing else running; BENCHMARKS.md
"Ablation" and "Learning curve" tables): 47.3 minutes for the 120 epochs including the val
evaluation every 5 epochs, about 106 training images/s (19 steps of 128 per epoch, ~23 s). On the
lfw_2to4 val split (641 photos of 251 held-out people, leave-one-out) the exported best checkpoint
(epoch 90) with flip reaches top-1 0.323 / top-10 0.644 / mAP@R 0.257; HOG on the same aligned
crops 0.289 / 0.448 / 0.209, LBP 0.215 / 0.373 / 0.161. On ORL (never seen): top-1 0.978 / mAP@R
0.643 vs HOG 0.975 / 0.619. The val numbers plateau from epoch ~55 (22 minutes).

Design: the CPU lever is the stem max-pool (`model.stem_pool='on'`): at 64 px it quarters the cost
of every later stage (~100 images/s in training instead of ~50 with the pool off), which buys
120 epochs (~290k images) within the hour. With 2-4 photos per person an identity group is cycled
to K=4 (copies differ by augmentation); P=32 identities per batch give the semi-hard miner enough
negatives. Margin softmax (`loss.kind=cosface`, alone or followed by a triplet stage with
`finetune.epochs`) learned more slowly on these 1,006 training people with ~2.5 photos each (see
the ablation). Light augmentation (flip, small shift, brightness/contrast jitter) on aligned crops;
decoded crops cached in memory; val retrieval every 5 epochs (best checkpoint by val mAP@R).

Smoke variant (seconds): `--config=configs/lfw.py:smoke`.
"""

from typing import Optional

import ml_collections

from facetriplet import config_files

common = config_files.sibling(__file__, "common.py")


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The LFW config; `arg='smoke'` gives the seconds-long variant."""
  default = common.default(__file__)
  config = default.get_config()
  common.from_scratch_cpu(config)
  config.model.stem_pool = "on"
  config.model.embedding_dim = 128
  config.model.test_time_flip = True
  config.augment.translate = 0.05
  config.augment.zoom = 0.0
  config.augment.rotation = 0.0
  config.augment.erasing = 0.0
  config.loss.kind = "semi_hard"
  config.train.p = 32
  config.train.k = 4
  config.train.epochs = 120
  config.train.eval_every_epochs = 5
  config.train.warmup_epochs = 1.0
  config.train.steps_per_epoch = 0
  config.data.max_group_size = 8
  if arg:
    default.apply_variant(config, arg)
  return config
