"""Which photo goes into which shard, decided from the file list alone (nothing decoded).

Because the plan depends only on the listing and the settings, a re-run with the same inputs
computes the same plan, so it can skip the shards already complete and decode only the missing
ones. Rules:

* labels: sorted identity names → 0..N-1 (flat layout: every photo label -1, identity "");
* splits: CelebA partitions when given (train/val/test); otherwise identities (never photos) are
  shuffled with `seed` and `round(N * val_fraction)` of them go to `val` (at least one when the
  fraction is above 0, at least one left for `train`); flat layout: one split `all`;
* shards: within a split identities keep label order, each identity's photos contiguous and never
  split across shards; consecutive identities are packed into `num_shards` shards of about equal
  photo count (auto: one shard per `RECORDS_PER_SHARD` photos, at least one, at most one per
  identity).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
from typing import Any, Mapping, Sequence

from facetriplet.data import tfrecords
from facetriplet.errors import UserError
from facetriplet.data.layouts import ImageEntry

RECORDS_PER_SHARD = 1500
SPLIT_ORDER = ("train", "val", "test", "all")


@dataclasses.dataclass(frozen=True)
class PlannedShard:
  """One output shard: split, file name, photos in write order as (entry, label, identity)."""

  split: str
  file: str
  items: tuple[tuple[ImageEntry, int, str], ...]


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  labels: dict[str, int]
  shards: tuple[PlannedShard, ...]

  def split_names(self) -> list[str]:
    return sorted({s.split for s in self.shards}, key=_split_key)


def _split_key(split: str) -> tuple[int, str]:
  return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def assign_splits(identities: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
  """{identity: 'train'|'val'}, identity-disjoint and reproducible for a given seed."""
  if not 0 <= val_fraction < 1:
    raise UserError(f"val_fraction={val_fraction} must be in [0, 1)")
  ids = sorted(identities)
  order = list(ids)
  random.Random(seed).shuffle(order)
  n_val = int(round(len(ids) * val_fraction))
  if val_fraction > 0 and len(ids) >= 2:
    n_val = min(max(1, n_val), len(ids) - 1)
  val = set(order[:n_val])
  return {i: ("val" if i in val else "train") for i in ids}


def pack_groups(sizes: Sequence[int], num_shards: int) -> list[list[int]]:
  """Splits group indices 0..G-1, in order, into `num_shards` (<= G) non-empty runs of about equal
  total size."""
  total = sum(sizes)
  target = total / num_shards
  runs: list[list[int]] = []
  current: list[int] = []
  acc = 0
  for i, size in enumerate(sizes):
    current.append(i)
    acc += size
    left_shards = num_shards - len(runs)
    groups_left = len(sizes) - i - 1
    if left_shards > 1 and (acc >= target * (len(runs) + 1) or groups_left == left_shards - 1):
      runs.append(current)
      current = []
  runs.append(current)
  return runs


def make_plan(
  entries: Sequence[ImageEntry],
  layout: str,
  val_fraction: float = 0.2,
  seed: int = 0,
  num_shards: int = 0,
) -> ShardPlan:
  """Labels, splits and shard contents for `entries` (sorted by rel_path).

  Args:
    entries: the listing.
    layout: 'folders', 'celeba' or 'flat'.
    val_fraction: fraction of identities held out as `val` (ignored with CelebA partitions).
    seed: shuffles the identities before the split.
    num_shards: shards per split (capped at the split's identity count); 0 = automatic.

  Returns:
    ShardPlan.
  """
  if num_shards < 0:
    raise UserError(f"num_shards={num_shards} must be >= 0 (0 = automatic)")
  if layout == "flat":
    labels: dict[str, int] = {}
    groups = {"all": [[(e, -1, "")] for e in entries]}
  else:
    labels = {name: i for i, name in enumerate(sorted({e.identity for e in entries}))}
    if any(e.partition for e in entries):
      split_of = {(e.identity, e.partition): e.partition for e in entries}
    else:
      by_id = assign_splits(list(labels), val_fraction, seed)
      split_of = {(e.identity, e.partition): by_id[e.identity] for e in entries}
    members: dict[tuple[str, int], list] = {}
    for e in entries:
      split = split_of[(e.identity, e.partition)]
      label = labels[e.identity]
      members.setdefault((split, label), []).append((e, label, e.identity))
    groups = {}
    ordered = sorted(members.items(), key=lambda kv: (_split_key(kv[0][0]), kv[0][1]))
    for (split, _), items in ordered:
      groups.setdefault(split, []).append(items)
  shards = []
  for split in sorted(groups, key=_split_key):
    split_groups = groups[split]
    sizes = [len(g) for g in split_groups]
    count = num_shards or math.ceil(sum(sizes) / RECORDS_PER_SHARD)
    count = max(1, min(count, len(split_groups)))
    for index, run in enumerate(pack_groups(sizes, count)):
      items = tuple(item for g in run for item in split_groups[g])
      shards.append(PlannedShard(split, tfrecords.shard_name(split, index, count), items))
  return ShardPlan(labels, tuple(shards))


def fingerprint(entries: Sequence[ImageEntry], settings: Mapping[str, Any]) -> str:
  """sha256 of the settings and of every input file's name, identity, partition, size and mtime."""
  h = hashlib.sha256()
  h.update(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
  for e in entries:
    try:
      st = os.stat(e.path)
      stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
      stamp = (-1, -1)
    h.update(json.dumps([e.rel_path, e.identity, e.partition, *stamp]).encode("utf-8"))
  return h.hexdigest()
