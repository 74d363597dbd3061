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


def retrieve(extractor, index, entries: Sequence[Any], k: int = 10, batch_size: int = 64,
             workers: int = 4, progress: bool = True, exclude_self: bool = True,
             ) -> RetrievalResult:
  """Top-k gallery items for each query entry.

  Every entry keeps a `QueryResult`, in input order: an unreadable query has no neighbours and
  its problem set; a query without a detected face is answered from the fallback crop and its
  problem says so. With `exclude_self`, a query that is itself a gallery file (the same path,
  as in leave-one-out over one labelled set) never retrieves itself.

  Raises:
    UserError: empty gallery, or an extractor other than the index's.
  """
  start = time.time()
  k = index.clamp_k(k)
  index.check_queries_from(extractor)
  embeddings, kept, problems = embed_entries(extractor, entries, batch_size, workers, progress,
                                             desc="queries")
  self_row = {}
  if exclude_self:
    # abspath is string work only (no filesystem calls), so this stays cheap for 1M items.
    gallery_row = {os.path.abspath(item["path"]): j for j, item in enumerate(index.items)
                   if item.get("path")}
    self_row = {id(e): gallery_row[os.path.abspath(e.path)] for e in kept
                if os.path.abspath(e.path) in gallery_row}
  # One extra neighbour when some query may find itself, which is then dropped.
  search_k = min(k + 1, len(index)) if self_row else k
  indices, scores = (index.search(embeddings, search_k) if len(kept) else
                     (np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)))
  names = [item_name(item) for item in index.items]
  counts: dict[str, int] = {}
  for n in names:
    counts[n] = counts.get(n, 0) + 1
  row_of = {id(e): i for i, e in enumerate(kept)}
  problem_of = {p.path: p for p in problems}
  results = []
  for entry in entries:
    row = row_of.get(id(entry))
    neighbors = []
    if row is not None:
      own = self_row.get(id(entry), -1)
      hits = [(j, s) for j, s in zip(indices[row], scores[row]) if j >= 0 and j != own][:k]
      for rank, (j, s) in enumerate(hits, 1):
        item = index.items[int(j)]
        # File names identify gallery images (the competition's flat folders); where two share a
        # name (identity folders) the relative path does.
        shown = names[j] if counts[names[j]] == 1 else item.get("rel_path") or item.get("path")
        neighbors.append(dict(item, rank=rank, score=float(s), submit_name=shown))
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
