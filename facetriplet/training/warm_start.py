"""Warm start: copy a trained embedding model's weights into a freshly built one.

`load_into(model, source)` accepts what a user has after training or from a colleague:

  * a training workdir (its `checkpoints/best.keras`, else `last.keras`),
  * a `.keras` checkpoint file,
  * an export folder (`facetriplet-export`; the SavedModel's `model_variables`, which list every
    variable of the embedding model in `model.variables` order).

The new model must have the same architecture (backbone, width, image size, embedding size):
variables are matched in order and every shape must agree, otherwise a `UserError` names the
first mismatch. The crop size S of the input does not matter (no weights depend on it).
Loading a SavedModel runs its graph: only warm-start from exports you trust.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import logging

from facetriplet.errors import UserError
from facetriplet.training import workdir


def _source_arrays(source: str) -> tuple[str, list[np.ndarray]]:
  """(what was read, variable values in model order)."""
  if os.path.isdir(source) and os.path.exists(os.path.join(source, "saved_model.pb")):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    loaded = tf.saved_model.load(source)
    variables = getattr(loaded, "model_variables", None)
    if variables is None:
      raise UserError(
        f"{source} is a SavedModel without facetriplet's model_variables: "
        "warm-start from a facetriplet export, workdir or .keras file"
      )
    return source, [np.asarray(v.numpy()) for v in variables]
  if os.path.isdir(source):
    checkpoint = workdir.resolve_checkpoint(source, "best")
  elif os.path.isfile(source) and source.endswith(".keras"):
    checkpoint = source
  else:
    raise UserError(
      f"train.init_from={source} is not a training workdir, a .keras checkpoint or an export folder"
    )
  model = workdir.load_checkpoint(checkpoint)
  return checkpoint, [np.asarray(v.numpy()) for v in model.variables]


def assign(model, arrays: Sequence[np.ndarray], what: str) -> None:
  """Assigns `arrays` to `model.variables` in order; UserError on a count or shape mismatch."""
  variables = list(model.variables)
  if len(variables) != len(arrays):
    raise UserError(
      f"{what} holds {len(arrays)} variables but the configured model has "
      f"{len(variables)}: use the same backbone, width, image_size and "
      "embedding_dim as the model it came from"
    )
  for var, value in zip(variables, arrays):
    if tuple(var.shape) != tuple(value.shape):
      raise UserError(
        f"{what}: variable {var.path} has shape {tuple(value.shape)} there but "
        f"{tuple(var.shape)} in the configured model: use the same backbone, "
        "width, image_size and embedding_dim"
      )
  for var, value in zip(variables, arrays):
    var.assign(value.astype(np.dtype(var.dtype)) if value.dtype != np.dtype(var.dtype) else value)


def load_into(model, source: str) -> str:
  """Copies the weights of `source` (see the module docstring) into `model`; returns the file or
  folder they came from."""
  if not os.path.exists(source):
    raise UserError(
      f"train.init_from={source} does not exist: pass a training workdir, a .keras "
      "checkpoint or an export folder"
    )
  what, arrays = _source_arrays(source)
  assign(model, arrays, what)
  logging.info("warm start: %d variables from %s", len(arrays), what)
  return what
