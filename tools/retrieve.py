r"""Finds the top-k gallery images of each query and writes the competition submission.

  facetriplet-retrieve --index=runs/index --queries=data/query --output=runs/submission \
      --groupname=my_team [--k=10] [--submit_url=http://server/submit]
  facetriplet-retrieve --index=runs/index --queries=photo.jpg --min_score=0.45 --output=/tmp/q

Writes <output>/submission.json ({"groupname", "images": {query file: [gallery files]}}) and
<output>/results.csv (query, rank, gallery, similarity, identities), both before any POST, so a
failed submission never loses them. The model defaults to the one the index was built with.
The logic lives in `facetriplet.search` (gallery.open_index, retrieval, submission).
"""

import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from facetriplet.data import layouts
from facetriplet.search import features as features_lib
from facetriplet.search import gallery, retrieval, submission
from facetriplet.search.embedding import NO_FACE
from facetriplet.errors import UserError, run_tool

_QUERIES = flags.DEFINE_string(
  "queries", None, "Query images: one image, a folder, or a text file with one image path a line."
)
_INDEX = flags.DEFINE_string("index", None, "Index folder written by facetriplet-build-index.")
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Export folder, or a pretrained network's name (default: the one the index was built with).",
)
_FEATURES = flags.DEFINE_enum(
  "features",
  None,
  list(features_lib.FEATURES),
  "Features (default: those the index was built with).",
)
_LAYOUT = flags.DEFINE_enum(
  "layout", "auto", list(layouts.LAYOUT_CHOICES), "Layout of a query folder."
)
_K = flags.DEFINE_integer("k", 10, "Gallery images per query.")
_MIN_SCORE = flags.DEFINE_float(
  "min_score",
  None,
  "Leave out gallery images below this cosine similarity: a query may then list none (no match).",
)
_EXCLUDE_SELF = flags.DEFINE_bool(
  "exclude_self",
  True,
  "A query that is itself a gallery file (same path: leave-one-out over one labelled set) "
  "never retrieves itself.",
)
_OUTPUT = flags.DEFINE_string("output", ".", "Folder for submission.json and results.csv.")
_GROUPNAME = flags.DEFINE_string("groupname", "facetriplet", "Team name in the submission.")
_SUBMIT_URL = flags.DEFINE_string("submit_url", None, "POST the submission JSON here.")
_TIMEOUT = flags.DEFINE_float("timeout", 30.0, "Seconds per POST attempt.")
_RETRIES = flags.DEFINE_integer("retries", 3, "POST retries after the first attempt.")
_BACKOFF = flags.DEFINE_float("backoff", 1.0, "First wait between POST attempts (doubles).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per embedding batch.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Loading threads; 0 = CPU count.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def _model():
  """--model: an export folder, or a pretrained network's name (its cached export)."""
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  return export.resolve_model(_MODEL.value)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _QUERIES.value or not _INDEX.value:
    raise UserError(
      "--queries=<image, folder or list file> and --index=<index folder> are required"
    )
  if _SUBMIT_URL.value:  # before any work: a typo must not cost the whole run
    submission.check_submit_url(_SUBMIT_URL.value)
  workers = _WORKERS.value or os.cpu_count() or 1
  gallery.check_index(_INDEX.value)  # the index, then the queries, before the model loads
  entries = layouts.list_inputs(_QUERIES.value, _LAYOUT.value)
  extractor, index, info = gallery.open_index(_INDEX.value, _model(), _FEATURES.value)
  features, model = info["features"], info["model"]
  logging.info(
    "retrieve: queries=%s (%d) index=%s (%d items) features=%s model=%s k=%d "
    "output=%s groupname=%s submit_url=%s",
    _QUERIES.value,
    len(entries),
    _INDEX.value,
    len(index),
    features,
    model,
    _K.value,
    _OUTPUT.value,
    _GROUPNAME.value,
    _SUBMIT_URL.value,
  )
  result = retrieval.retrieve(
    extractor,
    index,
    entries,
    _K.value,
    _BATCH_SIZE.value,
    workers,
    _PROGRESS.value,
    exclude_self=_EXCLUDE_SELF.value,
    min_score=_MIN_SCORE.value,
  )
  payload = submission.make_submission(result.results, _GROUPNAME.value, result.shared_names)
  json_path = os.path.join(_OUTPUT.value, "submission.json")
  csv_path = os.path.join(_OUTPUT.value, "results.csv")
  submission.write_submission(json_path, payload)
  rows = submission.write_results_csv(csv_path, result.results, result.shared_names)
  unreadable = [p for p in result.problems if not p.kept]
  no_face = [p for p in result.problems if p.reason == NO_FACE]
  print(
    f"{len(entries)} queries, top-{result.k} of {len(index)} gallery items, "
    f"{result.seconds:.1f} s\n  wrote {json_path} and {csv_path} ({rows} rows)"
  )
  for p in no_face:
    print(f"  no face detected in {p.rel_path}: used the centred fallback crop")
  for p in unreadable:
    print(
      f"  unreadable query {p.rel_path}: {p.reason}"
      + (f" ({p.detail})" if p.detail else "")
      + "; kept with an empty result list"
    )
  if _SUBMIT_URL.value:
    answer = submission.post_submission(
      _SUBMIT_URL.value, payload, _TIMEOUT.value, _RETRIES.value, _BACKOFF.value
    )
    print(
      f"submitted to {_SUBMIT_URL.value} (HTTP {answer.status}, {answer.attempts} "
      f"attempt(s)); server answered:\n{answer.body}"
    )


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
