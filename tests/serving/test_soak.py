"""A bounded soak of the real service (loopback only, under a minute): 16 searching clients, one
enrolling and one deleting client against `facetriplet-serve`, killed with SIGKILL and restarted
three times (`benchmarks.soak.run_soak`, which `benchmarks/bench_soak.py` runs longer on real
photos for BENCHMARKS.md).

Zero 5xx, every acknowledged write present after each restart, no removed id returned after its
DELETE was acknowledged, the files consistent (checksums, audit trail): `run_soak` lists every
violation of these and the test asserts there is none.
"""

import shutil

import pytest

from benchmarks.soak import run_soak
from tests.serving.test_serve import _new_face, _read
from tests.serving.test_serve import setup  # noqa: F401  (the fixture)


@pytest.mark.slow
def test_soak_with_kill_9_and_restarts(setup, tmp_path):  # noqa: F811
  index_dir = str(tmp_path / "index")
  shutil.copytree(setup["index"], index_dir)
  queries = [_read(p) for p in setup["queries"]]
  figures = run_soak(index_dir, queries, [_new_face(s) for s in range(20)], 3, 4.0, 16)
  print(f"\nsoak: {figures}")
  assert figures["violations"] == []
  assert figures["server_errors"] == 0 and figures["restarts"] == 3
  assert figures["enrolments_acknowledged"] and figures["deletions_acknowledged"]
  assert figures["searches"] > 100
