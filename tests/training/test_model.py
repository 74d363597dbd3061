"""Tests of facetriplet/model.py: unit float32 embeddings, .keras round trip, inference mode."""

import os

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from facetriplet.training import model as model_lib
from facetriplet.training import networks
from facetriplet.errors import UserError


def _config(**model_overrides):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict(
    dict(
      backbone="resnet18",
      weights="none",
      width=0.125,
      image_size=32,
      crop_size=40,
      embedding_dim=16,
      mixed_precision="",
    )
  )
  config.model.update(model_overrides)
  config.augment = ml_collections.ConfigDict(
    dict(
      flip=True,
      translate=0.1,
      zoom=0.1,
      rotation=0.03,
      brightness=0.2,
      contrast=0.2,
      saturation=0.2,
      hue=0.02,
      grayscale=0.2,
      erasing=0.5,
      erasing_scale=(0.02, 0.2),
    )
  )
  return config


def _uint8(n=3, size=40):
  return np.random.RandomState(1).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


class ModelTest(tf.test.TestCase):
  def test_unit_float32_embeddings_of_stored_size_input(self):
    model = model_lib.build_embedding_model(_config())
    self.assertEqual(model.input.shape, (None, 40, 40, 3))
    self.assertEqual(model.input.dtype, "uint8")
    out = model(_uint8(), training=False)
    self.assertEqual(out.dtype, tf.float32)
    self.assertEqual(out.shape, (3, 16))
    self.assertAllClose(np.linalg.norm(out.numpy(), axis=1), np.ones(3), atol=1e-5)

  def test_augmentation_off_at_inference(self):
    model = model_lib.build_embedding_model(_config())
    x = _uint8()
    aug = model.get_layer("augmentation")
    self.assertAllEqual(aug(x.astype(np.float32)), x.astype(np.float32))  # default: off
    self.assertNotAllClose(aug(x.astype(np.float32), training=True), x.astype(np.float32))
    a = model(x, training=False)
    self.assertAllClose(model(x), a)  # calling without `training` never augments
    self.assertAllClose(model.predict(x, verbose=0), a, atol=1e-5)

  def test_keras_save_load_round_trip(self):
    model = model_lib.build_embedding_model(_config())
    path = os.path.join(self.get_temp_dir(), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _uint8(4)
    self.assertAllClose(loaded(x, training=False), model(x, training=False), atol=1e-6)
    self.assertEqual(
      loaded.get_layer("augmentation").augment_config,
      model.get_layer("augmentation").augment_config,
    )

  def test_mixed_precision_keeps_float32_output(self):
    model = model_lib.build_embedding_model(_config(mixed_precision="mixed_bfloat16"))
    self.assertEqual(keras.config.dtype_policy().name, "float32")  # global policy restored
    self.assertEqual(model.get_layer("projection").compute_dtype, "bfloat16")
    out = model(_uint8(), training=False)
    self.assertEqual(out.dtype, tf.float32)
    self.assertAllClose(np.linalg.norm(out.numpy(), axis=1), np.ones(3), atol=1e-3)

  def test_freeze_backbone(self):
    model = model_lib.build_embedding_model(_config())
    model_lib.set_backbone_trainable(model, False)
    self.assertEqual(
      [v.path.split("/")[0] for v in model.trainable_variables], ["projection", "projection"]
    )
    model_lib.set_backbone_trainable(model, True)
    self.assertGreater(len(model.trainable_variables), 2)


def test_imagenet_download_failure_is_a_user_error(monkeypatch):
  from keras.src.utils import file_utils

  def offline(*args, **kwargs):
    raise Exception("URL fetch failure: no network")  # pylint: disable=broad-exception-raised

  monkeypatch.setattr(file_utils, "get_file", offline)
  with pytest.raises(UserError, match="could not download the ImageNet weights"):
    model_lib.build_embedding_model(_config(backbone="mobilenetv3small", weights="imagenet"))


def test_bad_weights_and_backbone_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    model_lib.build_embedding_model(_config(weights=str(tmp_path / "missing.h5")))
  with pytest.raises(UserError, match="has no 'imagenet' weights"):
    model_lib.build_embedding_model(_config(weights="imagenet"))
  with pytest.raises(UserError, match="unknown backbone"):
    model_lib.build_embedding_model(_config(backbone="resnet1000"))


def test_local_weights_file(tmp_path):
  first = networks.build("resnet18", 32, None, 0.125)
  path = str(tmp_path / "backbone.weights.h5")
  first.save_weights(path)
  second = networks.build("resnet18", 32, path, 0.125)
  for a, b in zip(first.weights, second.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50", "efficientnetb0", "vgg16", "mobilenetv3small"])
def test_keras_application_backbones(backbone):
  model = model_lib.build_embedding_model(_config(backbone=backbone, image_size=32))
  out = model(_uint8(2), training=False)
  assert out.shape == (2, 16) and out.dtype == tf.float32
  np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, atol=1e-5)


def test_resnet18_stem_pool_quarters_the_feature_map():
  def stage1_side(stem_pool):
    backbone = networks.build("resnet18", 64, None, 0.125, stem_pool=stem_pool)
    return backbone.get_layer("stage1_block1_out").output.shape[1]

  assert stage1_side(None) == 32 and stage1_side(False) == 32  # auto: no pool below 96 px
  assert stage1_side(True) == 16
  assert (
    networks.build("resnet18", 96, None, 0.125).get_layer("stage1_block1_out").output.shape[1] == 24
  )
  with pytest.raises(UserError, match="stem_pool"):
    config = _config(backbone="resnet18", image_size=32)
    config.model.stem_pool = "maybe"
    model_lib.build_embedding_model(config)


def test_resnet18_blocks_sets_the_depth():
  def convs(backbone):
    return sorted(x.name for x in backbone.layers if isinstance(x, keras.layers.Conv2D))

  stem, projections = ["stem_conv"], [f"stage{s}_block1_proj" for s in (2, 3, 4)]
  ten = networks.build("resnet18", 32, None, 0.125, blocks=1)
  body = [f"stage{s}_block1_conv{c}" for s in (1, 2, 3, 4) for c in (1, 2)]
  assert convs(ten) == sorted(stem + projections + body)  # a ResNet-10: 8 body convs
  eighteen = [f"stage{s}_block{b}_conv{c}" for s in (1, 2, 3, 4) for b in (1, 2) for c in (1, 2)]
  assert convs(networks.build("resnet18", 32, None, 0.125)) == sorted(stem + projections + eighteen)
  config = _config(blocks=1)
  model = model_lib.build_embedding_model(config)
  assert convs(model.get_layer(networks.LAYER)) == convs(ten)
  with pytest.raises(UserError, match="model.blocks=1 does not apply to vgg16"):
    networks.build("vgg16", 32, None, blocks=1)
  with pytest.raises(UserError, match="model.blocks=-1: set --config.model.blocks to 1 or more"):
    networks.build("resnet18", 32, None, 0.125, blocks=-1)


def test_center_crop_feeds_the_network_the_middle_of_the_crop(tmp_path):
  from facetriplet.training import workdir  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
  cropped = model_lib.build_embedding_model(_config(center_crop=0.5))  # the middle 20 of 40 px
  plain = model_lib.build_embedding_model(_config(crop_size=20))
  assert "center_crop" not in [layer.name for layer in plain.layers]
  plain.set_weights(cropped.get_weights())
  expected = plain(images[:, 10:30, 10:30], training=False).numpy()
  np.testing.assert_allclose(cropped(images, training=False).numpy(), expected, atol=1e-5)
  images[:, :10] = 0  # the padding it never sees
  images[:, :, 30:] = 255
  np.testing.assert_allclose(cropped(images, training=False).numpy(), expected, atol=1e-5)
  path = str(tmp_path / "cropped.keras")
  workdir.save_model_atomically(cropped, path)
  reloaded = workdir.load_checkpoint(path)
  np.testing.assert_allclose(reloaded(images, training=False).numpy(), expected, atol=1e-5)
  for bad in (0.0, 1.5):
    with pytest.raises(UserError, match=f"model.center_crop={bad} must be in"):
      model_lib.build_embedding_model(_config(center_crop=bad))


def test_every_registered_network_has_a_spec():
  for name in networks.NAMES:
    spec = networks.get(name)
    assert spec.name == name and spec.preprocess in networks.PREPROCESS_MODES
  with pytest.raises(UserError, match="unknown backbone"):
    networks.check("resnet1000")


def test_a_checkpoint_of_any_network_loads_in_a_fresh_process(tmp_path):
  """A .keras checkpoint holds the network's own layers (dlib_resnet's affine, ...); loading it
  in a process that never built that network must still find them (networks.register_layers)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from facetriplet.training import workdir  # pylint: disable=g-import-not-at-top

  config = _config(
    backbone="dlib_resnet", image_size=150, crop_size=150, embedding_dim=128, width=1.0
  )
  net = model_lib.build_embedding_model(config)
  path = str(tmp_path / "net.keras")
  workdir.save_model_atomically(net, path)
  x = np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3)).astype(np.uint8)
  np.save(tmp_path / "x.npy", x)
  code = (
    "import sys, numpy as np\n"
    "from facetriplet.training import workdir\n"
    "m = workdir.load_checkpoint(sys.argv[1])\n"
    "np.save(sys.argv[3], m.predict_on_batch(np.load(sys.argv[2])))\n"
  )
  out = tmp_path / "out.npy"
  subprocess.run(
    [sys.executable, "-c", code, path, str(tmp_path / "x.npy"), str(out)], check=True, timeout=300
  )
  np.testing.assert_allclose(np.load(out), net.predict_on_batch(x), atol=1e-5)
