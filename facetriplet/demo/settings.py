"""The demo's settings: the generated set's (`GENERATED`, `QUICK`), and for a user's identity
folders (`make demo DATA=`) a plan sized for a few CPU minutes.

`plan_for_data` picks K and the shipped config from the median photo count, holds out at least two
identities, and sets the epochs so training sees about TRAIN_IMAGES_BUDGET images. `settings`
turns the tool's options into the run's settings (recorded in demo.json).
"""

from __future__ import annotations

import importlib.util
import statistics
import collections
import os
from typing import Any, Optional

from facetriplet.data import detectors, layouts
from facetriplet.errors import UserError

# Settings whose change invalidates the data (everything is redone); other changes redo training
# and what follows.
DATA_KEYS = (
  "data",
  "identities",
  "photos",
  "photo_size",
  "crop_size",
  "detector",
  "val_fraction",
  "seed",
)
# The generated set: 60 identities x 12 photos (48 train / 12 held out), 64 px crops, the ORL
# config (ResNet-18-style, half width, 64 px, P=8 x K=4, colour jitter off: colour is identity in
# drawn faces) for 25 epochs at 2.5x its learning rate (measured on 2 busy cores: ~9 s an epoch;
# val mAP@R 0.03 untrained -> ~0.44, raw pixels 0.11). Quick: the smoke variant on a tiny set.
GENERATED = {
  "crop_preset": None,
  "identities": 60,
  "photos": 12,
  "photo_size": 128,
  "crop_size": 64,
  "epochs": 25,
  "val_fraction": 0.2,
  "config": "orl",
  "p": 8,
  "k": 4,
  "base_lr": 0.01,
}
QUICK = {
  "crop_preset": None,
  "identities": 8,
  "photos": 4,
  "photo_size": 64,
  "crop_size": 32,
  "epochs": 2,
  "val_fraction": 0.25,
  "config": "orl:smoke",
  "p": 4,
  "k": 2,
  "base_lr": None,
}

TRAIN_IMAGES_BUDGET = 12000  # images seen in training for --data (~3 min on 2 busy CPU cores)
PRETRAINED_NETWORK = "dlib_resnet"  # what --model takes; the extra below installs its weights
PRETRAINED_CONFIG = "celeba"  # fine-tunes PRETRAINED_NETWORK
FINETUNE_IMAGES_BUDGET = 3000  # images seen fine-tuning dlib's ResNet (~15 images/s on 2 cores)


def pretrained_installed() -> bool:
  """Whether the 'pretrained' extra (dlib's face ResNet weights) is installed."""
  return importlib.util.find_spec("face_recognition_models") is not None


def plan_for_data(
  counts: dict[str, int], epochs: Optional[int] = None, pretrained: Optional[bool] = None
) -> dict[str, Any]:
  """Settings for identity folders with these photo counts: K and the config follow the median
  photo count, at least 2 identities are held out, and training sees about TRAIN_IMAGES_BUDGET
  images (a few minutes on a 2-core CPU). With the pretrained network (`pretrained`, default:
  whether its extra is installed) the run fine-tunes it (configs/celeba.py, dlib150 chips) for
  about FINETUNE_IMAGES_BUDGET images instead of training from scratch.

  Raises:
    UserError: fewer than 4 identities with 2+ photos.
  """
  usable = sorted(n for n in counts.values() if n >= 2)
  if len(usable) < 4:
    raise UserError(
      f"the data has {len(usable)} identities with 2 or more photos; the demo needs "
      "at least 4 (one sub-folder of photos per identity)"
    )
  val_fraction = min(0.5, max(0.2, 2.0 / len(usable)))
  train_ids = max(2, int(len(usable) * (1 - val_fraction)))
  k = min(4, max(2, int(statistics.median(usable)) // 2))
  train_images = max(1, int(sum(usable) * (1 - val_fraction)))
  if pretrained is None:
    pretrained = pretrained_installed()
  if pretrained:
    # Fine-tuning a network that already knows faces: a few passes at a low learning rate.
    if not epochs:
      epochs = min(10, max(2, round(FINETUNE_IMAGES_BUDGET / train_images)))
    return {
      "identities": len(counts),
      "photos": int(statistics.median(usable)),
      "crop_size": 150,
      "crop_preset": "dlib150",
      "epochs": int(epochs),
      "val_fraction": round(val_fraction, 3),
      "config": PRETRAINED_CONFIG,
      "p": min(train_ids, 16),
      "k": k,
      "base_lr": None,
    }
  if not epochs:
    epochs = min(60, max(3, round(TRAIN_IMAGES_BUDGET / train_images)))
  # 2-4 photos a person: the LFW config (P=48 x K=2); more: the ORL one (P=8 x K=4).
  config, p = ("lfw", min(train_ids, 48)) if k == 2 else ("orl", min(train_ids, 8))
  return {
    "identities": len(counts),
    "photos": int(statistics.median(usable)),
    "crop_size": 64,
    "crop_preset": None,
    "epochs": int(epochs),
    "val_fraction": round(val_fraction, 3),
    "config": config,
    "p": p,
    "k": k,
    "base_lr": None,
  }


def _count_photos(data: str) -> dict[str, int]:
  return dict(collections.Counter(entry.identity for entry in layouts.list_images(data, "folders")))


def settings(
  data: Optional[str],
  quick: bool = False,
  detector: Optional[str] = None,
  epochs: Optional[int] = None,
  identities: Optional[int] = None,
  photos: Optional[int] = None,
  seed: int = 0,
) -> dict[str, Any]:
  """The run's settings: the generated set's, or a plan for the identity folders `data`.

  Raises:
    UserError: `data` is not a folder of identity folders with enough people.
  """
  if data:
    data = os.path.abspath(os.path.expanduser(data))
    if not os.path.isdir(data):
      raise UserError(
        f"--data={data} is not a folder: pass a folder with one sub-folder of photos per identity"
      )
    s = plan_for_data(_count_photos(data), 2 if quick else None)
    s.update(
      data=data,
      detector=detector or detectors.DEFAULT,
      config=s["config"] + (":smoke" if quick else ""),
    )
  else:
    s = dict(QUICK if quick else GENERATED)
    s.update({k: v for k, v in (("identities", identities), ("photos", photos)) if v})
    s.update(data=None, detector=detector or "none")  # Haar finds 12% of drawn faces
  s.update(epochs=epochs or s["epochs"], quick=bool(quick), seed=seed)
  return s
