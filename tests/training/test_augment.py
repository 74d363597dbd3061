"""Tests of facetriplet/augment.py: eagerly, inside tf.data and tf.function; off at inference."""

import numpy as np
import pytest
import tensorflow as tf

from facetriplet.training import augment

FULL = dict(
  flip=True,
  translate=0.1,
  zoom=0.1,
  rotation=0.03,
  brightness=0.2,
  contrast=0.2,
  saturation=0.2,
  hue=0.05,
  grayscale=0.3,
  erasing=0.5,
  erasing_scale=(0.02, 0.2),
)
ALL_LAYERS = [
  "RandomFlip",
  "RandomTranslation",
  "RandomZoom",
  "RandomRotation",
  "RandomBrightness",
  "RandomContrast",
  "RandomSaturation",
  "RandomHue",
  "RandomGrayscale",
  "RandomErasing",
]


def _images(n=4, size=24):
  return np.random.RandomState(0).randint(0, 256, (n, size, size, 3)).astype(np.float32)


def test_every_layer_present_and_zero_strength_omits_it():
  assert augment.layer_names(augment.build_augmentation(FULL)) == ALL_LAYERS
  off = {k: (0.0 if not isinstance(v, tuple) else v) for k, v in FULL.items()}
  off["flip"] = False
  assert augment.layer_names(augment.build_augmentation(off)) == []
  partial = dict(off, rotation=0.05, grayscale=0.1)
  assert augment.layer_names(augment.build_augmentation(partial)) == [
    "RandomRotation",
    "RandomGrayscale",
  ]


def test_eager_training_changes_images_and_inference_is_identity():
  aug = augment.build_augmentation(FULL, seed=3)
  x = _images()
  y = aug(x, training=True).numpy()
  assert y.shape == x.shape and y.dtype == np.float32
  assert np.abs(y - x).mean() > 1.0
  assert 0.0 <= y.min() and y.max() <= 255.0
  np.testing.assert_array_equal(aug(x, training=False).numpy(), x)


def test_inside_tf_data_and_tf_function():
  aug = augment.build_augmentation(FULL, seed=5)
  x = _images()
  ds = tf.data.Dataset.from_tensor_slices(x).batch(2).map(lambda b: aug(b, training=True))
  out = np.concatenate([b.numpy() for b in ds])
  assert out.shape == x.shape and np.abs(out - x).mean() > 1.0
  train_fn = tf.function(lambda b: aug(b, training=True))
  infer_fn = tf.function(lambda b: aug(b, training=False))
  assert np.abs(train_fn(tf.constant(x)).numpy() - x).mean() > 1.0
  np.testing.assert_array_equal(infer_fn(tf.constant(x)).numpy(), x)


@pytest.mark.parametrize("name", ["flip", "grayscale", "erasing", "brightness"])
def test_single_layer_runs_in_graph(name):
  config = {name: True if name == "flip" else 0.9}
  aug = augment.build_augmentation(config, seed=1)
  fn = tf.function(lambda b: aug(b, training=True))
  out = fn(tf.constant(_images(8))).numpy()
  assert out.shape == (8, 24, 24, 3)
