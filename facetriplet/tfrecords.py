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


def make_example(encoded: bytes, label: int, identity: str, path: str,
                 box: Sequence[float], found: bool,
                 landmarks: Sequence[float] = (0.0,) * 10, method: str = "") -> bytes:
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


def parse_examples(serialized):
  """Parses a batch of serialized records (a 1-D string tensor)."""
  tf = _tf()
  return tf.io.parse_example(serialized, feature_spec())


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
    raise UserError(f"no '{split}' shards in {directory}: run facetriplet-build-tfrecords "
                    f"--output={directory} first")
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
