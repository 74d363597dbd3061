"""Tiny TFRecord sets for the training tests: real shards + manifest, written in a temp folder.

Each identity has its own colour and a bright square at its own place; photos of one identity
differ by noise and a small shift, so a small network separates the identities in a few steps.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import cv2
import numpy as np

from facetriplet.data import tfrecords


def identity_image(label: int, photo: int, size: int, rng: np.random.RandomState) -> np.ndarray:
  """An RGB uint8 [size, size, 3] photo of identity `label`."""
  colour_rng = np.random.RandomState(1000 + label)
  base = colour_rng.randint(30, 226, size=3)
  image = np.empty((size, size, 3), np.float32)
  image[:] = base
  side = size // 3
  y0, x0 = colour_rng.randint(0, size - side, size=2)
  dy, dx = rng.randint(-2, 3, size=2)
  y0, x0 = int(np.clip(y0 + dy, 0, size - side)), int(np.clip(x0 + dx, 0, size - side))
  image[y0 : y0 + side, x0 : x0 + side] = 255 - base
  image += rng.normal(0, 12, size=image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(
  directory: str,
  splits: Mapping[str, Sequence[int]],
  size: int = 32,
  shards: int = 2,
  seed: int = 0,
  start_label: int = 0,
) -> dict:
  """Writes `{split}-*.tfrecord` shards and manifest.json; returns the manifest.

  Args:
    directory: output folder.
    splits: {split: [photo count of each identity]}; labels run on across splits.
    size: crop side.
    shards: shards per split (identities dealt round-robin, each contiguous in its shard).
    seed: noise seed.
    start_label: first label.
  """
  os.makedirs(directory, exist_ok=True)
  rng = np.random.RandomState(seed)
  label = start_label
  manifest = {
    "version": 1,
    "crop": {"crop_size": size, "detector": "none", "margin": 0.2},
    "labels": {},
    "splits": {},
    "identity_counts": {},
  }
  for split, counts in splits.items():
    per_shard: list[list[tuple[int, int, list[bytes]]]] = [[] for _ in range(shards)]
    for i, count in enumerate(counts):
      name = f"person_{label:04d}"
      manifest["labels"][name] = label
      manifest["identity_counts"][name] = int(count)
      records = []
      for photo in range(count):
        rgb = identity_image(label, photo, size, rng)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        records.append(
          tfrecords.make_example(
            jpeg.tobytes(), label, name, f"{name}/{photo:03d}.jpg", [0, 0, size, size], True
          )
        )
      per_shard[i % shards].append((label, count, records))
      label += 1
    shard_infos = []
    for index, groups in enumerate(per_shard):
      file = tfrecords.shard_name(split, index, shards)
      n = tfrecords.write_shard(
        os.path.join(directory, file), [r for _, _, recs in groups for r in recs]
      )
      shard_infos.append(
        {"file": file, "records": n, "groups": [[lab, cnt] for lab, cnt, _ in groups]}
      )
    manifest["splits"][split] = {
      "images": int(sum(counts)),
      "identities": len(counts),
      "shards": shard_infos,
    }
  tfrecords.write_manifest(directory, manifest)
  return manifest
