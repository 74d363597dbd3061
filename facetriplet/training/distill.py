"""Knowledge distillation: a student learns the embeddings of a teacher (`config.distill`).

The teacher (`config.distill.teacher`: a pretrained network's name such as 'dlib_resnet', a
training workdir, a `.keras` checkpoint or an export folder) embeds every training photo once,
from the records' crops as stored (so the records are cut with the teacher's crop, e.g. the
`dlib150` preset; the student resizes them to its own `image_size`). Those targets ride with
their photos through the P x K pipeline (`input_pipeline.train_dataset(targets=...)`), and the
loss adds `config.distill.weight` x the cosine distance to them to the triplet loss over the
labels (`losses.TripletLoss(distill_weight=...)`). They are kept in the workdir
(`teacher_targets.npz`, with the teacher's weights digest and the records' fingerprint), so a
resumed run does not embed again.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
from absl import logging

from facetriplet.data import tfrecords
from facetriplet.errors import UserError
from facetriplet.training import networks, workdir


def teacher(source: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
  """(embed uint8 crops [N, S, S, 3] -> float32 [N, D], a digest of the teacher's weights)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if source in networks.pretrained_names() and not os.path.exists(source):
    from facetriplet.training import export, model  # pylint: disable=g-import-not-at-top

    keras_model = model.build_embedding_model(export.pretrained_config(source))
  elif os.path.isfile(os.path.join(source, "saved_model.pb")):
    loaded = tf.saved_model.load(source)
    fn = loaded.signatures["serving_default"]
    digest = workdir.arrays_digest([v.numpy() for v in loaded.model_variables])
    return (lambda x: fn(images=tf.constant(x))["embeddings"].numpy()), digest
  elif os.path.exists(source):
    checkpoint = source if source.endswith(".keras") else workdir.resolve_checkpoint(source)
    keras_model = workdir.load_checkpoint(checkpoint)
  else:
    raise UserError(
      f"distill.teacher={source!r} is not a pretrained network "
      f"({', '.join(networks.pretrained_names())}), a workdir, a .keras file or an export"
    )
  return (lambda x: keras_model(x, training=False).numpy()), workdir.weights_digest(keras_model)


def targets(
  config: Any,
  shard_set: tfrecords.ShardSet,
  run: workdir.Workdir,
) -> tuple[list[str], np.ndarray]:
  """(record paths, teacher embeddings [N, D]) of the training split, from the workdir when
  computed before for the same teacher and records."""
  source = str(config.distill.teacher)
  split = config.data.train_split
  embed, digest = teacher(source)
  key = f"{digest}:{shard_set.manifest.get('fingerprint', '')}:{split}"
  path = run.teacher_targets_path
  if os.path.isfile(path):
    with np.load(path, allow_pickle=False) as z:
      if str(z["key"]) == key:
        logging.info("distillation: %d teacher embeddings from %s", len(z["paths"]), path)
        return [str(p) for p in z["paths"]], z["targets"]
  paths, chunks = [], []
  for batch in shard_set.decoded_batches([split], 64):
    paths += [rec["path"] for rec, _ in batch]
    chunks.append(np.asarray(embed(np.stack([rgb for _, rgb in batch])), np.float32))
  matrix = np.concatenate(chunks)
  matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, key=np.array(key), paths=np.array(paths), targets=matrix)
  os.replace(tmp, path)
  logging.info(
    "distillation: %s embedded %d training photos (%d-d)", source, len(paths), matrix.shape[1]
  )
  return paths, matrix
