"""dlib's metric loss (`loss_metric_` in dlib/dnn/loss.h), the loss its face ResNet was trained
with: a contrastive loss with one global threshold and hard-negative mining.

Over every pair of a batch, at distance d (l2 by default):
  same person:  max(0, d - (threshold - margin))     every such pair counts
  other people: max(0, (threshold + margin) - d)     only the hardest ones, as many as there are
                                                     same-person pairs
loss = (sum of both) / (2 * number of same-person pairs); 0 when the batch has no pair.

Where the triplet losses only order distances around each anchor, this one puts every pair on the
right side of one threshold, which is what a gallery ranked across people needs (mAP@R), and it
continues the pretrained network's own training objective when fine-tuning it.
"""

from __future__ import annotations

import tensorflow as tf

THRESHOLD = 0.45  # l2 between unit embeddings; dlib's network: same person ~0.33, other ~0.57


def metric_pair_loss(
  dist: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor, threshold: float, margin: float
) -> tf.Tensor:
  """dlib's pair loss (module docstring) of a batch's distance matrix [B, B] and its masks of
  same-person (a != b) and other-person pairs (`losses._distances_and_masks`)."""
  upper = tf.linalg.band_part(tf.ones_like(dist, dtype=tf.bool), 0, -1)
  upper = tf.logical_and(upper, tf.logical_not(tf.eye(tf.shape(dist)[0], dtype=tf.bool)))
  pos = tf.boolean_mask(dist, tf.logical_and(positive, upper))
  neg = tf.boolean_mask(dist, tf.logical_and(negative, upper))
  num_pos = tf.size(pos)
  pos_loss = tf.reduce_sum(tf.nn.relu(pos - (threshold - margin)))
  neg_hinge = tf.nn.relu((threshold + margin) - neg)
  take = tf.minimum(num_pos, tf.size(neg_hinge))
  neg_loss = tf.reduce_sum(tf.math.top_k(neg_hinge, k=take, sorted=False).values)
  return tf.math.divide_no_nan(pos_loss + neg_loss, 2.0 * tf.cast(num_pos, tf.float32))
