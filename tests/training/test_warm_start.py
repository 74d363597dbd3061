"""Tests of facetriplet/warm_start.py (train.init_from): workdir, .keras file and export."""

import os

import numpy as np
import pytest

from facetriplet.training import export
from facetriplet.training import warm_start
from facetriplet.training import model as model_lib
from facetriplet.errors import UserError
from tests.training.test_train import load_config

SIZE = 32


def _config(seed, dim=16):
  config = load_config("default", "smoke")
  config.seed = seed
  config.model.embedding_dim = dim
  return config


def _trained_workdir(tmp_path):
  import keras  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(1)
  source = model_lib.build_embedding_model(_config(1), SIZE)
  workdir = tmp_path / "run"
  os.makedirs(workdir / "checkpoints")
  source.save(str(workdir / "checkpoints" / "best.keras"))
  return source, str(workdir)


def test_init_from_workdir_keras_file_and_export(tmp_path):
  import keras  # pylint: disable=g-import-not-at-top

  source, workdir = _trained_workdir(tmp_path)
  export_dir = str(tmp_path / "export")
  export.export_model(workdir, export_dir, crop={"crop_size": SIZE, "detector": "none"})
  x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  want = source(x, training=False).numpy()
  for where in (workdir, os.path.join(workdir, "checkpoints", "best.keras"), export_dir):
    keras.utils.set_random_seed(2)
    fresh = model_lib.build_embedding_model(_config(2), SIZE)
    assert not np.allclose(fresh(x, training=False).numpy(), want, atol=1e-4)
    warm_start.load_into(fresh, where)
    np.testing.assert_allclose(fresh(x, training=False).numpy(), want, atol=1e-5)


def test_init_from_mismatch_and_missing_are_user_errors(tmp_path):
  _, workdir = _trained_workdir(tmp_path)
  other = model_lib.build_embedding_model(_config(2, dim=8), SIZE)
  with pytest.raises(UserError, match="shape"):
    warm_start.load_into(other, workdir)
  with pytest.raises(UserError, match="does not exist"):
    warm_start.load_into(other, str(tmp_path / "nothing"))
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(UserError, match="not a training workdir"):
    warm_start.load_into(other, str(tmp_path / "notes.txt"))
