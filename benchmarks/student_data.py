"""The student's training people: the training identities of lfw_2to4 and celeba_199 (the ingest
tool's seed-0 split, 20% val) as one folder of identity folders (links to the photos), so that
their val people and ORL stay unseen for scoring (bench_pretrained).

  python -m benchmarks.student_data --output=runs/data/student_people
  facetriplet-build-tfrecords --input=runs/data/student_people --output=runs/data/student_dlib \
      --crop_preset=dlib150 --pick=center --val_fraction=0.05
"""

from __future__ import annotations

import argparse
import os

from benchmarks.bench_pretrained import SETS


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--output", required=True)
  parser.add_argument("--sets", default="lfw,celeba")
  args = parser.parse_args()
  from facetriplet.data import layouts, shard_plan  # pylint: disable=g-import-not-at-top

  photos = people = 0
  for name in args.sets.split(","):
    root, layout, _, val_fraction, _ = SETS[name]
    entries = layouts.scan_images(root, layout).entries
    split = shard_plan.assign_splits(sorted({e.identity for e in entries}), val_fraction, 0)
    for e in entries:
      if split[e.identity] != "train":
        continue
      folder = os.path.join(args.output, f"{name}__{e.identity}")
      if not os.path.isdir(folder):
        os.makedirs(folder)
        people += 1
      link = os.path.join(folder, os.path.basename(e.path))
      if not os.path.lexists(link):
        os.symlink(os.path.abspath(e.path), link)
      photos += 1
  print(f"{photos} photos of {people} new identity folders in {args.output}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
