"""Reader of dlib's serialised face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`,
the weights of `networks.dlib_resnet`); NumPy and the standard library only (no dlib import).
The file is the output of `dlib::serialize(anet_type)`, `anet_type` being the network of dlib's
`examples/dnn_face_recognition_ex.cpp` (and `tools/python/src/face_recognition.cpp`).

Stream layout (dlib/dnn/core.h: add_loss_layer, add_layer, add_tag_layer, add_skip_layer;
primitives in dlib/serialize.h and dlib/cuda/tensor.h):

  add_loss_layer : int version(=1), loss_metric_ details, subnetwork
  add_layer      : int version(=2), subnetwork, layer details, 3 bools, x_grad tensor,
                   cached_output tensor, params_grad tensor
  add_layer over the input layer:
                   int version(=2|3), input details, layer details, 3 bools, x_grad,
                   cached_output, grad_final tensors, [int sample_expansion_factor if v3]
  add_tag_layer / add_skip_layer : int version(=1), subnetwork  (the tag id is NOT stored)

Because every wrapper writes its version before recursing into its subnetwork, the file holds
all wrapper versions first (output -> input), then the input layer, then each layer's details
in input -> output order. Tag and skip wrappers are indistinguishable in the stream (both are a
bare `int 1`), so parsing is driven by the known architecture (`anet_spec()`), and every
structural value that *is* stored (layer kind, filter count, kernel size, stride, padding,
fc sizes, affine mode, input means/size) is checked against it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class DatFormatError(ValueError):
  """Raised when the file is not a dlib face-recognition ResNet (`anet_type`) file."""


@dataclasses.dataclass
class LayerSpec:
  """One node of the dlib network type, in input -> output order.

  Attributes:
    kind: 'input', 'con', 'affine', 'relu', 'max_pool', 'avg_pool', 'add_prev', 'tag',
      'skip' or 'fc'.
    attrs: Static template arguments (e.g. num_filters, nr, nc, stride, padding, tag id).
  """

  kind: str
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DatLayer:
  """A layer as read from the file (input -> output order).

  Attributes:
    kind: As in `LayerSpec.kind`.
    version: The details version string found in the file ('' for tag/skip).
    attrs: Structural values from the file (tag/skip ids come from the spec).
    params: Parameter arrays in dlib layout: con 'filters' [O, I, kh, kw] and 'biases' [O];
      affine 'gamma'/'beta' [C] (CONV_MODE) or [C, H, W] (FC_MODE); fc 'weights' [in, out].
  """

  kind: str
  version: str
  attrs: dict[str, Any]
  params: dict[str, np.ndarray]


@dataclasses.dataclass
class DatNetwork:
  """Parsed network.

  Attributes:
    layers: All layers, input -> output, including parameter-free ones and tag/skip markers.
    loss: loss_metric_ details ('margin', 'dist_thresh').
  """

  layers: list[DatLayer]
  loss: dict[str, Any]

  def param_layers(self) -> list[DatLayer]:
    """Returns the layers with parameters (con, affine, fc), input -> output."""
    return [layer for layer in self.layers if layer.params]


# --------------------------------------------------------------------------------------------
# Architecture (anet_type) as a flat input -> output list.


def _block(n: int, stride: int) -> list[LayerSpec]:
  # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>, BN = affine.
  pad = 0 if stride != 1 else 1  # dlib default: stride != 1 ? 0 : size/2
  return [
    LayerSpec("con", dict(num_filters=n, nr=3, nc=3, stride=stride, padding=pad)),
    LayerSpec("affine"),
    LayerSpec("relu"),
    LayerSpec("con", dict(num_filters=n, nr=3, nc=3, stride=1, padding=1)),
    LayerSpec("affine"),
  ]


def _ares(n: int) -> list[LayerSpec]:
  # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
  return [
    LayerSpec("tag", dict(id=1)),
    *_block(n, 1),
    LayerSpec("add_prev", dict(tag=1)),
    LayerSpec("relu"),
  ]


def _ares_down(n: int) -> list[LayerSpec]:
  # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
  return [
    LayerSpec("tag", dict(id=1)),
    *_block(n, 2),
    LayerSpec("tag", dict(id=2)),
    LayerSpec("skip", dict(tag=1)),
    LayerSpec("avg_pool", dict(nr=2, nc=2, stride=2, padding=0)),
    LayerSpec("add_prev", dict(tag=2)),
    LayerSpec("relu"),
  ]


def anet_spec(input_size: int = 150) -> list[LayerSpec]:
  """Returns dlib's `anet_type` as a flat input -> output list of layer specs."""
  spec = [
    LayerSpec("input", dict(nr=input_size, nc=input_size)),
    LayerSpec("con", dict(num_filters=32, nr=7, nc=7, stride=2, padding=0)),
    LayerSpec("affine"),
    LayerSpec("relu"),
    LayerSpec("max_pool", dict(nr=3, nc=3, stride=2, padding=0)),
  ]
  spec += _ares(32) + _ares(32) + _ares(32)  # alevel4
  spec += _ares_down(64) + _ares(64) + _ares(64) + _ares(64)  # alevel3
  spec += _ares_down(128) + _ares(128) + _ares(128)  # alevel2
  spec += _ares_down(256) + _ares(256) + _ares(256)  # alevel1
  spec += _ares_down(256)  # alevel0
  spec += [
    LayerSpec("avg_pool", dict(nr=0, nc=0, stride=1, padding=0)),  # avg_pool_everything
    LayerSpec("fc", dict(num_outputs=128, bias=False)),
  ]
  return spec


# --------------------------------------------------------------------------------------------
# Primitive decoding (dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h).


class _Reader:
  """Sequential decoder of dlib's serialisation primitives."""

  def __init__(self, data: bytes):
    self.data = data
    self.pos = 0

  def fail(self, msg: str) -> DatFormatError:
    return DatFormatError(f"{msg} (at byte {self.pos})")

  def take(self, n: int) -> bytes:
    if self.pos + n > len(self.data):
      raise self.fail(f"unexpected end of file reading {n} bytes")
    out = self.data[self.pos : self.pos + n]
    self.pos += n
    return out

  def int(self, signed: bool = True) -> int:
    """Control byte (bit 7 = negative, low 4 bits = byte count) + little-endian magnitude."""
    ctrl = self.take(1)[0]
    size = ctrl & 0x0F if signed else ctrl & 0x8F
    if size == 0 or size > 8:
      raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
    value = int.from_bytes(self.take(size), "little")
    return -value if signed and ctrl & 0x80 else value

  def float(self) -> float:
    """float_details: int64 mantissa then int16 exponent; value = mantissa * 2**exponent."""
    if self.data[self.pos] & 0x70:
      raise self.fail("old ASCII float format is not supported")
    mantissa, exponent = self.int(), self.int()
    special = {32000: np.inf, 32001: -np.inf, 32002: np.nan}
    return special[exponent] if exponent in special else float(np.ldexp(mantissa, exponent))

  def bool(self) -> bool:
    ch = self.take(1)
    if ch not in (b"0", b"1"):
      raise self.fail(f"bad bool byte {ch!r}")
    return ch == b"1"

  def string(self) -> str:
    n = self.int(signed=False)
    if n > 256:
      raise self.fail(f"implausible string length {n}")
    return self.take(n).decode("latin-1")

  def expect_int(self, allowed: tuple[int, ...], what: str) -> int:
    value = self.int()
    if value not in allowed:
      raise self.fail(f"{what}: version {value} not in {allowed}")
    return value

  def shape4(self) -> tuple[int, int, int, int]:
    return tuple(self.int() for _ in range(4))  # num_samples, k, nr, nc

  def tensor(self) -> np.ndarray:
    """resizable_tensor: int version(=2), 4 dims, then raw little-endian float32 (NCHW)."""
    self.expect_int((2,), "resizable_tensor")
    shape = self.shape4()
    count = int(np.prod(shape))
    return np.frombuffer(self.take(4 * count), "<f4").reshape(shape).astype(np.float32)

  def alias_tensor(self) -> tuple[int, int, int, int]:
    """alias_tensor: int version(=1), 4 dims, no data."""
    self.expect_int((1,), "alias_tensor")
    return self.shape4()


# --------------------------------------------------------------------------------------------
# Layer details.


def _check(r: _Reader, kind: str, found: dict[str, Any], spec: LayerSpec) -> None:
  for key, want in spec.attrs.items():
    if key in found and found[key] != want:
      raise r.fail(f"{kind}: {key}={found[key]} but anet_type has {want}")


def _read_details(r: _Reader, spec: LayerSpec) -> DatLayer:
  """Reads one layer's details object (the part written by `serialize(item.details)`)."""
  kind = spec.kind
  version = r.string()
  attrs: dict[str, Any] = {}
  params: dict[str, np.ndarray] = {}
  if kind == "con":
    if version not in ("con_4", "con_5", "con_6"):
      raise r.fail(f"expected con_4..6, found {version!r}")
    flat = r.tensor().ravel()
    attrs["num_filters"] = r.int()
    attrs["nr"], attrs["nc"] = r.int(), r.int()
    attrs["stride"], stride_x = r.int(), r.int()
    attrs["padding"], padding_x = r.int(), r.int()
    filt, bias = r.alias_tensor(), r.alias_tensor()
    for _ in range(4):  # learning-rate / weight-decay multipliers
      r.float()
    use_bias = r.bool() if version in ("con_5", "con_6") else True
    if version == "con_6":
      attrs["use_relu"] = r.bool()
    if (stride_x, padding_x) != (attrs["stride"], attrs["padding"]):
      raise r.fail("con: non-square stride/padding not supported")
    nfilt = int(np.prod(filt))
    params["filters"] = flat[:nfilt].reshape(filt)  # [O, I, kh, kw]
    if use_bias:
      params["biases"] = flat[nfilt : nfilt + int(np.prod(bias))].copy()
    if flat.size != nfilt + (int(np.prod(bias)) if use_bias else 0):
      raise r.fail("con: params size does not match filters + biases")
  elif kind == "affine":
    if version not in ("affine_", "affine_2"):
      raise r.fail(f"expected affine_ (bn_con2/bn_fc2 not supported), found {version!r}")
    flat = r.tensor().ravel()
    gshape, bshape = r.alias_tensor(), r.alias_tensor()
    attrs["mode"] = {0: "conv", 1: "fc"}[r.int()]
    attrs["disabled"] = r.bool() if version == "affine_2" else False
    if not attrs["disabled"]:
      n = int(np.prod(gshape))
      if gshape != bshape or flat.size != 2 * n:
        raise r.fail("affine: inconsistent gamma/beta sizes")
      shape = (gshape[1],) if attrs["mode"] == "conv" else gshape[1:]
      params["gamma"] = flat[:n].reshape(shape)
      params["beta"] = flat[n:].reshape(shape)
  elif kind == "relu":
    if version not in ("relu_", "relu_2"):
      raise r.fail(f"expected relu_, found {version!r}")
    attrs["disabled"] = r.bool() if version == "relu_2" else False
  elif kind in ("max_pool", "avg_pool"):
    if version != f"{kind}_2":
      raise r.fail(f"expected {kind}_2, found {version!r}")
    attrs["nr"], attrs["nc"] = r.int(), r.int()
    attrs["stride"], stride_x = r.int(), r.int()
    attrs["padding"], padding_x = r.int(), r.int()
    if (stride_x, padding_x) != (attrs["stride"], attrs["padding"]):
      raise r.fail(f"{kind}: non-square stride/padding not supported")
  elif kind == "add_prev":
    if version != "add_prev_":
      raise r.fail(f"expected add_prev_, found {version!r}")
  elif kind == "fc":
    if version not in ("fc_2", "fc_3"):
      raise r.fail(f"expected fc_2/fc_3, found {version!r}")
    attrs["num_outputs"], attrs["num_inputs"] = r.int(signed=False), r.int(signed=False)
    flat = r.tensor().ravel()
    wshape, _ = r.alias_tensor(), r.alias_tensor()
    attrs["bias"] = r.int() == 0  # fc_bias_mode: FC_HAS_BIAS=0, FC_NO_BIAS=1
    for _ in range(4):
      r.float()
    if version == "fc_3" and not r.bool():
      attrs["bias"] = False
    n_in, n_out = wshape[0], wshape[1]
    params["weights"] = flat[: n_in * n_out].reshape(n_in, n_out)  # [in, out]: out = x @ W
    if attrs["bias"]:
      params["biases"] = flat[n_in * n_out :].copy()
  else:
    raise r.fail(f"unsupported layer kind {kind!r}")
  _check(r, kind, attrs, spec)
  return DatLayer(kind, version, attrs, params)


def _read_input(r: _Reader, spec: LayerSpec) -> DatLayer:
  version = r.string()
  if version != "input_rgb_image_sized":
    raise r.fail(f"expected input_rgb_image_sized, found {version!r}")
  mean = np.array([r.float(), r.float(), r.float()], np.float32)  # R, G, B
  attrs = dict(mean_rgb=mean, scale=1.0 / 256.0, nr=r.int(signed=False), nc=r.int(signed=False))
  _check(r, "input", attrs, spec)
  return DatLayer("input", version, attrs, {})


def _read_trailer(r: _Reader, over_input: bool, version: int) -> None:
  """Skips add_layer's runtime state after the details (bools + cached tensors)."""
  for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, ..._disabled
    r.bool()
  r.tensor()  # x_grad
  r.tensor()  # cached_output
  if over_input:
    r.tensor()  # grad_final
    if version >= 3:
      r.int()  # _sample_expansion_factor
  elif version == 2:
    r.tensor()  # params_grad


def read_dat(path: str, input_size: int = 150) -> DatNetwork:
  """Parses `dlib_face_recognition_resnet_model_v1.dat`.

  Args:
    path: Path of the .dat file (uncompressed, as shipped by dlib / face_recognition_models).
    input_size: Expected input_rgb_image_sized size.

  Returns:
    The parsed network, layers in input -> output order.

  Raises:
    DatFormatError: If the stream does not match dlib's `anet_type` exactly.
  """
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"BZ" or data[:2] == b"\x1f\x8b":
    raise DatFormatError(f"{path}: compressed file; decompress it first")
  try:
    return _parse(_Reader(data), anet_spec(input_size))
  except DatFormatError as e:
    raise DatFormatError(
      f"{path} is not dlib_face_recognition_resnet_model_v1 (anet_type): {e}"
    ) from None


def _parse(r: _Reader, spec: list[LayerSpec]) -> DatNetwork:
  """Parses the whole stream against `spec` (see the module docstring for the layout)."""
  r.expect_int((1,), "add_loss_layer")
  loss_version = r.string()
  if loss_version == "loss_metric_2":
    loss = dict(margin=r.float(), dist_thresh=r.float())
  elif loss_version == "loss_metric_":
    loss = dict(margin=0.1, dist_thresh=0.75)
  else:
    raise r.fail(f"expected loss_metric_, found {loss_version!r}: not the face ResNet")

  # Wrapper versions, output -> input. spec[0] is the input layer (no wrapper of its own).
  versions = [0] * len(spec)
  for i in range(len(spec) - 1, 0, -1):
    kind = spec[i].kind
    if kind in ("tag", "skip"):
      versions[i] = r.expect_int((1,), f"add_{kind}_layer #{i}")
    elif i == 1:
      versions[i] = r.expect_int((2, 3), f"add_layer over input #{i}")
    else:
      versions[i] = r.expect_int((1, 2), f"add_layer #{i} ({kind})")

  layers = [_read_input(r, spec[0])]
  for i in range(1, len(spec)):
    s = spec[i]
    if s.kind in ("tag", "skip"):
      layers.append(DatLayer(s.kind, "", dict(s.attrs), {}))
      continue
    layers.append(_read_details(r, s))
    _read_trailer(r, over_input=(i == 1), version=versions[i])
  if r.pos != len(r.data):
    raise r.fail(f"{len(r.data) - r.pos} trailing bytes after the network")
  return DatNetwork(layers, loss)
