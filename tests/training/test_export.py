"""Export: the reloaded SavedModel (in a process without facetriplet) matches the Keras model."""

import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facetriplet.training import export
from facetriplet.search import embedder
from facetriplet import export_format
from facetriplet.errors import UserError

SIZE = 32
DIM = 8


def build_tiny_model(size: int = SIZE, dim: int = DIM, seed: int = 0):
  """A few-conv embedding model shaped like build_embedding_model's: uint8 [N,S,S,3] -> unit [N,D].

  It holds the training augmentation (active only with training=True), so the export must call
  the model with training=False. Only layers the tools can load without test code are used.
  """
  import keras  # pylint: disable=g-import-not-at-top
  from facetriplet.training import augment  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(seed)
  inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
  x = keras.ops.cast(inputs, "float32")
  x = augment.build_augmentation({"flip": True, "brightness": 0.3, "erasing": 0.5}, seed=seed)(x)
  x = keras.layers.Resizing(24, 24)(x)
  x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
  x = keras.layers.Conv2D(6, 3, strides=2, activation="relu")(x)
  x = keras.layers.Conv2D(8, 3, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(dim)(x)
  outputs = keras.layers.UnitNormalization()(x)
  return keras.Model(inputs, outputs, name="tiny_embedder")


def build_smoke_model(size: int = SIZE):
  """The training engineer's model (configs/default.py:smoke, resnet18 at 32 px), untrained."""
  import keras  # pylint: disable=g-import-not-at-top
  from facetriplet import config_files  # pylint: disable=g-import-not-at-top
  from facetriplet.training import model as model_lib  # pylint: disable=g-import-not-at-top

  path = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs", "default.py"
  )
  keras.utils.set_random_seed(0)
  return model_lib.build_embedding_model(config_files.load_config(path, "smoke"), crop_size=size)


def make_workdir(
  root: str, size: int = SIZE, dim: int = DIM, seed: int = 0, which=("best",), kind: str = "tiny"
) -> str:
  """A training workdir with config.json, manifest.json and checkpoints/<which>.keras."""
  workdir = os.path.join(root, f"workdir{seed}")
  os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
  model = build_tiny_model(size, dim, seed) if kind == "tiny" else build_smoke_model(size)
  for name in which:
    model.save(os.path.join(workdir, "checkpoints", f"{name}.keras"))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"model": {"backbone": "tiny", "embedding_dim": dim}}, f)
  crop = {"detector": "none", "margin": 0.2, "crop_size": size, "on_no_face": "center"}
  with open(os.path.join(workdir, "manifest.json"), "w") as f:
    json.dump({"version": 1, "crop": crop}, f)
  return workdir


def make_export(root: str, seed: int = 0, size: int = SIZE, dim: int = DIM) -> str:
  workdir = make_workdir(root, size, dim, seed)
  export_dir = os.path.join(root, f"export{seed}")
  export.export_model(workdir, export_dir)
  return export_dir


_BARE_SCRIPT = r"""
import sys
sys.modules["facetriplet"] = None  # any import of facetriplet now fails
import json
import numpy as np, tensorflow as tf
d = np.load(sys.argv[2], allow_pickle=True)
m = tf.saved_model.load(sys.argv[1])
img = m.signatures["serving_default"]
byt = m.signatures["serving_bytes"]
out = {
  "same": img(images=tf.constant(d["same"]))["embeddings"].numpy(),
  "other": img(images=tf.constant(d["other"]))["embeddings"].numpy(),
  "png": byt(image_bytes=tf.constant(list(d["png"])))["embeddings"].numpy(),
  "jpeg": byt(image_bytes=tf.constant(list(d["jpeg"])))["embeddings"].numpy(),
  "jpeg_decoded": tf.stack([tf.io.decode_image(b, channels=3, expand_animations=False)
                            for b in d["jpeg"]]).numpy(),
}
meta = json.loads(tf.io.read_file(m.metadata_file.asset_path).numpy())
out["dim"] = np.array(meta["embedding_dim"])
assert not any(k.startswith("facetriplet") for k in sys.modules if sys.modules[k] is not None)
np.savez(sys.argv[3], **out)
"""


def _encode(arr: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format=fmt)
  return buf.getvalue()


@pytest.fixture(scope="module", params=["tiny", "smoke"])
def exported(request, tmp_path_factory):
  if request.param == "smoke" and importlib.util.find_spec("facetriplet.training.model") is None:
    pytest.skip("facetriplet/model.py not present yet")
  root = str(tmp_path_factory.mktemp("export"))
  workdir = make_workdir(root, which=("best", "last"), kind=request.param)
  export_dir = os.path.join(root, "export")
  summary = export.export_model(workdir, export_dir)
  return workdir, export_dir, summary, request.param


def test_reloaded_savedmodel_matches_keras_without_facetriplet(exported, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  workdir, export_dir, _, _ = exported
  model = export.load_checkpoint(os.path.join(workdir, "checkpoints", "best.keras"))
  rng = np.random.default_rng(0)
  same = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
  other = rng.integers(0, 256, (2, 45, 51, 3), dtype=np.uint8)
  png_arrays = [
    rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
    rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
  ]
  jpeg_bytes = [_encode(a, "JPEG") for a in (png_arrays[0], png_arrays[0][::-1])]
  inputs = os.path.join(tmp_path, "inputs.npz")
  np.savez(
    inputs,
    same=same,
    other=other,
    png=np.array([_encode(a, "PNG") for a in png_arrays], dtype=object),
    jpeg=np.array(jpeg_bytes, dtype=object),
  )
  outputs = os.path.join(tmp_path, "outputs.npz")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
    [sys.executable, "-c", _BARE_SCRIPT, export_dir, inputs, outputs],
    cwd=str(tmp_path),
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = np.load(outputs)

  def keras_embed(images):
    x = export.resize_images(tf.constant(images), SIZE)
    return model(x, training=False).numpy()

  assert int(out["dim"]) == export_format.read_metadata(export_dir)["embedding_dim"]
  np.testing.assert_allclose(out["same"], model(same, training=False).numpy(), atol=1e-5)
  np.testing.assert_allclose(out["other"], keras_embed(other), atol=1e-5)
  np.testing.assert_allclose(out["png"][0], keras_embed(png_arrays[0][None])[0], atol=1e-5)
  np.testing.assert_allclose(out["png"][1], keras_embed(png_arrays[1][None])[0], atol=1e-5)
  np.testing.assert_allclose(out["jpeg"], keras_embed(out["jpeg_decoded"]), atol=1e-5)
  for key in ("same", "other", "png", "jpeg"):
    assert out[key].dtype == np.float32 and out[key].shape[1] == model.outputs[0].shape[-1]
    np.testing.assert_allclose(np.linalg.norm(out[key], axis=1), 1.0, atol=1e-5)
  # Augmentation is on in training mode, so matching proves the export runs it switched off.
  assert not np.allclose(model(same, training=True).numpy(), out["same"], atol=1e-3)


def test_metadata_and_embedder(exported):
  workdir, export_dir, summary, _ = exported
  meta = export_format.read_metadata(export_dir)
  dim = meta["embedding_dim"]
  assert dim in (DIM, 16) and meta["crop_size"] == SIZE
  assert meta["crop"]["crop_size"] == SIZE and meta["crop"]["detector"] == "none"
  assert meta["config"]["model"]["embedding_dim"] == DIM
  assert meta["checkpoint"].endswith("best.keras")
  model = export.load_checkpoint(os.path.join(workdir, "checkpoints", "best.keras"))
  assert meta["fingerprint"] == summary.fingerprint
  assert meta["weights_sha256_16"] == export.model_fingerprint(model)
  assert len(meta["fingerprint"]) == 16
  emb = embedder.load_embedder(export_dir, batch_size=2)
  assert emb.name == "embedding" and emb.dim == dim and emb.fingerprint == meta["fingerprint"]
  assert emb.crop_settings.crop_size == SIZE
  images = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
  vectors = emb.embed(images)
  assert vectors.shape == (5, dim) and vectors.dtype == np.float32
  np.testing.assert_allclose(vectors, model(images, training=False).numpy(), atol=1e-5)
  assert emb.embed(images[:0]).shape == (0, dim)
  assert not any(name.startswith(".") for name in os.listdir(os.path.dirname(export_dir)))


def test_which_and_checkpoint_resolution(tmp_path):
  workdir = str(tmp_path)
  os.makedirs(os.path.join(workdir, "checkpoints"))
  with pytest.raises(UserError, match="train first"):
    export.resolve_checkpoint(workdir)
  with pytest.raises(UserError, match="which"):
    export.resolve_checkpoint(workdir, "newest")
  last = os.path.join(workdir, "checkpoints", "last.keras")
  open(last, "wb").close()
  assert export.resolve_checkpoint(workdir, "best") == last  # falls back to last
  assert export.resolve_checkpoint(workdir, "last") == last
  best = os.path.join(workdir, "checkpoints", "best.keras")
  open(best, "wb").close()
  assert export.resolve_checkpoint(workdir) == best
  assert export.resolve_checkpoint(last) == last
  with pytest.raises(UserError, match="does not exist"):
    export.resolve_checkpoint(os.path.join(workdir, "nope"))
  with pytest.raises(UserError, match="saved_model.pb"):
    embedder.load_embedder(workdir)


@pytest.mark.slow
def test_export_tool(exported, tmp_path):
  workdir, _, summary, kind = exported
  if kind == "tiny" and importlib.util.find_spec("facetriplet.training.model") is not None:
    pytest.skip("the tool is run once, on the real model (its custom layers must load)")
  out = os.path.join(tmp_path, "exp")
  proc = subprocess.run(
    [
      os.path.join(os.path.dirname(sys.executable), "facetriplet-export"),
      f"--workdir={workdir}",
      f"--export_dir={out}",
      "--which=last",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  meta = export_format.read_metadata(out)
  assert meta["checkpoint"].endswith("last.keras")
  assert meta["fingerprint"] == summary.fingerprint  # best and last hold the same weights here
  assert "fingerprint" in proc.stdout
  bad = subprocess.run(
    [
      os.path.join(os.path.dirname(sys.executable), "facetriplet-export"),
      f"--workdir={tmp_path}/missing",
      f"--export_dir={out}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr


def test_calibration_travels_with_its_weights_only(tmp_path, caplog):
  """The workdir's calibration of best.keras goes into the metadata as `verification`; an export
  of other weights (a calibration naming different weights) records none and warns; the
  fingerprint is the same with or without it."""
  import logging  # pylint: disable=g-import-not-at-top
  from facetriplet.training.workdir import Workdir  # pylint: disable=g-import-not-at-top

  workdir = make_workdir(str(tmp_path), which=("best", "last"))
  weights = export.model_fingerprint(
    export.load_checkpoint(os.path.join(workdir, "checkpoints", "best.keras"))
  )
  calibration = {
    "version": 1,
    "epoch": 3,
    "weights_sha256_16": weights,
    "test_time_flip": False,
    "thresholds": {"0.1": 0.31, "0.01": 0.52, "0.001": None},
    "tar": {"0.1": 0.9, "0.01": 0.7, "0.001": None},
    "eer": 0.08,
    "eer_threshold": 0.35,
    "num_positive_pairs": 40,
    "num_negative_pairs": 500,
    "pairs": "val photos, leave-one-out",
  }
  Workdir(workdir).write_calibration("best", calibration)
  summary = export.export_model(workdir, str(tmp_path / "calibrated"))
  meta = export_format.read_metadata(str(tmp_path / "calibrated"))
  assert meta["verification"]["thresholds"] == calibration["thresholds"]
  assert meta["verification"]["eer_threshold"] == 0.35
  source = meta["verification"]["source"]
  assert source["checkpoint"] == "best" and source["epoch"] == 3
  assert source["num_negative_pairs"] == 500
  emb = embedder.load_embedder(str(tmp_path / "calibrated"))
  assert emb.verification == meta["verification"]
  assert emb.threshold() == 0.52 and emb.threshold(far=0.1) == 0.31
  assert emb.threshold(far=1e-3) is None and emb.threshold(far=0.2) is None
  # The flip setting must match too.
  assert export._calibration(Workdir(workdir), "x.keras", weights, True) is None
  assert export._calibration(Workdir(workdir), "x.keras", weights, False)["thresholds"]

  Workdir(workdir).write_calibration("best", dict(calibration, weights_sha256_16="0" * 16))
  with caplog.at_level(logging.WARNING):
    other = export.export_model(workdir, str(tmp_path / "mismatch"))
  assert export_format.read_metadata(str(tmp_path / "mismatch"))["verification"] is None
  assert "other weights" in caplog.text
  assert embedder.load_embedder(str(tmp_path / "mismatch")).threshold() is None
  assert other.fingerprint == summary.fingerprint == meta["fingerprint"]
