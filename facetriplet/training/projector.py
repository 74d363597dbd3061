"""A TensorBoard embedding projector view of the val embeddings, written at the end of training.

`write_projector` embeds the val split (a seeded sample of at most `max_points` photos, kept in
record order) with the given model and replaces `Workdir.projector_dir` (logs/projector/) as a
whole (`atomic.atomic_path`) with:

  checkpoint, embedding.ckpt-1.*  the embeddings [N, D]: `tf.train.Checkpoint(embedding=...)`
  metadata.tsv                    a header `identity<TAB>label<TAB>path`, then one row per point,
                                  in the order of the embedding rows
  sprite.png                      the face crops as `thumbnail`-px tiles, row by row, same order
  projector_config.pbtxt          `tensorboard.plugins.projector` config tying them together
  events.out.tfevents.*           a text note (model, points, sample) that also makes the folder
                                  a run `tensorboard --logdir=<workdir>/logs` lists

Paths inside are relative to the folder, so it can be moved. The sprite holds at most
(8192 / thumbnail)^2 tiles (65,536 at 32 px), TensorBoard's limit for a sprite of 8192 x 8192.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins import projector as tb_projector

from facetriplet import atomic
from facetriplet.data import input_pipeline, tfrecords
from facetriplet.training.validation import embed_images
from facetriplet.training.workdir import Workdir, load_checkpoint

TENSOR_NAME = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # the Variable of Checkpoint(embedding=...)
CHECKPOINT_PREFIX = "embedding.ckpt"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
MAX_SPRITE_SIDE = 8192


@dataclasses.dataclass
class ProjectorSummary:
  directory: str
  points: int  # photos shown
  total: int  # photos in the split
  dim: int


def sample_rows(total: int, max_points: int, seed: int = 0) -> np.ndarray:
  """Every row of `total`, or a seeded uniform sample of `max_points` of them, in row order."""
  if total <= max_points:
    return np.arange(total, dtype=np.int64)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(total, size=max_points, replace=False)).astype(np.int64)


def _cell(text: str) -> str:
  return " ".join(str(text).replace("\t", " ").splitlines())


def write_projector(
  workdir: Workdir,
  model: keras.Model,
  tfrecord_dir: str,
  split: str = "val",
  max_points: int = 2000,
  thumbnail: int = 32,
  seed: int = 0,
  flip: bool = False,
  batch_size: int = 64,
  source: str = "",
) -> Optional[ProjectorSummary]:
  """Writes the projector view of `split`'s embeddings by `model` into `workdir.projector_dir`.

  Args:
    workdir: the training workdir.
    model: the embedding model (uint8 crops in, unit embeddings out).
    tfrecord_dir: the TFRecord folder the run trained on.
    split: the split shown.
    max_points: at most this many photos (a seeded sample, in record order, beyond it).
    thumbnail: sprite tile side in pixels.
    seed: seed of the sample.
    flip: embed each crop and its mirror, as the evaluation and the export do.
    batch_size: crops embedded at a time.
    source: what the model is (e.g. 'checkpoints/best.keras'), for the note.

  Returns:
    ProjectorSummary, or None when the split is empty (nothing written).
  """
  shard_set = tfrecords.ShardSet.open(tfrecord_dir)
  total = shard_set.images(split)
  max_points = min(int(max_points), (MAX_SPRITE_SIDE // thumbnail) ** 2)
  rows = sample_rows(total, max_points, seed)
  if not len(rows):
    logging.warning("projector view skipped: split %r of %s is empty", split, tfrecord_dir)
    return None
  names = {int(label): name for name, label in (shard_set.manifest.get("labels") or {}).items()}
  embeddings, thumbs, lines, start = [], [], [], 0
  for batch in input_pipeline.eval_dataset(tfrecord_dir, split, batch_size):
    images = batch["image"].numpy()
    picked = rows[(rows >= start) & (rows < start + len(images))] - start
    start += len(images)
    if not len(picked):
      continue
    images = images[picked]
    embeddings.append(embed_images(model, images, flip))
    thumbs.append(
      tf.cast(
        tf.clip_by_value(
          tf.round(
            tf.image.resize(tf.cast(images, tf.float32), (thumbnail, thumbnail), antialias=True)
          ),
          0,
          255,
        ),
        tf.uint8,
      ).numpy()
    )
    for label, path in zip(batch["label"].numpy()[picked], batch["path"].numpy()[picked]):
      lines.append(
        "\t".join(
          _cell(c)
          for c in (
            names.get(int(label), str(int(label))),
            int(label),
            path.decode("utf-8", "replace"),
          )
        )
      )
  embeddings, thumbs = np.concatenate(embeddings), np.concatenate(thumbs)
  side = math.ceil(math.sqrt(len(thumbs)))
  sprite = np.zeros((side * thumbnail, side * thumbnail, 3), np.uint8)
  for k, thumb in enumerate(thumbs):
    y, x = divmod(k, side)
    sprite[y * thumbnail : (y + 1) * thumbnail, x * thumbnail : (x + 1) * thumbnail] = thumb

  config = tb_projector.ProjectorConfig()
  view = config.embeddings.add()
  view.tensor_name = TENSOR_NAME
  view.metadata_path = METADATA_FILE
  view.sprite.image_path = SPRITE_FILE
  view.sprite.single_image_dim.extend([thumbnail, thumbnail])
  note = (
    f"{len(rows)} of the {total} photos of split '{split}'"
    + (f" (a sample, seed {seed})" if len(rows) < total else "")
    + f" embedded by {source or 'the final model'}"
    + (" with test-time flip" if flip else "")
  )
  with atomic.atomic_path(workdir.projector_dir) as tmp:
    os.makedirs(tmp)
    tf.train.Checkpoint(embedding=tf.Variable(embeddings)).save(
      os.path.join(tmp, CHECKPOINT_PREFIX)
    )
    with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
      f.write("identity\tlabel\tpath\n" + "".join(line + "\n" for line in lines))
    with open(os.path.join(tmp, SPRITE_FILE), "wb") as f:
      f.write(tf.io.encode_png(sprite).numpy())
    tb_projector.visualize_embeddings(tmp, config)
    writer = tf.summary.create_file_writer(tmp)
    with writer.as_default():
      tf.summary.text("projector", note, step=0)
    writer.close()
  logging.info("projector view: %s in %s", note, workdir.projector_dir)
  return ProjectorSummary(workdir.projector_dir, len(rows), total, int(embeddings.shape[1]))


def write_for_run(config: Any, workdir: Workdir, final_model: keras.Model) -> None:
  """The view at the end of `train.train_and_evaluate`: the val split (`config.data`) embedded by
  checkpoints/best.keras (`final_model` when there is none), at most `config.train.
  projector_points` photos (default 2000; 0: no view). A failure is logged and never fails the
  finished run."""
  points = int(config.train.get("projector_points", 2000))
  if points <= 0:
    return
  try:
    best = workdir.checkpoint("best")
    model, source = (
      (load_checkpoint(best), "checkpoints/best.keras")
      if os.path.isfile(best)
      else (final_model, "the final model")
    )
    write_projector(
      workdir,
      model,
      config.data.tfrecord_dir,
      config.data.val_split,
      points,
      seed=int(config.seed),
      flip=bool(config.model.get("test_time_flip", False)),
      batch_size=int(config.train.eval_batch_size),
      source=source,
    )
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("projector view not written (%s: %s)", type(e).__name__, e)
