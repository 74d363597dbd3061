r"""Face detectors side by side on the same photos: speed, found-face rate, landmark agreement
with MTCNN, and the retrieval quality of one network on each detector's crops.

Sets (as in bench_pretrained): lfw = lfw_2to4 val people (pick=center), celeba = celeba_199 val
people (in-the-wild photos, pick=largest), orl = orl_faces (all 400).

- Speed: photos/s of `FaceCropper` (detection + choosing + aligning the crop, decoded photos in
  memory) at batch 1 (`crop`, one photo a call) and batched (`crop_batch`, the detector's
  `batch_size`), on the first --speed_photos photos of each set, median of --rounds rounds, one
  process (TensorFlow and OpenCV at their default threads).
- Found: share of a set's photos where the detector itself found a face (its Haar fallback or the
  centred square made the rest), from the records' manifests.
- Landmarks: for photos where both found a face, the mean (and 95th percentile) distance of each
  of the five points to MTCNN's, measured in the 112-px ArcFace template frame of MTCNN's
  alignment (so a distance is in pixels of a 112-px aligned crop).
- Quality: leave-one-out top-1 / mAP@R of --model (default the pretrained dlib_resnet) on
  records cut with its crop settings and each detector (`ingest.build_tfrecords`,
  `gallery.embed_gallery`: what the tools do).

  python -m benchmarks.bench_detectors                      # ~15 min on 2 cores
  python -m benchmarks.bench_detectors --detectors=yunet,mtcnn --sets=lfw --speed_photos=50

Writes benchmarks/results/detectors.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks import bench_pretrained, common

POINTS = ("left eye", "right eye", "nose", "left mouth", "right mouth")


def _log(msg: str) -> None:
  print(f"[bench_detectors {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def speed(detector: str, photos: Sequence[np.ndarray], pick: str, rounds: int) -> dict[str, float]:
  """photos/s of FaceCropper at batch 1 and at the detector's batch size (median of rounds)."""
  from facetriplet.data import detectors, faces  # pylint: disable=g-import-not-at-top

  cropper = faces.FaceCropper(faces.CropSettings(detector=detector, pick=pick))
  batch = detectors.detector_class(detector).batch_size
  cropper.crop_batch(list(photos[:batch]))  # warm-up (loading, tracing)
  out = {}
  for name, size in (("batch 1", 1), ("batched", batch)):
    rates = []
    for _ in range(rounds):
      start = time.perf_counter()
      for i in range(0, len(photos), size):
        cropper.crop_batch(list(photos[i : i + size]))
      rates.append(len(photos) / (time.perf_counter() - start))
    out[name] = statistics.median(rates)
  return out


def landmarks(records_dir: str, split: str) -> dict[str, tuple[np.ndarray, str]]:
  """path -> (landmarks [5, 2], method) of the records of `split`."""
  from facetriplet.data import tfrecords  # pylint: disable=g-import-not-at-top

  shard_set = tfrecords.ShardSet.open(records_dir)
  out = {}
  for r in tfrecords.read_records(shard_set.shards(split)):
    points = np.asarray(r["landmarks"], np.float64)
    out[r["path"]] = (np.stack([points[:5], points[5:]], axis=1), str(r["method"]))
  return out


def agreement(
  ours: dict[str, tuple[np.ndarray, str]], reference: dict[str, tuple[np.ndarray, str]]
) -> tuple[int, np.ndarray]:
  """(photos compared, distances [n, 5]) of our points to MTCNN's in its 112-px template frame."""
  from facetriplet.data import alignment  # pylint: disable=g-import-not-at-top

  template = alignment.template_points("arcface112", 112, 0.0).astype(np.float64)
  dists = []
  for path, (points, method) in ours.items():
    ref, ref_method = reference.get(path, (None, ""))
    if ref is None or method == "center" or ref_method != "mtcnn" or not points.any():
      continue
    # Similarity transform MTCNN points -> template (least squares, as the aligner does).
    matrix = alignment.least_squares_similarity(ref, template)
    to_frame = lambda p, m=matrix: p @ m[:, :2].T + m[:, 2]  # noqa: E731
    dists.append(np.linalg.norm(to_frame(points) - to_frame(ref), axis=1))
  return len(dists), np.asarray(dists).reshape(-1, 5)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--detectors", default="mtcnn,yunet")
  parser.add_argument("--sets", default="lfw,celeba,orl")
  parser.add_argument("--model", default="dlib_resnet")
  parser.add_argument("--speed_photos", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--workdir_root", default=bench_pretrained.REPO + "/runs/bench_detectors")
  parser.add_argument("--name", default="detectors")
  args = parser.parse_args(argv)
  from facetriplet.data import faces  # pylint: disable=g-import-not-at-top
  from facetriplet.search import embedder  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  names = [d.strip() for d in args.detectors.split(",") if d.strip()]
  sets = [s.strip() for s in args.sets.split(",") if s.strip()]
  extractor = embedder.load_embedder(export.resolve_model(args.model), batch_size=64)
  crop = dict(extractor.metadata["crop"])
  root = os.path.abspath(args.workdir_root)
  rows, points_rows = [], []
  reference: dict[str, Any] = {}
  for s in sets:
    split = bench_pretrained.SETS[s][4]
    pick = bench_pretrained.SETS[s][2]
    recs = {d: bench_pretrained.records(root, s, dict(crop, detector=d)) for d in names}
    paths, _ = bench_pretrained.set_photos(recs[names[0]], split)
    photos = [faces.load_rgb(p) for p in paths[: args.speed_photos]]
    for d in names:
      marks = landmarks(recs[d], split)
      found = sum(1 for _, method in marks.values() if method == d)
      if d == "mtcnn":
        reference[s] = marks
      rate = speed(d, photos, pick, args.rounds)
      quality = bench_pretrained.score_export(extractor, recs[d], split)
      n, dists = agreement(marks, reference[s]) if s in reference else (0, np.zeros((0, 5)))
      mean = f"{dists.mean():.2f}" if n else "-"
      p95 = f"{np.percentile(dists.mean(axis=1), 95):.2f}" if n else "-"
      _log(
        f"{s} {d}: {rate} found {found}/{len(marks)} top-1 {quality['top1']:.4f} "
        f"mAP@R {quality['map@r']:.4f} landmarks {mean} px (n={n})"
      )
      rows.append(
        [
          s,
          d,
          round(rate["batch 1"], 1),
          round(rate["batched"], 1),
          f"{found}/{len(marks)}",
          mean,
          p95,
          round(float(quality["top1"]), 4),
          round(float(quality["map@r"]), 4),
        ]
      )
      if n and d != "mtcnn":
        points_rows.append([s, d] + [f"{v:.2f}" for v in dists.mean(axis=0)])
  common.write_result(
    args.name,
    "Face detectors on the same photos: speed, faces found, landmarks, retrieval quality",
    [
      "set",
      "detector",
      "photos/s batch 1",
      "photos/s batched",
      "found",
      "landmarks vs MTCNN (px @112)",
      "p95 (px)",
      f"top-1 ({args.model})",
      f"mAP@R ({args.model})",
    ],
    rows,
    notes=(
      f"Speed: FaceCropper on the first {args.speed_photos} decoded photos of each set, one "
      f"process, median of {args.rounds} rounds; batched = the detector's batch_size. Found: the "
      "detector itself found the face (else Haar fallback or centred square). Landmarks: mean "
      "distance of the five points to MTCNN's in the 112-px ArcFace frame of MTCNN's alignment "
      "(p95 over photos of the per-photo mean), photos where both found a face. Quality: "
      f"{args.model}'s crop settings ({json.dumps({k: crop[k] for k in ('template', 'crop_size')})}"
      ") with each detector, leave-one-out over the set's scored split. Per point (px): "
      + "; ".join(
        f"{r[0]} {r[1]}: " + ", ".join(f"{p} {v}" for p, v in zip(POINTS, r[2:]))
        for r in points_rows
      )
    ),
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
