"""A gallery index built from embedding shards (what `beam_index`'s pipeline writes, or any
engine that writes the same files): `read_shards` puts the shards back in gallery order,
`index_from_shards` builds and saves the index with the local path's items and gallery.json, and
`build_from_sample` shapes large galleries (settings for all items, structure built from a
sample, the rest added). Needs no Beam.

An embeddings folder holds `embeddings.json` (fingerprint, dim, crop, faces mode, gallery, shard
list) and `embeddings-NNNNN-of-MMMMM.npz` shards: `keys` int64 [n, 3] (gallery order),
`embeddings` float32 [n, D], `items` (`Item.to_json` as JSON strings), `problems` (skipped /
no-face photos as JSON strings); no pickle.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from facetriplet.errors import UserError
from facetriplet.search import audit, backends, embedding, gallery
from facetriplet.search.embedding import Problem
from facetriplet.search.index import GalleryIndex
from facetriplet.search.items import Item

EMBEDDINGS_FILE = "embeddings.json"
TRAIN_SAMPLE = 250_000  # ScaNN's own training-sample cap
ADD_ROWS = 100_000  # rows per GalleryIndex.add call after the sample


def shard_name(index: int, count: int) -> str:
  return f"embeddings-{index:05d}-of-{count:05d}.npz"


def read_shards(
  embeddings_dir: str,
  fingerprint: Optional[str] = None,
) -> tuple[np.ndarray, list[Item], list[Problem]]:
  """(embeddings [n, D], items, problems) of an embeddings folder, in gallery order.

  Raises:
    UserError: no embeddings.json, or shards of another model than `fingerprint`.
  """
  try:
    with open(os.path.join(embeddings_dir, EMBEDDINGS_FILE), encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(
      f"{embeddings_dir} holds no readable {EMBEDDINGS_FILE} ({e}): embed the "
      "gallery with facetriplet-build-index --runner=..."
    ) from None
  if fingerprint and meta["fingerprint"] != fingerprint:
    raise UserError(
      f"{embeddings_dir} holds embeddings of model {meta['fingerprint']}, not "
      f"{fingerprint}: embed the gallery again with this model"
    )
  keys, vectors, items, problems = [], [], [], []
  for name in meta["shards"]:
    with np.load(os.path.join(embeddings_dir, name), allow_pickle=False) as z:
      keys.append(z["keys"])
      vectors.append(z["embeddings"].astype(np.float32, copy=False))
      items += [Item.from_json(json.loads(s)) for s in z["items"]]
      problems += [json.loads(s) for s in z["problems"]]
  keys_all = np.concatenate(keys).reshape(-1, 3)
  order = np.lexsort(keys_all.T[::-1])
  embeddings = np.concatenate(vectors).reshape(-1, int(meta["dim"]))[order]
  problems.sort(key=lambda kp: tuple(kp[0]))
  return embeddings, [items[i] for i in order], [Problem(**p) for _, p in problems]


def index_from_shards(
  embeddings_dir: str,
  index_dir: str,
  extractor,
  gallery_dir: str,
  layout: str,
  faces_mode: str,
  min_face: float,
  model_dir: Optional[str],
  target_recall: float = 0.95,
  train_sample: int = TRAIN_SAMPLE,
  start: Optional[float] = None,
  backend: str = backends.DEFAULT,
  **settings: Any,
) -> gallery.GallerySummary:
  """Builds and saves the index (with gallery.json) from the embedding shards; see the module
  docstring for the sample + add shape above `train_sample` items."""
  start = time.time() if start is None else start
  embeddings, items, problems = read_shards(embeddings_dir, extractor.fingerprint)
  skipped = [p for p in problems if not p.kept]
  no_face = [p for p in problems if p.reason == embedding.NO_FACE]
  if not items:
    raise UserError(
      f"no usable image in gallery {gallery_dir} ({len(skipped)} skipped): check "
      "the folder and --layout"
    )
  index = build_from_sample(
    embeddings,
    items,
    extractor.fingerprint,
    target_recall,
    train_sample,
    backend=backend,
    **settings,
  )
  info = gallery.gallery_info(
    extractor, gallery_dir, layout, faces_mode, min_face, model_dir, items, problems
  )
  trail = audit.for_build(index_dir, len(index))
  index.save(index_dir, extra_json={gallery.GALLERY_FILE: info}, extra_files=trail)
  return gallery.GallerySummary(
    index_dir,
    len(items),
    skipped,
    no_face,
    int(extractor.dim),
    index.backend.name,
    index.config,
    time.time() - start,
  )


def build_from_sample(
  embeddings: np.ndarray,
  items: Sequence[Item],
  fingerprint: str,
  target_recall: float = 0.95,
  train_sample: int = TRAIN_SAMPLE,
  seed: int = 0,
  backend: str = backends.DEFAULT,
  **settings: Any,
) -> GalleryIndex:
  """`GalleryIndex.build` of everything up to `train_sample` items; above it, settings chosen
  for all items (the backend's automatic ones, then `settings`), the structure built from a
  random sample of `train_sample`, and the other items added in slices of `ADD_ROWS`."""
  n = len(items)
  if n <= train_sample:
    return GalleryIndex.build(embeddings, items, fingerprint, backend, target_recall, **settings)
  chosen = backends.get(backend).settings(n, embeddings.shape[1], target_recall, **settings)
  chosen = {k: v for k, v in chosen.items() if k not in ("target_recall", "trained_on")}
  picked = np.zeros(n, bool)
  picked[np.random.default_rng(seed).choice(n, train_sample, replace=False)] = True
  sample = np.flatnonzero(picked)
  index = GalleryIndex.build(
    embeddings[sample], [items[i] for i in sample], fingerprint, backend, target_recall, **chosen
  )
  rest = np.flatnonzero(~picked)
  for s in range(0, len(rest), ADD_ROWS):
    part = rest[s : s + ADD_ROWS]
    index.add(embeddings[part], [items[i] for i in part])
  index.backend.config.update(trained_on=n, training_sample=int(train_sample))
  return index
