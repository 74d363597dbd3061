"""Build a searchable gallery: embed a folder or TFRecords with the training crop, then index it.

A gallery is either a folder of images in any layout (`facetriplet.layouts`), cropped here with the
extractor's crop settings (the export's metadata, i.e. the training manifest's), or the TFRecords of
facetriplet-build-tfrecords, whose records already hold the crops. Both stream batch by batch.

Besides the ScaNN index folder (`facetriplet.index`), `gallery.json` is written into it: the
features and export used, the crop settings, the source, and the skipped / no-face files, so
`facetriplet-retrieve --index=DIR` knows which model to embed queries with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from absl import logging

from facetriplet import retrieval
from facetriplet.errors import UserError

GALLERY_FILE = "gallery.json"


def is_tfrecord_dir(path: str) -> bool:
  """True for a folder written by facetriplet-build-tfrecords (manifest + shards)."""
  return (os.path.isfile(os.path.join(path, "manifest.json"))
          and any(n.endswith(".tfrecord") for n in os.listdir(path)))


def _record_batches(tfrecord_dir: str, splits: Sequence[str], size: int, batch_size: int,
                    ) -> Iterator[list[tuple[Any, Any]]]:
  """Batches of (ImageEntry, CropResult) read from the shards, crops resized to `size`."""
  import cv2  # pylint: disable=g-import-not-at-top
  from facetriplet import tfrecords  # pylint: disable=g-import-not-at-top
  from facetriplet.faces import CropResult  # pylint: disable=g-import-not-at-top
  from facetriplet.layouts import ImageEntry  # pylint: disable=g-import-not-at-top
  root = tfrecords.read_manifest(tfrecord_dir).get("input") or ""
  batch = []
  for split in splits:
    for rec in tfrecords.read_records(tfrecords.list_shards(tfrecord_dir, split)):
      bgr = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR)
      rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      if rgb.shape[0] != size or rgb.shape[1] != size:
        interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (size, size), interpolation=interp)
      entry = ImageEntry(os.path.join(root, rec["path"]), rec["path"], rec["identity"] or None,
                         split)
      batch.append((entry, CropResult(rgb, tuple(rec["box"]), rec["found"])))
      if len(batch) == batch_size:
        yield batch
        batch = []
  if batch:
    yield batch


def count_records(tfrecord_dir: str, splits: Sequence[str]) -> int:
  from facetriplet import tfrecords  # pylint: disable=g-import-not-at-top
  manifest = tfrecords.read_manifest(tfrecord_dir)
  return sum(int(manifest.get("splits", {}).get(s, {}).get("images", 0)) for s in splits)


def embed_gallery(extractor, gallery: str, layout: str = "auto",
                  splits: Optional[Sequence[str]] = None, batch_size: int = 64, workers: int = 4,
                  progress: bool = True):
  """Embeds a gallery folder or TFRecord folder; returns `embed_entries`'s triple."""
  if not os.path.isdir(gallery):
    raise UserError(f"gallery {gallery} does not exist: pass a folder of images or a TFRecord "
                    "folder written by facetriplet-build-tfrecords")
  if is_tfrecord_dir(gallery):
    from facetriplet import tfrecords  # pylint: disable=g-import-not-at-top
    manifest = tfrecords.read_manifest(gallery)
    splits = list(splits or manifest.get("splits", {}).keys())
    if manifest.get("crop") and dict(manifest["crop"]) != extractor.crop_settings.to_dict():
      logging.warning("the records were cropped with %s, the model expects %s", manifest["crop"],
                      extractor.crop_settings.to_dict())
    size = extractor.crop_settings.size
    return retrieval.embed_crops(extractor, _record_batches(gallery, splits, size, batch_size),
                                 count_records(gallery, splits), "center", progress, "gallery")
  from facetriplet import layouts  # pylint: disable=g-import-not-at-top
  entries = layouts.list_images(gallery, retrieval.resolve_layout(gallery, layout))
  return retrieval.embed_entries(extractor, entries, batch_size, workers, progress, "gallery")


@dataclasses.dataclass
class GallerySummary:
  index_dir: str
  items: int
  skipped: list[retrieval.Problem]
  no_face: list[retrieval.Problem]
  dim: int
  scann: dict[str, Any]
  seconds: float

  @property
  def images_per_second(self) -> float:
    return (self.items + len(self.skipped)) / max(self.seconds, 1e-9)


def item_of(entry) -> dict[str, Any]:
  """The index metadata of one gallery image."""
  return {"path": entry.path, "rel_path": entry.rel_path, "name": os.path.basename(entry.rel_path),
          "identity": entry.identity}


def build_gallery_index(extractor, gallery: str, index_dir: str, layout: str = "auto",
                        splits: Optional[Sequence[str]] = None, batch_size: int = 64,
                        workers: int = 4, progress: bool = True, target_recall: float = 0.95,
                        model_dir: Optional[str] = None, **overrides: Any) -> GallerySummary:
  """Embeds `gallery` and saves a ScaNN index of it (plus gallery.json) to `index_dir`.

  Raises:
    UserError: missing or empty gallery (nothing readable), bad ScaNN overrides.
  """
  from facetriplet.index import ScannIndex  # pylint: disable=g-import-not-at-top
  start = time.time()
  embeddings, kept, problems = embed_gallery(extractor, gallery, layout, splits, batch_size,
                                             workers, progress)
  skipped = [p for p in problems if not p.kept]
  no_face = [p for p in problems if p.reason == retrieval.NO_FACE]
  if not kept:
    raise UserError(f"no usable image in gallery {gallery} ({len(skipped)} skipped): check the "
                    "folder and --layout")
  index = ScannIndex.build(embeddings, [item_of(e) for e in kept], extractor.fingerprint,
                           target_recall=target_recall, **overrides)
  info = {"features": getattr(extractor, "name", "embedding"),
          "model": os.path.abspath(model_dir) if model_dir else None,
          "fingerprint": extractor.fingerprint, "dim": int(extractor.dim),
          "crop": extractor.crop_settings.to_dict(), "gallery": os.path.abspath(gallery),
          "layout": layout, "items": len(kept), "skipped": [p.to_dict() for p in skipped],
          "no_face": [p.rel_path for p in no_face]}
  index.save(index_dir, extra_json={GALLERY_FILE: info})
  return GallerySummary(index_dir, len(kept), skipped, no_face, int(extractor.dim), index.config,
                        time.time() - start)


def read_gallery_info(index_dir: str) -> dict[str, Any]:
  """gallery.json of an index folder ({} for an index written some other way).

  Raises:
    UserError: the index folder does not exist (reported as such, not as a model problem).
  """
  if not os.path.isdir(index_dir):
    raise UserError(f"index folder {index_dir} does not exist: build it with "
                    f"facetriplet-build-index --index_dir={index_dir} (or pass the right --index)")
  path = os.path.join(index_dir, GALLERY_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)
