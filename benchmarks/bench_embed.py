"""Embedding speed: the exported SavedModel (both signatures) against the bare Keras model.

An untrained `build_embedding_model(config)` (configs/default.py with --backbone, --image_size and
random weights, i.e. `weights='none'`) is saved as a `.keras` checkpoint and exported with
`facetriplet.training.export.export_model` into a temporary folder, then loaded back with
`tf.saved_model.load`, as a server would. The same random uint8 crops (S = --input_size, the stored
crop size) are embedded at every batch size by:

  SavedModel serving_default  uint8 images in (already S x S, so the resize is a no-op)
  SavedModel serving_bytes    the same crops JPEG-encoded (quality 95): decode + embed
  Keras model(x)              `model(x, training=False)` on the in-memory Keras model (eager call)
  Keras tf.function           the same call wrapped in one `tf.function` (graph, like the export)
  Keras predict               `model.predict(x, batch_size=batch)` (compiled predict function)

Each measurement runs one untimed warm-up call, then calls for at least --seconds (and at least
twice) and reports images / wall second. The note records the largest difference between the
SavedModel's and the Keras model's embeddings (a sanity check of the export).

  python -m benchmarks.bench_embed                    # ResNet50 @ 112 px: ~7 min on 2 cores
  python -m benchmarks.bench_embed --backbone=resnet18 --width=0.125 --image_size=32 \
      --batches=1,8 --seconds=1 --name=scratch_embed  # ~30 s check

It writes benchmarks/results/embed.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str, arg: str | None = None):
  """`get_config(arg)` of a config file, loaded by path like the tools do."""
  from facetriplet import config_files  # pylint: disable=g-import-not-at-top

  return config_files.load_config(path, arg)


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def measure(fn: Callable[[], object], batch: int, seconds: float) -> tuple[float, int]:
  """Images/s of `fn` (one call embeds `batch` images): a warm-up call, then calls for at least
  `seconds` and at least twice. Returns (images/s, timed calls)."""
  fn()
  calls, start = 0, time.perf_counter()
  while True:
    fn()
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= seconds and calls >= 2:
      return batch * calls / elapsed, calls


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--backbone", default="resnet50")
  parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (resnet18)")
  parser.add_argument("--image_size", type=int, default=112, help="backbone input side")
  parser.add_argument("--input_size", type=int, default=128, help="stored crop side S")
  parser.add_argument("--embedding_dim", type=int, default=128)
  parser.add_argument("--batches", type=_ints, default=[1, 32, 256])
  parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
  parser.add_argument(
    "--paths", default="serving_default,serving_bytes,keras_call,keras_function,keras_predict"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--name", default="embed", help="result name (benchmarks/results/<name>.json)"
  )
  args = parser.parse_args(argv)

  import cv2  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from facetriplet.data import faces  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top
  from facetriplet.training import model as model_lib  # pylint: disable=g-import-not-at-top

  config = load_config(os.path.join(REPO, "configs", "default.py"))
  config.model.backbone = args.backbone
  config.model.weights = "none"
  config.model.width = args.width
  config.model.image_size = args.image_size
  config.model.embedding_dim = args.embedding_dim
  config.seed = args.seed
  keras.utils.set_random_seed(args.seed)
  model = model_lib.build_embedding_model(config, args.input_size)
  scratch = tempfile.mkdtemp(prefix="bench_embed_")
  paths = [p.strip() for p in args.paths.split(",") if p.strip()]
  rows, max_diff = [], 0.0
  try:
    ckpt = os.path.join(scratch, "model.keras")
    model.save(ckpt)
    export_dir = os.path.join(scratch, "export")
    crop = faces.CropSettings(crop_size=args.input_size).to_dict()
    summary = export.export_model(ckpt, export_dir, crop=crop)
    print(
      f"exported {args.backbone} @ {args.image_size} px (input {args.input_size} px, "
      f"{model.count_params():,} params) in {summary.seconds:.1f} s",
      flush=True,
    )
    loaded = tf.saved_model.load(export_dir)
    serve = loaded.signatures[export.SIGNATURE_IMAGES]
    serve_bytes = loaded.signatures[export.SIGNATURE_BYTES]
    graph_call = tf.function(lambda t: model(t, training=False))
    rng = np.random.default_rng(args.seed)
    for batch in args.batches:
      images = rng.integers(0, 256, (batch, args.input_size, args.input_size, 3), np.uint8)
      jpegs = [
        cv2.imencode(".jpg", im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        for im in images
      ]
      x = tf.constant(images)
      b = tf.constant(jpegs)
      saved = serve(**{export.INPUT_IMAGES: x})[export.OUTPUT].numpy()
      direct = np.asarray(model(x, training=False))
      max_diff = max(max_diff, float(np.abs(saved - direct).max()))
      fns = {
        "serving_default": (
          "SavedModel serving_default (uint8)",
          lambda: serve(**{export.INPUT_IMAGES: x})[export.OUTPUT].numpy(),
        ),
        "serving_bytes": (
          "SavedModel serving_bytes (JPEG)",
          lambda: serve_bytes(**{export.INPUT_BYTES: b})[export.OUTPUT].numpy(),
        ),
        "keras_call": (
          "Keras model(x, training=False)",
          lambda: np.asarray(model(x, training=False)),
        ),
        "keras_function": ("Keras tf.function(model)", lambda: graph_call(x).numpy()),
        "keras_predict": (
          "Keras model.predict",
          lambda: model.predict(images, batch_size=batch, verbose=0),
        ),
      }
      for p in paths:
        label, fn = fns[p]
        rate, calls = measure(fn, batch, args.seconds)
        rows.append([label, batch, round(rate, 1)])
        print(f"{label:40s} batch {batch:4d}: {rate:9.1f} images/s ({calls} calls)", flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  notes = (
    f"Model: `{args.backbone}`"
    + (f" (width {args.width})" if args.backbone == "resnet18" else "")
    + f", random weights, backbone input {args.image_size} px, stored crops "
    f"{args.input_size} px, {args.embedding_dim}-d, float32, {model.count_params():,} "
    f"parameters. Inputs: random uint8 crops (JPEG quality 95 for serving_bytes). "
    f"images/s = batch x calls / wall time over >= {args.seconds:g} s after one warm-up "
    f"call. Largest |SavedModel - Keras| embedding difference: {max_diff:.2e}. Paths: "
    "`serving_default` / `serving_bytes` are the signatures of `tf.saved_model.load` of the "
    "export (what a server or `facetriplet-retrieve` runs); `model(x, training=False)` is "
    "an eager Keras call (op-by-op dispatch, what a notebook does); `tf.function(model)` "
    "is the same call traced once into a graph, like the export; `model.predict` is Keras' "
    "compiled predict loop, which builds an input pipeline on every call."
  )
  path = common.write_result(
    args.name,
    f"Embedding throughput ({args.backbone}, {args.image_size} px): SavedModel vs Keras",
    ["path", "batch", "images/s"],
    rows,
    notes,
  )
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
