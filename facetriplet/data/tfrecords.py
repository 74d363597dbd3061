"""The TFRecord schema of a face crop, its writer and its parser, and the dataset manifest.

One record per source photo:

  image/encoded   bytes    JPEG of the square RGB face crop (stored size from the manifest)
  image/label     int64    identity label (0..num_identities-1 within the dataset; -1 unlabelled)
  image/identity  bytes    identity name (folder name, CelebA id; "" when unlabelled)
  image/path      bytes    source path relative to the input root, with "/" separators
  face/box        float[4] x, y, w, h of the crop box in source-image pixels (before the margin)
  face/found      int64    1 when a face was detected, 0 for the centred fallback crop
  face/landmarks  float[10] x1..x5, y1..y5 of the five MTCNN landmarks (eyes, nose, mouth corners)
                           in source-image pixels; zeros when the crop was not aligned
  face/method     bytes    how the crop was made: mtcnn (aligned), haar, center (no face), none

Shards are named `{split}-{index:05d}-of-{count:05d}.tfrecord`. A shard holds whole identities,
each identity's records contiguous, so P×K batches can be formed by reading runs of one label.
`manifest.json` beside the shards describes the dataset (see `write_manifest`).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterable, Mapping, Sequence

from facetriplet import atomic
from facetriplet.data import faces
from facetriplet.errors import UserError

MANIFEST = "manifest.json"

KEY_IMAGE = "image/encoded"
KEY_LABEL = "image/label"
KEY_IDENTITY = "image/identity"
KEY_PATH = "image/path"
KEY_BOX = "face/box"
KEY_FOUND = "face/found"
KEY_LANDMARKS = "face/landmarks"
KEY_METHOD = "face/method"


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf


def feature_spec() -> dict[str, Any]:
  tf = _tf()
  return {
    KEY_IMAGE: tf.io.FixedLenFeature([], tf.string),
    KEY_LABEL: tf.io.FixedLenFeature([], tf.int64),
    KEY_IDENTITY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    KEY_PATH: tf.io.FixedLenFeature([], tf.string, default_value=""),
    KEY_BOX: tf.io.FixedLenFeature([4], tf.float32),
    KEY_FOUND: tf.io.FixedLenFeature([], tf.int64, default_value=1),
    # Records written before alignment existed have neither key.
    KEY_LANDMARKS: tf.io.FixedLenFeature([10], tf.float32, default_value=[0.0] * 10),
    KEY_METHOD: tf.io.FixedLenFeature([], tf.string, default_value=""),
  }


def make_example(
  encoded: bytes,
  label: int,
  identity: str,
  path: str,
  box: Sequence[float],
  found: bool,
  landmarks: Sequence[float] = (0.0,) * 10,
  method: str = "",
) -> bytes:
  """Serializes one face record."""
  if len(landmarks) != 10:
    raise ValueError(f"landmarks must hold 10 numbers (x1..x5, y1..y5), got {len(landmarks)}")
  tf = _tf()
  f = tf.train.Feature
  feature = {
    KEY_IMAGE: f(bytes_list=tf.train.BytesList(value=[encoded])),
    KEY_LABEL: f(int64_list=tf.train.Int64List(value=[int(label)])),
    KEY_IDENTITY: f(bytes_list=tf.train.BytesList(value=[identity.encode("utf-8")])),
    KEY_PATH: f(bytes_list=tf.train.BytesList(value=[path.encode("utf-8")])),
    KEY_BOX: f(float_list=tf.train.FloatList(value=[float(v) for v in box])),
    KEY_FOUND: f(int64_list=tf.train.Int64List(value=[int(bool(found))])),
    KEY_LANDMARKS: f(float_list=tf.train.FloatList(value=[float(v) for v in landmarks])),
    KEY_METHOD: f(bytes_list=tf.train.BytesList(value=[method.encode("utf-8")])),
  }
  # deterministic=True: protobuf map order otherwise differs between processes, and shards
  # must be byte-identical across runs.
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def parse_example(serialized):
  """Parses one serialized record (a scalar string tensor) into a dict of tensors (not decoded)."""
  tf = _tf()
  return tf.io.parse_single_example(serialized, feature_spec())


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def write_shard(path: str, records: Iterable[bytes]) -> int:
  """Writes serialized records to `path` atomically (temporary name, then rename). Returns count."""
  tf = _tf()
  n = 0
  with atomic.atomic_path(path) as tmp:
    with tf.io.TFRecordWriter(tmp) as writer:
      for record in records:
        writer.write(record)
        n += 1
  return n


def list_shards(directory: str, split: str) -> list[str]:
  """The complete shards of `split` in `directory`, sorted; raises UserError when there are none."""
  paths = sorted(glob.glob(os.path.join(directory, f"{split}-?????-of-?????.tfrecord")))
  if not paths:
    raise UserError(
      f"no '{split}' shards in {directory}: run facetriplet-build-tfrecords "
      f"--output={directory} first"
    )
  return paths


def read_records(paths: Sequence[str]) -> Iterable[dict[str, Any]]:
  """Yields every record of `paths` in order as a dict of Python values (for tests and tools)."""
  tf = _tf()
  for path in paths:
    for raw in tf.data.TFRecordDataset(path):
      ex = parse_example(raw)
      yield {
        "image": ex[KEY_IMAGE].numpy(),
        "label": int(ex[KEY_LABEL].numpy()),
        "identity": ex[KEY_IDENTITY].numpy().decode("utf-8"),
        "path": ex[KEY_PATH].numpy().decode("utf-8"),
        "box": ex[KEY_BOX].numpy().tolist(),
        "found": bool(ex[KEY_FOUND].numpy()),
        "landmarks": ex[KEY_LANDMARKS].numpy().tolist(),
        "method": ex[KEY_METHOD].numpy().decode("utf-8"),
      }


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> None:
  atomic.write_json(os.path.join(directory, MANIFEST), manifest)


def read_manifest(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise UserError(f"{path} not found: point at a folder written by facetriplet-build-tfrecords")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def decode_image(encoded, size: int):
  """The one decoder of a record's image: JPEG bytes (a string tensor) -> uint8 [size, size, 3].

  Training (`input_pipeline`) and the gallery (`ShardSet.decoded_batches`) both decode with it,
  so an index built from TFRecords sees exactly the pixels training saw (TF's JPEG decoder and
  OpenCV's libjpeg round differently).
  """
  tf = _tf()
  image = tf.io.decode_jpeg(encoded, channels=3)
  # Keras layers need static shapes, which decode_jpeg cannot know.
  return tf.ensure_shape(image, [size, size, 3])


def is_shard_folder(path: str) -> bool:
  """True for a folder written by facetriplet-build-tfrecords (manifest + shards)."""
  return (
    os.path.isdir(path)
    and os.path.isfile(os.path.join(path, MANIFEST))
    and any(n.endswith(".tfrecord") for n in os.listdir(path))
  )


class ShardSet:
  """A TFRecord folder opened once: its manifest, crop settings, splits, groups and records.

  Every reader of a shard folder (training, the gallery, evaluation, the demo) goes through this
  object; `manifest.json` is read here and nowhere else.
  """

  def __init__(self, directory: str, manifest: Mapping[str, Any]):
    self.directory = directory
    self.manifest = dict(manifest)

  @classmethod
  def open(cls, directory: str) -> "ShardSet":
    """Reads `directory`/manifest.json. Raises UserError when it is missing."""
    return cls(directory, read_manifest(directory))

  @property
  def crop(self) -> dict[str, Any] | None:
    """The crop settings the records were made with (a `faces.CropSettings` dict), if recorded."""
    return self.manifest.get("crop")

  @property
  def crop_size(self) -> int:
    """The stored crop side in pixels."""
    try:
      return faces.crop_size_of(self.manifest["crop"])
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(
        f"{os.path.join(self.directory, MANIFEST)} has no crop size: rebuild the "
        "shards with facetriplet-build-tfrecords"
      ) from e

  @property
  def input_root(self) -> str:
    """The folder the photos were read from (record paths are relative to it)."""
    return self.manifest.get("input") or ""

  @property
  def labels(self) -> dict[str, int]:
    """{identity name: label}."""
    return dict(self.manifest.get("labels", {}))

  @property
  def split_names(self) -> list[str]:
    return list(self.manifest.get("splits", {}))

  def images(self, split: str) -> int:
    """Records in `split` (0 for a split that is absent)."""
    return int(self.manifest.get("splits", {}).get(split, {}).get("images", 0))

  def count(self, splits: Sequence[str]) -> int:
    return sum(self.images(s) for s in splits)

  def split_groups(self, split: str) -> list[tuple[int, int]]:
    """[(label, count), ...] of `split`, shard by shard (may be empty)."""
    info = self.manifest.get("splits", {}).get(split)
    if info is None:
      raise UserError(
        f"split '{split}' not in the manifest of {self.directory} (has: "
        f"{', '.join(sorted(self.split_names))}); set "
        "--config.data.train_split / --config.data.val_split"
      )
    return [
      (int(label), int(count))
      for shard in info.get("shards", [])
      for label, count in shard.get("groups", [])
    ]

  def trainable_labels(self, split: str, min_photos: int = 2) -> list[int]:
    """Sorted labels of `split` with at least `min_photos` photos (those training can use)."""
    return sorted(
      label for label, count in self.split_groups(split) if label >= 0 and count >= min_photos
    )

  def usable_identities(self, split: str, min_photos: int = 2) -> int:
    return len(self.trainable_labels(split, min_photos))

  def check_trainable(self, train_split: str, val_split: str, min_photos: int = 2) -> None:
    """A train split without two identities of `min_photos`+ photos, or an empty val split, is a
    UserError (naming the folder and the fix)."""
    usable = self.usable_identities(train_split, min_photos)
    if usable < 2:
      raise UserError(
        f"{self.directory}: split '{train_split}' has {usable} identities with "
        f"{min_photos}+ photos; triplet training needs at least 2 (and P per "
        "batch): add photos or rebuild with a smaller --val_fraction (rejected "
        "files are listed in its manifest.json)"
      )
    if not self.images(val_split):
      raise UserError(
        f"{self.directory}: split '{val_split}' is empty, so nothing can be "
        "evaluated: rebuild the TFRecords with --val_fraction>0 or set "
        "--config.data.val_split to a split that exists"
      )

  def shards(self, split: str) -> list[str]:
    """The complete shard files of `split`, sorted (UserError when there are none)."""
    return list_shards(self.directory, split)

  def records(self, splits: Sequence[str] | None = None) -> Iterable[dict[str, Any]]:
    """Every record of `splits` (default: all) in shard order, as dicts of Python values; the
    image stays encoded."""
    for split in splits or self.split_names:
      yield from read_records(self.shards(split))

  def decoded_batches(
    self,
    splits: Sequence[str] | None = None,
    batch_size: int = 64,
  ) -> Iterable[list[tuple[dict[str, Any], Any]]]:
    """Batches of (record dict without the image bytes, RGB uint8 [S, S, 3] numpy array), in
    shard order, decoded by `decode_image` (the training pipeline's decoder)."""
    tf = _tf()
    size = self.crop_size
    spec = feature_spec()

    def parse(serialized):
      ex = tf.io.parse_single_example(serialized, spec)
      ex[KEY_IMAGE] = decode_image(ex[KEY_IMAGE], size)
      return ex

    for split in splits or self.split_names:
      ds = tf.data.TFRecordDataset(self.shards(split)).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
      )
      for batch in ds.batch(batch_size).prefetch(2).as_numpy_iterator():
        out = []
        for i in range(len(batch[KEY_IMAGE])):
          out.append(
            (
              {
                "split": split,
                "label": int(batch[KEY_LABEL][i]),
                "identity": batch[KEY_IDENTITY][i].decode("utf-8"),
                "path": batch[KEY_PATH][i].decode("utf-8"),
                "box": batch[KEY_BOX][i].tolist(),
                "found": bool(batch[KEY_FOUND][i]),
                "landmarks": batch[KEY_LANDMARKS][i].tolist(),
                "method": batch[KEY_METHOD][i].decode("utf-8"),
              },
              batch[KEY_IMAGE][i],
            )
          )
        yield out

  def steps_per_epoch(self, split: str, global_batch: int, configured: int | None = None) -> int:
    """`configured` when > 0, else the split's image count // global batch (at least 1)."""
    if configured:
      return int(configured)
    return max(1, self.images(split) // max(1, global_batch))
