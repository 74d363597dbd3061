"""Triplet losses over a batch of labelled embeddings (semi-hard, batch-hard, batch-all, random).

Every loss is a pure TensorFlow function `(labels [B] int, embeddings [B, D]) -> scalar float32`.
They run eagerly, inside `tf.function` and in a `tf.distribute` replica context; embeddings in
float16/bfloat16 (mixed precision) are cast to float32 first, so the loss is always float32.

Memory is O(B^2): no [B, B, B] triplet tensor (as in TF-Addons); each anchor's negative distances
are sorted once and every anchor-positive pair finds its negative there with `tf.searchsorted`.

Conventions shared by all losses:
  * A triplet (a, p, n) needs a != p, label[a] == label[p] and label[n] != label[a].
  * Anchor-positive pairs whose anchor has no negative in the batch form no triplet and are
    ignored; a batch without any triplet gives a loss of exactly 0 (never NaN).

`TripletLoss` is the Keras wrapper used by `model.compile`; under a distribution strategy it
returns a per-sample vector so that Keras' own reduction and cross-replica scaling are right.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf

from facetriplet.training import pair_loss

DISTANCES = ("l2", "squared_l2", "angular")
KINDS = ("semi_hard", "batch_hard", "batch_all", "random", "metric_pairs")

TensorLike = Union[tf.Tensor, Any]


def pairwise_distance(embeddings: TensorLike, distance: str = "l2") -> tf.Tensor:
  """Distance matrix between all rows of `embeddings`, computed in float32.

  Args:
    embeddings: [B, D] float tensor (any float dtype; cast to float32).
    distance: `l2` (Euclidean), `squared_l2`, or `angular` (1 - cosine similarity; rows are
      L2-normalised inside, so embeddings need not be unit vectors).

  Returns:
    [B, B] float32 tensor, non-negative, with an exact zero diagonal. For `l2`, entries whose
    squared distance is (numerically) zero are exactly 0 and have a zero gradient, so duplicate
    embeddings never produce NaN gradients.

  Raises:
    ValueError: `distance` is not one of `DISTANCES`.
  """
  _check_distance(distance)
  x = tf.cast(tf.convert_to_tensor(embeddings), tf.float32)
  batch = tf.shape(x)[0]
  off_diagonal = 1.0 - tf.eye(batch, dtype=tf.float32)
  if distance == "angular":
    unit = tf.math.l2_normalize(x, axis=1, epsilon=1e-12)
    cosine = tf.matmul(unit, unit, transpose_b=True)
    return tf.clip_by_value(1.0 - cosine, 0.0, 2.0) * off_diagonal
  squared_norms = tf.reduce_sum(tf.square(x), axis=1)
  squared = (
    squared_norms[:, None] - 2.0 * tf.matmul(x, x, transpose_b=True) + squared_norms[None, :]
  )
  squared = tf.maximum(squared, 0.0) * off_diagonal
  if distance == "squared_l2":
    return squared
  # sqrt has an infinite derivative at 0: feed it 1 where the distance is ~0 and select 0 there,
  # so both the value and the gradient are exactly zero for duplicates and on the diagonal.
  is_zero = squared <= 1e-12
  safe = tf.where(is_zero, tf.ones_like(squared), squared)
  return tf.where(is_zero, tf.zeros_like(squared), tf.sqrt(safe))


def semi_hard_triplet_loss(
  labels: TensorLike, embeddings: TensorLike, margin: float = 0.2, distance: str = "l2"
) -> tf.Tensor:
  """Semi-hard triplet loss (Schroff et al., FaceNet, 2015), as TF-Addons computes it.

  For every anchor-positive pair the negative is the closest negative that is still farther from
  the anchor than the positive (d(a,n) > d(a,p)); when the anchor has no such negative, the
  farthest negative is used (TF-Addons' `negatives_inside`). The loss is the mean over all
  anchor-positive pairs of max(d(a,p) - d(a,n) + margin, 0).

  Args:
    labels: [B] (or [B, 1]) integer identity labels.
    embeddings: [B, D] embeddings.
    margin: hinge margin.
    distance: one of `DISTANCES`.

  Returns:
    Scalar float32 loss; 0 when the batch has no anchor-positive pair with a negative.
  """
  hinge, valid = _semi_hard_pair_hinges(labels, embeddings, margin, distance)
  return _masked_mean(hinge, valid)


def active_triplet_fraction(
  labels: TensorLike, embeddings: TensorLike, margin: float = 0.2, distance: str = "l2"
) -> tf.Tensor:
  """Fraction of anchor-positive pairs whose semi-hard triplet has a positive loss.

  Args:
    labels: [B] (or [B, 1]) integer identity labels.
    embeddings: [B, D] embeddings.
    margin: hinge margin.
    distance: one of `DISTANCES`.

  Returns:
    Scalar float32 in [0, 1]; 0 when the batch has no valid pair.
  """
  hinge, valid = _semi_hard_pair_hinges(labels, embeddings, margin, distance)
  active = tf.cast(hinge > 0.0, tf.float32)
  return _masked_mean(active, valid)


def batch_hard_triplet_loss(
  labels: TensorLike,
  embeddings: TensorLike,
  margin: float = 0.2,
  distance: str = "l2",
  soft: bool = False,
) -> tf.Tensor:
  """Batch-hard triplet loss (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017).

  For each anchor: its hardest (farthest) positive and hardest (closest) negative; the anchor's
  loss is max(d_ap - d_an + margin, 0), or softplus(d_ap - d_an) with `soft=True` (the margin is
  then unused). The result is the mean over anchors that have both a positive and a negative.

  Args:
    labels: [B] (or [B, 1]) integer identity labels.
    embeddings: [B, D] embeddings.
    margin: hinge margin (ignored when `soft`).
    distance: one of `DISTANCES`.
    soft: use the soft margin, softplus(d_ap - d_an).

  Returns:
    Scalar float32 loss; 0 when no anchor has both a positive and a negative.
  """
  dist, positive, negative = _distances_and_masks(labels, embeddings, distance)
  big = tf.stop_gradient(tf.reduce_max(dist)) + 1.0
  hardest_positive = tf.reduce_max(tf.where(positive, dist, tf.zeros_like(dist)), axis=1)
  hardest_negative = tf.reduce_min(tf.where(negative, dist, big * tf.ones_like(dist)), axis=1)
  valid = tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1))
  gap = hardest_positive - hardest_negative
  per_anchor = tf.nn.softplus(gap) if soft else tf.nn.relu(gap + margin)
  return _masked_mean(per_anchor, valid)


def batch_all_triplet_loss(
  labels: TensorLike, embeddings: TensorLike, margin: float = 0.2, distance: str = "l2"
) -> tf.Tensor:
  """Batch-all triplet loss, averaged over the triplets with a positive loss.

  Hermans et al. (2017) "BA≠0": every valid triplet (a, p, n) contributes
  max(d(a,p) - d(a,n) + margin, 0), and the sum is divided by the number of triplets whose loss
  is strictly positive (not by all triplets, which would dilute the signal as training
  progresses and most triplets become easy). Computed in O(B^2) memory: for each pair, the
  negatives inside the margin form a prefix of the anchor's sorted negative distances, and their
  sum is read from a cumulative sum.

  Args:
    labels: [B] (or [B, 1]) integer identity labels.
    embeddings: [B, D] embeddings.
    margin: hinge margin.
    distance: one of `DISTANCES`.

  Returns:
    Scalar float32 loss; 0 when no triplet has a positive loss.
  """
  dist, positive, negative = _distances_and_masks(labels, embeddings, distance)
  margin = tf.cast(margin, tf.float32)
  sorted_neg, _ = _sorted_negatives(dist, negative, pad=tf.abs(margin) + 1.0)
  threshold = dist + margin  # a triplet is active when d(a,n) < d(a,p) + margin
  # Number of the anchor's negatives strictly below the threshold, for every (a, p).
  count = tf.searchsorted(sorted_neg, threshold, side="left")
  prefix = tf.concat([tf.zeros_like(sorted_neg[:, :1]), tf.cumsum(sorted_neg, axis=1)], axis=1)
  count_f = tf.cast(count, tf.float32)
  pair_sum = count_f * threshold - tf.gather(prefix, count, batch_dims=1)
  pair_sum = tf.where(positive, pair_sum, tf.zeros_like(pair_sum))
  num_active = tf.reduce_sum(tf.where(positive, count_f, tf.zeros_like(count_f)))
  return tf.math.divide_no_nan(tf.reduce_sum(pair_sum), num_active)


def random_triplet_loss(
  labels: TensorLike,
  embeddings: TensorLike,
  margin: float = 0.2,
  distance: str = "l2",
  seed: Optional[Union[int, Sequence[int]]] = None,
) -> tf.Tensor:
  """Random-triplet baseline: one random positive and one random negative per anchor.

  For each anchor that has a positive and a negative, a positive and a negative are drawn
  uniformly; the loss is the mean over those anchors of max(d(a,p) - d(a,n) + margin, 0).

  Args:
    labels: [B] (or [B, 1]) integer identity labels.
    embeddings: [B, D] embeddings.
    margin: hinge margin.
    distance: one of `DISTANCES`.
    seed: None for fresh randomness on every call (training); an int, a pair of ints or an int
      tensor of shape [2] for a deterministic (stateless) draw.

  Returns:
    Scalar float32 loss; 0 when no anchor has both a positive and a negative.
  """
  dist, positive, negative = _distances_and_masks(labels, embeddings, distance)
  shape = tf.shape(dist)
  if seed is None:
    scores = tf.random.uniform(tf.concat([[2], shape], axis=0))
  else:
    if tf.is_tensor(seed):
      pair = tf.cast(seed, tf.int64)
    elif isinstance(seed, (list, tuple)):
      pair = [int(s) for s in seed]
    else:
      pair = [int(seed), 0]
    scores = tf.random.stateless_uniform(tf.concat([[2], shape], axis=0), seed=pair)
  # Uniform choice among the allowed columns = argmax of iid uniforms restricted to them.
  pick_p = tf.argmax(tf.where(positive, scores[0], -tf.ones_like(dist)), axis=1)
  pick_n = tf.argmax(tf.where(negative, scores[1], -tf.ones_like(dist)), axis=1)
  d_ap = tf.gather(dist, pick_p, batch_dims=1)
  d_an = tf.gather(dist, pick_n, batch_dims=1)
  valid = tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1))
  return _masked_mean(tf.nn.relu(d_ap - d_an + margin), valid)


@keras.saving.register_keras_serializable(package="facetriplet")
class TripletLoss(keras.losses.Loss):
  """Keras wrapper around the triplet losses, for `model.compile(loss=TripletLoss(...))`.

  `call` returns the batch loss broadcast to a length-B vector: Keras' default
  `sum_over_batch_size` reduction then gives back the batch loss, and under a `tf.distribute`
  strategy Keras' division by the number of replicas makes the summed gradient the mean of the
  per-replica losses. The loss computes in float32 by default, so integer labels (which Keras
  converts to the loss dtype) stay exact up to 2**24 identities even under mixed precision.

  With `distill_weight` > 0 (knowledge distillation) y_true also carries the teacher's embedding
  of each photo ([B, 1 + D], `split_targets`) and `distill_weight * distillation_loss` is added.

  Args:
    kind: one of `KINDS` (`metric_pairs`: dlib's pair loss around `threshold`; `pair_loss`).
    margin: hinge margin.
    distance: one of `DISTANCES`.
    soft: soft margin (only for `batch_hard`).
    distill_weight: weight of the cosine distance to the teacher's embeddings (0 = none).
    name: loss name.
    reduction: Keras reduction (keep the default).
    dtype: loss dtype; keep float32.

  Raises:
    ValueError: unknown `kind` or `distance`, or `soft` with a kind other than `batch_hard`.
  """

  def __init__(
    self,
    kind: str = "semi_hard",
    margin: float = 0.2,
    distance: str = "l2",
    soft: bool = False,
    distill_weight: float = 0.0,
    threshold: float = pair_loss.THRESHOLD,
    name: str = "triplet_loss",
    reduction: str = "sum_over_batch_size",
    dtype: Any = "float32",
  ):
    super().__init__(name=name, reduction=reduction, dtype=dtype)
    self.distill_weight = float(distill_weight)
    if kind not in KINDS:
      raise ValueError(f"unknown triplet loss kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    _check_distance(distance)
    if soft and kind != "batch_hard":
      raise ValueError(f"soft=True is only defined for kind='batch_hard', not {kind!r}")
    self.kind = kind
    self.margin = float(margin)
    self.distance = distance
    self.soft = bool(soft)
    self.threshold = float(threshold)

  def call(self, y_true: TensorLike, y_pred: TensorLike) -> tf.Tensor:
    labels = _flat_labels(y_true)
    if self.kind == "semi_hard":
      loss = semi_hard_triplet_loss(labels, y_pred, self.margin, self.distance)
    elif self.kind == "batch_hard":
      loss = batch_hard_triplet_loss(labels, y_pred, self.margin, self.distance, soft=self.soft)
    elif self.kind == "batch_all":
      loss = batch_all_triplet_loss(labels, y_pred, self.margin, self.distance)
    elif self.kind == "metric_pairs":
      dist, positive, negative = _distances_and_masks(labels, y_pred, self.distance)
      loss = pair_loss.metric_pair_loss(dist, positive, negative, self.threshold, self.margin)
    else:
      loss = random_triplet_loss(labels, y_pred, self.margin, self.distance)
    if self.distill_weight:
      _, targets = split_targets(y_true)
      loss = loss + self.distill_weight * distillation_loss(targets, y_pred)
    return tf.fill(tf.shape(labels), loss)

  def get_config(self) -> dict:
    config = super().get_config()
    config.update(
      {
        "kind": self.kind,
        "margin": self.margin,
        "distance": self.distance,
        "soft": self.soft,
        "distill_weight": self.distill_weight,
        "threshold": self.threshold,
      }
    )
    return config


def _check_distance(distance: str) -> None:
  if distance not in DISTANCES:
    raise ValueError(f"unknown distance {distance!r}; valid distances: {', '.join(DISTANCES)}")


def split_targets(y_true: TensorLike) -> tuple[tf.Tensor, Optional[tf.Tensor]]:
  """(labels, teacher embeddings or None) of a batch's y_true: [B] / [B, 1] labels, or the
  distillation batches' [B, 1 + D] (label, then the teacher's embedding of the same photo)."""
  y_true = tf.convert_to_tensor(y_true)
  if y_true.shape.rank == 2 and y_true.shape[-1] is not None and y_true.shape[-1] > 1:
    return y_true[:, 0], tf.cast(y_true[:, 1:], tf.float32)
  return y_true, None


def distillation_loss(targets: TensorLike, embeddings: TensorLike) -> tf.Tensor:
  """Mean cosine distance (1 - cos) between the student's and the teacher's embeddings."""
  a = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
  b = tf.math.l2_normalize(tf.cast(targets, tf.float32), axis=1)
  return tf.reduce_mean(1.0 - tf.reduce_sum(a * b, axis=1))


def _flat_labels(labels: TensorLike) -> tf.Tensor:
  """[B] or [B, 1] labels of any numeric dtype -> [B] int64 (floats are rounded)."""
  labels = tf.reshape(split_targets(labels)[0], [-1])
  if labels.dtype.is_floating:
    labels = tf.round(labels)
  return tf.cast(labels, tf.int64)


def _distances_and_masks(
  labels: TensorLike, embeddings: TensorLike, distance: str
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Distance matrix, positive mask (same label, a != p) and negative mask (other label)."""
  dist = pairwise_distance(embeddings, distance)
  labels = _flat_labels(labels)
  same = tf.equal(labels[:, None], labels[None, :])
  not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
  return dist, tf.logical_and(same, not_self), tf.logical_not(same)


def _sorted_negatives(
  dist: tf.Tensor, negative: tf.Tensor, pad: TensorLike = 1.0
) -> Tuple[tf.Tensor, tf.Tensor]:
  """Each anchor's negative distances sorted ascending, non-negatives padded with a big value.

  Returns the [B, B] sorted rows and the [B] number of negatives per anchor. The padding is
  finite (max distance + `pad`) so that no inf ever reaches a gradient.
  """
  big = tf.stop_gradient(tf.reduce_max(dist)) + pad
  padded = tf.where(negative, dist, big * tf.ones_like(dist))
  num_negatives = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1)
  return tf.sort(padded, axis=1), num_negatives


def _semi_hard_pair_hinges(
  labels: TensorLike, embeddings: TensorLike, margin: float, distance: str
) -> Tuple[tf.Tensor, tf.Tensor]:
  """Semi-hard hinge for every (a, p) and the mask of pairs that form a triplet."""
  dist, positive, negative = _distances_and_masks(labels, embeddings, distance)
  sorted_neg, num_negatives = _sorted_negatives(dist, negative)
  # First negative strictly farther than the positive; padding sorts last, and d(a,p) < padding.
  first_outside = tf.searchsorted(sorted_neg, dist, side="right")
  farthest = tf.maximum(num_negatives - 1, 0)[:, None]
  index = tf.where(
    first_outside < num_negatives[:, None],
    first_outside,
    tf.broadcast_to(farthest, tf.shape(first_outside)),
  )
  d_an = tf.gather(sorted_neg, index, batch_dims=1)
  valid = tf.logical_and(positive, (num_negatives > 0)[:, None])
  hinge = tf.nn.relu(dist - d_an + tf.cast(margin, tf.float32))
  return tf.where(valid, hinge, tf.zeros_like(hinge)), valid


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Mean of `values` where `mask`; 0 (not NaN, with zero gradient) when the mask is empty."""
  mask_f = tf.cast(mask, tf.float32)
  total = tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)))
  return tf.math.divide_no_nan(total, tf.reduce_sum(mask_f))


@keras.saving.register_keras_serializable(package="facetriplet")
class ActiveTripletFraction(keras.metrics.Mean):
  """Mean over steps of `losses.active_triplet_fraction` (how much of the batch still teaches)."""

  def __init__(
    self, margin: float = 0.2, distance: str = "l2", name: str = "active_triplets", **kwargs
  ):
    super().__init__(name=name, **kwargs)
    self.margin = float(margin)
    self.distance = distance

  def update_state(self, y_true, y_pred, sample_weight=None):
    return super().update_state(active_triplet_fraction(y_true, y_pred, self.margin, self.distance))

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({"margin": self.margin, "distance": self.distance})
    return config


class TeacherCosine(keras.metrics.Mean):
  """Mean cosine similarity of the student's embeddings to the teacher's (distillation)."""

  def __init__(self, name: str = "teacher_cosine", **kwargs):
    super().__init__(name=name, **kwargs)

  def update_state(self, y_true, y_pred, sample_weight=None):
    _, targets = split_targets(y_true)
    return super().update_state(1.0 - distillation_loss(targets, y_pred))
