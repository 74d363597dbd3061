r"""Input pipeline throughput: P x K batches from TFRecord shards vs a plain per-file Python loader.

  python -m benchmarks.bench_input_pipeline [--images=600 --size=128 --p=16 --k=4 --batches=20]

Writes random colourful JPEG crops both as shards (+ manifest) and as one file per photo in a
temporary folder, then measures images/s of `input_pipeline.train_dataset` (cold: decoding JPEGs;
cached: decoded crops in memory), `input_pipeline.eval_dataset`, and a Python loop that reads
and decodes the same photos file by file with OpenCV. Results: benchmarks/results/
input_pipeline.json.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Sequence

import cv2
import numpy as np
from absl import app
from absl import flags

from benchmarks import common
from facetriplet.data import tfrecords

_IMAGES = flags.DEFINE_integer("images", 600, "Photos in the synthetic set.")
_SIZE = flags.DEFINE_integer("size", 128, "Stored crop side.")
_P = flags.DEFINE_integer("p", 16, "Identities per batch.")
_K = flags.DEFINE_integer("k", 4, "Photos per identity.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per loader.")


def make_shards(
  directory: str,
  images: int,
  size: int,
  photos_per_identity: int = 6,
  shards: int = 4,
  seed: int = 0,
  files_dir: str | None = None,
) -> None:
  """Writes a random set (contiguous identities per shard) + manifest; optionally also files."""
  rng = np.random.RandomState(seed)
  identities = max(1, images // photos_per_identity)
  per_shard: list[list[bytes]] = [[] for _ in range(shards)]
  groups: list[list[list[int]]] = [[] for _ in range(shards)]
  for label in range(identities):
    base = rng.randint(0, 256, (4, 4, 3)).astype(np.float32)
    for photo in range(photos_per_identity):
      small = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
      rgb = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
      jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
      rel = f"id{label:05d}/{photo:03d}.jpg"
      per_shard[label % shards].append(
        tfrecords.make_example(jpeg, label, f"id{label:05d}", rel, [0, 0, size, size], True)
      )
      if files_dir:
        os.makedirs(os.path.join(files_dir, f"id{label:05d}"), exist_ok=True)
        with open(os.path.join(files_dir, rel), "wb") as f:
          f.write(jpeg)
    groups[label % shards].append([label, photos_per_identity])
  infos = []
  for i in range(shards):
    name = tfrecords.shard_name("train", i, shards)
    n = tfrecords.write_shard(os.path.join(directory, name), per_shard[i])
    infos.append({"file": name, "records": n, "groups": groups[i]})
  tfrecords.write_manifest(
    directory,
    {
      "crop": {"crop_size": size},
      "labels": {f"id{i:05d}": i for i in range(identities)},
      "splits": {
        "train": {
          "images": identities * photos_per_identity,
          "identities": identities,
          "shards": infos,
        }
      },
    },
  )


def _rate(iterator, batches: int, batch_size: int) -> float:
  next(iterator)  # warm-up: tracing, thread pools, first reads
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from facetriplet.data import input_pipeline  # pylint: disable=g-import-not-at-top

  p, k, batches = _P.value, _K.value, _BATCHES.value
  batch = p * k
  with tempfile.TemporaryDirectory() as tmp:
    shards, files = os.path.join(tmp, "shards"), os.path.join(tmp, "files")
    make_shards(shards, _IMAGES.value, _SIZE.value, files_dir=files)
    rows = []
    for cache in (False, True):
      ds = input_pipeline.train_dataset(shards, "train", p, k, seed=0, cache=cache)
      it = iter(ds)
      if cache:  # fill the cache with one full pass first
        for _ in range(max(1, _IMAGES.value // batch)):
          next(it)
      rows.append(
        [
          f"train_dataset (P={p} x K={k}{', cached' if cache else ''})",
          round(_rate(it, batches, batch), 1),
        ]
      )
    eval_it = iter(input_pipeline.eval_dataset(shards, "train", batch).repeat())
    rows.append([f"eval_dataset (batch {batch})", round(_rate(eval_it, batches, batch), 1)])
    paths = sorted(os.path.join(root, f) for root, _, names in os.walk(files) for f in names)

    def python_loader():
      i = 0
      while True:
        out = []
        for _ in range(batch):
          out.append(cv2.cvtColor(cv2.imread(paths[i % len(paths)]), cv2.COLOR_BGR2RGB))
          i += 1
        yield np.stack(out)

    rows.append(
      [
        f"Python loop: cv2.imread per file (batch {batch})",
        round(_rate(python_loader(), batches, batch), 1),
      ]
    )
  for name, rate in rows:
    print(f"{name:55s} {rate:9.1f} images/s")
  path = common.write_result(
    "input_pipeline",
    "Input pipeline: images/s from storage to batches",
    ["loader", "images/s"],
    rows,
    notes=f"{_IMAGES.value} random {_SIZE.value}px JPEG crops, {batches} batches timed after "
    "one warm-up batch; numbers depend on what else runs on the machine.",
  )
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
