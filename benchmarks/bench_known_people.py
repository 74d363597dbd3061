r"""Fine-tuning for the people it learns: new photos of the people trained on, against new people.

`configs/celeba.py` is scored on people it never saw (bench_pretrained, bench_finetune). A user who
fine-tunes on labelled photos of their own people usually searches for those same people. This
benchmark asks both questions at once, on celeba_199's 159 training people (bench_pretrained's
identity split): each person's photos, in name order, go alternately to half A and half B. The
config fine-tunes the pretrained start on half A (its own identity split, seed 1: 127 people to
train on, 32 held out, whose half-A photos only feed the run's per-epoch val metrics), for each
--epochs, and the last checkpoint is exported. Then the start and each fine-tuned export embed half
B: photos no run trained on, of the 127 people trained on ("known") and of the 32 that were not
("new"); leave-one-out within each group, test-time flip. Differences to the start with
bench_finetune's paired bootstrap over people. Runs are kept under --workdir_root and reused when
finished.

  python -m benchmarks.bench_known_people --epochs=2,6,12,30

It writes benchmarks/results/finetune_known_people.json (--name_prefix).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from benchmarks import bench_finetune, bench_pretrained, bench_quality, common

CONFIG = os.path.join(bench_pretrained.REPO, "configs", "celeba.py")


def halves(paths: Sequence[str], identities: Sequence[str], root: str) -> tuple[str, str]:
  """Folders of links root/half_{a,b}/<identity>/<file>: each person's photos alternately (made
  anew each run, so links to photos no longer in the set do not linger)."""
  by_person = collections.defaultdict(list)
  for path, identity in zip(paths, identities):
    by_person[identity].append(path)
  out = (os.path.join(root, "half_a"), os.path.join(root, "half_b"))
  for folder in out:
    shutil.rmtree(folder, ignore_errors=True)
  for identity, photos in by_person.items():
    for i, path in enumerate(sorted(photos)):
      folder = os.path.join(out[i % 2], identity)
      os.makedirs(folder, exist_ok=True)
      link = os.path.join(folder, os.path.basename(path))
      os.symlink(os.path.abspath(path), link)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", default="2,6,12,30", help="fine-tuning runs, comma-separated")
  parser.add_argument("--resamples", type=int, default=10000)
  parser.add_argument(
    "--workdir_root", default=os.path.join(bench_pretrained.DEFAULT_ROOT, "known_people")
  )
  parser.add_argument("--name_prefix", default="finetune")
  args = parser.parse_args(argv)
  import keras  # pylint: disable=g-import-not-at-top

  from facetriplet import config_files  # pylint: disable=g-import-not-at-top
  from facetriplet.data import faces, ingest, tfrecords  # pylint: disable=g-import-not-at-top
  from facetriplet.search import embedder, gallery  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export, train  # pylint: disable=g-import-not-at-top

  root = os.path.abspath(args.workdir_root)
  start = embedder.load_embedder(export.resolve_model("dlib_resnet"), batch_size=64)
  crop = dict(start.metadata["crop"], try_turned=True)
  celeba = bench_pretrained.records(bench_pretrained.DEFAULT_ROOT, "celeba", crop, "on")
  half_a, half_b = halves(*bench_pretrained.set_photos(celeba, "train"), root)
  settings = faces.CropSettings.from_dict(crop)
  records = {}
  for name, folder, val_fraction in (("a", half_a, 0.2), ("b", half_b, 0.0)):
    records[name] = os.path.join(root, f"records_{name}")
    ingest.build_tfrecords(
      folder,
      records[name],
      layout="folders",
      crop=settings,
      val_fraction=val_fraction,
      seed=1,
      progress=False,
      overwrite=True,
    )
  shard_set = tfrecords.ShardSet.open(records["a"])
  known = {r["identity"] for r in tfrecords.read_records(shard_set.shards("train"))}

  def embed_b(extractor):
    emb, kept, _ = gallery.embed_gallery(extractor, records["b"], splits=["train"], progress=False)
    return emb, np.array([e.identity for e in kept])

  start_emb, labels = embed_b(start)
  groups = {"known": np.isin(labels, sorted(known)), "new": ~np.isin(labels, sorted(known))}
  start_terms = {g: bench_finetune.per_query(start_emb[m], labels[m]) for g, m in groups.items()}
  rows = []
  for epochs in [int(e) for e in args.epochs.split(",") if e.strip()]:
    config = config_files.load_config(CONFIG)
    config.data.tfrecord_dir = records["a"]
    config.train.epochs = epochs
    # The records' fingerprint too: a run trained on other crops of half A is not reused.
    key = json.dumps([config.to_dict(), shard_set.manifest.get("fingerprint")], default=str)
    workdir = os.path.join(root, f"celeba_e{epochs}_{hashlib.sha256(key.encode()).hexdigest()[:8]}")
    if bench_quality.run_finished(workdir):
      bench_pretrained.log(f"{epochs} epochs: reusing the finished run in {workdir}")
    else:
      bench_pretrained.log(f"{epochs} epochs: fine-tuning in {workdir}")
      keras.backend.clear_session()
      train.train_and_evaluate(config, workdir)
    emb, model_labels = embed_b(
      embedder.load_embedder(bench_quality.export_workdir(workdir, "last"), batch_size=64)
    )
    if list(model_labels) != list(labels):
      raise SystemExit(f"{workdir}: the export embedded other photos of half B than the start")
    for group, mask in groups.items():
      terms = bench_finetune.per_query(emb[mask], labels[mask])
      row = [epochs, group, len(set(labels[mask])), int(np.sum(np.isfinite(terms[0])))]
      for a, b in zip(start_terms[group], terms):
        row += bench_finetune.compare_row(a, b, labels[mask], args.resamples)
      bench_pretrained.log(f"{epochs} epochs, {group} people: {row}")
      rows.append(row)
  common.write_result(
    f"{args.name_prefix}_known_people",
    "Fine-tuning for the people it learns: new photos of known people, and new people",
    bench_finetune.columns(["epochs", "group", "people", "queries"]),
    rows,
    notes=(
      f"celeba_199's 159 training people, each person's photos alternately in half A and half B "
      f"({len(labels)} photos in B); configs/celeba.py fine-tunes the pretrained dlib_resnet on "
      f"half A ({len(known)} people; the last checkpoint is scored) for the given epochs; scored "
      "on half B, leave-one-out within 'known' (the people trained on) and 'new' (the others); "
      "queries are the photos whose person has another photo in B. diff = model - start; 95% "
      "interval and P(ahead / behind) (shares of resamples with diff > 0 and < 0; the rest are "
      f"ties) over {args.resamples} resamples of the people (seed 0)."
    ),
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
