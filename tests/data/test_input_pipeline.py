"""Tests of facetriplet/input_pipeline.py on real (tiny) TFRecord shards."""

import collections

import numpy as np
import pytest

from facetriplet.data import input_pipeline
from facetriplet.data import tfrecords
from facetriplet.errors import UserError
from tests import shard_helpers

# Identity sizes: 1-photo identities (labels 1 and 6) must never appear; 2-photo ones with K=3
# are repeated; label 4 has 7 photos (> max_group_size=5 in some tests).
TRAIN = [5, 1, 3, 2, 7, 4, 1, 2, 3, 6]
VAL = [3, 2, 2, 1]
SIZE = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("shards"))
  shard_helpers.write_dataset(directory, {"train": TRAIN, "val": VAL}, size=SIZE, shards=3)
  return directory


def _photos_by_label(directory, split):
  """{label: [decoded photos]} from the eval pipeline (every record once)."""
  photos = collections.defaultdict(list)
  for batch in input_pipeline.eval_dataset(directory, split, 5):
    for image, label in zip(batch["image"].numpy(), batch["label"].numpy()):
      photos[int(label)].append(image)
  return photos


def _batches(directory, n, **kwargs):
  args = dict(p=2, k=3, num_replicas=2, seed=7, max_group_size=5)
  args.update(kwargs)
  ds = input_pipeline.train_dataset(directory, "train", **args)
  return [(im.numpy(), lab.numpy()) for im, lab in ds.take(n)]


def test_batches_are_p_groups_of_k_per_replica(data_dir):
  p, k, replicas = 2, 3, 2
  single = {label for label, count in enumerate(TRAIN) if count == 1}
  seen = set()
  for images, labels in _batches(data_dir, 8):
    assert images.shape == (replicas * p * k, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.shape == (replicas * p * k,)
    groups = labels.reshape(replicas * p, k)
    assert (groups == groups[:, :1]).all()  # runs of K equal labels
    assert len(set(groups[:, 0])) == replicas * p  # distinct identities in the batch
    for chunk in np.split(labels, replicas):  # each replica's sub-batch: P whole identities
      assert len(set(chunk)) == p
      assert all(np.sum(chunk == label) == k for label in set(chunk))
    seen |= set(labels.tolist())
    assert not seen & single
  assert seen == {label for label, count in enumerate(TRAIN) if count >= 2}


def test_small_identities_repeated_and_photos_come_from_the_identity(data_dir):
  photos = _photos_by_label(data_dir, "train")
  for images, labels in _batches(data_dir, 8):
    for group_images, group_labels in zip(
      images.reshape(-1, 3, SIZE, SIZE, 3), labels.reshape(-1, 3)
    ):
      label = int(group_labels[0])
      own = photos[label]
      matches = [
        next(i for i, photo in enumerate(own) if np.array_equal(photo, image))
        for image in group_images
      ]
      if len(own) < 3:  # every photo appears, one of them twice
        assert sorted(set(matches)) == list(range(len(own)))
      else:  # K different photos
        assert len(set(matches)) == 3


def test_reservoir_caps_large_identities(data_dir):
  photos = _photos_by_label(data_dir, "train")
  distinct = set()
  for images, labels in _batches(data_dir, 30, max_group_size=5):
    for image in images[labels == 4]:
      distinct.add(next(i for i, ph in enumerate(photos[4]) if np.array_equal(ph, image)))
  assert 3 <= len(distinct) <= 5


def test_seed_reproducible_and_cache_equivalent(data_dir):
  first = _batches(data_dir, 6, seed=3)
  again = _batches(data_dir, 6, seed=3)
  cached = _batches(data_dir, 6, seed=3, cache=True)
  other = _batches(data_dir, 6, seed=4)
  for i, ((a_im, a_lab), (b_im, b_lab), (c_im, c_lab)) in enumerate(zip(first, again, cached)):
    np.testing.assert_array_equal(a_lab, b_lab)
    np.testing.assert_array_equal(a_im, b_im)
    if i < 2:  # first pass (2 batches); later the cache keeps the first pass's shard order
      np.testing.assert_array_equal(a_lab, c_lab)
      np.testing.assert_array_equal(a_im, c_im)
  assert any(not np.array_equal(a[1], o[1]) for a, o in zip(first, other))


def test_one_pass_without_repeat_drops_only_the_remainder(data_dir):
  usable = sum(1 for c in TRAIN if c >= 2)  # 8 identities, 4 per batch -> 2 batches
  batches = _batches(data_dir, 100, repeat=False)
  assert len(batches) == usable // 4
  assert len({int(x) for _, labels in batches for x in labels}) == usable


def test_eval_pipeline_every_record_once_in_order(data_dir):
  expected = list(tfrecords.read_records(tfrecords.list_shards(data_dir, "val")))
  for cache in (False, True):
    paths, labels = [], []
    for batch in input_pipeline.eval_dataset(data_dir, "val", 3, cache=cache):
      assert batch["image"].shape[1:] == (SIZE, SIZE, 3)
      paths += [p.decode() for p in batch["path"].numpy()]
      labels += batch["label"].numpy().tolist()
    assert paths == [r["path"] for r in expected]
    assert labels == [r["label"] for r in expected]
    assert len(set(paths)) == sum(VAL)


def test_too_few_identities_and_missing_split_are_user_errors(data_dir, tmp_path):
  with pytest.raises(UserError, match="lower --config.train.p"):
    input_pipeline.train_dataset(data_dir, "train", p=5, k=2, num_replicas=2)
  with pytest.raises(UserError):
    input_pipeline.train_dataset(str(tmp_path), "train", p=2, k=2)
  with pytest.raises(UserError, match="not in the manifest"):
    input_pipeline.train_dataset(data_dir, "test", p=2, k=2)


def test_steps_per_epoch(data_dir):
  shard_set = tfrecords.ShardSet.open(data_dir)
  assert shard_set.steps_per_epoch("train", 8) == sum(TRAIN) // 8
  assert shard_set.steps_per_epoch("train", 8, configured=5) == 5


def test_gallery_from_records_sees_the_pixels_training_sees(data_dir):
  """One JPEG decoder for records: the gallery's record reader (search.embedding) and the training
  pipeline give identical pixels for every record. OpenCV's libjpeg rounds differently from TF's
  decoder on these noisy photos (checked below), so a second decoder would fail this test."""
  import cv2  # pylint: disable=g-import-not-at-top
  from facetriplet.search import embedding  # pylint: disable=g-import-not-at-top

  shard_set = tfrecords.ShardSet.open(data_dir)
  gallery = [
    (entry.rel_path, crop.image)
    for batch in embedding.record_batches(
      shard_set, ["val", "train"], shard_set.crop_size, batch_size=7
    )
    for entry, crop in batch
  ]
  training = [
    (path.decode(), image)
    for split in ("val", "train")
    for batch in input_pipeline.eval_dataset(data_dir, split, 5)
    for path, image in zip(batch["path"].numpy(), batch["image"].numpy())
  ]
  assert [p for p, _ in gallery] == [p for p, _ in training] and len(gallery) == sum(TRAIN + VAL)
  for (path, a), (_, b) in zip(gallery, training):
    np.testing.assert_array_equal(a, b, err_msg=path)
  encoded = [r["image"] for r in shard_set.records(["val"])]
  opencv = [
    cv2.cvtColor(cv2.imdecode(np.frombuffer(e, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    for e in encoded
  ]
  assert any(not np.array_equal(o, g) for o, (_, g) in zip(opencv, gallery))


@pytest.mark.parametrize("cache", [False, True])
def test_distillation_targets_travel_with_their_photo(data_dir, cache):
  """Each photo's target (here a function of its pixels) arrives beside that very photo, after
  the grouping, reservoir sampling, shuffling and K-cycling; batches are otherwise unchanged."""
  paths, targets = [], []
  for batch in input_pipeline.eval_dataset(data_dir, "train", 8):
    for image, path in zip(batch["image"].numpy(), batch["path"].numpy()):
      paths.append(path.decode())
      targets.append(image.reshape(-1, 3).mean(axis=0).astype(np.float32))  # 3-d "embedding"
  plain = _batches(data_dir, 4, cache=cache)
  with_targets = _batches(data_dir, 4, cache=cache, targets=(paths, np.stack(targets)))
  for (images, labels), (images_t, packed) in zip(plain, with_targets):
    np.testing.assert_array_equal(images_t, images)
    assert packed.shape == (len(labels), 4) and packed.dtype == np.float32
    np.testing.assert_array_equal(packed[:, 0], labels)
    expected = images.reshape(len(images), -1, 3).mean(axis=1)
    np.testing.assert_allclose(packed[:, 1:], expected, atol=1e-4)
