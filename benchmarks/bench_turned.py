r"""Faces found only in the photo turned on its side or upside down (`CropSettings.try_turned`):
how sure each detector is of the real ones and of false ones, and what the search costs.

- Turned faces: the photos of celeba_199 in which YuNet finds no upright face (people lying down,
  heads tilted past 45 degrees; 17 of 4,120, 16 of them found turned). For each detector, the
  score of the face it is surest of in the photo's turned copies (`turns.best_turn`).
- Faceless photos: the first --faceless photos of celeba_199, resized to 640 x 480 and blurred
  (Gaussian, sigma 25 px) until no face can be made out, which keeps face-like blobs of skin and
  hair: a hard case for a detector. Those in which the detector finds no upright face are searched
  turned; every face found there is false.
- Cost: ms per photo of `FaceCropper.crop` with try_turned off and on, on those faceless photos
  (the search runs only where no face is found upright, so photos with an upright face cost the
  same), median of --rounds rounds, one process.

A face found only turned is kept when its score reaches the detector's `turned_min_score`; the
table gives how many real and false faces reach it, and the score ranges.

  python -m benchmarks.bench_turned                   # ~5 min on 2 cores
  python -m benchmarks.bench_turned --detectors=yunet --faceless=100

Writes benchmarks/results/turned.json.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time
from typing import Optional, Sequence

from benchmarks import bench_pretrained, common

log = bench_pretrained.log

CELEBA = os.path.join(bench_pretrained.DATA, "celeba_199", "img_celeba")


def _scores(detector, photos) -> list[Optional[float]]:
  """Per photo: the best score of a face found only turned; -1 where none is found turned;
  None where a face is found upright (such a photo is never searched turned)."""
  from facetriplet.data import turns  # pylint: disable=g-import-not-at-top
  from facetriplet.data.detectors import MIN_FACE_FRACTION  # pylint: disable=g-import-not-at-top

  out = []
  for rgb in photos:
    if detector.find([rgb])[0]:
      out.append(None)
      continue
    best = turns.best_turn(detector, rgb, MIN_FACE_FRACTION, min_score=0.0)
    out.append(-1.0 if best is None else max(f.score for f in best[2]))
  return out


def _range(values: Sequence[float]) -> str:
  return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--detectors", default="yunet,mtcnn")
  parser.add_argument("--faceless", type=int, default=120)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  import cv2  # pylint: disable=g-import-not-at-top

  from facetriplet.data import detectors, faces  # pylint: disable=g-import-not-at-top

  paths = sorted(glob.glob(os.path.join(CELEBA, "*.jpg")))
  yunet = detectors.create("yunet")
  turned = []
  for p in paths:
    rgb = faces.load_rgb(p)
    if not yunet.find([rgb])[0]:
      turned.append(rgb)
  log(f"{len(turned)} of {len(paths)} celeba photos without an upright face (YuNet)")
  faceless = [
    cv2.GaussianBlur(cv2.resize(faces.load_rgb(p), (640, 480)), (0, 0), 25)
    for p in paths[: args.faceless]
  ]
  rows = []
  for name in [d.strip() for d in args.detectors.split(",") if d.strip()]:
    detector = detectors.create(name)
    bar = detector.turned_min_score
    real = [s for s in _scores(detector, turned) if s is not None and s >= 0]
    searched = _scores(detector, faceless)
    false = [s for s in searched if s is not None and s >= 0]
    n_searched = sum(1 for s in searched if s is not None)
    scores = {k: sorted(round(s, 3) for s in v) for k, v in (("real", real), ("false", false))}
    log(f"{name} scores: {scores}")
    cost = {}
    for _ in range(args.rounds):
      for on in (False, True):
        cropper = faces.FaceCropper(faces.CropSettings(detector=name, try_turned=on))
        cropper.crop(faceless[0])  # warm-up
        start = time.perf_counter()
        for rgb in faceless:
          cropper.crop(rgb)
        cost.setdefault(on, []).append(1000 * (time.perf_counter() - start) / len(faceless))
    kept = lambda s: bar is not None and s >= bar
    row = [
      name,
      "-" if bar is None else bar,
      f"{sum(map(kept, real))} / {len(turned)}",
      _range(real),
      f"{sum(map(kept, false))} / {n_searched}",
      _range(false),
      round(statistics.median(cost[False]), 1),
      round(statistics.median(cost[True]), 1),
    ]
    log(str(row))
    rows.append(row)
  common.write_result(
    "turned",
    "Faces found only in the photo turned (try_turned): real and false faces, and the cost",
    [
      "detector",
      "turned_min_score",
      "real turned faces kept (photos)",
      "scores of all found",
      "false faces kept (photos searched)",
      "scores of all found",
      "ms/photo faceless, try_turned off",
      "on",
    ],
    rows,
    notes=(
      f"Real: celeba_199 photos where YuNet finds no upright face; scores of the best face in "
      f"their turned copies. Faceless: the first {args.faceless} celeba_199 photos at 640 x 480, "
      "blurred (sigma 25 px); those without an upright face searched turned, every face found "
      "there false. Cost: FaceCropper.crop on the faceless photos (decoded, in memory), median "
      f"of {args.rounds} rounds."
    ),
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
