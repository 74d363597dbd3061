"""Shared test fixtures: where the development data sets live, and quiet TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Multi-replica code is tested on two logical CPU devices. TensorFlow allows the split only before
# it initialises its devices, so it happens here, before any test module is imported.
try:
  tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
  )
except RuntimeError:
  pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get(
  "FACETRIPLET_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data")
)


def shared_dataset(name: str) -> str:
  """Path of ../shared/data/<name>; skips the test with a reason when it is absent."""
  path = os.path.join(SHARED_DATA, name)
  if not os.path.isdir(path):
    pytest.skip(f"{path} not present (development data lives in ../shared/data)")
  return path


@pytest.fixture
def orl_faces() -> str:
  return shared_dataset("orl_faces")


@pytest.fixture
def lfw_2to4() -> str:
  return shared_dataset("lfw_2to4")


@pytest.fixture
def celeba_199() -> str:
  return shared_dataset("celeba_199")


@pytest.fixture(scope="session")
def two_replica_strategy():
  """The process's one MirroredStrategy over two logical CPUs.

  Shared by every test: a second MirroredStrategy over the same devices in one process aborts its
  all-reduces ("Shape mismatch in the collective instance").
  """
  if len(tf.config.list_logical_devices("CPU")) < 2:
    pytest.skip("TensorFlow started before the CPU could be split into two logical devices")
  from facetriplet.training import train  # pylint: disable=g-import-not-at-top

  return train.make_strategy({"cpu_replicas": 2})
