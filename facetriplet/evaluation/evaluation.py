"""Score retrieval where identities are known, for one or several feature extractors
(`facetriplet-evaluate`).

The set-up is validated once (`setup.EvalSetup`), each feature is scored by its mode's scorer
(`scoring.SCORERS`: queries + gallery, queries + index, leave-one-out; all rankings through the
one query engine), and the report is written (`report`): metrics.json (`results`: retrieval per
feature, `verification`: verification per feature, `setup`, `problems`), metrics.md, results.csv
(each query's top results, as facetriplet-retrieve writes them; results_<feature>.csv for
further features) and grid.png (the first queries beside their top-k; grid_<feature>.png for
further features), all written atomically. With several features, each photo is loaded,
detected and cropped once (`embedding.CropStore`) where they share the crop settings.

Verification (is a pair one person, by cosine score >= threshold) is scored beside retrieval:
TAR at FAR 1e-1, 1e-2, 1e-3 and at `far`, the threshold for each, EER and its threshold, AUC, a
ROC of <= 200 points. Same-identity pairs are all kept (up to 1M), different-identity pairs are a
seeded sample of at most 100k.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from absl import logging

from facetriplet.errors import UserError
from facetriplet.evaluation import report, scoring
from facetriplet.evaluation.scoring import Labelled, embed_set  # noqa: F401  (the public names)
from facetriplet.evaluation.setup import EvalSetup
from facetriplet.search import features as features_lib
from facetriplet.search import embedding, gallery, submission


def evaluate(
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
  grid_queries: int = 8,
  grid_k: int = 10,
  batch_size: int = 64,
  workers: int = 4,
  progress: bool = True,
  far: float = 0.01,
  splits: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
  """Scores each feature extractor and writes the report (see the module docstring).

  `far`: the false accept rate whose threshold is reported as `threshold_at_far`; `splits`: the
  TFRecord splits embedded where a set is a TFRecord folder (default: all).

  Returns:
    {"results": {features: metrics}, "verification": {features: verification metrics},
    "setup": {...}, "problems": {...}}.

  Raises:
    UserError: inconsistent set-up flags, unknown identities, empty sets, model mismatch, a
      `far` outside (0, 1).
  """
  return run(
    EvalSetup.create(
      features,
      output_dir,
      model_dir,
      queries,
      gallery_dir,
      index_dir,
      data,
      leave_one_out,
      labels_file,
      layout,
      ks,
      far,
      splits,
      grid_queries,
      grid_k,
      batch_size,
      workers,
      progress,
    )
  )


def run(setup: EvalSetup) -> dict[str, Any]:
  """Scores a validated set-up and writes its report; returns the report."""
  index, features, model = None, setup.features, setup.model
  if setup.mode == "index":
    extractor, index, info = gallery.open_index(
      setup.index, setup.model, features[0] if features else None
    )
    features, model = (info["features"],), info["model"]
  results, verification, problems = {}, {}, {}
  clamped: dict[int, int] = {}
  # Several features with one crop: each photo is loaded, detected and cropped once.
  crops = embedding.CropStore() if len(features) > 1 else None
  for n, name in enumerate(features):
    if index is None:
      source = setup.queries if setup.mode == "leave_one_out" else setup.gallery
      extractor = features_lib.make_extractor(name, model, source=source)
    logging.info("evaluating %s (fingerprint %s)", name, extractor.fingerprint)
    q = embed_set(
      extractor,
      setup.queries,
      setup.layout,
      setup.labels,
      setup.batch_size,
      setup.workers,
      setup.progress,
      setup.splits,
      crops,
    )
    if not q.entries:
      raise UserError(f"no readable query image in {setup.queries}")
    scored = scoring.SCORERS[setup.mode](setup, extractor, q, clamped, index=index, crops=crops)
    results[name], verification[name] = scored.retrieval, scored.verification
    problems[f"{name}/queries"] = scored.problems["queries"]
    problems[f"{name}/gallery"] = scored.problems["gallery"]
    suffix = "" if n == 0 else f"_{name}"
    submission.write_results_csv(
      os.path.join(setup.output_dir, f"results{suffix}.csv"), scored.results, scored.shared_names
    )
    if setup.grid_queries > 0:
      shown = scored.results[: setup.grid_queries]
      rows = report.grid_rows(
        [r.entry for r in shown],
        q.identities[: len(shown)],
        [r.matches[: setup.grid_k] for r in shown],
        scored.identity_of,
        extractor.crop_settings,
      )
      report.save_grid(setup.output_dir, f"grid{suffix}.png", rows)
  setup_record = dict(
    setup.describe(),
    features=list(features),
    model=model,
    # k larger than the candidates of a query: scored at the candidate count.
    ks_clamped={f"@{k}": v for k, v in sorted(clamped.items())},
  )
  out = {
    "results": results,
    "verification": verification,
    "setup": setup_record,
    "problems": problems,
  }
  report.write_report(setup.output_dir, out)
  return out
