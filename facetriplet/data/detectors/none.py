"""No detection, for sets that are already face crops (ORL, drawn faces): the centred square of
each photo is its face."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from facetriplet.data.detectors import base


class WholeImage(base.Detector):
  """Finds nothing by design; the cropper takes the centred square as the intended crop."""

  name = "none"
  whole_image = True

  def detect(
    self, images: Sequence[np.ndarray], min_face: float = base.MIN_FACE_FRACTION
  ) -> list[list[base.Face]]:
    return [[] for _ in images]


DETECTOR = WholeImage
