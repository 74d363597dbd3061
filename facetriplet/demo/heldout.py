"""A competition-style query/gallery split of the held-out (val) identities of a TFRecord folder.

Of each val identity with 2+ photos, 1-3 photos (a quarter, at least one) become queries in
`query/`, the rest go to `gallery/`; both flat, with anonymous names, like a competition's. The
identities are in `labels.txt` ("<file> <identity>" lines, `layouts.read_labels`). The val
identities of the records never enter training, so this scores a model on people it never saw.
"""

from __future__ import annotations

import os
import random
import shutil

from facetriplet import atomic
from facetriplet.data import layouts, tfrecords
from facetriplet.errors import UserError


def split_heldout(tfrecord_dir: str, out_dir: str, seed: int = 0) -> dict[str, int]:
  """Writes heldout/{query,gallery}/ (flat, anonymous names, hard links or copies) and
  labels.txt from the val split; returns counts."""
  shard_set = tfrecords.ShardSet.open(tfrecord_dir)
  manifest = shard_set.manifest
  by_label = {label: name for name, label in shard_set.labels.items()}
  held = sorted(
    {
      by_label[label]
      for label, _ in (shard_set.split_groups("val") if "val" in shard_set.split_names else [])
    }
  )
  if not held:
    raise UserError(f"{tfrecord_dir} has no held-out (val) identities; use more identities")
  rejected = {r["path"] for r in manifest.get("rejected", [])}
  photos: dict[str, list] = {name: [] for name in held}
  for entry in layouts.list_images(shard_set.input_root, "folders"):
    if entry.identity in photos and entry.rel_path not in rejected:
      photos[entry.identity].append(entry)
  shutil.rmtree(out_dir, ignore_errors=True)
  for sub in ("query", "gallery"):
    os.makedirs(os.path.join(out_dir, sub))
  rng = random.Random(seed)
  # Queries are named round by round (one per identity, then the second ones, ...), so the first
  # rows of the grid show different people.
  picked = []  # (kind, round, identity index, entry)
  for n, name in enumerate(held):
    entries = photos[name]
    count = min(3, max(1, len(entries) // 4)) if len(entries) >= 2 else 0
    queries = rng.sample(range(len(entries)), count)
    for i, entry in enumerate(entries):
      picked.append(("q", queries.index(i), n, entry) if i in queries else ("g", 0, n, entry))
  lines, numbers = [], {"q": 0, "g": 0}
  for kind, _, _, entry in sorted(picked, key=lambda t: t[:3]):
    file_name = f"{kind}{numbers[kind]:05d}{os.path.splitext(entry.path)[1].lower()}"
    numbers[kind] += 1
    target = os.path.join(out_dir, "query" if kind == "q" else "gallery", file_name)
    try:
      os.link(entry.path, target)
    except OSError:
      shutil.copyfile(entry.path, target)
    lines.append(f"{file_name} {'_'.join(entry.identity.split())}\n")  # labels: no spaces
  atomic.write_text(os.path.join(out_dir, "labels.txt"), "".join(lines))
  return {"identities": len(held), "queries": numbers["q"], "gallery": numbers["g"]}
