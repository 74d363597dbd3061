"""Build a searchable gallery: embed a folder or TFRecords with the training crop, then index it.

A gallery is either a folder of images in any layout (`facetriplet.data.layouts`), cropped here with
the extractor's crop settings (the export's metadata, i.e. the training manifest's), the
TFRecords of facetriplet-build-tfrecords, whose records already hold the crops, or a video file
(every face of a frame sampled every `every_s` seconds, `video.embed_video`). All stream batch by
batch.

Besides the index folder (`facetriplet.search.index.GalleryIndex`, over the backend asked for),
`gallery.json` is written into it: the features and export used, the crop settings, the source,
and the skipped / no-face files, so `facetriplet-retrieve --index=DIR` knows which model to embed
queries with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

from absl import logging

from facetriplet.data import faces, layouts, tfrecords
from facetriplet.errors import UserError
from facetriplet.search import audit, backends, embedding, features, index_folder, video
from facetriplet.search.embedding import NO_FACE, Problem
from facetriplet.search.index import GalleryIndex
from facetriplet.search.items import Item

GALLERY_FILE = "gallery.json"


FACE_MODES = ("auto",) + faces.FACE_MODES  # what a gallery build takes


def resolve_faces(faces_mode: str, gallery: str, layout: str = "auto") -> str:
  """'auto' -> 'all' for a flat folder of photos (a collection: every face is searchable),
  'largest' for identity folders and TFRecords (one face per training photo); a video: 'all'."""
  if faces_mode != "auto":
    faces.check_face_mode(faces_mode)
  if video.is_video(gallery):
    if faces_mode == "largest":
      raise UserError(f"{gallery} is a video: its frames are indexed with every face (--faces=all)")
    return "all"
  if tfrecords.is_shard_folder(gallery):
    if faces_mode == "all":
      raise UserError(
        f"{gallery} holds TFRecords, one crop per photo: --faces=all needs the "
        "photos themselves (pass their folder)"
      )
    return "largest"
  if faces_mode != "auto":
    return faces_mode
  if os.path.isdir(gallery):
    return "all" if layouts.resolve_layout(gallery, layout) == "flat" else "largest"
  return "largest"


def open_records(
  gallery: str,
  extractor,
  splits: Optional[Sequence[str]] = None,
) -> tuple[tfrecords.ShardSet, list[str]]:
  """A TFRecord gallery and the splits to embed (default all), warning when its crops were made
  with other settings than the extractor's."""
  shard_set = tfrecords.ShardSet.open(gallery)
  if shard_set.crop and dict(shard_set.crop) != extractor.crop_settings.to_dict():
    logging.warning(
      "the records were cropped with %s, the model expects %s",
      shard_set.crop,
      extractor.crop_settings.to_dict(),
    )
  return shard_set, list(splits or shard_set.split_names)


def check_source(path: str, what: str = "gallery") -> None:
  """A gallery (or another set embedded as one) is a folder of images or of TFRecords, or a
  video file; checked before any model loads, so a wrong path costs no wait."""
  if not os.path.isdir(path) and not video.is_video(path):
    kind = "is not a folder or a video" if os.path.exists(path) else "does not exist"
    raise UserError(
      f"{what} {path} {kind}: pass a folder of images, a TFRecord folder written by "
      f"facetriplet-build-tfrecords, or a video ({', '.join(video.EXTENSIONS)})"
    )


def embed_gallery(
  extractor,
  gallery: str,
  layout: str = "auto",
  splits: Optional[Sequence[str]] = None,
  batch_size: int = 64,
  workers: int = 4,
  progress: bool = True,
  faces_mode: str = "largest",
  min_face: float = faces.MIN_FACE_FRACTION,
  every_s: float = 0.5,
  crops: Optional[embedding.CropStore] = None,
):
  """Embeds a gallery folder, TFRecord folder or video (a frame every `every_s` seconds);
  returns `embed_entries`'s triple, the kept rows as `embedding.FaceEntry`s (one per face with
  faces_mode='all'). `crops`: reuse the crops of an earlier pass (folders of images)."""
  check_source(gallery)
  if video.is_video(gallery):
    return video.embed_video(extractor, gallery, every_s, batch_size, progress, min_face)
  if tfrecords.is_shard_folder(gallery):
    shard_set, splits = open_records(gallery, extractor, splits)
    batches = embedding.record_batches(
      shard_set, splits, extractor.crop_settings.crop_size, batch_size
    )
    return embedding.embed_crops(
      extractor, batches, shard_set.count(splits), "center", progress, "gallery", with_faces=True
    )
  entries = layouts.list_images(gallery, layouts.resolve_layout(gallery, layout))
  return embedding.embed_entries(
    extractor,
    entries,
    batch_size,
    workers,
    progress,
    "gallery",
    faces_mode,
    min_face,
    with_faces=True,
    crops=crops,
  )


@dataclasses.dataclass
class GallerySummary:
  index_dir: str
  items: int
  skipped: list[Problem]
  no_face: list[Problem]
  dim: int
  backend: str
  settings: dict[str, Any]  # the backend's, as index.json records them
  seconds: float

  @property
  def images_per_second(self) -> float:
    return (self.items + len(self.skipped)) / max(self.seconds, 1e-9)


def build_gallery_index(
  extractor,
  gallery: str,
  index_dir: str,
  layout: str = "auto",
  splits: Optional[Sequence[str]] = None,
  batch_size: int = 64,
  workers: int = 4,
  progress: bool = True,
  target_recall: float = 0.95,
  model_dir: Optional[str] = None,
  faces_mode: str = "auto",
  min_face: float = faces.MIN_FACE_FRACTION,
  backend: str = backends.DEFAULT,
  every_s: float = 0.5,
  **settings: Any,
) -> GallerySummary:
  """Embeds `gallery` and saves an index of it (plus gallery.json) to `index_dir`, searched by
  `backend` with its automatic `settings` overridden by the ones given.

  With faces_mode 'all' (the 'auto' choice for a flat folder of photos) every face of at least
  `min_face` x the short side becomes an item with its box; else each photo's chosen face.

  Raises:
    UserError: missing or empty gallery (nothing readable), a bad backend or setting.
  """
  start = time.time()
  faces_mode = resolve_faces(faces_mode, gallery, layout)
  embeddings, kept, problems = embed_gallery(
    extractor, gallery, layout, splits, batch_size, workers, progress, faces_mode, min_face, every_s
  )
  skipped = [p for p in problems if not p.kept]
  no_face = [p for p in problems if p.reason == NO_FACE]
  if not kept and video.is_video(gallery):
    raise UserError(f"no face found in the frames of {gallery} sampled every {every_s:g} s")
  if not kept:
    raise UserError(
      f"no usable image in gallery {gallery} ({len(skipped)} skipped): check the "
      "folder and --layout"
    )
  layout = "video" if video.is_video(gallery) else layout
  items = [Item.of_face(e, faces_mode == "all") for e in kept]
  index = GalleryIndex.build(
    embeddings, items, extractor.fingerprint, backend, target_recall, **settings
  )
  info = gallery_info(extractor, gallery, layout, faces_mode, min_face, model_dir, items, problems)
  trail = audit.for_build(index_dir, len(items))  # an index rebuilt in place keeps its trail
  index.save(index_dir, extra_json={GALLERY_FILE: info}, extra_files=trail)
  return GallerySummary(
    index_dir,
    len(kept),
    skipped,
    no_face,
    int(extractor.dim),
    index.backend.name,
    index.config,
    time.time() - start,
  )


def gallery_info(
  extractor,
  gallery: str,
  layout: str,
  faces_mode: str,
  min_face: float,
  model_dir: Optional[str],
  items: Sequence[Item],
  problems: Sequence[Problem],
) -> dict[str, Any]:
  """The gallery.json of an index: features, model, crop, source, and the skipped / no-face
  photos (`problems` in gallery order)."""
  return {
    "features": getattr(extractor, "name", "embedding"),
    "model": os.path.abspath(model_dir) if model_dir else None,
    "fingerprint": extractor.fingerprint,
    "dim": int(extractor.dim),
    "crop": extractor.crop_settings.to_dict(),
    "gallery": os.path.abspath(gallery),
    "layout": layout,
    "faces": faces_mode,
    "min_face": min_face,
    "items": len(items),
    "photos": len({item.photo for item in items}),
    "skipped": [p.to_dict() for p in problems if not p.kept],
    "no_face": [p.rel_path for p in problems if p.reason == NO_FACE],
  }


def read_gallery_info(index_dir: str) -> dict[str, Any]:
  """gallery.json of an index folder ({} for an index written some other way).

  Raises:
    UserError: the index folder does not exist (reported as such, not as a model problem), or
      its gallery.json is unreadable (one line naming it: restore or rebuild the folder).
  """
  if not os.path.isdir(index_dir):
    raise UserError(
      f"index folder {index_dir} does not exist: build it with "
      f"facetriplet-build-index --index_dir={index_dir} (or pass the right --index)"
    )
  path = os.path.join(index_dir, GALLERY_FILE)
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    what = f"is unreadable ({' '.join(str(e).split())[:200]})"
    raise index_folder.damaged(index_dir, GALLERY_FILE, what) from None
  if not isinstance(info, dict):
    raise index_folder.damaged(index_dir, GALLERY_FILE, "is not a gallery description")
  return info


def check_index(index_dir: str) -> dict[str, Any]:
  """The gallery.json of an index folder checked, with the folder's other parts, without loading
  any model or search library: what `open_index` checks first, so a missing or damaged index is
  reported at once (tools call it before their slow imports too). Every file is verified against
  the checksums saved with it (`index_folder.check`) before gallery.json is read.

  Raises:
    UserError: a missing folder, a damaged file, an unreadable gallery.json or index.json, a
      missing part.
  """
  if os.path.isdir(index_dir):  # else read_gallery_info says the folder does not exist
    index_folder.check(index_dir)
  return read_gallery_info(index_dir)


def open_index(
  index_dir: str,
  model: Optional[str] = None,
  features_name: Optional[str] = None,
) -> tuple[Any, GalleryIndex, dict[str, Any]]:
  """The extractor an index was built with (or the one asked for) and the index, checked.

  The model defaults to the export recorded in gallery.json, the features to the index's, and
  a classical extractor crops as the index's gallery was cropped.

  Returns:
    (extractor, index, gallery info with the `features` and `model` actually used).

  Raises:
    UserError: missing index, missing model, or an extractor other than the index's.
  """
  info = check_index(index_dir)
  name = features_name or info.get("features") or "embedding"
  model = model or (info.get("model") if name == "embedding" or not info.get("crop") else None)
  extractor = features.make_extractor(name, model, info.get("crop"))
  index = GalleryIndex.load(
    index_dir, expected_fingerprint=extractor.fingerprint, expected_dim=int(extractor.dim)
  )
  return extractor, index, dict(info, features=name, model=model)
