"""Embed image folders with the training-time face crop, and answer queries against an index.

`embed_entries` streams a list of images through load -> crop (a thread pool, each thread with its
own Haar cascade) -> embed (batch by batch), so memory holds a couple of batches of crops, never
the whole gallery. Unreadable files are skipped and returned as problems; photos without a
detectable face use the fallback crop (and are reported) unless the crop settings say 'skip'.

`retrieve` embeds queries with the same extractor as the index (fingerprints must agree) and returns
the top-k gallery items of each; `make_submission` / `write_submission` / `write_results_csv` turn
that into the competition's `submission.json` and a CSV, and `post_submission` sends the JSON.
The gallery side (folder or TFRecords -> index) lives in `facetriplet.gallery`.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
from absl import logging

from facetriplet import atomic
from facetriplet.errors import ImageError, UserError
# The POST of a submission lives in facetriplet.submission; these names stay importable here.
from facetriplet.submission import PostResult, check_submit_url, post_submission  # noqa: F401

FEATURES = ("embedding", "pixels", "color_hist", "lbp", "hog")
NO_FACE = "no-face"


@dataclasses.dataclass(frozen=True)
class Problem:
  """An image that was skipped (`kept=False`) or used with a fallback (`kept=True`, no-face)."""
  path: str
  rel_path: str
  reason: str
  detail: str = ""
  kept: bool = False

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def make_extractor(features: str, model_dir: Optional[str] = None, crop=None):
  """The feature extractor `features` ('embedding' needs `model_dir`, an export folder).

  Args:
    features: one of FEATURES.
    model_dir: export folder written by facetriplet-export (required for 'embedding').
    crop: CropSettings for the classical extractors (default: the export's, else the default).

  Raises:
    UserError: unknown feature name or missing export.
  """
  if features not in FEATURES:
    raise UserError(f"features={features!r} is not one of {', '.join(FEATURES)}")
  from facetriplet import classical  # pylint: disable=g-import-not-at-top
  return classical.get_extractor(features, export_dir=model_dir, crop=crop)


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
  for i in range(0, len(items), size):
    yield items[i:i + size]


def iter_crops(entries: Sequence[Any], settings, batch_size: int = 64, workers: int = 4,
               ) -> Iterator[list[tuple[Any, Any]]]:
  """Yields, batch by batch, [(entry, CropResult or ImageError)] in entry order.

  Loading and cropping run in a thread pool (decoding and OpenCV release the GIL); at most two
  batches are in flight, so memory does not grow with the number of entries. Each thread owns its
  FaceCropper: an OpenCV cascade must not be shared by concurrent detections.
  """
  from facetriplet import faces  # pylint: disable=g-import-not-at-top
  local = threading.local()

  def load(entry):
    cropper = getattr(local, "cropper", None)
    if cropper is None:
      cropper = local.cropper = faces.FaceCropper(settings)
    try:
      return entry, cropper.crop(faces.load_rgb(entry.path))
    except ImageError as e:
      return entry, e

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    pending: list[list[concurrent.futures.Future]] = []
    for batch in _batches(entries, batch_size):
      pending.append([pool.submit(load, e) for e in batch])
      if len(pending) == 2:
        yield [f.result() for f in pending.pop(0)]
    while pending:
      yield [f.result() for f in pending.pop(0)]


def embed_crops(extractor, batches: Iterable[list[tuple[Any, Any]]], total: int,
                on_no_face: str = "center", progress: bool = True, desc: str = "embedding",
                ) -> tuple[np.ndarray, list[Any], list[Problem]]:
  """Embeds batches of (entry, CropResult | ImageError) as they come; see `embed_entries`."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  chunks, kept, problems = [], [], []
  with tqdm(total=total, unit="img", desc=desc, disable=not progress, leave=False) as bar:
    for batch in batches:
      images = []
      for entry, result in batch:
        if isinstance(result, ImageError):
          problems.append(Problem(entry.path, entry.rel_path, result.reason, result.detail))
          continue
        if not result.found:
          skip = on_no_face == "skip"
          problems.append(Problem(entry.path, entry.rel_path, NO_FACE, kept=not skip))
          if skip:
            continue
        images.append(result.image)
        kept.append(entry)
      if images:
        chunks.append(np.asarray(extractor.embed(np.stack(images)), dtype=np.float32))
      bar.update(len(batch))
  dim = int(extractor.dim)
  embeddings = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
  return embeddings, kept, problems


def embed_entries(extractor, entries: Sequence[Any], batch_size: int = 64, workers: int = 4,
                  progress: bool = True, desc: str = "embedding",
                  ) -> tuple[np.ndarray, list[Any], list[Problem]]:
  """Loads, crops (with the extractor's crop settings) and embeds images, streaming in batches.

  Args:
    extractor: an `Embedder` or a classical extractor (`.embed`, `.dim`, `.crop_settings`).
    entries: objects with `.path` and `.rel_path` (layouts.ImageEntry).
    batch_size: images per embedding call.
    workers: loading threads.
    progress: show a tqdm bar.
    desc: label of the bar.

  Returns:
    (embeddings float32 [M, D], kept entries (M, in input order), problems): problems list the
    unreadable files (skipped) and the photos without a detected face (kept with the fallback
    crop, or skipped when the crop settings say on_no_face='skip').
  """
  settings = extractor.crop_settings
  return embed_crops(extractor, iter_crops(entries, settings, batch_size, workers), len(entries),
                     settings.on_no_face, progress, desc)


def read_query_list(path: str) -> list[Any]:
  """Entries of a text file listing image paths (one a line; '#' comments; relative to the file)."""
  from facetriplet.layouts import ImageEntry  # pylint: disable=g-import-not-at-top
  base = os.path.dirname(os.path.abspath(path))
  entries = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      full = line if os.path.isabs(line) else os.path.join(base, line)
      entries.append(ImageEntry(full, line.replace(os.sep, "/"), None, None))
  if not entries:
    raise UserError(f"{path} lists no image paths: write one image path per line")
  return entries


def list_queries(queries: str, layout: str = "auto") -> list[Any]:
  """Query entries from a folder (any layout, see `resolve_layout`) or a text file of paths."""
  if os.path.isfile(queries):
    return read_query_list(queries)
  if not os.path.isdir(queries):
    raise UserError(f"queries {queries} does not exist: pass a folder of images or a text file "
                    "listing image paths")
  from facetriplet import layouts  # pylint: disable=g-import-not-at-top
  return layouts.list_images(queries, resolve_layout(queries, layout))


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


def check_compatible(extractor, index) -> None:
  """Refuses queries from another model than the index's (fingerprint and dimension)."""
  if extractor.fingerprint != index.fingerprint:
    raise UserError(f"the index was built with model {index.fingerprint}, the queries would come "
                    f"from {extractor.fingerprint} ({getattr(extractor, 'name', '?')}): rebuild "
                    "the index with facetriplet-build-index using the same --model/--features")
  if int(extractor.dim) != index.dim:
    raise UserError(f"the index holds {index.dim}-d vectors, the extractor gives {extractor.dim}-d:"
                    " rebuild the index with the same model")


def clamp_k(k: int, gallery_size: int) -> int:
  """k limited to the gallery size (with a warning); an empty gallery is a UserError."""
  if gallery_size == 0:
    raise UserError("the gallery is empty: build the index from a folder with readable images")
  if k < 1:
    raise UserError(f"k={k}: ask for at least one result per query")
  if k > gallery_size:
    logging.warning("k=%d is larger than the gallery (%d items): returning %d per query", k,
                    gallery_size, gallery_size)
    return gallery_size
  return k


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
  k = clamp_k(k, len(index))
  check_compatible(extractor, index)
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


def make_submission(result: RetrievalResult, groupname: str) -> dict[str, Any]:
  """`{"groupname": ..., "images": {query file: [gallery file, ... k]}}`, every query present."""
  images = {name: [item_name(n) for n in q.neighbors]
            for name, q in zip(query_names(result), result.queries)}
  return {"groupname": groupname, "images": images}


def write_submission(path: str, payload: dict[str, Any]) -> None:
  atomic.write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


CSV_COLUMNS = ("query", "rank", "gallery", "similarity", "gallery_identity", "query_identity",
               "query_note")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
  """A text cell a spreadsheet will not run: one starting like a formula gets a leading "'"
  (OWASP's CSV-injection advice); submission.json keeps the exact names."""
  return "'" + value if value.startswith(_FORMULA_START) else value


def write_results_csv(path: str, result: RetrievalResult) -> int:
  """One row per (query, neighbour); an unreadable query gets one row with its reason. Returns rows.

  Names and identities that start with =, +, -, @, tab or CR are written with a leading "'"
  (`csv_text`), so opening the file in a spreadsheet never evaluates them.
  """
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(CSV_COLUMNS)
  rows = 0
  for name, q in zip(query_names(result), result.queries):
    note = q.problem.reason if q.problem else ""
    identity = csv_text(q.entry.identity or "")
    name = csv_text(name)
    if not q.neighbors:
      writer.writerow([name, "", "", "", "", identity, note])
      rows += 1
    for n in q.neighbors:
      writer.writerow([name, n["rank"], csv_text(item_name(n)), f"{n['score']:.6f}",
                       csv_text(n.get("identity") or ""), identity, note])
      rows += 1
  atomic.write_text(path, buf.getvalue())
  return rows


LAYOUTS = ("auto", "folders", "flat", "celeba")


def resolve_layout(root: str, layout: str = "auto") -> str:
  """'auto' -> 'folders' when `root` holds only sub-folders of images, else 'flat'."""
  if layout != "auto":
    return layout
  from facetriplet import layouts  # pylint: disable=g-import-not-at-top
  try:
    names = [n for n in os.listdir(root) if not n.startswith(".")]
  except OSError:
    return "flat"
  if any(layouts.is_image_file(n) and os.path.isfile(os.path.join(root, n)) for n in names):
    return "flat"
  return "folders" if any(os.path.isdir(os.path.join(root, n)) for n in names) else "flat"
