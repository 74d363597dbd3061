"""An exported model loaded for embedding, with the interface of every feature extractor:
`.embed(uint8 [N, S, S, 3]) -> float32 [N, D]` unit rows, `.dim`, `.fingerprint`,
`.crop_settings`, `.name`.

`load_embedder` checks that the folder is an export (`facetriplet.export_format`), loads the
SavedModel and recomputes the fingerprint from the loaded variables: an export whose weights or
settings were edited or mixed with another's is refused. `Embedder.threshold(far)` gives the
export's calibrated "same person" threshold.

Trust: an export folder is code. Loading a SavedModel runs its graph, so load only exports you
would install as a package; the fingerprint guards against edits and mix-ups, not against an
export crafted to run something when loaded.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
from absl import logging

from facetriplet import export_format, verification
from facetriplet.data import faces
from facetriplet.errors import UserError


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf


class Embedder:
  """An exported model, with the same interface as the classical feature extractors."""

  name = "embedding"

  def __init__(self, export_dir: str, batch_size: int = 64):
    tf = _tf()
    self.export_dir = export_dir
    self.metadata = export_format.read_metadata(export_dir)
    self.fingerprint: str = self.metadata["fingerprint"]
    self.dim: int = int(self.metadata["embedding_dim"])
    # The crop side the model takes (`input_size` in exports written before it was crop_size).
    self.crop_size: int = int(self.metadata.get("crop_size") or self.metadata["input_size"])
    self.batch_size = batch_size
    self.crop_settings = faces.CropSettings.from_dict(self.metadata["crop"])
    # Calibrated "same person" thresholds of these weights, or None (see the module docstring).
    self.verification: Optional[dict[str, Any]] = self.metadata.get("verification")
    self._loaded = tf.saved_model.load(export_dir)
    self._fn = self._loaded.signatures[export_format.SIGNATURE_IMAGES]
    self._verify()

  def _verify(self) -> None:
    """Recomputes the fingerprint from the loaded weights; an edited export is refused."""
    if int(self.metadata.get("fingerprint_version", 1)) < export_format.FINGERPRINT_VERSION:
      logging.warning(
        "%s is an export of fingerprint version 1 (not verifiable): re-export it "
        "with this facetriplet to have its weights checked",
        self.export_dir,
      )
      return
    variables = getattr(self._loaded, "model_variables", None)
    if variables is None:
      raise UserError(
        f"{self.export_dir} lacks the model variables its fingerprint covers: "
        "re-export it with facetriplet-export"
      )
    actual = export_format.fingerprint(
      [v.numpy() for v in variables],
      self.metadata["crop"],
      bool(self.metadata.get("test_time_flip", False)),
    )
    if actual != self.fingerprint:
      raise UserError(
        f"{self.export_dir} does not match its own fingerprint (recorded "
        f"{self.fingerprint}, its weights and settings give {actual}): the export "
        "was modified or mixed with another; re-export it from the training workdir"
      )

  def threshold(self, far: float = 0.01) -> Optional[float]:
    """The calibrated cosine-similarity threshold for a false accept rate `far` (accept a pair
    as one person when its score >= threshold); None when the export has no calibration, or none
    for that FAR (not calibrated, or too few val pairs to resolve it)."""
    if not self.verification:
      return None
    value = self.verification.get("thresholds", {}).get(verification.far_key(far))
    return None if value is None else float(value)

  def embed(self, images: np.ndarray) -> np.ndarray:
    """Embeds uint8 face crops [N, S, S, 3] (any S is resized) into float32 [N, D] unit rows."""
    tf = _tf()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.shape}")
    if len(images) == 0:
      return np.zeros((0, self.dim), np.float32)
    out = []
    for i in range(0, len(images), self.batch_size):
      batch = tf.constant(images[i : i + self.batch_size].astype(np.uint8, copy=False))
      out.append(self._fn(**{export_format.INPUT_IMAGES: batch})[export_format.OUTPUT].numpy())
    return np.concatenate(out).astype(np.float32, copy=False)

  def __repr__(self) -> str:
    return f"Embedder({self.export_dir!r}, fingerprint={self.fingerprint}, dim={self.dim})"


def load_embedder(export_dir: str, batch_size: int = 64) -> Embedder:
  """Loads an export written by `export_model`.

  Raises:
    UserError: `export_dir` is not a facetriplet export.
  """
  if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
    raise UserError(f"{export_dir} holds no saved_model.pb: run facetriplet-export first")
  return Embedder(export_dir, batch_size)
