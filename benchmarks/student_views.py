"""Fixed augmented views of every training crop, for distilling the student (configs/student.py):
each photo of a shard folder becomes `--views` records (the crop as stored, then `--views - 1`
copies through the project's augmentation layer: shift, zoom, rotation, brightness, contrast,
grey), same label and identity, path `<photo>#v<k>`. The teacher then embeds every view once
(`distill.targets`), so the student learns the teacher's answer on the geometry it sees (a
"consistent teacher", Beyer et al. 2022; training adds only flip and light brightness and
contrast jitter, which move the teacher's answer little) from --views times more images than
photos, without running the teacher inside the train step. Flip is left to training: the
teacher's targets are flip-averaged, so a mirrored view has the same target.

  python -m benchmarks.student_views --input=runs/data/student_dlib \
      --output=runs/data/student_views --views=32 --seed=1

The val split is copied as it is (no views). The manifest is the input's with the counts
multiplied and a new fingerprint; the crop settings stay the input's, so an export of the
student records the crop it takes from photos.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import numpy as np

VIEW_AUGMENT = {
  "flip": False,
  "translate": 0.06,
  "zoom": 0.1,
  "rotation": 0.02,
  "brightness": 0.15,
  "contrast": 0.2,
  "grayscale": 0.05,
}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--views", type=int, default=8)
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.views < 1:
    raise SystemExit(f"--views={args.views}: give 1 or more (1 = the crops as they are)")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from facetriplet.data import tfrecords  # pylint: disable=g-import-not-at-top
  from facetriplet.training import augment  # pylint: disable=g-import-not-at-top

  shard_set = tfrecords.ShardSet.open(args.input)
  manifest = dict(shard_set.manifest)
  if os.path.isdir(args.output) and os.listdir(args.output):
    # Training reads every shard file in the folder: leftovers of another run would mix in.
    raise SystemExit(f"{args.output} is not empty: remove it or pick a new --output")
  os.makedirs(args.output, exist_ok=True)
  layer = augment.build_augmentation(VIEW_AUGMENT, seed=args.seed)

  @tf.function(reduce_retracing=True)
  def augmented(rgb, n):
    # Keras' random layers draw each image's transform separately within a batch.
    x = layer(tf.cast(tf.repeat(rgb[None], n, axis=0), tf.float32), training=True)
    x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
    return tf.map_fn(lambda im: tf.io.encode_jpeg(im, quality=95), x, fn_output_signature=tf.string)

  start, written = time.time(), 0
  splits = dict(manifest["splits"])
  for split in shard_set.split_names:
    info = dict(splits[split])
    shards = []
    for shard in info["shards"]:
      path = os.path.join(args.input, shard["file"])
      views = args.views if split == args.split else 1

      def records(path=path, views=views):
        for rec in tfrecords.read_records([path]):
          rgb = tf.io.decode_image(rec["image"], channels=3)
          yield _example(tfrecords, rec, rec["image"], rec["path"])
          if views > 1:
            for k, jpg in enumerate(augmented(rgb, views - 1).numpy(), 1):
              yield _example(tfrecords, rec, jpg, f"{rec['path']}#v{k}")

      n = tfrecords.write_shard(os.path.join(args.output, shard["file"]), records())
      written += n
      shards.append({**shard, "records": n, "groups": [[g, c * views] for g, c in shard["groups"]]})
      print(f"{shard['file']}: {n} records ({time.time() - start:.0f} s)", flush=True)
    info["shards"] = shards
    info["images"] = sum(s["records"] for s in shards)
    splits[split] = info
  manifest["splits"] = splits
  viewed = {g for shard in splits.get(args.split, {}).get("shards", []) for g, _ in shard["groups"]}
  labels = manifest.get("labels", {})
  manifest["identity_counts"] = {
    k: v * (args.views if labels.get(k) in viewed else 1)
    for k, v in manifest.get("identity_counts", {}).items()
  }
  manifest["views"] = {"count": args.views, "augment": VIEW_AUGMENT, "of": args.input}
  manifest["fingerprint"] = hashlib.sha256(
    f"{manifest['fingerprint']}:{args.views}:{sorted(VIEW_AUGMENT.items())}:{args.seed}".encode()
  ).hexdigest()
  tfrecords.write_manifest(args.output, manifest)
  print(f"{written} records in {args.output}, {time.time() - start:.0f} s")
  return 0


def _example(tfrecords, rec, encoded: bytes, path: str) -> bytes:
  return tfrecords.make_example(
    encoded,
    rec["label"],
    rec["identity"],
    path,
    rec["box"],
    rec["found"],
    rec["landmarks"],
    rec["method"],
  )


if __name__ == "__main__":
  np.seterr(all="ignore")
  raise SystemExit(main())
