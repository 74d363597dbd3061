"""A set of query files answered against an index: `retrieve` (facetriplet-retrieve, a
competition's query folder), through the one query engine (`facetriplet.search.engine`).

Writing the answers (submission.json, results.csv) and sending them is
`facetriplet.search.submission`; building and opening a gallery index is
`facetriplet.search.gallery`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional, Sequence

from facetriplet.search.embedding import Problem
from facetriplet.search.engine import QueryEngine, SearchResult
from facetriplet.search.items import Item


@dataclasses.dataclass
class Retrieval:
  """The answers of a query set, in query order, and how they were made.

  Attributes:
    results: one `SearchResult` per query file.
    k: photos asked per query (after clamping to the gallery).
    fingerprint: the model's.
    problems: every query file skipped or answered from the centred crop.
    seconds: wall time.
    shared_names: gallery file names that several photos share (those are listed by their
      relative path in a submission).
  """

  results: list[SearchResult]
  k: int
  fingerprint: str
  problems: list[Problem]
  seconds: float
  shared_names: frozenset = frozenset()


def retrieve(
  extractor,
  index,
  entries: Sequence[Any],
  k: int = 10,
  batch_size: int = 64,
  workers: int = 4,
  progress: bool = True,
  exclude_self: bool = True,
  min_score: Optional[float] = None,
) -> Retrieval:
  """Top-k gallery photos for each query entry (see `QueryEngine.search_entries`).

  Every entry keeps a result, in input order: an unreadable query has no matches and its
  problem set; a query without a detected face is answered from the fallback crop. With
  `exclude_self`, a query that is itself a gallery file (the same path, as in leave-one-out over
  one labelled set) never retrieves itself. With `min_score`, matches scoring below it are left
  out, so a query may get none ("no match").

  Raises:
    UserError: empty gallery, or an extractor other than the index's.
  """
  start = time.time()
  k = index.clamp_k(k)
  engine = QueryEngine(extractor, index)
  problems: list[Problem] = []
  results = list(
    engine.search_entries(
      entries, k, min_score, exclude_self, batch_size, workers, progress, problems
    )
  )
  return Retrieval(
    results, k, index.fingerprint, problems, time.time() - start, shared_names(index.items)
  )


def shared_names(items: Sequence[Item]) -> frozenset:
  """File names that more than one gallery photo has (identity folders reuse names)."""
  photos: dict[str, set] = {}
  for item in items:
    photos.setdefault(item.display_name, set()).add(item.photo)
  return frozenset(name for name, owners in photos.items() if len(owners) > 1)


def submit_name(item: Item, shared: frozenset = frozenset()) -> str:
  """What a submission lists for a gallery item: its file name (a competition's flat folders
  identify photos by name), or its relative path where several photos share that name."""
  name = item.display_name
  return (item.rel_path or item.path or name) if name in shared else name


def query_names(results: Sequence[SearchResult]) -> list[str]:
  """File names of the queries; relative paths where two queries share a file name."""
  names = [os.path.basename(r.entry.rel_path) for r in results]
  seen: dict[str, int] = {}
  for n in names:
    seen[n] = seen.get(n, 0) + 1
  return [r.entry.rel_path if seen[n] > 1 else n for r, n in zip(results, names)]
