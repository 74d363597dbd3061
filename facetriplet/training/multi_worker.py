"""Training on several machines (`tf.distribute.MultiWorkerMirroredStrategy`): who writes the
workdir, the checks that keep the workers in step, and two fixes to Keras 3's `fit`.

Roles. Every worker runs the same program with its own `TF_CONFIG` (`train.make_strategy`
builds the strategy from it) and the same `--workdir`. The chief is the task of type `chief`, or
worker 0 when the cluster has no `chief` task (TensorFlow's convention); it alone writes the
workdir's files. Every other worker runs the very same callbacks against
`Workdir.worker_temp(task_id)` (`<workdir>/workertemp_<id>/`), which `train.py` removes when the
run ends: the workers execute the same code at the same points (so nothing that happens to be a
collective can leave one worker waiting for another), and the chief's files are never written
twice.

Resuming. Only the chief's backup (`backup/<phase>/`) is kept; every worker restores from it, so
`--workdir` must be on storage all workers see (NFS, a mounted bucket...), as for
`tf.keras.callbacks.BackupAndRestore` under this strategy. `check_agree` compares the restored
epoch across workers: workers that restored different epochs would run different numbers of
steps and wait on each other forever, so every worker raises the same `UserError` instead.

Keras 3.15 fixes (keras-team/keras#20585; `patch_keras`, applied by `train.make_strategy` when
it builds this strategy, and changing nothing under any other strategy):
- `fit` takes a cross-worker MEAN of the first input batch only to learn its shapes; on nested
  batches that reduce fails ("Attempt to convert a value (PerReplica...)"). The first local
  replica's batch has the same shapes.
- `fit` reduces the per-replica logs (scalars) with `strategy.reduce('MEAN', v, axis=0)`, which
  fails on scalars; `axis=None` is the mean over all replicas, what a single machine reports.
`model.predict` under this strategy shards its input across workers and gathers the results
(collectives, and by-file sharding reorders the rows): the per-epoch evaluation calls the model
directly on each worker instead (`validation.RetrievalEvaluation(local=True)`).

Failure detection. TensorFlow's coordination service declares a worker dead when it misses its
heartbeats for `heartbeat_timeout_in_ms` (10 s by default); a busy host (input pipeline and
training saturating every core) can starve the heartbeat thread that long and abort a healthy
run ("Task ... heartbeat timeout"). `configure_heartbeat` sets the timeout
(`config.train.heartbeat_timeout_s`) before the strategy is made.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

from facetriplet.errors import UserError


def tasks_in(tf_config: str) -> int:
  """The number of `chief` and `worker` tasks a TF_CONFIG value names (0 when empty)."""
  cluster = json.loads(tf_config or "{}").get("cluster", {})
  return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def configured() -> bool:
  """Whether the environment's TF_CONFIG names several training tasks."""
  return tasks_in(os.environ.get("TF_CONFIG", "")) > 1


def in_multi_worker_mode(strategy: Any) -> bool:
  """A MultiWorkerMirroredStrategy over more than one worker."""
  return (
    isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    and strategy.extended._in_multi_worker_mode()
  )  # pylint: disable=protected-access


def task(strategy: Any) -> tuple[str, int]:
  """(task type, task id) of this process; ('chief', 0) outside multi-worker training."""
  if not in_multi_worker_mode(strategy):
    return "chief", 0
  resolver = strategy.cluster_resolver
  return str(resolver.task_type), int(resolver.task_id or 0)


def is_chief(strategy: Any) -> bool:
  """Whether this process writes the workdir: the `chief` task, else worker 0."""
  if not in_multi_worker_mode(strategy):
    return True
  task_type, task_id = task(strategy)
  has_chief = "chief" in strategy.cluster_resolver.cluster_spec().jobs
  return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def check_agree(strategy: Any, value: float, what: str, fix: str) -> None:
  """Raises the same UserError on every worker unless all hold the same `value`.

  A collective: every worker must call it at the same point. Exact for small integers.
  """
  if not in_multi_worker_mode(strategy):
    return
  local = tf.constant([float(value), float(value) ** 2, 1.0], tf.float64)
  per_replica = strategy.experimental_distribute_values_from_function(lambda _: local)
  total, squares, count = (
    float(x) for x in strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
  )
  if count * squares != total * total:  # equality in Cauchy-Schwarz: all values equal
    raise UserError(
      f"the workers disagree on {what}: {value:g} on this worker, "
      f"{total / count:g} on average over the workers; {fix}"
    )


def configure_heartbeat(timeout_s: float) -> None:
  """Sets the coordination service's heartbeat timeout for the multi-worker strategy about to
  be made (the service and jobs the strategy itself would configure, with this timeout). A no-op
  when the process already has a coordination service or TF_CONFIG names no cluster."""
  # pylint: disable=g-import-not-at-top
  from tensorflow.python.distribute import multi_worker_util
  from tensorflow.python.eager import context
  from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

  # pylint: enable=g-import-not-at-top
  if context.context().coordination_service is not None or not configured():
    return
  cluster_spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
  jobs = [
    coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
    for job in ("chief", "worker")
    if job in cluster_spec.jobs
  ]
  context.context().configure_coordination_service(
    service_type="standalone",
    service_leader=multi_worker_util.coordination_leader(cluster_spec),
    coordinated_jobs=jobs,
    heartbeat_timeout_in_ms=int(timeout_s * 1000),
  )


_PATCHED = False


def patch_keras() -> None:
  """Makes Keras 3's `fit` run under a multi-worker MultiWorkerMirroredStrategy (see the
  module docstring); idempotent, and a no-op for every other strategy."""
  global _PATCHED
  if _PATCHED:
    return
  from keras.src.backend.tensorflow import trainer  # pylint: disable=g-import-not-at-top

  trainer_class = trainer.TensorFlowTrainer
  symbolic_build = trainer_class._maybe_symbolic_build  # pylint: disable=protected-access
  reduce_per_replica = trainer.reduce_per_replica

  def maybe_symbolic_build(self, iterator=None, data_batch=None):
    strategy = self._distribute_strategy  # pylint: disable=protected-access
    if iterator is None or strategy is None or not in_multi_worker_mode(strategy):
      return symbolic_build(self, iterator=iterator, data_batch=data_batch)
    for _, _, it in iterator:
      data_batch = tf.nest.map_structure(
        lambda v: (
          strategy.experimental_local_results(v)[0]
          if isinstance(v, tf.distribute.DistributedValues)
          else v
        ),
        next(it),
      )
      break
    with strategy.scope():
      self._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

  def reduce_logs(values, strategy, reduction="auto"):
    if reduction in ("auto", "mean") and in_multi_worker_mode(strategy):
      return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
    return reduce_per_replica(values, strategy, reduction)

  trainer_class._maybe_symbolic_build = maybe_symbolic_build  # pylint: disable=protected-access
  trainer.reduce_per_replica = reduce_logs
  _PATCHED = True
