"""Verification on held-out people: TAR at FAR 1e-1/1e-2/1e-3, EER, AUC and the threshold a user
would pass as --min_score, for the learned model and the classical descriptors.

Runs `facetriplet.evaluation.evaluate` (what facetriplet-evaluate runs) in leave-one-out mode on
the val split of a TFRecord folder (people never seen in training): every same-person pair of
the split is a positive, a seeded sample of different-person pairs the negatives
(`verification.verification_pairs`).

  python -m benchmarks.bench_verification --model=<export> --data=<lfw tfrecords> \\
      --features=embedding,hog,lbp,pixels --name=verification_lfw

It writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from benchmarks import common
from facetriplet.evaluation import evaluation


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--model", required=True, help="export folder")
  parser.add_argument("--data", required=True, help="TFRecord folder (or labelled folder)")
  parser.add_argument("--splits", default="val")
  parser.add_argument("--features", default="embedding,hog,lbp,pixels")
  parser.add_argument("--name", default="verification_lfw")
  parser.add_argument("--title", default="LFW held-out people")
  args = parser.parse_args()
  out = tempfile.mkdtemp(prefix="bench_verification_")
  report = evaluation.evaluate(
    args.features.split(","),
    out,
    model_dir=args.model,
    data=args.data,
    leave_one_out=True,
    grid_queries=0,
    progress=False,
    splits=args.splits.split(","),
    workers=os.cpu_count() or 1,
  )
  rows = []
  for name, v in report["verification"].items():
    r = report["results"][name]
    rows.append(
      [
        name,
        v["num_positive_pairs"],
        v["num_negative_pairs"],
        *(
          None if v.get(f"tar@far={f}") is None else round(v[f"tar@far={f}"], 4)
          for f in ("0.1", "0.01", "0.001")
        ),
        round(v["eer"], 4),
        round(v["auc"], 4),
        None if v.get("threshold@far=0.01") is None else round(v["threshold@far=0.01"], 4),
        round(r["top1"], 4),
        round(r["map@r"], 4),
      ]
    )
    print(rows[-1], flush=True)
  common.write_result(
    args.name,
    f"Verification: {args.title} (split {args.splits}, leave-one-out pairs)",
    [
      "features",
      "positive pairs",
      "negative pairs",
      "TAR@FAR=0.1",
      "TAR@FAR=0.01",
      "TAR@FAR=0.001",
      "EER",
      "AUC",
      "threshold@FAR=0.01",
      "top1",
      "map@r",
    ],
    rows,
    f"Model: {args.model}. Data: {args.data}. Pairs: every same-person pair of the split and a "
    "seeded sample of different-person pairs (verification.verification_pairs). The threshold at "
    "FAR 0.01 is the cosine to pass as --min_score / min_score= for a 1 % false-accept rate "
    "on people like these.",
  )


if __name__ == "__main__":
  main()
