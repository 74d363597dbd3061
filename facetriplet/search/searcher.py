"""Search as a library: open an index once, then search, embed, verify, enrol and remove.

  from facetriplet import Searcher
  searcher = Searcher.open("runs/index")            # the model the index was built with
  for match in searcher.search("photo.jpg", k=5):   # a path, an RGB array or encoded bytes
    print(match.rank, match.identity, round(match.score, 3), match.path, match.box)

`Searcher` is the one owner of an opened index: the tools (`facetriplet-search`,
`facetriplet-build-index --add/--remove`) and the HTTP service call it. Queries are cropped exactly
as the gallery was (the index's crop settings), embedded by the index's model (fingerprints are
checked), and answered with one `Match` per gallery photo. `min_score` turns "the closest face" into
"no match" below a similarity; `verify` compares two photos against a threshold (the export's
calibrated one by default). `add` embeds only photos not yet in the index and upserts them; `remove`
deletes items; `save` writes the index folder atomically. Searches may run from many threads;
`add`, `remove`, `rebuild` and `save` take the index for themselves meanwhile.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence, Union

import numpy as np
from absl import logging

from facetriplet.data import faces, images, layouts
from facetriplet.errors import ImageError, UserError
from facetriplet.locks import ReadWriteLock
from facetriplet.search import audit, embedding, gallery, thumbnails
from facetriplet.search.engine import ImageLike, Match, QueryEngine, SearchResult, query_name
from facetriplet.search.index import GalleryIndex
from facetriplet.search.items import Item

__all__ = ["Searcher", "Match", "SearchResult", "AddSummary"]


@dataclasses.dataclass
class AddSummary:
  added: int
  replaced: int
  already_indexed: int
  problems: list[embedding.Problem]
  rebuild_advised: str  # why the partitions should be retrained ('' when not)


def _is_many(images_: Any) -> bool:
  if isinstance(images_, (str, os.PathLike, bytes, bytearray)):
    return False
  if isinstance(images_, np.ndarray):
    return images_.ndim == 4
  return True


class Searcher:
  """An opened index with the model it was built with. Use `Searcher.open`."""

  def __init__(self, index_dir: str, extractor: Any, index: GalleryIndex, info: dict[str, Any]):
    self.index_dir = index_dir
    self.extractor = extractor
    self.index = index
    self.info = info
    self.engine = QueryEngine(extractor, index)
    self.audit = audit.Trail(index_dir)
    self.thumbs = thumbnails.Thumbnails(index_dir)
    self._lock = ReadWriteLock()

  @classmethod
  def open(
    cls, index_dir: str, model: Optional[str] = None, features: Optional[str] = None
  ) -> "Searcher":
    """Opens an index folder written by facetriplet-build-index (or `save`).

    Args:
      index_dir: the index folder.
      model: export folder (default: the one the index was built with).
      features: feature name (default: the index's).

    Raises:
      UserError: missing index or model, or a model other than the index's.
    """
    extractor, index, info = gallery.open_index(index_dir, model, features)
    return cls(index_dir, extractor, index, info)

  def __len__(self) -> int:
    return len(self.index)

  def __repr__(self) -> str:
    return (
      f"Searcher({self.index_dir!r}, {len(self.index)} items, model {self.extractor.fingerprint})"
    )

  @property
  def dim(self) -> int:
    return int(self.extractor.dim)

  # ---- embedding --------------------------------------------------------------------------

  def embed(self, images_: Union[ImageLike, Sequence[ImageLike]]) -> np.ndarray:
    """Unit embeddings float32 [N, D] of each image's chosen face ([D] for one image).

    Raises:
      ImageError: an image that cannot be read (its path or name and the reason).
    """
    many = _is_many(images_)
    batch = list(images_) if many else [images_]
    names = [query_name(img, i) for i, img in enumerate(batch)]
    crops = []
    for found in self.engine.crops_batch(batch, names):
      if isinstance(found, ImageError):
        raise found
      crops.append(found[0].image)
    vectors = self.engine.embed(crops)
    return vectors if many else vectors[0]

  def threshold(self, far: float = 0.01) -> Optional[float]:
    """The export's calibrated similarity threshold at this false-accept rate, if recorded."""
    get = getattr(self.extractor, "threshold", None)
    return get(far) if callable(get) else None

  def verify(
    self, a: ImageLike, b: ImageLike, threshold: Optional[float] = None, far: float = 0.01
  ) -> tuple[bool, float]:
    """(same person, cosine similarity) of the chosen faces of two images.

    The threshold defaults to the export's calibrated one at `far` (see facetriplet-evaluate).

    Raises:
      UserError: no threshold given and the export carries no calibration, or a photo in which
        no face was found.
    """
    if threshold is None:
      threshold = self.threshold(far)
      if threshold is None:
        raise UserError(
          "this model has no calibrated threshold: pass threshold=... (see the "
          "threshold_at_far of facetriplet-evaluate) or export a model trained "
          "with this version"
        )
    names = [query_name(a, 0), query_name(b, 1)]
    crops = []
    for name, found in zip(names, self.engine.crops_batch([a, b], names)):
      if isinstance(found, ImageError):
        raise found
      if not found[0].found:
        raise UserError(f"no face found in {name}: verify compares two faces")
      crops.append(found[0].image)
    ea, eb = self.engine.embed(crops)
    score = float(np.dot(ea, eb))
    return score >= threshold, score

  # ---- search -----------------------------------------------------------------------------

  def search(
    self,
    images_: Union[ImageLike, Sequence[ImageLike]],
    k: int = 10,
    min_score: Optional[float] = None,
    faces_mode: str = "largest",
    min_face: float = faces.MIN_FACE_FRACTION,
  ) -> Union[SearchResult, list[SearchResult]]:
    """The k best gallery photos for each query image.

    Args:
      images_: a path, encoded bytes or an RGB array, or a list of them.
      k: photos per query (at most the gallery size).
      min_score: leave out matches below this cosine similarity (then "no match" is an empty
        result); see `threshold`.
      faces_mode: 'largest' answers for each image's chosen face; 'all' for every face found,
        one SearchResult per face (a list even for one image).
      min_face: with 'all', the smallest face searched, as a fraction of the short side.

    Returns:
      One SearchResult for one image with faces_mode 'largest', else a list in input order.
      An image that cannot be read gets a result with no matches and its `problem`.
    """
    many = _is_many(images_)
    batch = list(images_) if many else [images_]
    with self._lock.read():
      results = self.engine.search_images(batch, k, min_score, faces_mode, min_face)
    return results if many or faces_mode == "all" else results[0]

  # ---- enrol and remove -------------------------------------------------------------------

  def add(
    self,
    paths_or_folder: Union[str, Sequence[str]],
    faces_mode: str = "auto",
    min_face: float = faces.MIN_FACE_FRACTION,
    layout: str = "auto",
    identity: Optional[str] = None,
    batch_size: int = 64,
    workers: int = 4,
    progress: bool = False,
    actor: Optional[dict[str, Any]] = None,
  ) -> AddSummary:
    """Embeds photos not yet in the index and adds them (no partitions retrained).

    Args:
      paths_or_folder: a folder (any layout; identity folders give identities), an image, a list
        file of paths, or a list of image paths.
      faces_mode: 'auto' (the index's own choice), 'largest' or 'all'.
      min_face: with 'all', the smallest face indexed (fraction of the short side).
      layout: layout of a folder.
      identity: identity recorded for photos that have none (e.g. enrolling one person).
      actor: who asks, for the audit trail ({"token": ..., "client": ...}; default the tools).

    Returns:
      AddSummary; `rebuild_advised` says when the gallery outgrew its partitions.
    """
    if isinstance(paths_or_folder, (str, os.PathLike)):
      entries = layouts.list_inputs(os.fspath(paths_or_folder), layout)
      source = os.fspath(paths_or_folder)
    else:
      entries = [
        layouts.ImageEntry(os.path.abspath(p), os.path.basename(p), None, None)
        for p in paths_or_folder
      ]
      source = ""
    if faces_mode == "auto":
      faces_mode = self.info.get("faces") or (
        "all"
        if source and os.path.isdir(source) and layouts.resolve_layout(source, layout) == "flat"
        else "largest"
      )
    indexed = {item.photo for item in self.index.items if item.path}
    new = [e for e in entries if os.path.abspath(e.path) not in indexed]
    vectors, kept, problems = embedding.embed_entries(
      self.extractor,
      new,
      batch_size,
      workers,
      progress,
      "enrol",
      faces_mode,
      min_face,
      with_faces=True,
    )
    items = [Item.of_face(e, faces_mode == "all") for e in kept]
    if identity is not None:
      items = [
        item if item.identity is not None else dataclasses.replace(item, identity=identity)
        for item in items
      ]
    with self._lock.write():
      known = {item.id for item in items if self.contains(item.id)}
      added, replaced = self.index.add(vectors, items)
      for item in items:
        action = "replace" if item.id in known else "enrol"
        self.audit.record(action, actor, item.id, item.identity)
      self.engine.refresh()
      self.info["items"] = len(self.index)
      self.info.setdefault("history", []).append(
        {"add": source or f"{len(entries)} paths", "items": added + replaced}
      )
      advice = self.index.needs_rebuild
    if advice:
      logging.warning(
        "the gallery outgrew its search partitions (%s): run "
        "facetriplet-build-index --index_dir=%s --rebuild",
        advice,
        self.index_dir,
      )
    return AddSummary(added, replaced, len(entries) - len(new), problems, advice)

  def add_image(
    self,
    image: ImageLike,
    item_id: str,
    name: Optional[str] = None,
    identity: Optional[str] = None,
    faces_mode: str = "largest",
    min_face: float = faces.MIN_FACE_FRACTION,
    actor: Optional[dict[str, Any]] = None,
  ) -> list[str]:
    """Enrols one image held in memory (an upload) under `item_id` ('<item_id>#<n>' per face
    with faces_mode='all'); an existing id is replaced. Returns the ids written. `actor`: who
    asks, for the audit trail.

    Raises:
      ImageError: not a readable image; UserError: no face found with faces_mode='all'.
    """
    faces.check_face_mode(faces_mode)
    rgb = images.to_rgb(image, name or item_id)
    crops = self.engine.crops(rgb, name or item_id, faces_mode, min_face)
    vectors = self.engine.embed([c.image for c in crops])
    items = [
      Item.enrolled(item_id, name, identity, crop, n if faces_mode == "all" else None)
      for n, crop in enumerate(crops)
    ]
    with self._lock.write():
      known = {item.id for item in items if self.contains(item.id)}
      self.index.add(vectors, items)
      for item, crop in zip(items, crops):
        self.thumbs.put(
          item.id, rgb, crop.box if crop.found else None, crop.landmarks if crop.found else None
        )
        action = "replace" if item.id in known else "enrol"
        self.audit.record(action, actor, item.id, item.identity)
      self.engine.refresh()
      self.info["items"] = len(self.index)
    return [item.id for item in items]

  def remove(self, ids_or_paths: Sequence[str], actor: Optional[dict[str, Any]] = None) -> int:
    """Removes items by id, or every face of a photo by its path. Returns items removed.
    `actor`: who asks, for the audit trail.

    Raises:
      UserError: an id or path that is not in the index (nothing is removed then).
    """
    with self._lock.write():
      by_path: dict[str, list[str]] = {}
      for item in self.index.items:
        if item.path:
          by_path.setdefault(os.path.abspath(item.path), []).append(item.id)
      ids, unknown = [], []
      for key in ids_or_paths:
        if self.index.row_of(key) is not None:
          ids.append(key)
        elif os.path.abspath(key) in by_path:
          ids.extend(by_path[os.path.abspath(key)])
        else:
          unknown.append(key)
      if unknown:
        raise UserError(
          f"{len(unknown)} of the ids/paths to remove are not in the index, e.g. "
          f"{unknown[:3]}: nothing removed (ids are in {self.index_dir}/items.jsonl)"
        )
      identities = {item.id: item.identity for item in self.index.items}
      removed = self.index.remove(ids)
      self.thumbs.drop(ids)
      for item_id in dict.fromkeys(ids):
        self.audit.record("remove", actor, item_id, identities.get(item_id))
      self.engine.refresh()
      self.info["items"] = len(self.index)
      self.info.setdefault("history", []).append({"remove": removed})
    return removed

  def forget(self, identity: str, actor: Optional[dict[str, Any]] = None) -> int:
    """Erases a person: every item of `identity` removed, the search structure rebuilt without
    them, their name and ids scrubbed from gallery.json and the audit trail (`audit`). `save`
    makes it permanent. Returns the items removed.

    Raises:
      UserError: no item of this identity, or only items of it (an index is never empty).
    """
    with self._lock.write():
      items = [item for item in self.index.items if item.identity == identity]
      if not items:
        raise UserError(f"no item of identity {identity!r} in the index: nothing to forget")
      ids = [item.id for item in items]
      self.index.remove(ids)  # UserError when nobody else would be left
      self.thumbs.drop(ids)
      self.info["items"] = len(self.index)
      # A video's path is shared with other people's frames: only a photo's path is theirs.
      erased = {
        identity,
        *ids,
        *(i.photo for i in items),
        *(i.path for i in items if i.time is None),
      }
      erased.discard("")
      self.info = audit.scrub(self.info, erased, identity)
      self.audit.forget(identity, erased - {identity}, actor)
      try:
        self.index.rebuild()  # the structure retrained without them: none of their data stays
      finally:
        self.engine.refresh()
    return len(items)

  def contains(self, item_id: str) -> bool:
    return self.index.row_of(item_id) is not None

  def thumbnail(self, item_id: str) -> Optional[bytes]:
    """The JPEG face thumbnail of an item (`thumbnails`); None for an unknown id."""
    with self._lock.read():  # not while an enrolment or removal renumbers the rows
      row = self.index.row_of(item_id)
      return self.thumbs.of(self.index.items[row]) if row is not None else None

  def rebuild(self) -> None:
    """Retrains the search partitions over the current items."""
    with self._lock.write():
      self.index.rebuild()

  def save(self, index_dir: Optional[str] = None) -> str:
    """Writes the index folder (with gallery.json) atomically; a kill leaves the old one."""
    with self._lock.write():
      target = index_dir or self.index_dir
      info = dict(self.info.items())
      trail = {**self.audit.contents(), **self.thumbs.files()}
      self.index.save(target, extra_json={gallery.GALLERY_FILE: info}, extra_files=trail)
      if os.path.realpath(target) == os.path.realpath(self.index_dir):
        self.audit.saved()  # else the index's own folder has yet to get them
    return target
