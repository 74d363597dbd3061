"""facetriplet: content-based face image retrieval with triplet-loss embeddings and fast search.

The package's folders read as the data flow, and imports only go down it:

  errors, atomic, batches, config_files, export_format, metrics, pipelines, synthetic, configs
               foundations (no stage imports)
  data/        images -> detectors -> faces -> layouts -> shard_plan -> tfrecords -> ingest,
               input_pipeline, classical
  training/    augment, networks, model, losses, margin_softmax, optim, workdir, warm_start,
               validation, checkpoints, export, train
  search/      embedder -> features -> embedding -> items -> backends -> index -> gallery ->
               engine -> retrieval, submission -> searcher
  evaluation/  setup, scoring, report, grid, evaluation        serving/  the HTTP service
  demo/        the whole job in one command

The library is importable without side effects: nothing is downloaded and TensorFlow is imported
only by the modules that need it (see DEVELOPERS.md).
"""

import importlib

__version__ = "0.1.0"

# The library's front door, imported on first use: `from facetriplet import Searcher`.
_PUBLIC = {"Searcher": "facetriplet.search.searcher"}


def __getattr__(name):
  """`from facetriplet import Searcher`, imported on first use."""
  if name not in _PUBLIC:
    raise AttributeError(f"module 'facetriplet' has no attribute {name!r}")
  value = getattr(importlib.import_module(_PUBLIC[name]), name)
  globals()[name] = value
  return value
