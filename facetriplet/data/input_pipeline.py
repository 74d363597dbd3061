"""All of tf.data: P x K training batches streamed from the shards, and the evaluation stream.

Training (`train_dataset`) — the records of a shard are contiguous per identity (see
`tfrecords.py`), so identity groups are formed while streaming, never by loading the set:

  shards (shuffled by seed each pass)
    -> parallel interleave over shards, each shard read in order:
         parse (image bytes, label), parallel
         + one sentinel record, so the shard's last group is flushed
         -> Dataset.scan: state = (buffer of up to `max_group_size` payloads, count, label);
            when the label changes the finished group is emitted (beyond `max_group_size` photos
            a seeded reservoir sample is kept)
    -> keep labelled groups with >= `min_photos` photos (single-photo identities cannot be
       anchors: they never enter a batch)
    -> [optional cache: groups hold decoded crops, for small sets; the first pass's shard order
       is then kept, the group shuffle below still differs each pass]
    -> shuffle groups (seeded) -> batch R*P groups (drop remainder: a batch never holds one
       identity twice) -> repeat
    -> pick K photos per group: a seeded random permutation of its photos, cycled when it has
       fewer than K (every photo appears, copies differ by augmentation)
    -> flatten to R*P*K payloads -> decode JPEG + ensure_shape, parallel -> batch -> prefetch

Under a strategy with R replicas, `strategy.experimental_distribute_dataset` splits each global
batch into R contiguous chunks of P*K records, each made of P whole identity groups, so the
triplet mining of every replica sees complete groups. Every parallel stage keeps
`deterministic=True`, so a seed fixes the whole order.

Several machines (`MultiWorkerMirroredStrategy`): the dataset carries
`AutoShardPolicy.DATA`. Every worker runs this same seeded pipeline, so it produces the same
global batches; tf.distribute splits each into its R contiguous P*K chunks and hands each worker
the chunks of its own replicas. A step on N machines thus trains on exactly the batch one machine
with R replicas would, no identity appears twice in a step, and the P*K layout of each replica
holds. (The default, AUTO, would shard by file: each worker would form groups from its own shards
only, and with fewer shards than workers the run fails.) The price: every worker reads and
decodes every global batch and keeps its 1/N share, i.e. as much input work per machine as one
machine training the same global batch. OFF with a seed per worker would save that work but
give every worker different batches, tied to the number of workers.

Evaluation (`eval_dataset`): every record once, in shard and record order, with label and path.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from facetriplet.data import tfrecords
from facetriplet.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
_SENTINEL_LABEL = -2
_NO_LABEL = -3


def _decode(payload: tf.Tensor, size: int, decoded: bool) -> tf.Tensor:
  if decoded:
    return tf.ensure_shape(tf.io.parse_tensor(payload, tf.uint8), [size, size, 3])
  return tfrecords.decode_image(payload, size)


class _Targets:
  """Per-photo distillation targets riding in front of each payload: the record's `path` looks
  up its row of `matrix`, whose serialized bytes (a fixed length for a fixed D) are prepended to
  the payload, so the grouping and sampling below move them with their photo untouched."""

  def __init__(self, paths, matrix):
    import numpy as np  # pylint: disable=g-import-not-at-top

    matrix = np.asarray(matrix, np.float32)
    self.dim = int(matrix.shape[1])
    self.matrix = tf.constant(matrix)
    self.table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(paths)), tf.range(len(paths), dtype=tf.int64)
      ),
      default_value=-1,
    )
    self.width = len(tf.io.serialize_tensor(tf.zeros([self.dim], tf.float32)).numpy())

  def prepend(self, path: tf.Tensor, payload: tf.Tensor) -> tf.Tensor:
    row = self.table.lookup(path)
    tf.debugging.assert_non_negative(row, message="a record has no distillation target")
    return tf.strings.join([tf.io.serialize_tensor(tf.gather(self.matrix, row)), payload])

  def split(self, payload: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    target = tf.io.parse_tensor(tf.strings.substr(payload, 0, self.width), tf.float32)
    return tf.ensure_shape(target, [self.dim]), tf.strings.substr(payload, self.width, -1)


def _payload_and_label(size: int, decode: bool, targets: "_Targets | None" = None):
  keys = (tfrecords.KEY_IMAGE, tfrecords.KEY_LABEL, tfrecords.KEY_PATH)
  spec = {k: v for k, v in tfrecords.feature_spec().items() if k in keys}

  def fn(serialized):
    ex = tf.io.parse_single_example(serialized, spec)
    payload = ex[tfrecords.KEY_IMAGE]
    if decode:
      payload = tf.io.serialize_tensor(_decode(payload, size, decoded=False))
    if targets is not None:
      payload = targets.prepend(ex[tfrecords.KEY_PATH], payload)
    return payload, ex[tfrecords.KEY_LABEL]

  return fn


def _shard_groups(
  path: tf.Tensor,
  shard_index: tf.Tensor,
  *,
  size: int,
  kmax: int,
  seed: int,
  decode: bool,
  targets: "_Targets | None" = None,
) -> tf.data.Dataset:
  """The identity groups of one shard, in order: (payloads [kmax], count, label)."""
  records = tf.data.TFRecordDataset(path).map(
    _payload_and_label(size, decode, targets), num_parallel_calls=AUTOTUNE, deterministic=True
  )
  sentinel = tf.data.Dataset.from_tensors(
    (tf.constant(b""), tf.constant(_SENTINEL_LABEL, tf.int64))
  )
  records = records.concatenate(sentinel).enumerate()
  shard_seed = tf.cast(shard_index, tf.int64) + tf.constant(seed, tf.int64) * 1_000_003

  def step(state, element):
    buf, count, current = state
    index, (payload, label) = element
    finished = (buf, count, current, tf.logical_and(label != current, count > 0))

    def start():
      return tf.tensor_scatter_nd_update(tf.fill([kmax], ""), [[0]], [payload]), tf.constant(
        1, tf.int64
      )

    def add():
      # Reservoir sampling keeps a uniform sample of kmax photos of a large identity.
      r = tf.random.stateless_uniform(
        [], seed=tf.stack([shard_seed, index]), minval=0, maxval=count + 1, dtype=tf.int64
      )
      slot = tf.where(count < kmax, count, r)
      write = slot < kmax
      updated = tf.tensor_scatter_nd_update(buf, [[tf.minimum(slot, kmax - 1)]], [payload])
      return tf.where(write, updated, buf), count + 1

    new_buf, new_count = tf.cond(label != current, start, add)
    return (new_buf, new_count, label), finished

  initial = (tf.fill([kmax], ""), tf.constant(0, tf.int64), tf.constant(_NO_LABEL, tf.int64))
  groups = records.scan(initial, step).filter(lambda buf, count, label, emit: emit)
  return groups.map(lambda buf, count, label, emit: (buf, tf.minimum(count, kmax), label))


def train_dataset(
  tfrecord_dir: str,
  split: str,
  p: int,
  k: int,
  num_replicas: int = 1,
  seed: int = 0,
  *,
  max_group_size: int = 64,
  min_photos: int = 2,
  shuffle_groups: int = 1024,
  cache: bool = False,
  repeat: bool = True,
  targets: "tuple[Sequence[str], Any] | None" = None,
) -> tf.data.Dataset:
  """P x K (per replica) training batches; see the module docstring.

  Args:
    tfrecord_dir: folder with the shards and manifest.json.
    split: split name, e.g. 'train'.
    p: identities per replica batch.
    k: photos per identity.
    num_replicas: R; batches hold R*P identities, P per contiguous replica chunk.
    seed: fixes shard order, group shuffle, reservoir and photo sampling.
    max_group_size: photos kept per identity (a seeded reservoir sample beyond it).
    min_photos: identities with fewer photos are left out (at least 2: an anchor needs a
      positive).
    shuffle_groups: shuffle buffer, in groups.
    cache: keep the decoded groups in memory after the first pass (small sets).
    repeat: repeat forever (training); False gives one pass.
    targets: (record paths, float32 [N, D]) for knowledge distillation: each photo's target
      (the teacher's embedding) travels with it.

  Returns:
    A dataset of (images uint8 [R*P*K, S, S, 3], labels int64 [R*P*K]); the labels of each
    replica chunk are P runs of K equal labels, P distinct identities. With `targets`, the
    second element is float32 [R*P*K, 1 + D]: the label, then the photo's target.

  Raises:
    UserError: missing shards or manifest, or fewer usable identities than R*P.
  """
  if p < 1 or k < 1 or num_replicas < 1:
    raise UserError(f"p={p}, k={k}, num_replicas={num_replicas} must all be >= 1")
  min_photos = max(2, int(min_photos))
  shard_set = tfrecords.ShardSet.open(tfrecord_dir)
  size = shard_set.crop_size
  groups_per_batch = p * num_replicas
  usable = shard_set.usable_identities(split, min_photos)
  paths = shard_set.shards(split)
  if shard_set.split_groups(split) and usable < groups_per_batch:
    raise UserError(
      f"split '{split}' of {tfrecord_dir} has {usable} identities with >= "
      f"{min_photos} photos, fewer than P*replicas = {groups_per_batch}: lower "
      "--config.train.p"
    )
  kmax = max(int(max_group_size), k)

  shards = tf.data.Dataset.from_tensor_slices((paths, tf.range(len(paths), dtype=tf.int64)))
  shards = shards.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
  riders = _Targets(*targets) if targets is not None else None
  groups = shards.interleave(
    lambda path, index: _shard_groups(
      path, index, size=size, kmax=kmax, seed=seed, decode=cache, targets=riders
    ),
    cycle_length=min(len(paths), 8),
    block_length=1,
    num_parallel_calls=AUTOTUNE,
    deterministic=True,
  )
  groups = groups.filter(lambda buf, count, label: tf.logical_and(label >= 0, count >= min_photos))
  if cache:
    groups = groups.cache()
  groups = groups.shuffle(shuffle_groups, seed=seed + 1, reshuffle_each_iteration=True)
  batches = groups.batch(groups_per_batch, drop_remainder=True)
  if repeat:
    batches = batches.repeat()

  def pick(batch_index, group_batch):
    buf, count, label = group_batch
    keys = tf.random.stateless_uniform(
      [groups_per_batch, kmax], seed=tf.stack([tf.constant(seed + 2, tf.int64), batch_index])
    )
    valid = tf.range(kmax, dtype=tf.int64)[None, :] < count[:, None]
    order = tf.argsort(tf.where(valid, keys, 2.0), axis=1)  # a permutation of the real photos
    cycle = tf.range(k, dtype=tf.int64)[None, :] % count[:, None]
    chosen = tf.gather(order, cycle, batch_dims=1)
    payloads = tf.reshape(tf.gather(buf, chosen, batch_dims=1), [-1])
    return payloads, tf.repeat(label, k)

  records = batches.enumerate().map(pick, num_parallel_calls=AUTOTUNE, deterministic=True)

  def unpack(payload, label):
    if riders is None:
      return _decode(payload, size, cache), label
    target, payload = riders.split(payload)
    return _decode(payload, size, cache), tf.concat([tf.cast(label, tf.float32)[None], target], 0)

  images = records.unbatch().map(unpack, num_parallel_calls=AUTOTUNE, deterministic=True)
  out = images.batch(groups_per_batch * k, drop_remainder=True).prefetch(AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  # Several workers: identical global batches, each worker keeps its replicas' chunks (above).
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return out.with_options(options)


def eval_dataset(
  tfrecord_dir: str, split: str, batch_size: int, cache: bool = False
) -> tf.data.Dataset:
  """Every record of `split` once, in order: dicts of image uint8 [B,S,S,3], label, path.

  Args:
    tfrecord_dir: folder with the shards and manifest.json.
    split: split name, e.g. 'val'.
    batch_size: records per batch (the last batch may be smaller).
    cache: keep the decoded records in memory after the first pass.

  Returns:
    A `tf.data.Dataset` of dicts with `image`, `label` (int64) and `path` (string).

  Raises:
    UserError: missing shards or manifest.
  """
  shard_set = tfrecords.ShardSet.open(tfrecord_dir)
  size = shard_set.crop_size
  paths = shard_set.shards(split)

  def parse(serialized):
    ex = tfrecords.parse_example(serialized)
    return {
      "image": _decode(ex[tfrecords.KEY_IMAGE], size, decoded=False),
      "label": ex[tfrecords.KEY_LABEL],
      "path": ex[tfrecords.KEY_PATH],
    }

  ds = tf.data.TFRecordDataset(paths, buffer_size=8 << 20)  # sequential: keeps record order
  ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
  if split in shard_set.split_names:
    # A known length lets Keras' predict stop without an "ran out of data" warning.
    ds = ds.apply(tf.data.experimental.assert_cardinality(shard_set.images(split)))
  if cache:
    ds = ds.cache()
  options = tf.data.Options()
  options.deterministic = True
  return ds.batch(batch_size).prefetch(AUTOTUNE).with_options(options)
