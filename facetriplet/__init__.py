"""facetriplet: content-based face image retrieval with triplet-loss embeddings and ScaNN search.

The package's folders read as the data flow, and imports only go down it:

  errors, atomic, config_files, metrics, synthetic   foundations (no stage imports)
  data/        faces -> layouts -> shard_plan -> tfrecords -> ingest, input_pipeline, classical
  training/    augment, model, losses, margin_softmax, optim, workdir, warm_start, train_eval, train
  search/      export -> features -> embedding -> index -> gallery -> retrieval, submission
  evaluation/  evaluation (scores retrieval), grid

The library is importable without side effects: nothing is downloaded and TensorFlow is imported
only by the modules that need it. The module names of 0.1 (`from facetriplet import faces`) keep
working: they resolve lazily to their new homes (see DEVELOPERS.md).
"""

import importlib

__version__ = "0.1.0"

# Module names of the flat 0.1 layout -> their home now.
_MOVED = {
    "faces": "facetriplet.data.faces", "layouts": "facetriplet.data.layouts",
    "shard_plan": "facetriplet.data.shard_plan", "tfrecords": "facetriplet.data.tfrecords",
    "ingest": "facetriplet.data.ingest", "input_pipeline": "facetriplet.data.input_pipeline",
    "classical": "facetriplet.data.classical",
    "augment": "facetriplet.training.augment", "model": "facetriplet.training.model",
    "losses": "facetriplet.training.losses",
    "margin_softmax": "facetriplet.training.margin_softmax",
    "warm_start": "facetriplet.training.warm_start", "train": "facetriplet.training.train",
    "train_eval": "facetriplet.training.train_eval",
    "export": "facetriplet.training.export", "index": "facetriplet.search.index",
    "gallery": "facetriplet.search.gallery", "retrieval": "facetriplet.search.retrieval",
    "submission": "facetriplet.search.submission",
    "grid": "facetriplet.evaluation.grid",
}


# The library's front door, imported on first use: `from facetriplet import Searcher`.
_PUBLIC = {"Searcher": "facetriplet.search.searcher"}


def __getattr__(name):
  """`from facetriplet import Searcher`; and the 0.1 module names (`from facetriplet import
  faces`), imported from their new homes."""
  if name in _PUBLIC:
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
  elif name in _MOVED:
    value = importlib.import_module(_MOVED[name])
  else:
    raise AttributeError(f"module 'facetriplet' has no attribute {name!r}")
  globals()[name] = value
  return value
