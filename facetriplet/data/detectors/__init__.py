"""Face detectors by name: one module each behind `base.Detector`, chosen from `REGISTRY`.

The flags (`--detector`), their `--help`, the demo and the cropper read this registry; nothing
else names a detector. To add one, write `facetriplet/data/detectors/<name>.py` with a
`base.Detector` subclass exported as `DETECTOR` (set its `name`, `batch_size`,
`uses_tensorflow`, `fallback`), and add one line to `REGISTRY`: the module and a summary for
`--help`. Modules are imported on first use, so listing the detectors costs nothing.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

from facetriplet.data.detectors.base import DETECT_MAX_SIDE as DETECT_MAX_SIDE
from facetriplet.data.detectors.base import MIN_FACE_FRACTION as MIN_FACE_FRACTION
from facetriplet.data.detectors.base import Detector as Detector
from facetriplet.data.detectors.base import Face as Face
from facetriplet.errors import UserError


class Entry(NamedTuple):
  module: str
  summary: str


REGISTRY: dict[str, Entry] = {
  "mtcnn": Entry(
    "facetriplet.data.detectors.mtcnn",
    "MTCNN face box + five landmarks, crop aligned onto the template; ~150 ms a photo "
    "(Haar, then the centred square, when it finds no face)",
  ),
  "yunet": Entry(
    "facetriplet.data.detectors.yunet",
    "YuNet (OpenCV, shipped in the package) finds the faces, MTCNN's R-Net and O-Net place "
    "the five landmarks, crop aligned onto the template; ~15-25 ms a photo (Haar, then the "
    "centred square, when it finds no face)",
  ),
  "haar": Entry(
    "facetriplet.data.detectors.haar", "OpenCV frontal-face Haar cascade, box crop with margin"
  ),
  "none": Entry(
    "facetriplet.data.detectors.none",
    "no detection: centred square of the whole image (already-cropped sets)",
  ),
}
NAMES = tuple(REGISTRY)
# For photos (drawn or pre-cropped faces use "none"): yunet ranks as well as mtcnn at 8-13x
# its speed (BENCHMARKS.md, "Face detectors").
DEFAULT = "yunet"


def check(name: str) -> str:
  """`name` if it is a registered detector; UserError naming the choices otherwise."""
  if name not in REGISTRY:
    raise UserError(f"detector={name!r} is not one of {', '.join(NAMES)}")
  return name


def detector_class(name: str) -> type[Detector]:
  """The `Detector` subclass registered as `name` (its module imported, nothing loaded)."""
  return importlib.import_module(REGISTRY[check(name)].module).DETECTOR


def create(name: str) -> Detector:
  """A new detector `name` (models shared within the process are the module's business)."""
  return detector_class(name)()


def help_text() -> str:
  """One phrase per detector, for a flag's help."""
  return "; ".join(f"'{name}' = {entry.summary}" for name, entry in REGISTRY.items())


def limit_threads(name: str) -> None:
  """One thread for OpenCV, for the BLAS behind NumPy (YuNet's landmark networks) and, for a
  detector (or fallback) that runs TensorFlow, for TensorFlow: for a worker process among one
  per core (the ingest pool's, or a Beam runner's SDK worker), where more threads only compete
  for the same cores."""
  import cv2  # pylint: disable=g-import-not-at-top

  chain = [detector_class(name)]
  while chain[-1].fallback:
    chain.append(detector_class(chain[-1].fallback))
  if any(c.uses_tensorflow for c in chain):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
      tf.config.threading.set_intra_op_parallelism_threads(1)
      tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already ran in this process: keep its threads
      pass
  cv2.setNumThreads(1)
  limit_blas_threads()


def limit_blas_threads() -> None:
  """One thread for the BLAS behind NumPy (YuNet's landmark networks): for a process whose
  parallelism is its concurrent requests (the service) or one worker per core. OpenBLAS's own
  threads spin while they wait, competing with those workers for the same cores (the service
  answered ~20% more searches/s with one: BENCHMARKS.md, "The query path")."""
  import threadpoolctl  # pylint: disable=g-import-not-at-top

  threadpoolctl.threadpool_limits(1, user_api="blas")
