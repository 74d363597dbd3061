r"""A small, fast student distilled from dlib's pretrained face ResNet: the network of
configs/lfw.py (a half-width ResNet-18-style net at 64 px) learns the teacher's embedding of every
training photo (cosine regression) plus semi-hard triplets over the people.

The records hold the teacher's crops (the `dlib150` preset, 150 px): the teacher embeds them as
stored, the student resizes them to 64 px inside. Any identity folders work; the measured student
trained on the training people of lfw_2to4 and celeba_199 together (their val people and ORL
held out for scoring: benchmarks/bench_distill.py builds that folder):

  facetriplet-build-tfrecords --input=<identity folders> --output=data/student_dlib \
      --crop_preset=dlib150 --pick=center --val_fraction=0.05
  facetriplet-train --config=student --config.data.tfrecord_dir=data/student_dlib \
      --workdir=runs/student

Measured: see BENCHMARKS.md, "Face networks on real photos".

Smoke variant (seconds): `--config=student:smoke`.
"""

from typing import Optional

import ml_collections

from facetriplet import config_files

common = config_files.sibling(__file__, "common.py")


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The student config; `arg='smoke'` gives the seconds-long variant (no teacher)."""
  default = common.default(__file__)
  config = default.get_config()
  common.from_scratch_cpu(config)
  config.model.stem_pool = "on"
  config.model.embedding_dim = 128
  config.model.test_time_flip = True
  config.distill.teacher = "dlib_resnet"
  config.distill.weight = 4.0
  config.augment.translate = 0.05
  config.augment.zoom = 0.0
  config.augment.rotation = 0.0
  config.augment.erasing = 0.0
  config.loss.kind = "semi_hard"
  config.train.p = 32
  config.train.k = 4
  config.train.epochs = 40
  config.train.eval_every_epochs = 5
  config.train.warmup_epochs = 1.0
  config.data.max_group_size = 16
  if arg:
    default.apply_variant(config, arg)
    config.distill.teacher = ""
  return config
