"""Tests of facetriplet/train.py, tools/train.py and configs/ (two logical CPU replicas)."""

import json
import os
import subprocess
import sys

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

from facetriplet import config_files  # noqa: E402
from facetriplet.data import input_pipeline  # noqa: E402
from facetriplet.training import losses  # noqa: E402
from facetriplet.training import model as model_lib  # noqa: E402
from facetriplet.training import train  # noqa: E402
from facetriplet.training.workdir import read_metrics  # noqa: E402
from tests import shard_helpers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 32
needs_two_cpus = pytest.mark.skipif(
  len(tf.config.list_logical_devices("CPU")) < 2,
  reason="TensorFlow started before the CPU could be split into two logical devices",
)


def load_config(name, arg=None):
  return config_files.load_config(os.path.join(REPO, "configs", f"{name}.py"), arg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("train_shards"))
  shard_helpers.write_dataset(
    directory,
    {"train": [4, 3, 2, 5, 1, 3, 4, 2, 3, 2], "val": [3, 2, 2, 1, 3]},
    size=SIZE,
    shards=2,
  )
  return directory


def smoke_config(data_dir, **train_overrides):
  config = load_config("default", "smoke")
  config.data.tfrecord_dir = data_dir
  config.train.cpu_replicas = 2
  config.train.num_replicas = 2
  config.train.p = 2
  config.train.k = 2
  config.train.update(train_overrides)
  return config


def test_configs_load_and_derive_the_learning_rate():
  for name in ("default", "lfw", "orl"):
    for arg in (None, "smoke"):
      config = load_config(name, arg)
      assert config.data.train_split == "train" and config.data.val_split == "val"
      t = config.train
      assert t.learning_rate == pytest.approx(t.base_lr * t.p * t.k * t.num_replicas / 256)
  config = load_config("default")
  assert (
    config.model.backbone,
    config.model.image_size,
    config.train.p,
    config.train.k,
    config.model.embedding_dim,
  ) == ("resnet50", 112, 32, 4, 128)
  config.train.p = 64  # an override carries through to the derived value
  assert config.train.learning_rate == pytest.approx(1e-3 * 64 * 4 / 256)
  assert load_config("lfw").train.k == 4


@needs_two_cpus
def test_each_replica_gets_p_whole_identities(data_dir):
  strategy = train.make_strategy(smoke_config(data_dir).train)
  assert strategy.num_replicas_in_sync == 2
  ds = input_pipeline.train_dataset(data_dir, "train", p=2, k=2, num_replicas=2, seed=0)
  dist = iter(strategy.experimental_distribute_dataset(ds))
  for _ in range(4):
    images, labels = next(dist)
    per_replica = strategy.experimental_local_results(labels)
    assert len(per_replica) == 2
    for chunk in per_replica:
      chunk = chunk.numpy()
      assert chunk.shape == (4,)
      assert chunk[0] == chunk[1] and chunk[2] == chunk[3] and chunk[0] != chunk[2]
    assert (
      len({int(c.numpy()[0]) for c in per_replica} | {int(c.numpy()[2]) for c in per_replica}) == 4
    )
    assert strategy.experimental_local_results(images)[0].shape == (4, SIZE, SIZE, 3)


@needs_two_cpus
def test_loss_and_gradient_are_the_mean_over_replicas(data_dir):
  config = smoke_config(data_dir)
  config.augment.update({k: 0.0 for k in config.augment if k not in ("flip", "erasing_scale")})
  config.augment.flip = False
  strategy = train.make_strategy(config.train)
  ds = input_pipeline.train_dataset(data_dir, "train", p=2, k=2, num_replicas=2, seed=1)
  images, labels = next(iter(ds))
  with strategy.scope():
    model = model_lib.build_embedding_model(config, SIZE)
    lr = 0.5
    train._compile(model, config.loss, keras.optimizers.SGD(lr), jit_compile=False)
  reference = model_lib.build_embedding_model(config, SIZE)
  reference.set_weights(model.get_weights())
  before = [v.numpy() for v in model.trainable_variables]

  loss_fn = losses.TripletLoss(config.loss.kind, config.loss.margin, config.loss.distance)
  replica_losses, grads = [], None
  for half_images, half_labels in zip(tf.split(images, 2), tf.split(labels, 2)):
    with tf.GradientTape() as tape:
      loss = loss_fn(half_labels, reference(half_images, training=True))
    g = tape.gradient(loss, reference.trainable_variables)
    grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    replica_losses.append(float(loss))
  expected_loss = float(np.mean(replica_losses))
  whole_batch_loss = float(loss_fn(labels, reference(images, training=True)))

  history = model.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, verbose=0)
  reported = history.history["loss"][0]
  assert reported == pytest.approx(expected_loss, rel=1e-4, abs=1e-6), (
    reported,
    replica_losses,
    whole_batch_loss,
  )
  for v0, v1, g in zip(before, model.trainable_variables, grads):
    np.testing.assert_allclose(v1.numpy(), v0 - lr * g.numpy() / 2, rtol=1e-3, atol=1e-5)


@needs_two_cpus
def test_loss_goes_down_under_two_replicas(data_dir):
  # Seeded here: the initial weights (and so a non-zero first loss) must not depend on which
  # tests ran before in this process.
  keras.utils.set_random_seed(0)
  config = smoke_config(data_dir)
  # The test shards' identities are colour-coded, so an untrained net may already separate them
  # by the default margin (loss 0 from the start); a wide margin keeps the first loss positive.
  config.loss.margin = 1.0
  config.augment.update({k: 0.0 for k in config.augment if k not in ("flip", "erasing_scale")})
  strategy = train.make_strategy(config.train)
  ds = input_pipeline.train_dataset(data_dir, "train", p=2, k=2, num_replicas=2, seed=2)
  fixed = next(iter(ds))
  with strategy.scope():
    model = model_lib.build_embedding_model(config, SIZE)
    train._compile(model, config.loss, keras.optimizers.Adam(3e-3), jit_compile=False)
  per_step = []
  log = keras.callbacks.LambdaCallback(
    on_train_batch_end=lambda batch, logs: per_step.append(float(logs["loss"]))
  )
  model.fit(
    tf.data.Dataset.from_tensors(fixed).repeat(),
    steps_per_epoch=10,
    epochs=1,
    verbose=0,
    callbacks=[log],
  )
  # Keras logs the running mean over the epoch: step i's own loss is recovered from it.
  losses_by_step = [per_step[0]] + [
    (i + 1) * per_step[i] - i * per_step[i - 1] for i in range(1, len(per_step))
  ]
  assert losses_by_step[0] > 0
  assert np.mean(losses_by_step[-3:]) < losses_by_step[0], losses_by_step


class _Interrupt(keras.callbacks.Callback):
  def __init__(self, at_epoch):
    super().__init__()
    self.at_epoch = at_epoch

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == self.at_epoch:
      raise RuntimeError(f"simulated kill before epoch {epoch}")


@needs_two_cpus
@pytest.mark.slow
def test_killed_run_resumes_with_the_same_steps(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = smoke_config(data_dir, epochs=3, steps_per_epoch=2, freeze_backbone_epochs=1)
  # Killed inside the fine-tuning phase: the re-run restores the frozen phase's backup (no
  # epoch left to run there), then the fine-tuning phase's backup, and runs only epoch 3.
  with pytest.raises(RuntimeError, match="simulated kill"):
    train.train_and_evaluate(config, workdir, extra_callbacks=[_Interrupt(2)])
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert [r["step"] for r in records] == [0, 2, 4]
  result = train.train_and_evaluate(config, workdir)
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1, 2, 3]
  assert [r["step"] for r in records] == [0, 2, 4, 6]
  assert result["steps"] == 6 and result["epoch"] == 3
  assert 0.0 <= result["map@r"] <= 1.0 and "top1" in records[0]
  for name in (
    "config.json",
    "manifest.json",
    "checkpoints/last.keras",
    "checkpoints/best.keras",
    "backup/phase1",
    "backup/phase2",
    "logs",
  ):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["train"]["epochs"] == 3
  best = keras.saving.load_model(os.path.join(workdir, "checkpoints", "best.keras"), compile=False)
  x = np.zeros((2, SIZE, SIZE, 3), np.uint8)
  out = best(x, training=False).numpy()
  assert out.shape == (2, 16) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_tool_trains_and_reports_user_errors(data_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
  tool = os.path.join(REPO, "tools", "train.py")
  config = os.path.join(REPO, "configs", "default.py")
  ok = subprocess.run(
    [
      sys.executable,
      tool,
      f"--config={config}:smoke",
      f"--workdir={tmp_path / 'run'}",
      f"--config.data.tfrecord_dir={data_dir}",
      "--config.train.epochs=1",
      "--config.train.p=2",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "trained 2 steps" in ok.stdout
  records = read_metrics(str(tmp_path / "run"))
  assert [r["epoch"] for r in records] == [0, 1]
  # Not a terminal: one line per epoch (no progress bar), with the training throughput.
  assert records[1]["images_per_s"] > 0
  shown = ok.stdout + ok.stderr
  assert "images_per_s" in shown and "\u2501" not in shown
  bad = subprocess.run(
    [sys.executable, tool, f"--config={config}:smoke", f"--workdir={tmp_path / 'bad'}"],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2
  assert "config.data.tfrecord_dir" in bad.stderr and "Traceback" not in bad.stderr


def test_progress_is_a_bar_in_a_terminal_and_a_line_per_epoch_in_a_log(monkeypatch):
  from facetriplet.training import progress  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
  assert progress.verbosity(-1) == 1 and progress.verbosity(0) == 0
  monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
  assert progress.verbosity(-1) == 2 and progress.verbosity(1) == 1


def test_unusable_splits_are_user_errors(tmp_path):
  """One usable identity, or no val split: a one-line UserError before any training starts."""
  from facetriplet.errors import UserError  # pylint: disable=g-import-not-at-top

  one = str(tmp_path / "one")
  shard_helpers.write_dataset(one, {"train": [3, 1], "val": [2]}, size=SIZE, shards=1)
  with pytest.raises(UserError, match="1 identities with 2\\+ photos"):
    train.train_and_evaluate(smoke_config(one), str(tmp_path / "w1"))
  no_val = str(tmp_path / "no_val")
  shard_helpers.write_dataset(no_val, {"train": [3, 2, 2]}, size=SIZE, shards=1)
  with pytest.raises(UserError, match="split 'val' is empty"):
    train.train_and_evaluate(smoke_config(no_val), str(tmp_path / "w2"))
  assert not os.path.exists(tmp_path / "w1") and not os.path.exists(tmp_path / "w2")
