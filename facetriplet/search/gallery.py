"""Build a searchable gallery: embed a folder or TFRecords with the training crop, then index it.

A gallery is either a folder of images in any layout (`facetriplet.data.layouts`), cropped here with the
extractor's crop settings (the export's metadata, i.e. the training manifest's), or the TFRecords of
facetriplet-build-tfrecords, whose records already hold the crops. Both stream batch by batch.

Besides the ScaNN index folder (`facetriplet.search.index`), `gallery.json` is written into it: the
features and export used, the crop settings, the source, and the skipped / no-face files, so
`facetriplet-retrieve --index=DIR` knows which model to embed queries with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

from absl import logging

from facetriplet.data import layouts, tfrecords
from facetriplet.errors import UserError
from facetriplet.search import embedding, features
from facetriplet.search.embedding import NO_FACE, Problem
from facetriplet.search.index import ScannIndex

GALLERY_FILE = "gallery.json"


def embed_gallery(extractor, gallery: str, layout: str = "auto",
                  splits: Optional[Sequence[str]] = None, batch_size: int = 64, workers: int = 4,
                  progress: bool = True):
  """Embeds a gallery folder or TFRecord folder; returns `embed_entries`'s triple."""
  if not os.path.isdir(gallery):
    raise UserError(f"gallery {gallery} does not exist: pass a folder of images or a TFRecord "
                    "folder written by facetriplet-build-tfrecords")
  if tfrecords.is_shard_folder(gallery):
    shard_set = tfrecords.ShardSet.open(gallery)
    splits = list(splits or shard_set.split_names)
    if shard_set.crop and dict(shard_set.crop) != extractor.crop_settings.to_dict():
      logging.warning("the records were cropped with %s, the model expects %s", shard_set.crop,
                      extractor.crop_settings.to_dict())
    batches = embedding.record_batches(shard_set, splits, extractor.crop_settings.size,
                                       batch_size)
    return embedding.embed_crops(extractor, batches, shard_set.count(splits), "center", progress,
                                 "gallery")
  entries = layouts.list_images(gallery, layouts.resolve_layout(gallery, layout))
  return embedding.embed_entries(extractor, entries, batch_size, workers, progress, "gallery")


@dataclasses.dataclass
class GallerySummary:
  index_dir: str
  items: int
  skipped: list[Problem]
  no_face: list[Problem]
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
  start = time.time()
  embeddings, kept, problems = embed_gallery(extractor, gallery, layout, splits, batch_size,
                                             workers, progress)
  skipped = [p for p in problems if not p.kept]
  no_face = [p for p in problems if p.reason == NO_FACE]
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


def open_index(index_dir: str, model: Optional[str] = None, features_name: Optional[str] = None,
               ) -> tuple[Any, ScannIndex, dict[str, Any]]:
  """The extractor an index was built with (or the one asked for) and the index, checked.

  The model defaults to the export recorded in gallery.json, the features to the index's, and
  a classical extractor crops as the index's gallery was cropped.

  Returns:
    (extractor, index, gallery info with the `features` and `model` actually used).

  Raises:
    UserError: missing index, missing model, or an extractor other than the index's.
  """
  info = read_gallery_info(index_dir)
  name = features_name or info.get("features") or "embedding"
  model = model or (info.get("model") if name == "embedding" or not info.get("crop") else None)
  extractor = features.make_extractor(name, model, info.get("crop"))
  index = ScannIndex.load(index_dir, expected_fingerprint=extractor.fingerprint,
                          expected_dim=int(extractor.dim))
  return extractor, index, dict(info, features=name, model=model)
