"""Training records verification: metrics.jsonl scalars, and each checkpoint's calibration."""

import os

import numpy as np
import pytest
import tensorflow as tf

from facetriplet import verification
from facetriplet.data import input_pipeline
from facetriplet.training import model as model_lib
from facetriplet.training import train
from facetriplet.training.checkpoints import Checkpoints
from facetriplet.training.validation import RetrievalEvaluation
from facetriplet.training.workdir import Workdir, load_checkpoint, read_metrics, weights_digest
from tests.test_metrics import reference_verification
from tests.training.test_train import SIZE, data_dir, smoke_config  # noqa: F401  (fixture)


def _val_reference(model, directory):
  """Brute force over the val photos: every pair i < j scored, then the threshold loop."""
  images, labels = [], []
  for batch in input_pipeline.eval_dataset(directory, "val", 64):
    images.append(batch["image"].numpy())
    labels.append(batch["label"].numpy())
  x = model(np.concatenate(images), training=False).numpy()
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = np.concatenate(labels)
  n = len(labels)
  pos = [x[i] @ x[j] for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
  neg = [x[i] @ x[j] for i in range(n) for j in range(i + 1, n) if labels[i] != labels[j]]
  return len(pos), len(neg), reference_verification(pos, neg, verification.FARS)


def test_evaluation_scalars_and_checkpoint_calibrations(data_dir, tmp_path):  # noqa: F811
  import keras  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(0)
  model = model_lib.build_embedding_model(smoke_config(data_dir), SIZE)
  workdir = Workdir(str(tmp_path / "run"))
  evaluation = RetrievalEvaluation(
    workdir, input_pipeline.eval_dataset(data_dir, "val", 4), embedding_model=model
  )
  checkpoints = Checkpoints(workdir, evaluation)
  result = evaluation.evaluate()
  num_pos, num_neg, (want, eer, eer_threshold, auc, _) = _val_reference(model, data_dir)
  # val: identities of 3, 2, 2, 1, 3 photos -> 3 + 1 + 1 + 0 + 3 = 8 same, 55 - 8 = 47 different
  assert (num_pos, num_neg) == (8, 47)
  assert result["verification/num_positive_pairs"] == 8
  assert result["verification/num_negative_pairs"] == 47
  assert result["verification/tar@far=0.1"] == pytest.approx(want[0.1][0], abs=1e-6)
  assert result["verification/threshold@far=0.1"] == pytest.approx(want[0.1][1], abs=1e-5)
  assert result["verification/tar@far=0.01"] is None  # 47 negatives cannot resolve 1e-2
  assert result["verification/eer"] == pytest.approx(eer, abs=1e-6)
  assert result["verification/eer_threshold"] == pytest.approx(eer_threshold, abs=1e-5)
  assert result["verification/auc"] == pytest.approx(auc, abs=1e-6)
  assert not any(isinstance(v, (list, dict)) for v in result.values())  # scalars only

  evaluation.last_result = result
  checkpoints.on_epoch_end(0)
  best, last = workdir.read_calibration("best"), workdir.read_calibration("last")
  assert best == last and best["epoch"] == 1
  assert best["thresholds"]["0.1"] == result["verification/threshold@far=0.1"]
  assert best["thresholds"]["0.01"] is None
  assert best["eer_threshold"] == result["verification/eer_threshold"]
  assert (best["num_positive_pairs"], best["num_negative_pairs"]) == (8, 47)
  saved = load_checkpoint(workdir.checkpoint("best"))
  assert best["weights_sha256_16"] == weights_digest(saved)

  # An epoch that was not evaluated: last.keras changes, its calibration would be stale.
  model.layers[-2].weights[0].assign(model.layers[-2].weights[0] * 2.0)
  evaluation.last_result = None
  checkpoints.on_epoch_end(1)
  assert workdir.read_calibration("last") is None
  assert workdir.read_calibration("best") == best
  # Evaluated again but not better: last is recalibrated for its new weights, best stays.
  evaluation.last_result = dict(result, **{"map@r": -0.5})
  checkpoints.on_epoch_end(2)
  assert (
    workdir.read_calibration("last")["weights_sha256_16"]
    == weights_digest(model)
    != best["weights_sha256_16"]
  )
  assert workdir.read_calibration("best") == best


@pytest.mark.slow
def test_training_writes_verification_calibration_and_projector(data_dir, tmp_path):  # noqa: F811
  workdir = str(tmp_path / "run")
  config = smoke_config(data_dir, epochs=1, steps_per_epoch=1)
  train.train_and_evaluate(config, workdir)
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1]
  for r in records:
    assert r["verification/num_negative_pairs"] == 47 and "verification/eer" in r
  run = Workdir(workdir)
  best = run.read_calibration("best")
  assert best["epoch"] == 1
  assert best["weights_sha256_16"] == weights_digest(load_checkpoint(run.checkpoint("best")))
  assert best["eer_threshold"] == records[-1]["verification/eer_threshold"]
  folder = run.projector_dir
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(folder))
  vectors = reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE")
  with open(os.path.join(folder, "metadata.tsv"), encoding="utf-8") as f:
    assert len(f.read().splitlines()) == 1 + len(vectors) == 12
