"""The checks of a training run that need no TensorFlow: `facetriplet-train` runs them before it
imports the trainer, so a wrong path or an untrainable data set is reported at once, and
`train.train_and_evaluate` runs them for every other caller."""

from __future__ import annotations

from facetriplet.data import tfrecords
from facetriplet.errors import UserError


def training_data(config) -> tfrecords.ShardSet:
  """The TFRecords of `config.data`, checked to hold two trainable identities and a val split.

  Raises:
    UserError: no --config.data.tfrecord_dir, no manifest there, or too little to train on.
  """
  if not config.data.tfrecord_dir:
    raise UserError(
      "no training data: set --config.data.tfrecord_dir=<folder written by "
      "facetriplet-build-tfrecords>"
    )
  shard_set = tfrecords.ShardSet.open(config.data.tfrecord_dir)
  shard_set.check_trainable(
    config.data.train_split, config.data.val_split, int(config.data.min_photos)
  )
  return shard_set
