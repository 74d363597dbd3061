"""Margin-softmax training: a cosine classifier head over the training identities and its loss.

CosFace (Wang et al. 2018, "CosFace: Large Margin Cosine Loss") and ArcFace (Deng et al. 2019,
"ArcFace: Additive Angular Margin Loss"). With unit embeddings x and unit class weights w_j, the
head gives cos(theta_j) = x . w_j for every training identity j; for a sample of class y the
logits are

  cosface:  s * cos(theta_j)   for j != y,   s * (cos(theta_y) - m)
  arcface:  s * cos(theta_j)   for j != y,   s * cos(theta_y + m)

and the loss is the softmax cross-entropy over them. ArcFace's cos(theta + m) is only monotonic
in theta while theta + m <= pi; past that (cos(theta) <= cos(pi - m)) it uses the usual
substitute cos(theta) - m * sin(m) (InsightFace's `easy_margin=False`), which keeps the target
logit decreasing in theta.

`CosineClassifier` is training-only: `train.py` stacks it on the embedding model for the
margin-softmax stage and never saves it into the embedding checkpoints or the export. Under a
`tf.distribute` strategy its weights are mirrored like every other variable, and the labels are
global (the same identity has the same row on every replica).
"""

from __future__ import annotations

import math
from typing import Any, Union

import keras
import tensorflow as tf

KINDS = ("cosface", "arcface")

TensorLike = Union[tf.Tensor, Any]


def margin_logits(
  labels: TensorLike,
  cosine: TensorLike,
  kind: str = "cosface",
  scale: float = 30.0,
  margin: float = 0.35,
) -> tf.Tensor:
  """The scaled logits [B, C] with the margin applied to each sample's own class.

  Args:
    labels: [B] or [B, 1] class indices in [0, C).
    cosine: [B, C] cosine similarities (any float dtype; computed in float32).
    kind: 'cosface' or 'arcface'.
    scale: s.
    margin: m (cosface: subtracted from the cosine; arcface: added to the angle, radians).
  """
  if kind not in KINDS:
    raise ValueError(f"unknown margin-softmax kind {kind!r}; valid: {', '.join(KINDS)}")
  cosine = tf.cast(cosine, tf.float32)
  labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
  target = tf.equal(tf.range(tf.shape(cosine)[1], dtype=tf.int32)[None, :], labels[:, None])
  if kind == "cosface":
    adjusted = cosine - margin
  else:
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    sine = tf.sqrt(tf.maximum(1.0 - tf.square(cosine), 1e-9))
    shifted = cosine * cos_m - sine * sin_m
    threshold = math.cos(math.pi - margin)
    adjusted = tf.where(cosine > threshold, shifted, cosine - margin * sin_m)
  return scale * tf.where(target, adjusted, cosine)


def margin_softmax_loss(
  labels: TensorLike,
  cosine: TensorLike,
  kind: str = "cosface",
  scale: float = 30.0,
  margin: float = 0.35,
) -> tf.Tensor:
  """Per-sample cross-entropy [B] over `margin_logits` (float32)."""
  logits = margin_logits(labels, cosine, kind, scale, margin)
  labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


@keras.saving.register_keras_serializable(package="facetriplet")
class CosineClassifier(keras.layers.Layer):
  """cos(theta) between the (normalised) input rows and `num_classes` normalised weight columns.

  Output float32 [B, num_classes] in [-1, 1]. Training-only: see the module docstring.
  """

  def __init__(self, num_classes: int, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.num_classes = int(num_classes)

  def build(self, input_shape):
    self.kernel = self.add_weight(
      name="class_weights",
      shape=(int(input_shape[-1]), self.num_classes),
      initializer=keras.initializers.GlorotUniform(),
      trainable=True,
    )
    self.built = True

  def call(self, inputs):
    x = tf.math.l2_normalize(tf.cast(inputs, tf.float32), axis=-1, epsilon=1e-12)
    w = tf.math.l2_normalize(tf.cast(self.kernel, tf.float32), axis=0, epsilon=1e-12)
    return tf.clip_by_value(tf.matmul(x, w), -1.0, 1.0)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.num_classes)

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({"num_classes": self.num_classes})
    return config


@keras.saving.register_keras_serializable(package="facetriplet")
class MarginSoftmaxLoss(keras.losses.Loss):
  """Keras wrapper: `y_pred` is the `CosineClassifier` output, `y_true` the class indices.

  Returns the per-sample loss; Keras' `sum_over_batch_size` reduction gives the batch mean, and
  its division by the number of replicas makes the all-reduced gradient that of the mean over
  replicas (as for `losses.TripletLoss`).
  """

  def __init__(
    self,
    kind: str = "cosface",
    scale: float = 30.0,
    margin: float = 0.35,
    name: str = "margin_softmax_loss",
    reduction: str = "sum_over_batch_size",
    dtype: Any = "float32",
  ):
    super().__init__(name=name, reduction=reduction, dtype=dtype)
    if kind not in KINDS:
      raise ValueError(f"unknown margin-softmax kind {kind!r}; valid: {', '.join(KINDS)}")
    self.kind = kind
    self.scale = float(scale)
    self.margin = float(margin)

  def call(self, y_true: TensorLike, y_pred: TensorLike) -> tf.Tensor:
    labels = tf.reshape(tf.convert_to_tensor(y_true), [-1])
    if labels.dtype.is_floating:
      labels = tf.round(labels)
    return margin_softmax_loss(
      tf.cast(labels, tf.int32), y_pred, self.kind, self.scale, self.margin
    )

  def get_config(self) -> dict:
    config = super().get_config()
    config.update({"kind": self.kind, "scale": self.scale, "margin": self.margin})
    return config


@keras.saving.register_keras_serializable(package="facetriplet")
class HeadAccuracy(keras.metrics.Mean):
  """Fraction of samples whose own class has the largest cosine (the training head's accuracy)."""

  def __init__(self, name: str = "head_accuracy", **kwargs):
    super().__init__(name=name, **kwargs)

  def update_state(self, y_true, y_pred, sample_weight=None):
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int64)
    hit = tf.cast(tf.equal(tf.argmax(y_pred, axis=-1), labels), tf.float32)
    return super().update_state(hit)
