"""Scores one feature extractor on labelled queries, one scorer per mode, every ranking made by
the one query engine (`facetriplet.search.engine.QueryEngine`).

The searched side is always a `GalleryIndex`: the built index (`index` mode), or an exact index
made in memory from the embedded gallery (`gallery`) or from the query set itself
(`leave_one_out`). The engine's rules hold everywhere: a query that is itself a gallery photo
(same path) never retrieves it (dropped from its results and from its relevant count), and a
photo indexed with several faces counts once. Retrieval metrics (`metrics.metrics_from_ranked`:
top-k, precision@k, recall@k, MAP@R) are computed from the ranked identities, searching deep
enough (k >= the largest R) for an exact MAP@R. Verification (`verification.verification_metrics`)
uses the embeddings: in leave-one-out, pairs of two different photos of the set; otherwise
pairs of one query and one gallery item, never a query with its own copy.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
from absl import logging

from facetriplet import metrics, verification
from facetriplet.data import layouts
from facetriplet.errors import UserError
from facetriplet.search import embedding, gallery, retrieval
from facetriplet.search.engine import Match, QueryEngine, SearchResult
from facetriplet.search.index import GalleryIndex
from facetriplet.search.items import Item

UNKNOWN = -2  # label of an item of unknown identity: never relevant


@dataclasses.dataclass
class Labelled:
  """Embedded images with their identities (None where unknown)."""

  embeddings: np.ndarray
  entries: list[Any]
  identities: list[Optional[str]]
  problems: list[embedding.Problem]


@dataclasses.dataclass
class Scored:
  """One feature's scores and what the report shows of them."""

  retrieval: dict[str, Any]
  verification: dict[str, Any]
  results: list[SearchResult]  # every query's matches (cut to the largest k)
  identity_of: Callable[[Item], Optional[str]]
  problems: dict[str, list[dict[str, Any]]]
  shared_names: frozenset = frozenset()


def identity_of(entry_or_item: Any, labels: Optional[dict[str, str]]) -> Optional[str]:
  """An entry's or item's identity: from the labels file (by relative path, then file name)
  where given, else its own."""
  rel = entry_or_item.rel_path or os.path.basename(entry_or_item.path)
  known = entry_or_item.identity
  if labels:
    return labels.get(rel, labels.get(os.path.basename(rel), known))
  return known


def embed_set(
  extractor,
  path: str,
  layout: str,
  labels: Optional[dict[str, str]],
  batch_size: int,
  workers: int,
  progress: bool,
  splits: Optional[Sequence[str]] = None,
  crops: Optional[embedding.CropStore] = None,
) -> Labelled:
  """Embeds a folder, TFRecord folder (`splits` of it, default all) or list file and attaches
  identities; `crops` keeps each photo's crop for the next feature with the same crop."""
  if os.path.isfile(path):
    entries = layouts.read_path_list(path)
    emb, kept, problems = embedding.embed_entries(
      extractor, entries, batch_size, workers, progress, with_faces=True, crops=crops
    )
  else:
    emb, kept, problems = gallery.embed_gallery(
      extractor, path, layout, splits, batch_size, workers, progress, crops=crops
    )
  return Labelled(emb, kept, [identity_of(e, labels) for e in kept], problems)


def encode(query_ids: Sequence[Optional[str]], gallery_ids: Sequence[Optional[str]]):
  """Identities as integer labels shared by both sides (UNKNOWN for None)."""
  names = sorted({i for i in list(query_ids) + list(gallery_ids) if i is not None})
  code = {name: i for i, name in enumerate(names)}
  q = np.array([code[i] if i is not None else UNKNOWN for i in query_ids], np.int64)
  g = np.array([code[i] if i is not None else UNKNOWN for i in gallery_ids], np.int64)
  return q, g


def exact_index(extractor, g: Labelled) -> GalleryIndex:
  """An exact in-memory index of embedded gallery photos (rows in gallery order)."""
  items = [dataclasses.replace(Item.of_face(e), id=str(i)) for i, e in enumerate(g.entries)]
  return GalleryIndex.build(g.embeddings, items, extractor.fingerprint, mode="brute_force")


def _clamp_ks(ks: Sequence[int], candidates: int, clamped: dict[int, int]) -> list[int]:
  """`ks` with every k above the number of candidates lowered to it (recorded in `clamped`), so
  precision@k never divides by results that cannot exist."""
  if candidates < 1:
    raise UserError(
      "the gallery has no candidate for any query (one image, queried against "
      "itself): add gallery images"
    )
  out = []
  for k in ks:
    if k > candidates:
      clamped[int(k)] = candidates
      logging.warning(
        "k=%d is more than the %d candidates per query: scored at k=%d (the "
        "metric keys keep the name @%d)",
        k,
        candidates,
        candidates,
        k,
      )
    out.append(min(int(k), candidates))
  return out


def _keys_as_asked(result: dict, ks: Sequence[int], ks_used: Sequence[int]) -> dict:
  """Metric keys named by the asked k (`top10`) even where it was scored at a clamped k."""
  out = {
    key: v
    for key, v in result.items()
    if not any(key in (f"top{u}", f"precision@{u}", f"recall@{u}") for u in ks_used)
  }
  for k, used in zip(ks, ks_used):
    for stem in ("top{}", "precision@{}", "recall@{}"):
      out[stem.format(k)] = result[stem.format(used)]
  return out


def rank_and_score(
  setup, extractor, q: Labelled, index: GalleryIndex, clamped: dict[int, int]
) -> tuple[dict[str, Any], list[list[Match]], Any]:
  """Retrieval metrics of `q` against `index` through the engine.

  Returns:
    (metrics, each query's matches, identity_of for the index's items).
  """
  labels = setup.labels
  item_identity = {item.photo: identity_of(item, labels) for item in index.items}
  photos = list(item_identity)
  q_ids, g_ids = encode(q.identities, [item_identity[p] for p in photos])
  keep = q_ids != UNKNOWN
  if not keep.any():
    raise UserError(
      "no query has a known identity: use identity folders (--layout=folders) or "
      "--labels=<file with '<file> <identity>' lines>"
    )
  code = dict(zip(photos, g_ids))
  own = [os.path.abspath(e.path) if os.path.abspath(e.path) in code else None for e in q.entries]
  counts = np.bincount(g_ids[g_ids >= 0], minlength=int(max(q_ids.max(), g_ids.max(), 0)) + 1)
  num_relevant = np.where(q_ids >= 0, counts[np.maximum(q_ids, 0)], 0)
  num_relevant -= np.array(
    [o is not None and code[o] == c >= 0 for o, c in zip(own, q_ids)], num_relevant.dtype
  )
  ks_used = _clamp_ks(setup.ks, len(photos) - (1 if any(own) else 0), clamped)
  depth = min(len(photos), max(max(ks_used), int(num_relevant.max(initial=0)), setup.grid_k))
  matches = QueryEngine(extractor, index).rank(q.embeddings, depth, exclude=own)
  ranked = np.full((len(matches), depth), metrics.PAD, np.int64)
  for i, found in enumerate(matches):
    ranked[i, : len(found)] = [code[m.item.photo] for m in found]
  result = metrics.metrics_from_ranked(ranked[keep], q_ids[keep], num_relevant[keep], ks_used)
  result = _keys_as_asked(result, setup.ks, ks_used)
  result["self_matches_excluded"] = int(sum(1 for o, k in zip(own, keep) if o and k))
  if not result.get("num_queries"):
    loo = setup.mode == "leave_one_out"
    raise UserError(
      f"no query of {setup.queries} has a relevant gallery item (same identity"
      + (", another photo" if loo else "")
      + "), so every metric would be undefined: "
      + (
        "leave-one-out needs identities with 2 or more photos"
        if loo
        else "check --labels and the identity folders"
      )
    )
  return result, matches, lambda item: item_identity.get(item.photo)


def score_verification(
  q: Labelled,
  far: float,
  index: Optional[GalleryIndex] = None,
  labels: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
  """Verification over pairs of known identity: within the queries (no index given), else one
  query and one index item, leaving out each query's own copy in the index."""
  fars = sorted(set(verification.FARS) | {float(far)}, reverse=True)
  g_identities = [identity_of(item, labels) for item in index.items] if index is not None else []
  q_ids, g_ids = encode(q.identities, g_identities)
  qk = np.flatnonzero(q_ids != UNKNOWN)
  if index is None:
    result = verification.verification_metrics(q.embeddings[qk], q_ids[qk], fars=fars)
  else:
    gk = np.flatnonzero(g_ids != UNKNOWN)
    row = {item.photo: j for j, item in enumerate(index.items)}
    own = np.array([row.get(os.path.abspath(e.path), -1) for e in q.entries], np.int64)
    where = np.full(len(g_ids) + 1, -1, np.int64)  # index row -> row among the kept ones
    where[gk] = np.arange(len(gk))
    theirs = where[own[qk]]  # own = -1 reads the sentinel at the end
    rows = np.flatnonzero(theirs >= 0)
    result = verification.verification_metrics(
      q.embeddings[qk],
      q_ids[qk],
      np.asarray(index.embeddings)[gk],
      g_ids[gk],
      fars=fars,
      exclude=np.stack([rows, theirs[rows]], axis=1),
    )
  key = verification.far_key(far)
  result.update(
    far=float(far),
    threshold_at_far=result[f"threshold@far={key}"],
    tar_at_far=result[f"tar@far={key}"],
  )
  return result


def _scored(
  setup,
  extractor,
  q: Labelled,
  index: GalleryIndex,
  clamped: dict[int, int],
  within_queries: bool,
  gallery_problems: Sequence[embedding.Problem] = (),
) -> Scored:
  result, matches, gallery_identity = rank_and_score(setup, extractor, q, index, clamped)
  problem = {p.path: p.reason for p in q.problems}
  k = max(setup.ks)
  results = [
    SearchResult(
      e.path, found[:k], tuple(e.box) if e.box and e.found else None, 0, problem.get(e.path), e
    )
    for e, found in zip(q.entries, matches)
  ]
  return Scored(
    result,
    score_verification(q, setup.far, None if within_queries else index, setup.labels),
    results,
    gallery_identity,
    {
      "queries": [p.to_dict() for p in q.problems],
      "gallery": [p.to_dict() for p in gallery_problems],
    },
    retrieval.shared_names(index.items),
  )


def score_gallery(
  setup, extractor, q: Labelled, clamped: dict[int, int], crops=None, **_
) -> Scored:
  """Queries against a second labelled set, searched exactly."""
  g = embed_set(
    extractor,
    setup.gallery,
    setup.layout,
    setup.labels,
    setup.batch_size,
    setup.workers,
    setup.progress,
    setup.splits,
    crops,
  )
  if not g.entries:
    raise UserError(f"the gallery {setup.gallery} has no readable image")
  return _scored(setup, extractor, q, exact_index(extractor, g), clamped, False, g.problems)


def score_index(
  setup, extractor, q: Labelled, clamped: dict[int, int], index: Optional[GalleryIndex] = None, **_
) -> Scored:
  """Queries against a built index, as the index's own search answers them."""
  return _scored(setup, extractor, q, index, clamped, False)


def score_leave_one_out(setup, extractor, q: Labelled, clamped: dict[int, int], **_) -> Scored:
  """Every photo of one labelled set against all the others."""
  return _scored(setup, extractor, q, exact_index(extractor, q), clamped, True)


SCORERS = {"gallery": score_gallery, "index": score_index, "leave_one_out": score_leave_one_out}
