"""The one query engine: queries -> crops -> embeddings -> index search -> ranked, typed results.

Every way of asking goes through `QueryEngine`: `facetriplet-retrieve` and the competition
submission (`search_entries`, files streamed batch by batch), `facetriplet-evaluate` (`rank`, on
the query embeddings it also scores verification with), `Searcher.search`, `facetriplet-search`
and the HTTP service (`search_images`: paths, bytes or arrays). They all get the same answer for
the same index and query: a `SearchResult` per query face, holding `Match`es (rank, score, the
gallery `Item`), one per gallery photo at its best face, best first.

Rules, in `rank`: a gallery photo indexed with several faces appears once, at its best face (so
the search goes `k x faces_per_photo` deep); a query that is itself a gallery photo (same path)
never retrieves that photo when `exclude_self`; scores below `min_score` are left out, so a query
may have no match ("no match", not "the closest stranger").
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from facetriplet.data import faces, images
from facetriplet.errors import ImageError
from facetriplet.search import embedding
from facetriplet.search.embedding import NO_FACE, Problem
from facetriplet.search.items import Item

ImageLike = Union[str, os.PathLike, bytes, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Match:
  """One gallery photo found for a query (its best-scoring face)."""

  rank: int
  score: float  # cosine similarity, -1..1
  item: Item

  @property
  def id(self) -> str:
    return self.item.id

  @property
  def path(self) -> str:
    return self.item.path

  @property
  def name(self) -> str:
    return self.item.display_name

  @property
  def identity(self) -> Optional[str]:
    return self.item.identity

  @property
  def box(self) -> Optional[tuple]:
    """The matched face's (x, y, w, h) in the gallery photo."""
    return self.item.box

  def to_dict(self) -> dict[str, Any]:
    return {
      "rank": self.rank,
      "score": float(self.score),
      "id": self.id,
      "path": self.path,
      "name": self.name,
      "identity": self.identity,
      "box": list(self.box) if self.box else None,
      **({"time": self.item.time} if self.item.time is not None else {}),
    }


@dataclasses.dataclass
class SearchResult:
  """The answer for one query face: its matches (best first; empty = no match).

  Attributes:
    query: the query's path, or '<bytes i>' / '<array i>' for one given in memory.
    matches: best first.
    box: the query face's box; None when no face was found (answered from the centred crop).
    face: which face of the query photo (searches of every face).
    problem: why the query was not answered normally, e.g. 'no-face' (centred crop used) or
      'not-an-image' (no matches), else None.
    entry: the query file's `layouts.ImageEntry` (its rel_path and identity), for file queries.
  """

  query: str
  matches: list[Match]
  box: Optional[tuple] = None
  face: int = 0
  problem: Optional[str] = None
  entry: Any = None

  def __iter__(self) -> Iterator[Match]:
    return iter(self.matches)

  def __len__(self) -> int:
    return len(self.matches)

  def __getitem__(self, i: int) -> Match:
    return self.matches[i]

  @property
  def best(self) -> Optional[Match]:
    return self.matches[0] if self.matches else None

  def to_dict(self) -> dict[str, Any]:
    return {
      "query": self.query,
      "box": list(self.box) if self.box else None,
      "face": self.face,
      "problem": self.problem,
      "matches": [m.to_dict() for m in self.matches],
    }


def split_by_image(results: Sequence[Any], count: int) -> list[list[Any]]:
  """A flat answer of a search for `count` images with faces_mode='all' (one result per face,
  faces numbered from 0 per image, at least one per image) as one list per image."""
  groups: list[list[Any]] = []
  for result in results:
    if result.face == 0 or not groups:
      groups.append([])
    groups[-1].append(result)
  if len(groups) != count:
    raise RuntimeError(f"search answered {len(groups)} images for {count} queries")
  return groups


def faces_per_photo(index) -> int:
  """The most items one gallery photo has in `index` (several in an index of every face)."""
  return 1 + max((item.face or 0 for item in index.items), default=0)


def query_name(image: ImageLike, i: int) -> str:
  if isinstance(image, (str, os.PathLike)):
    return os.fspath(image)
  return f"<{'bytes' if isinstance(image, (bytes, bytearray)) else 'array'} {i}>"


class QueryEngine:
  """Answers queries against one index with the extractor it was built with (checked)."""

  def __init__(self, extractor: Any, index: Any):
    index.check_queries_from(extractor)
    self.extractor = extractor
    self.index = index
    self._cropper: Optional[faces.FaceCropper] = None
    self.refresh()

  def refresh(self) -> None:
    """Call after the index changed (items added or removed)."""
    self._per_photo = faces_per_photo(self.index)

  @property
  def cropper(self) -> faces.FaceCropper:
    """The query crop: exactly the gallery's (the extractor's crop settings)."""
    if self._cropper is None:
      self._cropper = faces.FaceCropper(self.extractor.crop_settings)
    return self._cropper

  def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
    if not len(crops):
      return np.zeros((0, int(self.extractor.dim)), np.float32)
    return np.asarray(self.extractor.embed(np.stack(crops)), np.float32)

  def rank(
    self,
    vectors: np.ndarray,
    k: int,
    min_score: Optional[float] = None,
    exclude: Optional[Sequence[Optional[str]]] = None,
  ) -> list[list[Match]]:
    """The matches of each query embedding (see the module docstring for the rules).

    Args:
      vectors: float32 [Q, D] query embeddings.
      k: photos per query (at most the gallery size, with a warning above it).
      min_score: leave out matches below this cosine similarity.
      exclude: per query, a photo (`Item.photo`, an absolute path) never to return, or None.
    """
    k = self.index.clamp_k(k)
    if not len(vectors):
      return []
    exclude = list(exclude) if exclude is not None else [None] * len(vectors)
    extra = 1 if any(e is not None for e in exclude) else 0
    depth = min(len(self.index), (k + extra) * self._per_photo)
    rows, scores = self.index.search(vectors, depth)
    items = self.index.items
    out = []
    for q_rows, q_scores, own in zip(rows, scores, exclude):
      seen: set = set()
      matches: list[Match] = []
      for j, s in zip(q_rows, q_scores):
        if j < 0:
          continue
        if min_score is not None and s < min_score:
          break
        item = items[int(j)]
        photo = item.photo
        if photo == own or photo in seen:
          continue
        seen.add(photo)
        matches.append(Match(len(matches) + 1, float(s), item))
        if len(matches) == k:
          break
      out.append(matches)
    return out

  def search_entries(
    self,
    entries: Sequence[Any],
    k: int = 10,
    min_score: Optional[float] = None,
    exclude_self: bool = True,
    batch_size: int = 64,
    workers: int = 4,
    progress: bool = True,
    problems: Optional[list[Problem]] = None,
  ) -> Iterator[SearchResult]:
    """A `SearchResult` per query file (`layouts.ImageEntry`), in order, streamed batch by batch.

    An unreadable file gets a result without matches and its reason as `problem`; a file without
    a detected face is answered from the centred crop (`problem` 'no-face'). `problems`, when
    given, collects every `embedding.Problem` met.
    """
    gallery_photos = (
      {item.photo for item in self.index.items if item.path} if exclude_self else set()
    )
    settings = self.extractor.crop_settings
    batches = embedding.iter_crops(entries, settings, batch_size, workers)
    for batch in embedding.with_progress(batches, len(entries), progress, "queries"):
      rows, crops, found = [], [], []
      for entry, result in batch:
        for row, image, problem in embedding.entry_rows(
          entry, result, settings.on_no_face, with_faces=True
        ):
          if problem is not None and problems is not None:
            problems.append(problem)
          rows.append((entry, row, problem))
          if row is not None:
            crops.append(image)
            found.append(row)
      own = [
        os.path.abspath(e.path) if os.path.abspath(e.path) in gallery_photos else None
        for e in found
      ]
      ranked = iter(self.rank(self.embed(crops), k, min_score, own))
      for entry, row, problem in rows:
        matches = next(ranked) if row is not None else []
        box = tuple(row.box) if row is not None and row.found else None
        yield SearchResult(entry.path, matches, box, 0, problem.reason if problem else None, entry)

  def search_images(
    self,
    images_: Sequence[ImageLike],
    k: int = 10,
    min_score: Optional[float] = None,
    faces_mode: str = "largest",
    min_face: float = faces.MIN_FACE_FRACTION,
  ) -> list[SearchResult]:
    """A `SearchResult` per image ('largest') or per face found ('all'), in order.

    An image that cannot be read gets a result with no matches and its reason as `problem`.
    """
    faces.check_face_mode(faces_mode)
    rows: list[tuple[str, int, Optional[faces.CropResult], Optional[str]]] = []
    names = [query_name(image, i) for i, image in enumerate(images_)]
    for name, found in zip(names, self.crops_batch(images_, names, faces_mode, min_face)):
      if isinstance(found, ImageError):
        rows.append((name, 0, None, found.reason))
        continue
      for n, crop in enumerate(found):
        rows.append((name, n, crop, None if crop.found else NO_FACE))
    ranked = iter(
      self.rank(self.embed([crop.image for _, _, crop, _ in rows if crop]), k, min_score)
    )
    return [
      SearchResult(
        name,
        next(ranked) if crop is not None else [],
        tuple(crop.box) if crop is not None and crop.found else None,
        n,
        problem,
      )
      for name, n, crop, problem in rows
    ]

  def crops(
    self,
    image: ImageLike,
    name: str,
    faces_mode: str = "largest",
    min_face: float = faces.MIN_FACE_FRACTION,
  ) -> list[faces.CropResult]:
    """The query crops of one image: its chosen face, or every face ('all').

    Raises:
      ImageError: the image cannot be read.
    """
    found = self.crops_batch([image], [name], faces_mode, min_face)[0]
    if isinstance(found, ImageError):
      raise found
    return found

  def crops_batch(
    self,
    images_: Sequence[ImageLike],
    names: Sequence[str],
    faces_mode: str = "largest",
    min_face: float = faces.MIN_FACE_FRACTION,
  ) -> list[Union[list[faces.CropResult], ImageError]]:
    """`crops` of each image, the readable ones sent to the detector in batches of its
    `batch_size`; an image that cannot be read gets its ImageError in its place."""
    decoded: list[Any] = []
    for name, image in zip(names, images_):
      try:
        decoded.append(images.to_rgb(image, name))
      except ImageError as e:
        decoded.append(e)
    return self.cropper.crop_each(decoded, faces_mode, min_face)
