"""The training workdir: every path in it, its config / manifest / metrics files, its checkpoints.

  config.json            the resolved config (atomic)
  manifest.json          the dataset manifest (atomic)
  metrics.jsonl          one line per evaluated epoch (`write_metrics_record`)
  checkpoints/last.keras the model after the latest epoch
  checkpoints/best.keras the model of the best val mAP@R so far
  checkpoints/<which>.calibration.json
                         verification thresholds (FAR 1e-1/1e-2/1e-3, EER) measured on the val
                         pairs for the weights of <which>.keras (`weights_sha256_16` names them)
  backup/<phase>/        keras.callbacks.BackupAndRestore state (weights + epoch)
  logs/                  TensorBoard: train/ (Keras), retrieval/ (val metrics), projector/ (val
                         embeddings of best.keras with face thumbnails, written at the end)
  teacher_targets.npz    knowledge distillation: the teacher's embedding of every training photo
                         (`training.distill`), kept so a resumed run does not recompute them
  workertemp_<id>/       multi-worker training: a non-chief worker's copy of the files above,
                         removed when its run ends (`training.multi_worker`)

`Workdir` is the only code that spells these names; training, its callbacks, warm start and
export ask it for paths. `load_checkpoint` loads a `.keras` file with facetriplet's layers.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional

import numpy as np
from absl import logging

from facetriplet import atomic
from facetriplet.data import tfrecords
from facetriplet.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
WHICH = ("best", "last")


def _read_json(path: str) -> Optional[dict[str, Any]]:
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class Workdir:
  """A training workdir at `path` (it need not exist yet)."""

  def __init__(self, path: str):
    self.path = path

  def __repr__(self) -> str:
    return f"Workdir({self.path!r})"

  @property
  def config_path(self) -> str:
    return os.path.join(self.path, CONFIG_FILE)

  @property
  def manifest_path(self) -> str:
    return os.path.join(self.path, tfrecords.MANIFEST)

  @property
  def metrics_path(self) -> str:
    return os.path.join(self.path, METRICS_FILE)

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.path, CHECKPOINT_DIR)

  def checkpoint(self, which: str) -> str:
    """checkpoints/<which>.keras ('best' or 'last')."""
    return os.path.join(self.checkpoint_dir, f"{which}.keras")

  def backup_dir(self, phase: str) -> str:
    return os.path.join(self.path, "backup", phase)

  @property
  def logs_dir(self) -> str:
    return os.path.join(self.path, "logs")

  @property
  def projector_dir(self) -> str:
    """logs/projector: the TensorBoard embedding projector view (`training.projector`)."""
    return os.path.join(self.logs_dir, "projector")

  @property
  def teacher_targets_path(self) -> str:
    """teacher_targets.npz: the teacher's embeddings of the training photos (distillation)."""
    return os.path.join(self.path, "teacher_targets.npz")

  def worker_temp(self, task_id: int) -> "Workdir":
    """<path>/workertemp_<task_id>: where a non-chief worker of a multi-worker run writes
    (TensorFlow's convention); the run removes it at its end."""
    return Workdir(os.path.join(self.path, f"workertemp_{int(task_id)}"))

  def calibration_path(self, which: str) -> str:
    """checkpoints/<which>.calibration.json: verification thresholds of <which>.keras."""
    return os.path.join(self.checkpoint_dir, f"{which}.calibration.json")

  def write_calibration(self, which: str, calibration: Optional[Mapping[str, Any]]) -> None:
    """Records (atomically) the calibration of <which>.keras; None removes a stale one."""
    if calibration is None:
      atomic.remove(self.calibration_path(which))
    else:
      atomic.write_json(self.calibration_path(which), dict(calibration))

  def read_calibration(self, which: str) -> Optional[dict[str, Any]]:
    return _read_json(self.calibration_path(which))

  def start(self, config: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Creates the folder and records the run's config and dataset manifest (atomically)."""
    os.makedirs(self.path, exist_ok=True)
    atomic.write_json(self.config_path, dict(config))
    atomic.write_json(self.manifest_path, dict(manifest))

  def read_config(self) -> Optional[dict[str, Any]]:
    return _read_json(self.config_path)

  def read_manifest(self) -> Optional[dict[str, Any]]:
    return _read_json(self.manifest_path)

  def read_metrics(self) -> list[dict]:
    """The records of metrics.jsonl, in epoch order ([] when absent)."""
    if not os.path.exists(self.metrics_path):
      return []
    with open(self.metrics_path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]

  def write_metrics_record(self, record: Mapping[str, Any]) -> None:
    """Adds `record` to metrics.jsonl atomically, dropping records of its epoch or later.

    Records at or after the epoch come from a run that was killed before its backup; the re-run
    repeats those epochs, so their old lines would be stale.
    """
    kept = [r for r in self.read_metrics() if r["epoch"] < record["epoch"]]
    kept.append(dict(record))
    atomic.write_text(
      self.metrics_path, "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in kept)
    )

  def recover_checkpoints(self) -> None:
    """Cleans up after checkpoint saves a killed run left half-done."""
    for which in WHICH:
      atomic.recover(self.checkpoint(which))

  @classmethod
  def of_checkpoint(cls, checkpoint: str) -> Optional["Workdir"]:
    """The workdir a checkpoint file belongs to (the folder holding config.json or
    manifest.json, beside it or one up), if any."""
    here = os.path.dirname(os.path.abspath(checkpoint))
    for folder in (here, os.path.dirname(here)):
      w = cls(folder)
      if os.path.isfile(w.config_path) or os.path.isfile(w.manifest_path):
        return w
    return None


def resolve_checkpoint(workdir_or_checkpoint: str, which: str = "best") -> str:
  """The checkpoint file meant: a `.keras` path as given, else workdir/checkpoints/<which>.

  Args:
    workdir_or_checkpoint: a training workdir or a `.keras` file.
    which: 'best' (falls back to 'last' when there is no best yet) or 'last'.

  Raises:
    UserError: unknown `which`, or no checkpoint found.
  """
  if which not in WHICH:
    raise UserError(f"which={which!r} is not one of {', '.join(WHICH)}")
  if os.path.isfile(workdir_or_checkpoint):
    return workdir_or_checkpoint
  if not os.path.isdir(workdir_or_checkpoint):
    raise UserError(
      f"{workdir_or_checkpoint} does not exist: pass a training workdir "
      "(with checkpoints/) or a .keras checkpoint file"
    )
  workdir = Workdir(workdir_or_checkpoint)
  order = ("best", "last") if which == "best" else ("last",)
  for name in order:
    path = workdir.checkpoint(name)
    if os.path.isfile(path):
      if name != which:
        logging.warning("no best.keras in %s; using last.keras", workdir.checkpoint_dir)
      return path
  raise UserError(
    f"no {' or '.join(n + '.keras' for n in order)} in {workdir.checkpoint_dir}: "
    "train first (facetriplet-train --workdir=...) or pass "
    "--checkpoint=<file.keras>"
  )


def load_checkpoint(path: str):
  """Loads a `.keras` checkpoint (uncompiled) with facetriplet's custom layers registered."""
  # Keras and the modules registering facetriplet's layers are imported here, not at the top:
  # they import TensorFlow, which readers of a workdir's files do not need.
  import keras  # pylint: disable=g-import-not-at-top
  from facetriplet.training import augment, losses, margin_softmax, model, networks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  networks.register_layers()
  try:
    return keras.saving.load_model(path, compile=False)
  except (OSError, ValueError, TypeError) as e:  # TypeError: a layer no module registers
    raise UserError(f"cannot load checkpoint {path}: {e}") from None


def save_model_atomically(model, path: str) -> None:
  """Saves a `.keras` file under a temporary name in the same folder, then renames it."""
  with atomic.atomic_path(path) as tmp:
    staging = tmp + ".keras"  # Keras insists on the extension
    try:
      model.save(staging)
      os.replace(staging, tmp)
    finally:
      if os.path.exists(staging):
        os.remove(staging)


def weights_digest(model) -> str:
  """First 16 hex digits of sha256 over every weight's shape, dtype and bytes, in model order:
  names the weights a checkpoint holds (the export records it as `weights_sha256_16`)."""
  return arrays_digest(model.weights)


def arrays_digest(arrays) -> str:
  """First 16 hex digits of sha256 over the arrays' shapes, dtypes and bytes, in order."""
  h = hashlib.sha256()
  for w in arrays:
    a = np.ascontiguousarray(np.asarray(w))
    h.update(f"{a.dtype.str}{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def read_metrics(path: str) -> list[dict]:
  """The metrics.jsonl records of the workdir at `path` (`Workdir(path).read_metrics()`)."""
  return Workdir(path).read_metrics()
