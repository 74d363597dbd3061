"""Tests of facetriplet/margin_softmax.py and the two-stage schedule of train.py."""

import math
import os

import tensorflow as tf

try:  # before any TensorFlow op: split the CPU into two logical devices for MirroredStrategy
  tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
  )
except RuntimeError:
  pass

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from facetriplet.training import export  # noqa: E402
from facetriplet.search import embedder  # noqa: E402
from facetriplet import export_format  # noqa: E402
from facetriplet.training import margin_softmax  # noqa: E402
from facetriplet.training import train  # noqa: E402
from facetriplet.training.workdir import read_metrics  # noqa: E402
from tests.training.test_train import (  # noqa: E402
  SIZE,
  _Interrupt,
  data_dir,  # noqa: F401  (a fixture)
  needs_two_cpus,
  smoke_config,
)


def ref_loss(labels, cosine, kind, s, m):
  """NumPy, one sample at a time, straight from the papers' formulas."""
  out = []
  for y, row in zip(labels, cosine.astype(np.float64)):
    logits = s * row.copy()
    c = row[y]
    if kind == "cosface":
      logits[y] = s * (c - m)
    else:
      theta = math.acos(min(1.0, max(-1.0, c)))
      if theta + m <= math.pi:
        logits[y] = s * math.cos(theta + m)
      else:  # past pi the angular margin is replaced by the linear one (InsightFace)
        logits[y] = s * (c - m * math.sin(m))
    z = logits - logits.max()
    out.append(-(z[y] - math.log(np.exp(z).sum())))
  return np.array(out)


@pytest.mark.parametrize("kind,m", [("cosface", 0.35), ("arcface", 0.5), ("arcface", 0.2)])
def test_loss_matches_numpy_reference(kind, m):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 7, 40)
  cosine = rng.uniform(-1, 1, (40, 7)).astype(np.float32)
  cosine[:5, labels[:5]] = -0.98  # some targets past pi - m (the arcface fallback branch)
  got = margin_softmax.margin_softmax_loss(
    tf.constant(labels), tf.constant(cosine), kind, 30.0, m
  ).numpy()
  np.testing.assert_allclose(got, ref_loss(labels, cosine, kind, 30.0, m), rtol=1e-4, atol=1e-4)
  keras_loss = margin_softmax.MarginSoftmaxLoss(kind, 30.0, m)
  np.testing.assert_allclose(
    float(keras_loss(labels[:, None].astype(np.float32), cosine)),
    ref_loss(labels, cosine, kind, 30.0, m).mean(),
    rtol=1e-4,
  )


def test_margin_makes_the_loss_larger_and_unknown_kind_fails():
  labels = tf.constant([0, 1])
  cosine = tf.constant([[0.9, 0.1], [0.2, 0.8]])
  plain = margin_softmax.margin_softmax_loss(labels, cosine, "cosface", 4.0, 0.0).numpy()
  for kind in margin_softmax.KINDS:
    assert (
      margin_softmax.margin_softmax_loss(labels, cosine, kind, 4.0, 0.3).numpy() > plain
    ).all()
  with pytest.raises(ValueError, match="sphereface"):
    margin_softmax.MarginSoftmaxLoss("sphereface")


def test_cosine_classifier_is_normalised_matmul():
  layer = margin_softmax.CosineClassifier(5)
  x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
  out = layer(x).numpy()
  w = layer.kernel.numpy()
  expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
  np.testing.assert_allclose(out, expected, atol=1e-5)
  assert out.shape == (4, 5)


@needs_two_cpus
@pytest.mark.slow
def test_two_stage_run_resumes_and_exports_without_the_head(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = smoke_config(data_dir, epochs=3, steps_per_epoch=2)
  config.loss.kind = "cosface"
  config.finetune.epochs = 1
  config.model.test_time_flip = True
  strategy = train.make_strategy(config.train)
  assert strategy.num_replicas_in_sync == 2
  # Killed at the start of the triplet stage; the re-run restores the margin-softmax stage's
  # backup (nothing left to run there) and trains the last epoch only.
  with pytest.raises(RuntimeError, match="simulated kill"):
    train.train_and_evaluate(config, workdir, extra_callbacks=[_Interrupt(2)])
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert "head_accuracy" in records[1] and "active_triplets" not in records[1]
  result = train.train_and_evaluate(config, workdir)
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1, 2, 3]
  assert [r["step"] for r in records] == [0, 2, 4, 6]
  assert "active_triplets" in records[3] and "head_accuracy" not in records[3]
  assert "noflip/top1" in records[3]  # test-time flip on: the plain numbers are recorded too
  assert result["steps"] == 6
  for name in ("backup/phase2", "backup/phase3"):
    assert os.path.isdir(os.path.join(workdir, name)), name
  # The class head never reaches the checkpoints nor the export.
  best = export.load_checkpoint(os.path.join(workdir, "checkpoints", "best.keras"))
  assert "class_head" not in [layer.name for layer in best.layers]
  assert best.outputs[0].shape[-1] == config.model.embedding_dim
  export_dir = str(tmp_path / "export")
  export.export_model(workdir, export_dir)
  meta = export_format.read_metadata(export_dir)
  assert meta["test_time_flip"] is True
  names = [v.name for v in tf.saved_model.load(export_dir).model_variables]
  assert not any("class_weights" in n for n in names)
  # The export embeds image and mirror and averages: check against the Keras model.
  x = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
  both = best(x, training=False).numpy() + best(x[:, :, ::-1], training=False).numpy()
  expected = both / np.linalg.norm(both, axis=1, keepdims=True)
  np.testing.assert_allclose(embedder.load_embedder(export_dir).embed(x), expected, atol=1e-5)


@needs_two_cpus
def test_head_is_mirrored_and_labels_are_global(data_dir):
  keras.utils.set_random_seed(0)
  config = smoke_config(data_dir)
  strategy = train.make_strategy(config.train)
  from facetriplet.training import model as model_lib  # pylint: disable=g-import-not-at-top

  with strategy.scope():
    model = model_lib.build_embedding_model(config, SIZE)
    head = margin_softmax.CosineClassifier(9, name="class_head")
    with_head = keras.Model(model.inputs, head(model.outputs[0]))
    with_head.compile(
      optimizer=keras.optimizers.SGD(0.5),
      loss=margin_softmax.MarginSoftmaxLoss("cosface", 16.0, 0.2),
    )
  value = getattr(head.kernel, "value", head.kernel)
  assert isinstance(value, tf.distribute.DistributedValues)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
  y = np.array([0, 1, 2, 3, 8, 7, 6, 5])  # replica 2 sees labels replica 1 never does
  before = head.kernel.numpy().copy()
  with_head.fit(x, y, batch_size=8, epochs=1, verbose=0)
  after = head.kernel.numpy()
  # Every class present in the global batch moved; the absent class 4 did not get a positive
  # pull (its column only moves as a negative), and the replicas agree on the result.
  moved = np.linalg.norm(after - before, axis=0)
  assert (moved[[0, 1, 2, 3, 5, 6, 7, 8]] > 0).all()
  replicas = [v.numpy() for v in value.values]
  np.testing.assert_array_equal(replicas[0], replicas[1])
