"""Answering queries against an index: each query's top-k gallery items, in input order.

`retrieve` embeds the queries with the extractor the index was built with (the index checks the
fingerprint) and returns a `QueryResult` per query. Writing the answers (submission.json, the CSV)
and sending them is `facetriplet.search.submission`; building and opening a gallery index is
`facetriplet.search.gallery`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from facetriplet.search.embedding import Problem, embed_entries


@dataclasses.dataclass
class QueryResult:
  """One query: its file, its neighbours (dicts of the index item plus `rank` and `score`)."""
  entry: Any
  neighbors: list[dict[str, Any]]
  problem: Optional[Problem] = None


@dataclasses.dataclass
class RetrievalResult:
  queries: list[QueryResult]
  k: int
  fingerprint: str
  problems: list[Problem]
  seconds: float


def faces_per_photo(index) -> int:
  """The most items one gallery photo has in `index` (several with faces='all')."""
  return 1 + max((int(item.get("face", 0)) for item in index.items), default=0)


def rank_hits(index, indices: Sequence[int], scores: Sequence[float], k: int,
              exclude_path: Optional[str] = None, min_score: Optional[float] = None,
              ) -> list[tuple[int, float]]:
  """[(row, score)] best first from one query's search results: one per gallery photo (its best
  face), never the photo `exclude_path` (an absolute path), only scores >= `min_score`, at most k.
  """
  seen: set = set()
  out = []
  for j, s in zip(indices, scores):
    if j < 0:
      continue
    if min_score is not None and s < min_score:
      break
    path = index.items[int(j)].get("path")
    photo = os.path.abspath(path) if path else int(j)
    if photo == exclude_path or photo in seen:
      continue
    seen.add(photo)
    out.append((int(j), float(s)))
    if len(out) == k:
      break
  return out


def retrieve(extractor, index, entries: Sequence[Any], k: int = 10, batch_size: int = 64,
             workers: int = 4, progress: bool = True, exclude_self: bool = True,
             min_score: Optional[float] = None) -> RetrievalResult:
  """Top-k gallery photos for each query entry.

  Every entry keeps a `QueryResult`, in input order: an unreadable query has no neighbours and
  its problem set; a query without a detected face is answered from the fallback crop and its
  problem says so. With `exclude_self`, a query that is itself a gallery file (the same path,
  as in leave-one-out over one labelled set) never retrieves itself. A gallery photo indexed with
  several faces appears once, at its best face. With `min_score`, neighbours scoring below it are
  left out, so a query may get none ("no match").

  Raises:
    UserError: empty gallery, or an extractor other than the index's.
  """
  start = time.time()
  k = index.clamp_k(k)
  index.check_queries_from(extractor)
  embeddings, kept, problems = embed_entries(extractor, entries, batch_size, workers, progress,
                                             desc="queries")
  gallery_paths = ({os.path.abspath(item["path"]) for item in index.items if item.get("path")}
                   if exclude_self else set())
  # abspath is string work only (no filesystem calls), so this stays cheap for 1M items.
  own_photo = {id(e): os.path.abspath(e.path) for e in kept
               if os.path.abspath(e.path) in gallery_paths}
  # Deep enough for k photos when some have several faces, plus one photo that may be the query.
  per_photo = faces_per_photo(index)
  search_k = min(len(index), (k + (1 if own_photo else 0)) * per_photo)
  indices, scores = (index.search(embeddings, search_k) if len(kept) else
                     (np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)))
  names: dict[str, set] = {}
  for item in index.items:
    names.setdefault(item_name(item), set()).add(item.get("path"))
  row_of = {id(e): i for i, e in enumerate(kept)}
  problem_of = {p.path: p for p in problems}
  results = []
  for entry in entries:
    row = row_of.get(id(entry))
    neighbors = []
    if row is not None:
      hits = rank_hits(index, indices[row], scores[row], k, own_photo.get(id(entry)), min_score)
      for rank, (j, s) in enumerate(hits, 1):
        item = index.items[j]
        # File names identify gallery images (the competition's flat folders); where two photos
        # share a name (identity folders) the relative path does.
        name = item_name(item)
        shown = name if len(names[name]) == 1 else item.get("rel_path") or item.get("path")
        neighbors.append(dict(item, rank=rank, score=s, submit_name=shown))
    results.append(QueryResult(entry, neighbors, problem_of.get(entry.path)))
  return RetrievalResult(results, k, index.fingerprint, problems, time.time() - start)


def item_name(item: dict[str, Any]) -> str:
  """The file name of a gallery item (what the submission lists)."""
  return (item.get("submit_name") or item.get("name")
          or os.path.basename(item.get("rel_path") or item.get("path", "")))


def query_names(result: RetrievalResult) -> list[str]:
  """File names of the queries; relative paths where two queries share a file name."""
  names = [os.path.basename(q.entry.rel_path) for q in result.queries]
  seen: dict[str, int] = {}
  for n in names:
    seen[n] = seen.get(n, 0) + 1
  return [q.entry.rel_path if seen[n] > 1 else n for q, n in zip(result.queries, names)]
