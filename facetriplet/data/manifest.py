"""What an ingest run reports: `manifest.json`, assembled from the shard plan and each shard's
result file (`<output>/.facetriplet_build/<shard>.json`: counts, groups, no-face and rejected
photos, crop methods), and the `IngestSummary` the tool prints. The local pool and the Beam
pipeline both end here (`ingest.finish_build`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from facetriplet.data import detectors, layouts, shard_plan, tfrecords

FORMAT_VERSION = 1
STATE_DIR = ".facetriplet_build"  # per-shard result files, in the output folder


@dataclasses.dataclass
class IngestSummary:
  """What a build did. Dataset totals come from the manifest; `decoded`, `seconds` and
  `images_per_second` describe this run only (a resumed run decodes only missing shards)."""

  output: str
  listed: int = 0
  decoded: int = 0
  written: int = 0
  no_face: int = 0
  turned: int = 0  # faces found only in the photo turned on its side or upside down
  fallback: int = 0  # crops made by the detector's fallback (it found no face, the fallback did)
  rejected: int = 0
  ignored_files: int = 0
  identities: int = 0
  single_photo_identities: int = 0
  empty_identities: int = 0
  shards_written: int = 0
  shards_skipped: int = 0
  workers: int = 1
  seconds: float = 0.0
  engine: str = "local"  # or the Beam runner that decoded and wrote the shards
  splits: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
  rejected_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def images_per_second(self) -> float:
    return self.decoded / self.seconds if self.seconds > 0 else 0.0

  def format(self) -> str:
    """A few human lines for the tool to print."""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_by_reason.items()))
    splits = ", ".join(
      f"{k}: {v['images']} images / {v['identities']} identities / {v['shards']} shards"
      for k, v in self.splits.items()
    )
    return "\n".join(
      [
        f"output: {self.output}",
        f"images listed {self.listed}, read this run {self.decoded}, written {self.written}, "
        f"no face {self.no_face}, rejected {self.rejected}"
        + (f" ({reasons})" if reasons else "")
        + (f", found by the fallback detector {self.fallback}" if self.fallback else "")
        + (f", found turned (on its side or upside down) {self.turned}" if self.turned else ""),
        f"identities {self.identities}, single-photo identities (unusable as triplet anchors) "
        f"{self.single_photo_identities}, empty identity folders {self.empty_identities}, "
        f"other files ignored {self.ignored_files}",
        f"splits: {splits}",
        f"shards written {self.shards_written}, skipped (already complete) {self.shards_skipped}",
        f"time {self.seconds:.1f} s, {self.images_per_second:.1f} images/s, "
        + (f"{self.workers} worker(s)" if self.engine == "local" else f"Beam {self.engine}")
        + f"; details in {os.path.join(self.output, tfrecords.MANIFEST)}",
      ]
    )


def assemble(
  plan: shard_plan.ShardPlan,
  listing: layouts.ImageListing,
  settings: dict[str, Any],
  fingerprint: str,
  output_dir: str,
) -> dict[str, Any]:
  """The manifest, from the plan and every shard's result file."""
  splits: dict[str, dict[str, Any]] = {}
  identity_counts: dict[str, int] = {}
  no_face: list[str] = []
  turned: list[str] = []
  methods: dict[str, int] = {}
  rejected = [{"path": p, "reason": r, "detail": ""} for p, r in listing.missing]
  rejected += [
    {"path": p, "reason": r, "detail": ""} for p, r in listing.ignored if layouts.is_image_file(p)
  ]
  for shard in plan.shards:
    with open(os.path.join(output_dir, STATE_DIR, shard.file + ".json"), encoding="utf-8") as f:
      info = json.load(f)
    split = splits.setdefault(
      shard.split, {"images": 0, "identities": 0, "shards": [], "_ids": set()}
    )
    split["images"] += info["records"]
    split["_ids"].update(label for label, _ in info["groups"] if label >= 0)
    split["shards"].append(
      {"file": shard.file, "records": info["records"], "groups": info["groups"]}
    )
    for identity, count in info["identity_counts"].items():
      identity_counts[identity] = identity_counts.get(identity, 0) + count
    no_face += info["no_face"]
    turned += info.get("turned", [])
    for method, count in info.get("methods", {}).items():
      methods[method] = methods.get(method, 0) + count
    rejected += info["rejected"]
  for split in splits.values():
    split["identities"] = len(split.pop("_ids"))
  for identity in plan.labels:
    identity_counts.setdefault(identity, 0)
  return {
    "version": FORMAT_VERSION,
    "layout": settings["layout"],
    "input": settings["input"],
    "seed": settings["seed"],
    "val_fraction": settings["val_fraction"],
    "crop": settings["crop"],
    "fingerprint": fingerprint,
    "labels": plan.labels,
    "splits": splits,
    "identity_counts": identity_counts,
    "single_photo_identities": sorted(i for i, c in identity_counts.items() if c == 1),
    "empty_identities": sorted(listing.empty_identities),
    "no_face": sorted(no_face),
    # Photos whose face was found only with the photo turned (`CropSettings.try_turned`).
    "turned": sorted(turned),
    # How each written crop was made (faces.METHODS: the detector that found the face, its
    # fallback, or 'center'). Boxes and landmarks are in the records.
    "crop_methods": dict(sorted(methods.items())),
    "rejected": sorted(rejected, key=lambda r: r["path"]),
    "ignored": [
      {"path": p, "reason": r} for p, r in listing.ignored if not layouts.is_image_file(p)
    ],
    "images_listed": len(listing.entries),
  }


def summarize(
  manifest: dict[str, Any],
  output_dir: str,
  listed: int,
  decoded: int,
  shards_written: int,
  shards_skipped: int,
  workers: int,
  seconds: float,
  engine: str = "local",
) -> IngestSummary:
  reasons: dict[str, int] = {}
  for r in manifest["rejected"]:
    reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
  return IngestSummary(
    output=output_dir,
    listed=listed,
    decoded=decoded,
    written=sum(s["images"] for s in manifest["splits"].values()),
    no_face=len(manifest["no_face"]),
    turned=len(manifest.get("turned", [])),
    fallback=_fallback_count(manifest),
    rejected=len(manifest["rejected"]),
    ignored_files=len(manifest["ignored"]),
    identities=sum(1 for c in manifest["identity_counts"].values() if c > 0),
    single_photo_identities=len(manifest["single_photo_identities"]),
    empty_identities=len(manifest["empty_identities"]),
    shards_written=shards_written,
    shards_skipped=shards_skipped,
    workers=workers,
    seconds=seconds,
    engine=engine,
    splits={
      k: {"images": v["images"], "identities": v["identities"], "shards": len(v["shards"])}
      for k, v in manifest["splits"].items()
    },
    rejected_by_reason=reasons,
  )


def _fallback_count(manifest: dict[str, Any]) -> int:
  """Crops made by the detector's fallback detector (from `crop_methods`)."""
  fallback = detectors.detector_class(manifest["crop"]["detector"]).fallback
  return int(manifest.get("crop_methods", {}).get(fallback, 0)) if fallback else 0
