"""Knowledge distillation: a student learns the embeddings of a teacher (`config.distill`).

The teacher (`config.distill.teacher`: a pretrained network's name such as 'dlib_resnet', a training
workdir, a `.keras` checkpoint or an export folder) embeds every training photo once, from the
records' crops as stored (so the records are cut with the teacher's crop, e.g. the `dlib150` preset;
the student cuts them (`model.center_crop`) and resizes them to its own `image_size`). Those targets
ride with their photos through the P x K pipeline (`input_pipeline.train_dataset(targets=...)`), and
the loss adds `config.distill.weight` x the cosine distance to them to the triplet loss over the
labels (`losses.TripletLoss(distill_weight=...)`). With `config.distill.flip_average` (the default)
a target is the mean of the teacher's embeddings of the crop and of its mirror image (what the
teacher's export gives with test-time flip): the same target for a photo and its flipped copy, so
flip augmentation never asks the student for two answers to one face, and the student can drop
test-time flip at serving time. They are kept in the workdir (`teacher_targets.npz`, with the
teacher's weights digest and the records' fingerprint), so a resumed run does not embed again.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np
from absl import logging

from facetriplet import export_format
from facetriplet.data import tfrecords
from facetriplet.errors import UserError
from facetriplet.training import networks, workdir


def teacher(source: str) -> tuple[Callable[..., Any], str, bool]:
  """(the teacher as a model: `net(uint8 crops [N, S, S, 3], training=False)` -> [N, D], a
  digest of its weights, whether its embeddings are already flip-averaged: an export made with
  test-time flip)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if source in networks.pretrained_names() and not os.path.exists(source):
    from facetriplet.training import export, model  # pylint: disable=g-import-not-at-top

    keras_model = model.build_embedding_model(export.pretrained_config(source))
  elif os.path.isfile(os.path.join(source, "saved_model.pb")):
    loaded = tf.saved_model.load(source)
    fn = loaded.signatures["serving_default"]
    digest = workdir.arrays_digest([v.numpy() for v in loaded.model_variables])
    flipped = bool(export_format.read_metadata(source).get("test_time_flip", False))
    return (lambda x, training=False: fn(images=tf.constant(x))["embeddings"]), digest, flipped
  elif os.path.exists(source):
    checkpoint = source if source.endswith(".keras") else workdir.resolve_checkpoint(source)
    keras_model = workdir.load_checkpoint(checkpoint)
  else:
    raise UserError(
      f"distill.teacher={source!r} is not a pretrained network "
      f"({', '.join(networks.pretrained_names())}), a workdir, a .keras file or an export"
    )
  # A graph, not eager calls: embedding tens of thousands of crops eagerly is several times slower.
  graph = tf.function(lambda x: keras_model(x, training=False), reduce_retracing=True)
  return (
    (lambda x, training=False: graph(tf.constant(x))),
    workdir.weights_digest(keras_model),
    False,
  )


def targets(
  config: Any,
  shard_set: tfrecords.ShardSet,
  run: workdir.Workdir,
) -> tuple[list[str], np.ndarray]:
  """(record paths, teacher embeddings [N, D]) of the training split, from the workdir when
  computed before for the same teacher and records."""
  from facetriplet.training import validation  # pylint: disable=g-import-not-at-top

  source = str(config.distill.teacher)
  split = config.data.train_split
  net, digest, flipped = teacher(source)
  flip = bool(config.distill.get("flip_average", True))
  key = f"{digest}:{shard_set.manifest.get('fingerprint', '')}:{split}" + (":flip" if flip else "")
  path = run.teacher_targets_path
  if os.path.isfile(path):
    with np.load(path, allow_pickle=False) as z:
      if str(z["key"]) == key:
        logging.info("distillation: %d teacher embeddings from %s", len(z["paths"]), path)
        return [str(p) for p in z["paths"]], z["targets"]
  paths, chunks = [], []
  total, logged = shard_set.images(split), time.time()
  for batch in shard_set.decoded_batches([split], 64):
    if time.time() - logged > 30:
      logging.info("distillation: %s embedded %d of %d training crops", source, len(paths), total)
      logged = time.time()
    paths += [rec["path"] for rec, _ in batch]
    crops = np.stack([rgb for _, rgb in batch])
    # An export made with test-time flip has averaged them already.
    chunks.append(validation.embed_images(net, crops, flip and not flipped))
  matrix = np.concatenate(chunks)
  matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, key=np.array(key), paths=np.array(paths), targets=matrix)
  os.replace(tmp, path)
  logging.info(
    "distillation: %s embedded %d training crops (%d-d%s)",
    source,
    len(paths),
    matrix.shape[1],
    ", flip-averaged" if flip or flipped else "",
  )
  return paths, matrix
