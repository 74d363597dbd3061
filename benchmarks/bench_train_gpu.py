"""Training throughput of the ResNet50 embedding model on a GPU, float32 vs mixed precision.

Why a separate script: the GPU machines this project can borrow have JAX but no TensorFlow, and
TensorFlow's CUDA wheels (~4 GB with their NVIDIA libraries) cannot be carried there. Keras 3 is
backend-agnostic, so this script builds the same network as `facetriplet.training.model` with the
`resnet50` backbone (uint8 input → resize to 112 px → ResNet50 preprocessing → ResNet50 →
Dense(128) → L2 normalisation) and trains it with the same semi-hard triplet loss (written here in
`keras.ops`, O(B³) masking, fine at these batch sizes) under `KERAS_BACKEND=jax`. The number it
measures is model compute per step — the part the GPU changes — on in-memory P×K batches.

  KERAS_BACKEND=jax python -m benchmarks.bench_train_gpu --batches=128,256 --steps=30

It writes benchmarks/results/train_gpu.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402


def semi_hard_loss(labels, emb, margin=0.2):
  labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
  emb = ops.cast(emb, "float32")
  d2 = ops.maximum(
    ops.sum(emb**2, 1)[:, None] - 2 * emb @ ops.transpose(emb) + ops.sum(emb**2, 1)[None, :], 0.0
  )
  d = ops.sqrt(d2 + 1e-12)
  same = ops.equal(labels[:, None], labels[None, :])
  eye = ops.eye(ops.shape(labels)[0], dtype="bool")
  pos = ops.logical_and(same, ops.logical_not(eye))
  neg = ops.logical_not(same)
  big = 1e9
  d_ap = d[:, :, None]  # [a, p, 1]
  d_an = d[:, None, :]  # [a, 1, n]
  outside = ops.logical_and(neg[:, None, :], d_an > d_ap)
  closest_outside = ops.min(ops.where(outside, d_an, big), axis=2)
  farthest = ops.max(ops.where(neg, d, -big), axis=1)[:, None]
  chosen = ops.where(closest_outside < big / 2, closest_outside, farthest)
  loss = ops.maximum(d - chosen + margin, 0.0)
  posf = ops.cast(pos, "float32")
  return ops.sum(loss * posf) / ops.maximum(ops.sum(posf), 1.0)


def build(image_size: int, stored: int, dim: int) -> keras.Model:
  inp = keras.Input((stored, stored, 3), dtype="uint8")
  x = ops.cast(inp, "float32")
  x = keras.layers.Resizing(image_size, image_size)(x)
  x = keras.applications.resnet50.preprocess_input(x)
  x = keras.applications.ResNet50(
    include_top=False, weights=None, pooling="avg", input_shape=(image_size, image_size, 3)
  )(x)
  x = keras.layers.Dense(dim, dtype="float32")(x)
  x = keras.layers.UnitNormalization(dtype="float32")(x)
  return keras.Model(inp, x)


class _Timer(keras.callbacks.Callback):
  def __init__(self, warmup: int):
    super().__init__()
    self.warmup, self.times = warmup, []

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter())


def measure(policy: str, batch: int, steps: int, image_size: int, k: int = 4) -> float:
  keras.mixed_precision.set_global_policy(policy)
  model = build(image_size, 128, 128)
  model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=semi_hard_loss, jit_compile=True)
  rng = np.random.default_rng(0)
  n = batch * (steps + 5)
  images = rng.integers(0, 256, (batch * 4, 128, 128, 3), dtype=np.uint8)
  images = np.concatenate([images] * ((n + len(images) - 1) // len(images)))[:n]
  labels = np.repeat(np.arange(n // k), k)[:n]
  timer = _Timer(5)
  model.fit(images, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
  t = timer.times
  keras.mixed_precision.set_global_policy("float32")
  return batch * (len(t) - 1 - 5) / (t[-1] - t[5])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", default="128,256")
  p.add_argument("--policies", default="float32,mixed_bfloat16,mixed_float16")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--image_size", type=int, default=112)
  p.add_argument("--out", default="")
  p.add_argument("--name", default="train_gpu")
  a = p.parse_args()
  if keras.backend.backend() == "jax":
    import jax  # pylint: disable=g-import-not-at-top

    device, version = str(jax.devices()[0].device_kind), f"JAX {jax.__version__}"
  else:
    device, version = "CPU", keras.backend.backend()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks import common  # pylint: disable=g-import-not-at-top

  machine = f"{device} ({version}, Keras {keras.__version__}), {os.cpu_count()} CPU cores"
  common.machine_description = lambda: machine
  rows = []
  for policy in a.policies.split(","):
    for b in [int(x) for x in a.batches.split(",")]:
      ips = measure(policy, b, a.steps, a.image_size)
      rows.append([policy, b, a.image_size, round(ips, 1)])
      print(f"{policy:15s} batch {b:4d}: {ips:8.1f} img/s", flush=True)
      # Written after every row, so a run cut short still leaves what it measured.
      path = common.write_result(
        a.name,
        "Training throughput on a GPU (ResNet50 embedding, semi-hard triplet loss)",
        ["precision policy", "batch (P×K, K=4)", "image size", "train images/s"],
        rows,
        notes="Keras 3 on the JAX backend (the borrowed GPU machine has no TensorFlow), same "
        "network and loss as `facetriplet.training.model`/`facetriplet.training.losses`, "
        "in-memory batches, "
        "XLA-compiled step, timed after 5 warm-up steps.",
        command="KERAS_BACKEND=jax python -m benchmarks.bench_train_gpu " + " ".join(sys.argv[1:]),
      )
      if a.out:
        import shutil  # pylint: disable=g-import-not-at-top

        shutil.copy(path, a.out)


if __name__ == "__main__":
  main()
