"""What every face detector is: `Detector.detect(images) -> faces` (box, five landmarks, score).

A detector only finds faces. Choosing one face of a photo, aligning it on its landmarks and
cutting the crop stay with `facetriplet.data.faces.FaceCropper`, so every detector yields crops
made the same way. Faces are in the pixels of the image given (detectors that work on a smaller
copy scale their answers back), landmarks in the order of the alignment templates: left eye, right
eye, nose tip, left mouth corner, right mouth corner (left/right as seen in the photo).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Optional, Sequence

import cv2
import numpy as np

# Detection runs on a copy no larger than this: faces stay well above the detectors' smallest
# size, and a 24 MP photo costs no more than a 640-px one.
DETECT_MAX_SIDE = 640
# Faces narrower than this fraction of the short side are not searched for by default: the finest
# pyramid levels cost most of Haar's time (30 -> 19 ms per LFW photo) and found no extra LFW/ORL
# faces.
MIN_FACE_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Face:
  """One face found in a photo, in that photo's pixels.

  Attributes:
    box: (x, y, w, h).
    landmarks: float [5, 2] (x, y) of the eyes, nose tip and mouth corners, or None for
      detectors that find boxes only (the crop is then a margin square around the box).
    score: the detector's confidence (1.0 where it gives none).
  """

  box: tuple[float, float, float, float]
  landmarks: Optional[np.ndarray] = None
  score: float = 1.0


class Detector(abc.ABC):
  """A face detector. Subclasses set the class attributes and implement `detect`.

  Attributes:
    name: the registry name (`facetriplet.data.detectors.NAMES`), also the crop method recorded
      for crops it made.
    batch_size: photos worth sending in one `detect` call (ingest, galleries); 1 = no gain.
    uses_tensorflow: runs TensorFlow ops, so a worker process among one per core limits
      TensorFlow to one thread (`facetriplet.data.detectors.limit_threads`).
    fallback: the detector tried on photos where this one finds nothing, or None.
    whole_image: finds nothing by design: the centred square of the photo is the intended crop
      (pre-cropped sets), not a fallback.
    turned_min_score: the least score of a face found only in the photo turned on its side or
      upside down (`CropSettings.try_turned`): such faces are held to a higher bar than upright
      ones, as the search runs only where none was found upright (blurred or faceless photos
      yield face-like blobs there; benchmarks/bench_turned.py). None: not searched turned (a
      detector whose score does not say how sure it is).
  """

  name: ClassVar[str] = ""
  batch_size: ClassVar[int] = 1
  uses_tensorflow: ClassVar[bool] = False
  fallback: ClassVar[Optional[str]] = None
  whole_image: ClassVar[bool] = False
  turned_min_score: ClassVar[Optional[float]] = None

  @abc.abstractmethod
  def detect(
    self, images: Sequence[np.ndarray], min_face: float = MIN_FACE_FRACTION
  ) -> list[list[Face]]:
    """Every face of each RGB uint8 image [H, W, 3], in the image's pixels.

    Args:
      images: decoded photos (any sizes).
      min_face: smallest face wanted, as a fraction of the image's short side (a hint: a
        detector may find smaller ones; the cropper filters where it matters).

    Returns:
      One list of `Face`s per image (empty where none was found), in no particular order.
    """

  def find(
    self, images: Sequence[np.ndarray], min_face: float = MIN_FACE_FRACTION
  ) -> list[list[Face]]:
    """`detect`'s faces, with the costly last step (e.g. placing landmarks) left for `finish`:
    the cropper finishes only the faces it crops. By default, `detect`."""
    return self.detect(images, min_face)

  def finish(self, rgb: np.ndarray, faces: Sequence[Face]) -> list[Face]:
    """Faces of `rgb` from `find`, as `detect` gives them. By default, as they are."""
    del rgb
    return list(faces)


def downscale(image: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> tuple[np.ndarray, float]:
  """A copy no larger than `max_side` for detection, and the factor applied (<= 1)."""
  h, w = image.shape[:2]
  scale = min(1.0, max_side / max(h, w))
  if scale < 1.0:
    image = cv2.resize(
      image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
  return image, scale
