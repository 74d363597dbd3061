"""Export a trained embedding model as a self-contained SavedModel (the reader is
`facetriplet.search.embedder`; the format both share is `facetriplet.export_format`).

The SavedModel is plain TensorFlow (a `tf.Module` with `tf.function` signatures, standard ops only),
so it loads with `tf.saved_model.load` in a process that has never imported facetriplet and serves
as-is in TF Serving:

  serving_default  images uint8 [N, H, W, 3] (any H, W) -> {"embeddings": float32 [N, D]}
  serving_bytes    image_bytes string [N] (JPEG/PNG/BMP/GIF) -> {"embeddings": float32 [N, D]}

Both resize to the model's crop size S (bilinear with antialiasing, rounded back to uint8;
a no-op when the input already is S x S), then run the Keras model with `training=False`, so the
augmentation is off and the backbone preprocessing and L2 normalisation inside the model apply.
With test-time flip (`flip=True`, by default the training config's `model.test_time_flip`) each
image and its left-right mirror are embedded in one batch and the output is the normalised sum of
the two embeddings. Inputs are expected to be face crops made with the settings recorded in the
metadata.

`assets/facetriplet.json` carries `embedding_dim`, `crop_size`, `crop` (CropSettings dict from the
training manifest), `config` (the training config), `fingerprint` (first 16 hex digits of a sha256
over the exported variables, the crop settings and the flip flag; `load_embedder` recomputes it
from what it loaded and refuses an export that does not match) and where the weights came from.
`verification` holds the calibrated "same person" thresholds of the exported weights, or None:
{"thresholds": {"0.1": t, "0.01": t, "0.001": t or None}, "tar": {...}, "eer", "eer_threshold",
"accept": "cosine similarity >= threshold", "source": {"file", "checkpoint", "epoch", "pairs",
"num_positive_pairs", "num_negative_pairs"}}, from the training workdir's
`<which>.calibration.json` whose `weights_sha256_16` and flip match what is exported (else None,
with a warning). It is metadata only: the fingerprint (what the embeddings mean) ignores it.

"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Optional

from absl import logging

from facetriplet import atomic, export_format
from facetriplet.data import faces
from facetriplet.errors import UserError
from facetriplet.export_format import (
  INPUT_BYTES,
  INPUT_IMAGES,
  METADATA_FILE,
  METADATA_VERSION,
  OUTPUT,
  SIGNATURE_BYTES,
  SIGNATURE_IMAGES,
)
from facetriplet.training import networks
from facetriplet.training.workdir import (
  WHICH,
  Workdir,
  load_checkpoint,
  resolve_checkpoint,
  weights_digest,
)


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf


def model_fingerprint(model) -> str:
  """First 16 hex digits of sha256 over every weight's shape, dtype and bytes, in model order
  (`workdir.weights_digest`: a workdir's calibration names its checkpoint's weights by it)."""
  return weights_digest(model)


def model_crop_size(model) -> int:
  """The crop side an embedding model takes (its input [None, S, S, 3])."""
  shape = tuple(model.inputs[0].shape)
  if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
    raise UserError(
      f"the model's input shape {shape} is not [None, S, S, 3]: export needs a "
      "model from facetriplet.training.model.build_embedding_model"
    )
  return int(shape[1])


def resize_images(images, size: int, dtype="uint8"):
  """Resizes a batch to size x size the way both signatures do; identity when already that size.

  Args:
    images: uint8 tensor [N, H, W, 3].
    size: target side.
    dtype: dtype the model input wants; integer dtypes are rounded and clipped to 0..255.

  Returns:
    Tensor [N, size, size, 3] of `dtype`.
  """
  tf = _tf()
  dtype = tf.as_dtype(dtype)
  images = tf.convert_to_tensor(images)

  def resized():
    x = tf.image.resize(
      tf.cast(images, tf.float32), (size, size), method="bilinear", antialias=True
    )
    if dtype.is_integer:
      x = tf.clip_by_value(tf.round(x), 0.0, 255.0)
    return tf.cast(x, dtype)

  shape = tf.shape(images)
  same = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))
  out = tf.cond(same, lambda: tf.cast(images, dtype), resized)
  return tf.ensure_shape(out, [None, size, size, 3])


def _make_module(model, size: int, flip: bool = False):
  """A tf.Module holding the model and the two serving functions."""
  tf = _tf()
  in_dtype = tf.as_dtype(model.inputs[0].dtype)

  def embed(x):
    if not flip:
      return tf.cast(model(x, training=False), tf.float32)
    n = tf.shape(x)[0]
    both = tf.cast(
      model(tf.concat([x, tf.reverse(x, axis=[2])], axis=0), training=False), tf.float32
    )
    return tf.math.l2_normalize(both[:n] + both[n:], axis=1, epsilon=1e-12)

  class EmbeddingModule(tf.Module):
    """Face embedding model: uint8 images or encoded bytes in, unit-length embeddings out."""

    def __init__(self):
      super().__init__(name="facetriplet_embedder")
      self.model = model
      # Keras 3 keeps random-layer seed states (SeedGenerator) outside the weights and outside
      # TensorFlow's object tracking; the traced graph still captures them, so every variable of
      # the model is listed here to make it reachable from the SavedModel root.
      self.model_variables = [getattr(v, "value", v) for v in model.variables]

    @tf.function(
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_IMAGES)]
    )
    def serve_images(self, images):
      return {OUTPUT: embed(resize_images(images, size, in_dtype))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_BYTES)])
    def serve_bytes(self, image_bytes):
      def decode(data):
        img = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        img.set_shape([None, None, 3])
        return resize_images(img[tf.newaxis], size, tf.uint8)[0]

      images = tf.map_fn(
        decode, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8)
      )
      return {OUTPUT: embed(tf.cast(images, in_dtype))}

  return EmbeddingModule()


@dataclasses.dataclass
class ExportSummary:
  export_dir: str
  checkpoint: str
  fingerprint: str
  embedding_dim: int
  crop_size: int
  seconds: float


def export_model(
  workdir_or_checkpoint: str,
  export_dir: str,
  which: str = "best",
  crop: Optional[dict[str, Any]] = None,
  flip: Optional[bool] = None,
) -> ExportSummary:
  """Exports a checkpoint as a SavedModel with both signatures and metadata, atomically.

  Args:
    workdir_or_checkpoint: a training workdir (checkpoints/best.keras or last.keras are used) or a
      `.keras` file.
    export_dir: output folder; replaced as a whole only once the new export is complete.
    which: 'best' or 'last' when a workdir is given.
    crop: CropSettings dict overriding the manifest's (needed when there is no manifest).
    flip: test-time flip (see the module docstring); None = the config's model.test_time_flip.

  Returns:
    ExportSummary.

  Raises:
    UserError: no checkpoint, unloadable checkpoint, unusable model shape.
  """
  start = time.time()
  checkpoint = resolve_checkpoint(workdir_or_checkpoint, which)
  workdir = Workdir.of_checkpoint(checkpoint)
  config = workdir.read_config() if workdir else None
  manifest = workdir.read_manifest() if workdir else None
  model = load_checkpoint(checkpoint)
  crop_size = model_crop_size(model)
  if crop is None:
    crop = (manifest or {}).get("crop")
  if crop is None:
    crop = faces.CropSettings(crop_size=crop_size).to_dict()
    logging.warning(
      "no manifest.json beside %s: recording the default crop settings %s", checkpoint, crop
    )
  if flip is None:
    flip = bool(((config or {}).get("model") or {}).get("test_time_flip", False))
  verification = _calibration(workdir, checkpoint, model_fingerprint(model), flip)
  return write_export(
    model, export_dir, crop, flip, config, os.path.abspath(checkpoint), verification, start
  )


def write_export(
  model,
  export_dir: str,
  crop: dict[str, Any],
  flip: bool,
  config: Optional[dict[str, Any]],
  source: str,
  verification: Optional[dict[str, Any]] = None,
  start: Optional[float] = None,
) -> ExportSummary:
  """Writes `model` (uint8 crops in, unit embeddings out) as a SavedModel with both signatures
  and its metadata, atomically. `source` says where the weights came from (a checkpoint path or
  a pretrained network's name)."""
  tf = _tf()
  start = time.time() if start is None else start
  crop_size = model_crop_size(model)
  if faces.crop_size_of(crop) != crop_size:
    logging.warning(
      "crop size %s differs from the model's %d; the export resizes",
      faces.crop_size_of(crop),
      crop_size,
    )
  weights = model_fingerprint(model)
  dim = int(model.outputs[0].shape[-1])
  module = _make_module(model, crop_size, flip)
  # Flip on or off, crop settings and weights all change what an index built from it means.
  fingerprint = export_format.fingerprint([v.numpy() for v in module.model_variables], crop, flip)
  metadata = {
    "version": METADATA_VERSION,
    "name": "embedding",
    "embedding_dim": dim,
    "crop_size": crop_size,
    "input_dtype": str(tf.as_dtype(model.inputs[0].dtype).name),
    "crop": dict(crop),
    "config": config,
    "fingerprint": fingerprint,
    "fingerprint_version": export_format.FINGERPRINT_VERSION,
    "weights_sha256_16": weights,
    "verification": verification,
    "test_time_flip": bool(flip),
    "checkpoint": source,
    "signatures": {
      SIGNATURE_IMAGES: {
        "input": INPUT_IMAGES,
        "dtype": "uint8",
        "shape": [None, None, None, 3],
        "output": OUTPUT,
      },
      SIGNATURE_BYTES: {"input": INPUT_BYTES, "dtype": "string", "shape": [None], "output": OUTPUT},
    },
    "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "tensorflow": tf.__version__,
  }
  with tempfile.TemporaryDirectory() as meta_dir, atomic.atomic_path(export_dir) as tmp:
    # As a tracked Asset the file is copied to assets/facetriplet.json, and a client without
    # facetriplet finds it as `tf.saved_model.load(d).metadata_file.asset_path`.
    atomic.write_json(os.path.join(meta_dir, METADATA_FILE), metadata)
    module.metadata_file = tf.saved_model.Asset(os.path.join(meta_dir, METADATA_FILE))
    tf.saved_model.save(
      module,
      tmp,
      signatures={
        SIGNATURE_IMAGES: module.serve_images.get_concrete_function(),
        SIGNATURE_BYTES: module.serve_bytes.get_concrete_function(),
      },
    )
    if not os.path.isfile(os.path.join(tmp, "assets", METADATA_FILE)):
      raise RuntimeError(f"the SavedModel in {tmp} lacks assets/{METADATA_FILE}")
  logging.info(
    "exported %s (fingerprint %s, dim %d, crop %d) to %s",
    source,
    fingerprint,
    dim,
    crop_size,
    export_dir,
  )
  return ExportSummary(export_dir, source, fingerprint, dim, crop_size, time.time() - start)


def pretrained_config(name: str):
  """The config of a pretrained network used as it is: the default config with the network, its
  weights, input size and embedding size, and no augmentation."""
  from facetriplet import config_files  # pylint: disable=g-import-not-at-top

  if name not in networks.pretrained_names():
    raise UserError(
      f"{name!r} is not a pretrained face network: pass one of "
      f"{', '.join(networks.pretrained_names())}"
    )
  network = networks.get(name)
  config = config_files.load_config("default")
  config.model.backbone = name
  config.model.weights = name
  config.model.image_size = network.image_size
  config.model.crop_size = faces.CropSettings.preset(network.crop_preset).crop_size
  config.model.embedding_dim = network.embedding_dim
  for key in list(config.augment.keys()):
    if isinstance(config.augment[key], float):
      config.augment[key] = 0.0
  config.augment.flip = False
  return config


def export_pretrained(
  name: str, export_dir: str, flip: bool = True, detector: Optional[str] = None
) -> ExportSummary:
  """Exports pretrained network `name` (e.g. 'dlib_resnet') as it is, no training: a normal,
  fingerprinted export whose crop settings are the network's preset (`detector` overriding the
  preset's default detector), so build-index, retrieve, evaluate, search and serve take it.
  Test-time flip is on by default: with it the project's pipeline ranks at least as well as
  dlib's own on lfw_2to4 val, celeba_199 val and ORL (BENCHMARKS.md), at twice the model cost.

  Raises:
    UserError: not a pretrained network, or its weights are not installed (one line naming the
      extra).
  """
  start = time.time()
  config = pretrained_config(name)  # a wrong name or detector is reported before TensorFlow loads
  network = networks.get(name)
  crop = faces.CropSettings.preset(network.crop_preset, detector=detector).to_dict()
  from facetriplet.training import model as model_lib  # pylint: disable=g-import-not-at-top

  model = model_lib.build_embedding_model(config)
  # The network's own calibration holds for the crop and flip it was measured with.
  measured = flip and crop == faces.CropSettings.preset(network.crop_preset).to_dict()
  verification = network.calibration if measured else None
  return write_export(
    model, export_dir, crop, flip, config.to_dict(), f"pretrained:{name}", verification, start
  )


def resolve_model(value: Optional[str]) -> Optional[str]:
  """A tool's --model: an export folder as given, or the name of a pretrained network (e.g.
  'dlib_resnet', when no such folder exists) as its cached export."""
  if value and not os.path.exists(value) and value in networks.pretrained_names():
    return pretrained_export(value)
  return value


def pretrained_export(name: str) -> str:
  """The export folder of pretrained network `name` in the cache, written on first use (the
  network's preset crop, test-time flip): what `--model=<pretrained name>` of the tools means."""
  path = os.path.join(networks.cache_dir(), "exports", f"{name}-v2")  # v2: turned; v1 stays
  if not os.path.isfile(os.path.join(path, "saved_model.pb")):
    logging.info("exporting the pretrained %s into %s (once)", name, path)
    export_pretrained(name, path)
  else:
    network = networks.get(name)
    meta = _cached_meta(path)
    want = faces.CropSettings.preset(network.crop_preset).to_dict()
    if meta.get("crop") != want or meta.get("verification") != network.calibration:
      # An older version's (e.g. MTCNN crops, no calibration): --model=<name> means this one's.
      logging.info("the cached export of %s is an older version's: exporting it again", name)
      export_pretrained(name, path)
  return path


def _cached_meta(path: str) -> dict[str, Any]:
  try:
    with open(os.path.join(path, "assets", "facetriplet.json"), encoding="utf-8") as f:
      return dict(json.load(f))
  except (OSError, ValueError, TypeError):
    return {}


def _calibration(
  workdir: Optional[Workdir], checkpoint: str, weights: str, flip: bool
) -> Optional[dict[str, Any]]:
  """The export's `verification`: the workdir's calibration made for these very weights (and
  flip setting), or None with a warning."""
  found = []
  for which in WHICH if workdir else ():
    calibration = workdir.read_calibration(which)
    if calibration:
      found.append(which)
      if calibration.get("weights_sha256_16") == weights and bool(
        calibration.get("test_time_flip", False)
      ) == bool(flip):
        return {
          "thresholds": calibration["thresholds"],
          "tar": calibration.get("tar"),
          "eer": calibration.get("eer"),
          "eer_threshold": calibration.get("eer_threshold"),
          "accept": calibration.get("accept", "cosine similarity >= threshold"),
          "source": {
            "file": os.path.abspath(workdir.calibration_path(which)),
            "checkpoint": which,
            "epoch": calibration.get("epoch"),
            "pairs": calibration.get("pairs"),
            "num_positive_pairs": calibration.get("num_positive_pairs"),
            "num_negative_pairs": calibration.get("num_negative_pairs"),
          },
        }
  logging.warning(
    "no verification calibration for %s (%s): the export records none, so "
    "Embedder.threshold() is None; export a checkpoint of a training run "
    "(best or last, as trained) to have one",
    checkpoint,
    f"calibrations of {', '.join(found)} are for other weights or flip setting"
    if found
    else ("none in its workdir" if workdir else "no training workdir"),
  )
  return None
