"""The TensorBoard projector view: files, row order, and embeddings that are the model's."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins import projector as tb_projector

from facetriplet.data import tfrecords
from facetriplet.training import model as model_lib
from facetriplet.training import projector
from facetriplet.training.workdir import Workdir
from tests.training.test_train import SIZE, data_dir, smoke_config  # noqa: F401  (fixture)


def _val_records(directory):
  """{path: (image uint8, label, identity)} read straight from the shards (not eval_dataset)."""
  out = {}
  for record in tfrecords.ShardSet.open(directory).records(["val"]):
    image = tfrecords.decode_image(tf.constant(record["image"]), SIZE).numpy()
    out[record["path"]] = (image, record["label"], record["identity"])
  return out


@pytest.mark.parametrize("flip", [False, True])
def test_projector_files_rows_and_embeddings(data_dir, tmp_path, flip):  # noqa: F811
  import keras  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(0)
  model = model_lib.build_embedding_model(smoke_config(data_dir), SIZE)
  workdir = Workdir(str(tmp_path / "run"))
  summary = projector.write_projector(
    workdir, model, data_dir, "val", max_points=7, seed=1, flip=flip, batch_size=4
  )
  folder = workdir.projector_dir
  assert summary.points == 7 and summary.total == 11 and summary.directory == folder
  names = set(os.listdir(folder))
  assert {"checkpoint", "metadata.tsv", "sprite.png", "projector_config.pbtxt"} <= names
  assert any(n.startswith("events.out.tfevents") for n in names)
  assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".")]

  config = tb_projector.ProjectorConfig()
  with open(os.path.join(folder, "projector_config.pbtxt")) as f:
    text_format.Parse(f.read(), config)
  view = config.embeddings[0]
  assert (view.metadata_path, view.sprite.image_path) == ("metadata.tsv", "sprite.png")
  assert list(view.sprite.single_image_dim) == [32, 32]
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(folder))
  vectors = reader.get_tensor(view.tensor_name)

  with open(os.path.join(folder, "metadata.tsv"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert lines[0] == "identity\tlabel\tpath" and len(lines) - 1 == len(vectors) == 7
  rows = [line.split("\t") for line in lines[1:]]
  records = _val_records(data_dir)
  order = list(records)
  positions = [order.index(path) for _, _, path in rows]
  assert positions == sorted(positions) and len(set(positions)) == 7  # a sample, record order
  images = np.stack([records[path][0] for _, _, path in rows])
  for identity, label, path in rows:
    assert (int(label), identity) == tuple(records[path][1:])
  want = model(images, training=False).numpy()
  if flip:
    want = want + model(images[:, :, ::-1].copy(), training=False).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(vectors, want, atol=1e-5)

  sprite = tf.io.decode_png(tf.io.read_file(os.path.join(folder, "sprite.png"))).numpy()
  side = math.ceil(math.sqrt(7))
  assert sprite.shape == (side * 32, side * 32, 3)
  thumbs = tf.cast(
    tf.round(tf.image.resize(tf.cast(images, tf.float32), (32, 32), antialias=True)), tf.uint8
  ).numpy()
  for k in range(7):
    y, x = divmod(k, side)
    tile = sprite[y * 32 : (y + 1) * 32, x * 32 : (x + 1) * 32].astype(int)
    assert np.abs(tile - thumbs[k]).max() <= 1, k
  assert sprite[-32:, -32:].max() == 0  # the unused last tile stays blank


def test_sample_rows_is_seeded_sorted_and_complete_when_small():
  np.testing.assert_array_equal(projector.sample_rows(5, 10), np.arange(5))
  a = projector.sample_rows(5000, 2000, seed=3)
  assert len(a) == len(np.unique(a)) == 2000 and np.all(np.diff(a) > 0) and a.max() < 5000
  np.testing.assert_array_equal(a, projector.sample_rows(5000, 2000, seed=3))
  assert not np.array_equal(a, projector.sample_rows(5000, 2000, seed=4))
