"""Tests for facetriplet.training.losses against brute-force NumPy loops over all triplets."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from facetriplet.training import losses

DISTANCES = losses.DISTANCES

# Multi-replica tests use the two logical CPU devices and the one strategy of tests/conftest.py.


# ----------------------------------------------------------------------------- NumPy references
def ref_distance(x: np.ndarray, distance: str) -> np.ndarray:
  """Pairwise distances by an explicit double loop, in float64."""
  x = x.astype(np.float64)
  n = len(x)
  d = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      if i == j:
        continue
      if distance == "l2":
        d[i, j] = np.sqrt(np.sum((x[i] - x[j]) ** 2))
      elif distance == "squared_l2":
        d[i, j] = np.sum((x[i] - x[j]) ** 2)
      else:
        ui, uj = x[i] / np.linalg.norm(x[i]), x[j] / np.linalg.norm(x[j])
        d[i, j] = 1.0 - np.dot(ui, uj)
  return d


def _pairs(labels):
  n = len(labels)
  for a in range(n):
    negatives = [k for k in range(n) if labels[k] != labels[a]]
    for p in range(n):
      if p != a and labels[p] == labels[a] and negatives:
        yield a, p, negatives


def ref_semi_hard(labels, x, margin, distance, active_fraction=False):
  d = ref_distance(x, distance)
  values = []
  for a, p, negatives in _pairs(labels):
    outside = [d[a, n] for n in negatives if d[a, n] > d[a, p]]
    d_an = min(outside) if outside else max(d[a, n] for n in negatives)
    values.append(max(d[a, p] - d_an + margin, 0.0))
  if not values:
    return 0.0
  if active_fraction:
    return float(np.mean([v > 0 for v in values]))
  return float(np.mean(values))


def ref_batch_hard(labels, x, margin, distance, soft=False):
  d = ref_distance(x, distance)
  n = len(labels)
  values = []
  for a in range(n):
    pos = [d[a, p] for p in range(n) if p != a and labels[p] == labels[a]]
    neg = [d[a, k] for k in range(n) if labels[k] != labels[a]]
    if pos and neg:
      gap = max(pos) - min(neg)
      values.append(np.log1p(np.exp(gap)) if soft else max(gap + margin, 0.0))
  return float(np.mean(values)) if values else 0.0


def ref_batch_all(labels, x, margin, distance):
  d = ref_distance(x, distance)
  total, count = 0.0, 0
  for a, p, negatives in _pairs(labels):
    for n in negatives:
      loss = d[a, p] - d[a, n] + margin
      if loss > 0:
        total += loss
        count += 1
  return total / count if count else 0.0


def ref_random_expectation(labels, x, margin, distance):
  """Expected value of the random-triplet loss: per anchor, the mean hinge over all (p, n)."""
  d = ref_distance(x, distance)
  n = len(labels)
  values = []
  for a in range(n):
    pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
    neg = [k for k in range(n) if labels[k] != labels[a]]
    if pos and neg:
      values.append(
        np.mean([max(d[a, p] - d[a, k] + margin, 0.0) for p, k in itertools.product(pos, neg)])
      )
  return float(np.mean(values)) if values else 0.0


def random_batch(seed, batch=None, identities=None, dim=8):
  rng = np.random.default_rng(seed)
  batch = batch or int(rng.integers(12, 33))
  identities = identities or int(rng.integers(2, 6))
  labels = rng.integers(0, identities, size=batch)
  x = rng.normal(size=(batch, dim))
  # Pull same-identity points together a little so that all hinge regimes occur.
  centres = rng.normal(size=(identities, dim))
  x = rng.uniform(0.3, 3.0) * x + centres[labels]
  return labels.astype(np.int64), x.astype(np.float32)


def tf_loss(fn, labels, x, **kwargs):
  return float(fn(tf.constant(labels), tf.constant(x), **kwargs).numpy())


# ----------------------------------------------------------------------------- distances
@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_distance_matches_loops(distance):
  _, x = random_batch(0)
  got = losses.pairwise_distance(tf.constant(x), distance).numpy()
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, ref_distance(x, distance), rtol=1e-5, atol=1e-5)
  assert np.all(np.diag(got) == 0.0)


def test_unknown_distance_and_kind_name_valid_choices():
  with pytest.raises(ValueError, match="l2, squared_l2, angular"):
    losses.pairwise_distance(tf.zeros([2, 2]), "cosine")
  with pytest.raises(ValueError, match="semi_hard, batch_hard, batch_all, random"):
    losses.TripletLoss(kind="hardest")


# ----------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_losses_match_brute_force(distance, seed):
  labels, x = random_batch(seed)
  margin = 0.2 if distance == "angular" else 1.0
  cases = [
    (losses.semi_hard_triplet_loss, ref_semi_hard, {}),
    (losses.batch_hard_triplet_loss, ref_batch_hard, {}),
    (losses.batch_all_triplet_loss, ref_batch_all, {}),
    (losses.active_triplet_fraction, lambda *a: ref_semi_hard(*a, active_fraction=True), {}),
  ]
  for fn, ref, _ in cases:
    got = tf_loss(fn, labels, x, margin=margin, distance=distance)
    want = ref(labels, x, margin, distance)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5), fn.__name__
  got = tf_loss(losses.batch_hard_triplet_loss, labels, x, distance=distance, soft=True)
  assert got == pytest.approx(
    ref_batch_hard(labels, x, 0.0, distance, soft=True), rel=1e-5, abs=1e-5
  )


def test_semi_hard_exercises_both_negative_rules():
  """The random batches above include pairs with and without a negative farther than the
  positive, so both branches of the semi-hard rule are compared against the reference."""
  outside = inside = 0
  for seed in (1, 2, 3):
    labels, x = random_batch(seed)
    d = ref_distance(x, "l2")
    for a, p, negatives in _pairs(labels):
      if any(d[a, n] > d[a, p] for n in negatives):
        outside += 1
      else:
        inside += 1
  assert outside > 0 and inside > 0


def test_random_loss_is_deterministic_and_unbiased():
  labels, x = random_batch(4, batch=16, identities=3)
  a = tf_loss(losses.random_triplet_loss, labels, x, margin=1.0, seed=7)
  b = tf_loss(losses.random_triplet_loss, labels, x, margin=1.0, seed=7)
  assert a == b
  draw = tf.function(lambda s: losses.random_triplet_loss(labels, x, margin=1.0, seed=s))
  draws = [float(draw(tf.constant([s, 1]))) for s in range(300)]
  assert draws[5] == tf_loss(losses.random_triplet_loss, labels, x, margin=1.0, seed=(5, 1))
  want = ref_random_expectation(labels, x, 1.0, "l2")
  # Each draw averages 16 anchors; the mean of 300 draws is within a few standard errors.
  assert np.mean(draws) == pytest.approx(want, abs=4 * np.std(draws) / np.sqrt(300) + 1e-6)
  assert len(set(draws)) > 1


def test_random_loss_with_one_positive_and_one_negative_is_exact():
  """Points 0, 1, 3 with labels A, A, B: anchors 0 and 1 have one positive and one negative, so
  the draw is forced; anchor 2 has no positive and is skipped."""
  labels = np.array([0, 0, 1])
  x = np.array([[0.0], [1.0], [3.0]], np.float32)
  # Anchor 0: d_ap = 1, d_an = 3 -> max(1 - 3 + 2.5, 0) = 0.5; anchor 1: d_ap = 1, d_an = 2
  # -> 1.5; anchor 2 has no positive. Mean = 1.0.
  assert tf_loss(losses.random_triplet_loss, labels, x, margin=2.5, seed=3) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- hand-built
def test_four_points_on_a_line():
  """Points 0, 1, 2, 4 on a line with labels A, A, B, B; l2 distance, margin 0.5.

  Pairs (a, p): (0,1) d=1, negatives at 2, 4 -> semi-hard negative 2 (2 > 1): hinge
  1 - 2 + .5 = 0. (1,0) d=1, negatives at 1, 3 -> none > 1 strictly except 3: hinge
  1 - 3 + .5 = 0. (2,3) d=2, negatives at 2, 1 -> none > 2: farthest = 2: hinge 2 - 2 + .5 = .5.
  (3,2) d=2, negatives at 4, 3 -> closest > 2 is 3: hinge 2 - 3 + .5 = 0. Semi-hard = .5 / 4.

  Batch-hard per anchor: 0: 1 - 2 + .5 = 0; 1: 1 - 1 + .5 = .5; 2: 2 - 1 + .5 = 1.5;
  3: 2 - 3 + .5 = 0 -> mean 0.5.

  Batch-all: positive triplets: (1,0,n=2) 1 - 1 + .5 = .5; (2,3,n=1) 2 - 1 + .5 = 1.5;
  (2,3,n=0) 2 - 2 + .5 = .5; others: (0,1,2): -.5, (0,1,4): ≤0, (1,0,4): 1 - 3 + .5 < 0,
  (3,2,0): 2 - 4 + .5 < 0, (3,2,1): 2 - 3 + .5 < 0 -> (.5 + 1.5 + .5) / 3 = 2.5 / 3.
  Active fraction: 1 of 4 pairs.
  """
  labels = np.array([0, 0, 1, 1])
  x = np.array([[0.0], [1.0], [2.0], [4.0]], np.float32)
  kw = dict(margin=0.5, distance="l2")
  assert tf_loss(losses.semi_hard_triplet_loss, labels, x, **kw) == pytest.approx(0.125)
  assert tf_loss(losses.batch_hard_triplet_loss, labels, x, **kw) == pytest.approx(0.5)
  assert tf_loss(losses.batch_all_triplet_loss, labels, x, **kw) == pytest.approx(2.5 / 3)
  assert tf_loss(losses.active_triplet_fraction, labels, x, **kw) == pytest.approx(0.25)


@pytest.mark.parametrize(
  "fn",
  [
    losses.semi_hard_triplet_loss,
    losses.batch_hard_triplet_loss,
    losses.batch_all_triplet_loss,
    losses.random_triplet_loss,
    losses.active_triplet_fraction,
  ],
)
def test_no_positive_or_no_negative_gives_zero(fn):
  x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
  for labels in (np.arange(5), np.zeros(5, np.int64)):  # no positives / no negatives
    value = tf_loss(fn, labels, x)
    assert value == 0.0 and not np.isnan(value)


@pytest.mark.parametrize("kind", losses.KINDS)
def test_gradients_finite_with_duplicate_embeddings(kind):
  labels = tf.constant([0, 0, 1, 1, 2, 2])
  x = tf.constant([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
  loss_obj = losses.TripletLoss(kind=kind, margin=0.2, distance="l2")
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = loss_obj(labels, x)
  grad = tape.gradient(loss, x).numpy()
  assert np.all(np.isfinite(grad))
  assert np.isfinite(float(loss))


def test_float16_and_bfloat16_give_float32():
  labels, x = random_batch(5)
  for dtype in (tf.float16, tf.bfloat16):
    value = losses.semi_hard_triplet_loss(labels, tf.cast(x, dtype))
    assert value.dtype == tf.float32
    assert losses.pairwise_distance(tf.cast(x, dtype)).dtype == tf.float32


def test_graph_mode_matches_eager():
  labels, x = random_batch(6)

  @tf.function(
    input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, None], tf.float32)]
  )
  def all_losses(lab, emb):
    return tf.stack(
      [
        losses.semi_hard_triplet_loss(lab, emb),
        losses.batch_hard_triplet_loss(lab, emb),
        losses.batch_all_triplet_loss(lab, emb, distance="angular"),
        losses.random_triplet_loss(lab, emb, seed=1),
      ]
    )

  got = all_losses(tf.constant(labels), tf.constant(x)).numpy()
  eager = [
    tf_loss(losses.semi_hard_triplet_loss, labels, x),
    tf_loss(losses.batch_hard_triplet_loss, labels, x),
    tf_loss(losses.batch_all_triplet_loss, labels, x, distance="angular"),
    tf_loss(losses.random_triplet_loss, labels, x, seed=1),
  ]
  np.testing.assert_allclose(got, eager, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- Keras wrapper
@pytest.mark.parametrize(
  "kind,fn",
  [
    ("semi_hard", losses.semi_hard_triplet_loss),
    ("batch_hard", losses.batch_hard_triplet_loss),
    ("batch_all", losses.batch_all_triplet_loss),
  ],
)
def test_keras_wrapper_equals_function_and_round_trips(kind, fn):
  labels, x = random_batch(7)
  loss_obj = losses.TripletLoss(kind=kind, margin=0.3, distance="squared_l2")
  want = tf_loss(fn, labels, x, margin=0.3, distance="squared_l2")
  # Labels as [B, 1] floats, as Keras may deliver them.
  got = float(loss_obj(labels.reshape(-1, 1).astype(np.float32), x))
  assert got == pytest.approx(want, rel=1e-6)
  per_sample = loss_obj.call(tf.constant(labels), tf.constant(x)).numpy()
  assert per_sample.shape == (len(labels),)
  assert float(np.mean(per_sample)) == pytest.approx(want, rel=1e-6)

  config = loss_obj.get_config()
  assert config["kind"] == kind and config["margin"] == 0.3 and config["distance"] == "squared_l2"
  clone = losses.TripletLoss.from_config(config)
  assert float(clone(labels, x)) == pytest.approx(want, rel=1e-6)
  restored = keras.losses.deserialize(keras.losses.serialize(loss_obj))
  assert isinstance(restored, losses.TripletLoss) and restored.kind == kind


def test_keras_wrapper_under_mirrored_strategy(two_replica_strategy):
  """Two replicas, each with its own half batch: Keras' reduction and replica scaling must make
  the cross-replica SUM equal the mean of the per-replica batch losses."""
  strategy = two_replica_strategy
  labels, x = random_batch(8, batch=16, identities=3)
  loss_obj = losses.TripletLoss(kind="batch_hard", margin=0.5)
  all_labels, all_x = tf.constant(labels.reshape(2, 8)), tf.constant(x.reshape(2, 8, -1))

  @tf.function
  def step():
    def replica_fn():
      index = tf.distribute.get_replica_context().replica_id_in_sync_group
      return loss_obj(tf.gather(all_labels, index), tf.gather(all_x, index))

    return strategy.reduce("SUM", strategy.run(replica_fn), axis=None)

  want = np.mean(
    [
      tf_loss(
        losses.batch_hard_triplet_loss,
        labels[i * 8 : (i + 1) * 8],
        x[i * 8 : (i + 1) * 8],
        margin=0.5,
      )
      for i in range(2)
    ]
  )
  assert float(step()) == pytest.approx(want, rel=1e-5)


def _naive_tf_losses(labels, emb, margin):
  """B^3 TF versions (semi-hard, batch-all) built from explicit triplet tensors, for gradients."""
  d = losses.pairwise_distance(emb, "l2")
  lab = tf.constant(labels)
  same = tf.equal(lab[:, None], lab[None, :])
  pos = tf.logical_and(same, tf.logical_not(tf.eye(len(labels), dtype=tf.bool)))
  neg = tf.logical_not(same)
  d_ap, d_an = d[:, :, None], d[:, None, :]  # [a, p, 1], [a, 1, n]
  neg3 = tf.broadcast_to(neg[:, None, :], tf.shape(d_ap - d_an))
  outside = tf.logical_and(neg3, d_an > d_ap)
  big = 1e6
  closest_outside = tf.reduce_min(tf.where(outside, d_an + 0 * d_ap, big), axis=2)
  farthest = tf.reduce_max(tf.where(neg, d, -big), axis=1)[:, None]
  semi = tf.where(tf.reduce_any(outside, axis=2), closest_outside, farthest + 0 * d)
  semi_loss = tf.reduce_sum(tf.where(pos, tf.nn.relu(d - semi + margin), 0.0)) / tf.reduce_sum(
    tf.cast(pos, tf.float32)
  )
  trip = d_ap - d_an + margin
  valid = tf.logical_and(pos[:, :, None], neg3)
  active = tf.logical_and(valid, trip > 0)
  all_loss = tf.reduce_sum(tf.where(active, trip, 0.0)) / tf.reduce_sum(tf.cast(active, tf.float32))
  return semi_loss, all_loss


def test_gradients_match_naive_triplet_tensor():
  labels, x = random_batch(9, batch=16, identities=3)
  emb = tf.constant(x)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(emb)
    semi = losses.semi_hard_triplet_loss(labels, emb, margin=1.0)
    all_ = losses.batch_all_triplet_loss(labels, emb, margin=1.0)
    naive_semi, naive_all = _naive_tf_losses(labels, emb, 1.0)
  for ours, naive in ((semi, naive_semi), (all_, naive_all)):
    assert float(ours) == pytest.approx(float(naive), rel=1e-5)
    np.testing.assert_allclose(
      tape.gradient(ours, emb).numpy(), tape.gradient(naive, emb).numpy(), rtol=1e-4, atol=1e-5
    )


def test_keras_fit_and_evaluate_under_mirrored_strategy(tmp_path, two_replica_strategy):
  """model.evaluate under two replicas reports the mean of the per-replica batch losses (each
  replica forms triplets within its own half of the global batch), and the compiled loss
  survives a .keras save/load."""
  keras.utils.set_random_seed(0)
  labels, x = random_batch(10, batch=64, identities=4, dim=6)
  strategy = two_replica_strategy
  with strategy.scope():
    model = keras.Sequential(
      [keras.Input((6,)), keras.layers.Dense(4), keras.layers.UnitNormalization()]
    )
    model.compile(optimizer="sgd", loss=losses.TripletLoss("batch_hard", 0.5))
  data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(32)
  model.fit(data, epochs=1, verbose=0)
  emb = model.predict(x, verbose=0)
  want = np.mean(
    [
      tf_loss(losses.batch_hard_triplet_loss, labels[i : i + 16], emb[i : i + 16], margin=0.5)
      for i in range(0, 64, 16)
    ]
  )
  assert model.evaluate(data, verbose=0) == pytest.approx(want, rel=1e-5)
  model.save(tmp_path / "m.keras")
  restored = keras.models.load_model(tmp_path / "m.keras")
  assert isinstance(restored.loss, losses.TripletLoss) and restored.loss.margin == 0.5


def test_distillation_term_adds_the_cosine_distance_to_the_teacher():
  """y_true packs (label, teacher embedding); the loss is the triplet loss over the labels plus
  weight x mean(1 - cos(student, teacher)), checked against NumPy."""
  rng = np.random.default_rng(5)
  labels = np.repeat(np.arange(4), 3).astype(np.float32)
  emb = rng.normal(size=(12, 8)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  teacher = rng.normal(size=(12, 8)).astype(np.float32)
  packed = np.concatenate([labels[:, None], teacher], axis=1)
  plain = float(losses.TripletLoss("semi_hard")(labels, emb))
  mixed = float(losses.TripletLoss("semi_hard", distill_weight=0.5)(packed, emb))
  unit = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
  cos = np.sum(emb * unit, axis=1)
  assert mixed == pytest.approx(plain + 0.5 * np.mean(1 - cos), abs=1e-5)
  assert float(losses.TripletLoss("semi_hard")(packed, emb)) == pytest.approx(plain, abs=1e-6)
  metric = losses.TeacherCosine()
  metric.update_state(packed, emb)
  assert float(metric.result()) == pytest.approx(np.mean(cos), abs=1e-5)


def ref_metric_pairs(labels, x, threshold, margin, distance):
  """dlib's loss_metric_ by hand: every same-person pair, the hardest other-person pairs."""
  d = ref_distance(x, distance)
  pos, neg = [], []
  for i, j in itertools.combinations(range(len(labels)), 2):
    if labels[i] == labels[j]:
      pos.append(max(0.0, d[i, j] - (threshold - margin)))
    else:
      neg.append(max(0.0, threshold + margin - d[i, j]))
  if not pos:
    return 0.0
  return (sum(pos) + sum(sorted(neg, reverse=True)[: len(pos)])) / (2 * len(pos))


@pytest.mark.parametrize("seed", range(4))
def test_metric_pairs_matches_dlib_rule(seed):
  labels, x = random_batch(seed)
  x = 0.5 * x / np.linalg.norm(x, axis=1, keepdims=True)  # distances around the threshold
  want = ref_metric_pairs(labels, x, 0.45, 0.05, "l2")
  got = float(losses.TripletLoss("metric_pairs", 0.05, threshold=0.45)(labels, x))
  assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
  assert want > 0


def test_metric_pairs_without_a_pair_is_zero():
  x = np.eye(4, dtype=np.float32)
  assert float(losses.TripletLoss("metric_pairs", 0.05)(np.arange(4), x)) == 0.0
