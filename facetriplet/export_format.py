"""The export's on-disk contract, shared by its writer (`facetriplet.training.export`) and its
reader (`facetriplet.search.embedder`): the metadata file, the signature names and the
fingerprint.

An export is a SavedModel folder with two signatures,

  serving_default  images uint8 [N, H, W, 3] (any H, W) -> {"embeddings": float32 [N, D]}
  serving_bytes    image_bytes string [N] (JPEG/PNG/BMP/GIF) -> {"embeddings": float32 [N, D]}

and `assets/facetriplet.json` (`METADATA_FILE`): `embedding_dim`, `crop_size` (the crop side the
model takes), `crop` (the CropSettings dict), `config`, `fingerprint` (`fingerprint` below, over
the exported variables, the crop settings and the flip flag: recomputed at load, so an edited or
swapped export is refused), `test_time_flip`, where the weights came from, and `verification`
(calibrated "same person" thresholds, outside the fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Mapping

import numpy as np

from facetriplet.errors import UserError

METADATA_FILE = "facetriplet.json"
METADATA_VERSION = 1
FINGERPRINT_VERSION = 2
SIGNATURE_IMAGES = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
INPUT_IMAGES = "images"
INPUT_BYTES = "image_bytes"
OUTPUT = "embeddings"


def fingerprint(arrays: Iterable[Any], crop: Mapping[str, Any], flip: bool) -> str:
  """First 16 hex digits of sha256 over every exported variable (shape, dtype, bytes, in the
  SavedModel's `model_variables` order), the crop settings and the flip flag."""
  h = hashlib.sha256(f"facetriplet-export-v{FINGERPRINT_VERSION};".encode())
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype.str}{a.shape};".encode())
    h.update(a.tobytes())
  h.update(json.dumps(dict(crop), sort_keys=True, default=str).encode())
  h.update(b"flip" if flip else b"plain")
  return h.hexdigest()[:16]


def metadata_path(export_dir: str) -> str:
  return os.path.join(export_dir, "assets", METADATA_FILE)


def read_metadata(export_dir: str) -> dict[str, Any]:
  """The export's assets/facetriplet.json; raises UserError when the folder is not an export."""
  path = metadata_path(export_dir)
  if not os.path.isfile(path):
    raise UserError(
      f"{path} not found: {export_dir} is not a facetriplet export; run "
      "facetriplet-export --workdir=... --export_dir=... first"
    )
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(
      f"{path} is unreadable ({e}): re-export the model with facetriplet-export"
    ) from None
