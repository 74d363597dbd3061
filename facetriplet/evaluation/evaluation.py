"""Score retrieval where identities are known, for one or several feature extractors.

Three set-ups, each scored with `facetriplet.metrics` (top-1/5/10 accuracy, precision@k,
recall@k, MAP@R):
  * queries + gallery: two labelled sets (folders layout, TFRecords, or a labels file); exact
    ranking of the gallery for every query;
  * queries + index: the gallery is a built ScaNN index; its answers are scored
    (`metrics_from_ranked`), searching deep enough (k >= the largest R) for an exact MAP@R;
  * leave-one-out over one labelled set: every photo queries all the others.
Verification (`metrics.verification_metrics`: is a pair one person, by cosine score >= threshold)
is scored beside retrieval, over pairs of photos of known identity: in leave-one-out, pairs of two
different photos of the set; with a gallery or an index, pairs of one query and one gallery item
(a query never paired with its own file in the index). Same-identity pairs are all kept (up to
1M), different-identity pairs are a seeded sample of at most 100k. Reported: TAR at FAR 1e-1,
1e-2, 1e-3 and at `far`, the threshold for each, EER and its threshold, AUC, a ROC of <= 200 points.
Outputs (in `output_dir`, written atomically): metrics.json (`results`: retrieval per feature,
`verification`: verification per feature), metrics.md (retrieval, then verification; one row per
feature) and grid.png (the first queries beside their top-k; grid_<features>.png for further
features).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

from facetriplet import atomic, metrics
from facetriplet.data import faces, layouts
from facetriplet.errors import ImageError, UserError
from facetriplet.evaluation import grid
from facetriplet.search import embedding, gallery
from facetriplet.search import features as features_lib

UNKNOWN = -2  # label of a gallery item of unknown identity: never relevant


@dataclasses.dataclass
class Labelled:
  """Embedded images with integer labels (UNKNOWN where the identity is unknown)."""
  embeddings: np.ndarray
  entries: list[Any]
  identities: list[Optional[str]]
  problems: list[embedding.Problem]


def _identity(entry_like: Any, labels: Optional[dict[str, str]]) -> Optional[str]:
  rel = entry_like["rel_path"] if isinstance(entry_like, dict) else entry_like.rel_path
  known = entry_like.get("identity") if isinstance(entry_like, dict) else entry_like.identity
  if labels:
    return labels.get(rel, labels.get(os.path.basename(rel), known))
  return known


def embed_set(extractor, path: str, layout: str, labels: Optional[dict[str, str]],
              batch_size: int, workers: int, progress: bool,
              splits: Optional[Sequence[str]] = None) -> Labelled:
  """Embeds a folder, TFRecord folder (`splits` of it, default all) or list file and attaches
  identities."""
  if os.path.isfile(path):
    entries = layouts.read_path_list(path)
    emb, kept, problems = embedding.embed_entries(extractor, entries, batch_size, workers,
                                                  progress)
  else:
    emb, kept, problems = gallery.embed_gallery(extractor, path, layout, splits, batch_size,
                                                workers, progress)
  return Labelled(emb, kept, [_identity(e, labels) for e in kept], problems)


def _encode(query_ids: Sequence[Optional[str]], gallery_ids: Sequence[Optional[str]]):
  names = sorted({i for i in list(query_ids) + list(gallery_ids) if i is not None})
  code = {name: i for i, name in enumerate(names)}
  q = np.array([code.get(i, UNKNOWN) if i is not None else UNKNOWN for i in query_ids], np.int64)
  g = np.array([code.get(i, UNKNOWN) if i is not None else UNKNOWN for i in gallery_ids],
               np.int64)
  return q, g


@dataclasses.dataclass
class Ranking:
  """Top results of the grid queries: gallery rows, scores, and what to show for each row."""
  indices: np.ndarray
  scores: np.ndarray


def _score_dense(q: Labelled, g: Labelled, ks, leave_one_out: bool, grid_rows: int, grid_k: int):
  q_ids, g_ids = _encode(q.identities, g.identities)
  keep = q_ids != UNKNOWN
  if not keep.any():
    raise UserError("no query has a known identity: use identity folders (--layout=folders) or "
                    "--labels=<file with '<file> <identity>' lines>")
  if leave_one_out:
    result = metrics.retrieval_metrics(q.embeddings[keep], q_ids[keep], g.embeddings[keep],
                                       g_ids[keep], ks, leave_one_out=True)
  else:
    result = metrics.retrieval_metrics(q.embeddings[keep], q_ids[keep], g.embeddings, g_ids, ks)
  n = min(grid_rows, len(q_ids))
  idx, _ = metrics.ranked_labels(q.embeddings[:n], g.embeddings, g_ids, grid_k, leave_one_out)
  sims = q.embeddings[:n] @ g.embeddings.T
  scores = np.take_along_axis(sims, np.maximum(idx, 0), axis=1) if n else np.zeros((0, grid_k))
  return result, Ranking(idx, scores)


def _drop_own(idx: np.ndarray, scores: np.ndarray, own: np.ndarray, depth: int):
  """Each row's results without its own gallery row `own` (-1 = none), cut to `depth`."""
  is_own = (idx == own[:, None]) & (own[:, None] >= 0)
  order = np.argsort(is_own, axis=1, kind="stable")  # own hit moves to the end, rest in order
  idx = np.where(np.take_along_axis(is_own, order, axis=1), -1,
                 np.take_along_axis(idx, order, axis=1))[:, :depth]
  scores = np.take_along_axis(scores, order, axis=1)[:, :depth]
  return idx, np.where(idx >= 0, scores, -np.inf).astype(np.float32)


def _score_index(extractor, q: Labelled, index, ks, labels, grid_rows: int, grid_k: int):
  """Scores queries against an index. A query that is itself a gallery file (same absolute path)
  never counts its own copy: it is dropped from its results and from its relevant count, as
  `retrieve` does, so self-matches never inflate the metrics."""
  g_identities = [_identity(item, labels) for item in index.items]
  q_ids, g_ids = _encode(q.identities, g_identities)
  keep = q_ids != UNKNOWN
  if not keep.any():
    raise UserError("no query has a known identity: use identity folders (--layout=folders) or "
                    "--labels=<file with '<file> <identity>' lines>")
  own = _own_rows(q, index)
  counts = np.bincount(g_ids[g_ids >= 0], minlength=int(max(q_ids.max(), g_ids.max(), 0)) + 1)
  num_relevant = np.where(q_ids >= 0, counts[np.maximum(q_ids, 0)], 0)
  own_relevant = (own >= 0) & (q_ids >= 0) & (g_ids[np.maximum(own, 0)] == q_ids)
  num_relevant = num_relevant - own_relevant.astype(num_relevant.dtype)
  depth = min(len(index), max(max(ks), int(num_relevant.max(initial=0)), grid_k))
  extra = 1 if (own >= 0).any() else 0
  idx, scores = index.search(q.embeddings, min(len(index), depth + extra))
  if extra:
    idx, scores = _drop_own(np.asarray(idx), np.asarray(scores), own, depth)
  ranked = np.where(idx >= 0, g_ids[np.maximum(idx, 0)], metrics.PAD)
  result = metrics.metrics_from_ranked(ranked[keep], q_ids[keep], num_relevant[keep], ks)
  result["self_matches_excluded"] = int((own[keep] >= 0).sum())
  n = min(grid_rows, len(q_ids))
  return result, Ranking(idx[:n, :grid_k], scores[:n, :grid_k]), g_identities


def _own_rows(q: Labelled, index) -> np.ndarray:
  """Per query, the index row holding the same file (same absolute path), -1 where none."""
  # abspath is string work only (no filesystem calls).
  gallery_row = {os.path.abspath(item["path"]): j for j, item in enumerate(index.items)
                 if item.get("path")}
  return np.array([gallery_row.get(os.path.abspath(e.path), -1) if getattr(e, "path", None)
                   else -1 for e in q.entries], np.int64)


def _verification(q: Labelled, far: float, g_embeddings: Optional[np.ndarray] = None,
                  g_identities: Optional[Sequence[Optional[str]]] = None,
                  own: Optional[np.ndarray] = None) -> dict[str, Any]:
  """Verification over pairs of known identity: within the queries (no gallery given), else one
  query and one gallery item, leaving out each query's own gallery row `own` (-1: none)."""
  fars = sorted(set(metrics.FARS) | {float(far)}, reverse=True)
  q_ids, g_ids = _encode(q.identities, g_identities if g_identities is not None else [])
  qk = np.flatnonzero(q_ids != UNKNOWN)
  if g_embeddings is None:
    result = metrics.verification_metrics(q.embeddings[qk], q_ids[qk], fars=fars)
  else:
    gk = np.flatnonzero(g_ids != UNKNOWN)
    exclude = None
    if own is not None:
      where = np.full(len(g_ids) + 1, -1, np.int64)  # gallery row -> row among the kept ones
      where[gk] = np.arange(len(gk))
      theirs = where[own[qk]]  # own = -1 reads the sentinel at the end
      rows = np.flatnonzero(theirs >= 0)
      exclude = np.stack([rows, theirs[rows]], axis=1)
    result = metrics.verification_metrics(q.embeddings[qk], q_ids[qk],
                                          np.asarray(g_embeddings)[gk], g_ids[gk], fars=fars,
                                          exclude=exclude)
  key = metrics.far_key(far)
  result.update(far=float(far), threshold_at_far=result[f"threshold@far={key}"],
                tar_at_far=result[f"tar@far={key}"])
  return result


def verification_markdown(verification: dict[str, dict[str, Any]], far: float) -> str:
  """The verification table of metrics.md: one row per feature ('n/a': too few negatives)."""
  rows = {}
  for name, v in verification.items():
    cells = {f"TAR@FAR={metrics.far_key(f)}": v.get(f"tar@far={metrics.far_key(f)}")
             for f in metrics.FARS}
    cells.update({"EER": v.get("eer"), f"threshold@FAR={metrics.far_key(far)}":
                  v.get("threshold_at_far"), "pairs (same/different)":
                  f"{v['num_positive_pairs']}/{v['num_negative_pairs']}"})
    rows[name] = {k: "n/a" if c is None else c for k, c in cells.items()}
  return metrics.to_markdown(rows) if rows else ""


def _crop(path: str, settings) -> Optional[np.ndarray]:
  try:
    return faces.load_and_crop(path, settings).image
  except (ImageError, OSError):
    return None


def _cell_image(item: dict, settings) -> Optional[np.ndarray]:
  """A result's picture: its face crop, or, for an index of every face of each photo, the whole
  photo with the matched face's box drawn."""
  if "face" not in item or not item.get("box"):
    return _crop(item["path"], settings)
  try:
    return grid.photo_with_box(faces.load_rgb(item["path"]), item["box"], settings.size)
  except (ImageError, OSError):
    return None


def grid_rows(q: Labelled, ranking: Ranking, gallery_items: Sequence[dict],
              gallery_identities: Sequence[Optional[str]], settings) -> list[grid.GridRow]:
  """GridRows for the ranked queries (images re-cropped from their files; photos of a
  several-faces index shown whole with the matched face boxed)."""
  rows = []
  for i in range(len(ranking.indices)):
    cells = []
    for rank, (j, s) in enumerate(zip(ranking.indices[i], ranking.scores[i]), 1):
      if j < 0:
        continue
      g_id, q_id = gallery_identities[j], q.identities[i]
      correct = None if g_id is None or q_id is None else g_id == q_id
      cells.append(grid.GridCell(_cell_image(gallery_items[j], settings), correct,
                                 f"#{rank} {float(s):.2f}"))
    caption = q.entries[i].rel_path
    rows.append(grid.GridRow(_crop(q.entries[i].path, settings), caption, cells))
  return rows


def evaluate(features: Sequence[str], output_dir: str, model_dir: Optional[str] = None,
             queries: Optional[str] = None, gallery_dir: Optional[str] = None,
             index_dir: Optional[str] = None, data: Optional[str] = None,
             leave_one_out: bool = False, labels_file: Optional[str] = None,
             layout: str = "auto", ks: Sequence[int] = (1, 5, 10), grid_queries: int = 8,
             grid_k: int = 10, batch_size: int = 64, workers: int = 4,
             progress: bool = True, far: float = 0.01,
             splits: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Scores each feature extractor and writes metrics.json, metrics.md and the grid(s).

  `far`: the false accept rate whose threshold is reported as `threshold_at_far`; `splits`: the
  TFRecord splits embedded where a set is a TFRecord folder (default: all).

  Returns:
    {"results": {features: metrics}, "verification": {features: verification metrics},
    "setup": {...}, "problems": {...}}.

  Raises:
    UserError: inconsistent set-up flags, unknown identities, empty sets, model mismatch, a
      `far` outside (0, 1).
  """
  if not 0.0 < far < 1.0:
    raise UserError(f"--far={far} must be a false accept rate between 0 and 1, e.g. 0.01")
  if leave_one_out:
    if not data or queries or gallery_dir or index_dir:
      raise UserError("--leave_one_out takes --data=<labelled folder> only (no --queries, "
                      "--gallery or --index)")
  elif not queries or bool(gallery_dir) == bool(index_dir):
    raise UserError("pass --queries with one of --gallery or --index, or --leave_one_out "
                    "--data=<labelled folder>")
  labels = layouts.read_labels(labels_file) if labels_file else None
  if index_dir and features and len(features) > 1:
    raise UserError("an index holds one kind of features: compare features with --gallery")
  index = None
  if index_dir:
    index_extractor, index, info = gallery.open_index(index_dir, model_dir,
                                                      features[0] if features else None)
    features, model_dir = [info["features"]], info["model"]
  if not features:
    raise UserError("no features to evaluate: pass --features=embedding (or pixels, hog, ...)")
  results, verification, problems, first = {}, {}, {}, True
  clamped: dict[int, int] = {}
  for name in features:
    extractor = (index_extractor if index is not None else
                 features_lib.make_extractor(name, model_dir, source=data or gallery_dir))
    logging.info("evaluating %s (fingerprint %s)", name, extractor.fingerprint)
    q = embed_set(extractor, data or queries, layout, labels, batch_size, workers, progress,
                  splits)
    if len(q.entries) == 0:
      raise UserError(f"no readable query image in {data or queries}")
    if index is not None:
      ks_used = _clamp_ks(ks, len(index), clamped)
      result, ranking, g_ids = _score_index(extractor, q, index, ks_used, labels, grid_queries,
                                            grid_k)
      items = index.items
      verification[name] = _verification(q, far, index.embeddings, g_ids, _own_rows(q, index))
    else:
      g = q if leave_one_out else embed_set(extractor, gallery_dir, layout, labels, batch_size,
                                            workers, progress, splits)
      if len(g.entries) == 0:
        raise UserError(f"the gallery {gallery_dir} has no readable image")
      ks_used = _clamp_ks(ks, len(g.entries) - (1 if leave_one_out else 0), clamped)
      result, ranking = _score_dense(q, g, ks_used, leave_one_out, grid_queries, grid_k)
      items, g_ids = [gallery.item_of(e) for e in g.entries], g.identities
      verification[name] = (_verification(q, far) if leave_one_out else
                            _verification(q, far, g.embeddings, g.identities))
      problems[f"{name}/gallery"] = [p.to_dict() for p in g.problems] if g is not q else []
    result = _keys_as_asked(result, ks, ks_used)
    if not result.get("num_queries"):
      raise UserError(
          f"no query of {data or queries} has a relevant gallery item (same identity"
          + (", another photo" if leave_one_out else "") + "), so every metric would be "
          "undefined: " + ("leave-one-out needs identities with 2 or more photos"
                           if leave_one_out else "check --labels and the identity folders"))
    results[name] = result
    problems[f"{name}/queries"] = [p.to_dict() for p in q.problems]
    if grid_queries > 0:
      rows = grid_rows(q, ranking, items, g_ids, extractor.crop_settings)
      png = "grid.png" if first else f"grid_{name}.png"
      grid.save_grid(os.path.join(output_dir, png), grid.make_grid(rows))
    first = False
  setup = {"mode": "leave_one_out" if leave_one_out else ("index" if index_dir else "gallery"),
           # A query that is itself a gallery file never retrieves itself (index mode and
           # leave-one-out); per feature, `self_matches_excluded` counts such queries.
           "self_matches": "excluded" if (leave_one_out or index_dir) else "not checked",
           "queries": data or queries, "gallery": gallery_dir, "index": index_dir,
           "model": model_dir, "labels": labels_file, "ks": list(ks), "features": list(features),
           # k larger than the candidates of a query: scored at the number of candidates.
           "ks_clamped": {f"@{k}": v for k, v in sorted(clamped.items())},
           "far": float(far),
           "verification_pairs": ("two photos of the set" if leave_one_out else
                                  "one query and one gallery item") + ", both of known identity"}
  report = {"results": results, "verification": verification, "setup": setup,
            "problems": problems}
  atomic.write_json(os.path.join(output_dir, "metrics.json"), report)
  atomic.write_text(os.path.join(output_dir, "metrics.md"), metrics.to_markdown(results) + (
      f"\nVerification (pairs: {setup['verification_pairs']}; accept when cosine >= threshold; "
      "n/a: fewer than 1/FAR different-identity pairs):\n\n" + verification_markdown(
          verification, far) if verification else ""))
  return report


def _clamp_ks(ks: Sequence[int], candidates: int, clamped: dict[int, int]) -> list[int]:
  """`ks` with every k above the number of candidates lowered to it (recorded in `clamped`), so
  precision@k never divides by results that cannot exist."""
  if candidates < 1:
    raise UserError("the gallery has no candidate for any query (one image, queried against "
                    "itself): add gallery images")
  out = []
  for k in ks:
    if k > candidates:
      clamped[int(k)] = candidates
      logging.warning("k=%d is more than the %d candidates per query: scored at k=%d (the "
                      "metric keys keep the name @%d)", k, candidates, candidates, k)
    out.append(min(int(k), candidates))
  return out


def _keys_as_asked(result: dict, ks: Sequence[int], ks_used: Sequence[int]) -> dict:
  """Metric keys named by the asked k (`top10`) even where it was scored at a clamped k."""
  out = {key: v for key, v in result.items()
         if not any(key in (f"top{u}", f"precision@{u}", f"recall@{u}") for u in ks_used)}
  for k, used in zip(ks, ks_used):
    for stem in ("top{}", "precision@{}", "recall@{}"):
      out[stem.format(k)] = result[stem.format(used)]
  return out
