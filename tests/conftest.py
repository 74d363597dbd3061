"""Shared test fixtures: where the development data sets live, and quiet TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("FACETRIPLET_SHARED_DATA",
                             os.path.join(os.path.dirname(REPO), "shared", "data"))


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
