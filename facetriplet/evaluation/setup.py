"""What an evaluation run is asked to do, checked once: `EvalSetup.create` validates the flags
and settles the mode before any image is read.

Modes:
  gallery        --queries + --gallery: two labelled sets (folders, TFRecords or list files)
  index          --queries + --index: a built index answers (its features and model)
  leave_one_out  --leave_one_out --data: every photo of one labelled set queries the others
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from facetriplet.data import layouts
from facetriplet.errors import UserError
from facetriplet.search import features as features_lib
from facetriplet.search import gallery

MODES = ("gallery", "index", "leave_one_out")


@dataclasses.dataclass(frozen=True)
class EvalSetup:
  """A validated evaluation: what is scored against what, and how it is reported."""

  mode: str
  features: tuple[str, ...]
  output_dir: str
  queries: str  # the query set (the labelled set in leave-one-out)
  gallery: Optional[str] = None
  index: Optional[str] = None
  model: Optional[str] = None
  labels_file: Optional[str] = None
  labels: Optional[dict[str, str]] = None
  layout: str = "auto"
  ks: tuple[int, ...] = (1, 5, 10)
  far: float = 0.01
  splits: Optional[tuple[str, ...]] = None
  grid_queries: int = 8
  grid_k: int = 10
  batch_size: int = 64
  workers: int = 4
  progress: bool = True

  @classmethod
  def create(
    cls,
    features: Sequence[str],
    output_dir: str,
    model_dir: Optional[str] = None,
    queries: Optional[str] = None,
    gallery_dir: Optional[str] = None,
    index_dir: Optional[str] = None,
    data: Optional[str] = None,
    leave_one_out: bool = False,
    labels_file: Optional[str] = None,
    layout: str = "auto",
    ks: Sequence[int] = (1, 5, 10),
    far: float = 0.01,
    splits: Optional[Sequence[str]] = None,
    grid_queries: int = 8,
    grid_k: int = 10,
    batch_size: int = 64,
    workers: int = 4,
    progress: bool = True,
  ) -> "EvalSetup":
    """The setup of `evaluation.evaluate`'s arguments.

    Raises:
      UserError: inconsistent set-up flags, an unknown feature, bad ks or far.
    """
    if not 0.0 < far < 1.0:
      raise UserError(f"--far={far} must be a false accept rate between 0 and 1, e.g. 0.01")
    if leave_one_out:
      if not data or queries or gallery_dir or index_dir:
        raise UserError(
          "--leave_one_out takes --data=<labelled folder> only (no --queries, --gallery or --index)"
        )
      mode, queries = "leave_one_out", data
    elif not queries or bool(gallery_dir) == bool(index_dir):
      raise UserError(
        "pass --queries with one of --gallery or --index, or --leave_one_out "
        "--data=<labelled folder>"
      )
    else:
      mode = "index" if index_dir else "gallery"
    features = tuple(f.strip() for f in features if f.strip())
    if mode == "index" and len(features) > 1:
      raise UserError("an index holds one kind of features: compare features with --gallery")
    if mode != "index" and not features:
      raise UserError("no features to evaluate: pass --features=embedding (or pixels, hog, ...)")
    for f in features:
      if f not in features_lib.FEATURES:
        raise UserError(f"--features: {f!r} is not one of {', '.join(features_lib.FEATURES)}")
    if not ks or min(int(k) for k in ks) < 1:
      raise UserError(f"--ks={list(ks)} must be positive integers, e.g. --ks=1,5,10")
    labels = layouts.read_labels(labels_file) if labels_file else None
    named = (("data" if mode == "leave_one_out" else "queries", queries), ("gallery", gallery_dir))
    for what, path in named:  # a wrong path is reported before any model loads
      if path and not os.path.isfile(path):  # a list file, else a folder
        gallery.check_source(path, what)
    return cls(
      mode,
      features,
      output_dir,
      queries,
      gallery_dir,
      index_dir,
      model_dir,
      labels_file,
      labels,
      layout,
      tuple(int(k) for k in ks),
      float(far),
      tuple(splits) if splits else None,
      grid_queries,
      grid_k,
      batch_size,
      workers,
      progress,
    )

  def describe(self) -> dict:
    """The `setup` record of metrics.json."""
    return {
      "mode": self.mode,
      "queries": self.queries,
      "gallery": self.gallery,
      "index": self.index,
      "model": self.model,
      "labels": self.labels_file,
      "ks": list(self.ks),
      "features": list(self.features),
      "far": self.far,
      # A query that is itself a gallery photo never retrieves itself, in every mode;
      # per feature, `self_matches_excluded` counts such queries.
      "self_matches": "excluded",
      "verification_pairs": (
        "two photos of the set"
        if self.mode == "leave_one_out"
        else "one query and one gallery item"
      )
      + ", both of known identity",
    }
