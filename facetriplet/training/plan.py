"""Training settings for a user's identity folders, sized for a few CPU minutes (`make demo DATA=`).

`plan_for_data` picks K and the shipped config from the median photo count, holds out at least two
identities, and sets the epochs so training sees about TRAIN_IMAGES_BUDGET images.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

from facetriplet.errors import UserError

TRAIN_IMAGES_BUDGET = 12000  # images seen in training for --data (~3 min on 2 busy CPU cores)


def plan_for_data(counts: dict[str, int], epochs: Optional[int] = None) -> dict[str, Any]:
  """Settings for identity folders with these photo counts: K and the config follow the median
  photo count, at least 2 identities are held out, and training sees about TRAIN_IMAGES_BUDGET
  images (a few minutes on a 2-core CPU).

  Raises:
    UserError: fewer than 4 identities with 2+ photos.
  """
  usable = sorted(n for n in counts.values() if n >= 2)
  if len(usable) < 4:
    raise UserError(f"the data has {len(usable)} identities with 2 or more photos; the demo needs "
                    "at least 4 (one sub-folder of photos per identity)")
  val_fraction = min(0.5, max(0.2, 2.0 / len(usable)))
  train_ids = max(2, int(len(usable) * (1 - val_fraction)))
  k = min(4, max(2, int(statistics.median(usable)) // 2))
  train_images = max(1, int(sum(usable) * (1 - val_fraction)))
  if not epochs:
    epochs = min(60, max(3, round(TRAIN_IMAGES_BUDGET / train_images)))
  # 2-4 photos a person: the LFW config (P=48 x K=2); more: the ORL one (P=8 x K=4).
  config, p = ("lfw", min(train_ids, 48)) if k == 2 else ("orl", min(train_ids, 8))
  return {"identities": len(counts), "photos": int(statistics.median(usable)), "crop_size": 64,
          "epochs": int(epochs), "val_fraction": round(val_fraction, 3), "config": config,
          "p": p, "k": k, "base_lr": None}
