r"""Default experiment: ResNet50 (ImageNet weights), 112 px, P=32 identities x K=4 photos, 128-d.

For identity folders with many photos each (CelebA-like). On one GPU:

  facetriplet-train --config=configs/default.py \
      --config.data.tfrecord_dir=/data/celeba_tfrecords --workdir=/runs/default

Expected: roughly 40 min per 20 epochs of a 20k-photo set on one recent GPU (mixed precision off);
val mAP@R well above the untrained network's (epoch 0 line of metrics.jsonl). On this project's
2-core CPU ResNet50 at 112 px trains at ~24 img/s, so use configs/lfw.py there.

Smoke variant (seconds; tiny ResNet-18-style net, 32 px, 2 epochs x 2 steps):

  facetriplet-train --config=configs/default.py:smoke --config.data.tfrecord_dir=DIR --workdir=W

Every config module here takes the same optional argument: `get_config("smoke")` (or
`--config=configs/<x>.py:smoke`) shrinks it to a run of a few seconds. Derived values are
FieldReferences, so command-line overrides of what they depend on (train.p, train.k,
train.num_replicas, train.base_lr) carry through to `train.learning_rate`.
"""

from typing import Optional

import ml_collections


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The default config; `arg='smoke'` gives the seconds-long variant."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.tfrecord_dir = ""  # folder written by facetriplet-build-tfrecords
  config.data.train_split = "train"
  config.data.val_split = "val"
  config.data.cache = False  # keep decoded crops in memory (small sets only)
  config.data.shuffle_groups = 1024  # shuffle buffer, in identity groups
  config.data.max_group_size = 64  # photos kept per identity (reservoir sample beyond)
  config.data.min_photos = 2  # identities with fewer photos never enter a batch

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "resnet50"  # a training.networks name: resnet50 | efficientnetb0 |
  #                                   vgg16 | mobilenetv3small | resnet18 | dlib_resnet
  config.model.weights = "imagenet"  # 'imagenet', 'none' or a local weights file
  config.model.width = 1.0  # channel multiplier (resnet18 only)
  config.model.stem_pool = "auto"  # resnet18: max-pool after the stem: auto (>= 96 px)|on|off
  config.model.blocks = 0  # resnet18: basic blocks per stage (0 = its 2; 1 = a ResNet-10)
  config.model.image_size = 112  # backbone input side (crops are resized inside)
  config.model.crop_size = 0  # the crop side S the model takes; 0 = the manifest's
  config.model.center_crop = 1.0  # fraction of the crop's side the network sees (its centre)
  config.model.embedding_dim = 128
  config.model.mixed_precision = ""  # '' | 'mixed_bfloat16' | 'mixed_float16' (GPUs)
  config.model.test_time_flip = False  # embed image + mirror, average (eval and export)
  config.model.frozen_until = ""  # backbone layers before this one never train ('' = none)

  config.augment = ml_collections.ConfigDict()
  config.augment.flip = True
  config.augment.translate = 0.08
  config.augment.zoom = 0.1
  config.augment.rotation = 0.03  # fraction of a full turn (~11 degrees)
  config.augment.brightness = 0.15
  config.augment.contrast = 0.2
  config.augment.saturation = 0.2
  config.augment.hue = 0.02
  config.augment.grayscale = 0.1  # probability
  config.augment.erasing = 0.25  # probability of one occluding rectangle
  config.augment.erasing_scale = (0.02, 0.15)

  config.loss = ml_collections.ConfigDict()
  config.loss.kind = "semi_hard"  # semi_hard | batch_hard | batch_all | random | metric_pairs
  #                                         | cosface | arcface (margin softmax, class head)
  config.loss.margin = 0.2  # triplet margin
  config.loss.distance = "l2"  # l2 | squared_l2 | angular
  config.loss.threshold = 0.45  # metric_pairs: the same/other-person distance threshold
  config.loss.soft = False  # batch_hard only: softplus instead of the hinge
  config.loss.scale = 30.0  # margin softmax: s
  config.loss.class_margin = 0.35  # margin softmax: m (cosface 0.35, arcface 0.5 rad)

  # Optional second stage: the last `epochs` of train.epochs fine-tune with a triplet loss.
  config.finetune = ml_collections.ConfigDict()
  config.finetune.epochs = 0  # 0 = one stage only
  config.finetune.kind = "semi_hard"  # a triplet loss kind
  config.finetune.margin = 0.2
  config.finetune.distance = "l2"
  config.finetune.soft = False
  config.finetune.lr_multiplier = 0.1  # peak lr of the stage = train.learning_rate x this
  config.finetune.warmup_epochs = 0.5

  # Knowledge distillation: the student also learns the teacher's embedding of each photo.
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher = ""  # '' = none; a pretrained network (dlib_resnet), workdir or export
  config.distill.weight = 1.0  # weight of the cosine distance to the teacher's embeddings
  # Targets = the teacher's mean embedding of each crop and its mirror (test-time flip).
  config.distill.flip_average = True

  config.train = ml_collections.ConfigDict()
  p = ml_collections.FieldReference(32)
  k = ml_collections.FieldReference(4)
  num_replicas = ml_collections.FieldReference(1)
  base_lr = ml_collections.FieldReference(1e-3)
  config.train.p = p  # identities per replica batch
  config.train.k = k  # photos per identity
  config.train.num_replicas = num_replicas  # replicas the lr is scaled for (checked at start)
  config.train.cpu_replicas = 1  # without GPUs: split the CPU into N logical devices
  config.train.heartbeat_timeout_s = 60.0  # several machines: a worker silent this long is dead
  config.train.base_lr = base_lr  # learning rate for a global batch of 256
  config.train.learning_rate = base_lr * p * k * num_replicas / 256.0
  config.train.optimizer = "adamw"  # adamw | sgd
  config.train.weight_decay = 1e-4
  config.train.momentum = 0.9  # sgd only
  config.train.warmup_epochs = 1.0
  config.train.min_lr_fraction = 0.01  # cosine decays to this fraction of the peak
  config.train.epochs = 20
  config.train.steps_per_epoch = 0  # 0 = train images // global batch (from the manifest)
  config.train.freeze_backbone_epochs = 2  # transfer learning: train the head first
  config.train.finetune_lr_multiplier = 0.1  # lr factor once the backbone is unfrozen
  config.train.checkpoint_every_steps = 0  # extra BackupAndRestore saves (0 = per epoch only)
  config.train.eval_batch_size = 128
  config.train.eval_every_epochs = 1
  config.train.jit_compile = False  # XLA; never used with several CPU replicas
  config.train.init_from = ""  # warm start: training workdir, .keras file or export
  config.train.verbose = -1  # -1: progress bar in a terminal, a line per epoch in a log; 0/1/2

  if arg:
    apply_variant(config, arg)
  return config


def apply_variant(config: ml_collections.ConfigDict, arg: str) -> None:
  """Applies a named variant ('smoke') in place."""
  if arg != "smoke":
    raise ValueError(f"unknown config variant {arg!r}; valid: smoke")
  config.model.backbone = "resnet18"
  config.model.weights = "none"
  config.model.width = 0.125
  config.model.image_size = 32
  config.model.stem_pool = "auto"
  config.model.embedding_dim = 16
  config.train.p = 4
  config.train.k = 2
  config.train.epochs = 2
  config.train.steps_per_epoch = 2
  config.train.freeze_backbone_epochs = 0
  config.train.warmup_epochs = 0.5
  config.train.eval_batch_size = 64
  config.train.verbose = 0
  config.data.shuffle_groups = 64
