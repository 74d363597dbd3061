"""Tests of facetriplet/training/distill.py: the targets against the teacher run by hand."""

import numpy as np

from facetriplet import config_files
from facetriplet.data import tfrecords
from facetriplet.training import distill, model, workdir
from tests import shard_helpers


def _teacher(tmp_path):
  """A small random embedding network saved as a .keras checkpoint (a valid teacher source)."""
  config = config_files.load_config("default:smoke")
  config.model.crop_size = 32
  net = model.build_embedding_model(config)
  path = str(tmp_path / "teacher.keras")
  net.save(path)
  return net, path


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flip_averaged_targets_are_the_teachers_mean_over_crop_and_mirror(tmp_path):
  """Each target is unit(unit(t(x)) + unit(t(mirror x))), in record order, over more than one
  batch of 64; with flip_average off it is t(x); the cached file follows the setting."""
  data = str(tmp_path / "shards")
  shard_helpers.write_dataset(data, {"train": [30, 25, 20], "val": [2]}, size=32, shards=2)
  shard_set = tfrecords.ShardSet.open(data)
  net, path = _teacher(tmp_path)
  config = config_files.load_config("default:smoke")
  config.distill.teacher = path
  run = workdir.Workdir(str(tmp_path / "run"))
  (tmp_path / "run").mkdir()

  records = [
    (rec["path"], rgb) for batch in shard_set.decoded_batches(["train"]) for rec, rgb in batch
  ]
  crops = np.stack([rgb for _, rgb in records])
  assert len(crops) > 64  # a second, smaller batch (a second trace of the teacher)
  plain = net.predict_on_batch(crops)
  mirrored = net.predict_on_batch(crops[:, :, ::-1])
  assert np.abs(plain - mirrored).max() > 1e-3  # the random teacher is not mirror-symmetric

  paths, targets = distill.targets(config, shard_set, run)
  assert paths == [p for p, _ in records]
  np.testing.assert_allclose(targets, _unit(_unit(plain) + _unit(mirrored)), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(targets, axis=1), 1.0, atol=1e-5)

  config.distill.flip_average = False
  _, targets_plain = distill.targets(config, shard_set, run)  # recomputed, not the cached file
  np.testing.assert_allclose(targets_plain, _unit(plain), atol=1e-5)
