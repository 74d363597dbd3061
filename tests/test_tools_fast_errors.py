"""The tools check flags, paths, configs and index folders before they import TensorFlow: a
mistake is one `<tool>: error:` line naming the path, exit status 2, at once; and TensorFlow's
start-up lines are kept off the terminal unless --verbose asks for them.

The tools run as the console scripts a user types, with Python's import log on
(PYTHONPROFILEIMPORTTIME), so the test sees every module a tool imported before it answered.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from facetriplet.errors import UserError, quiet_tensorflow
from facetriplet.search import index_folder

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW_IMPORTS = ("tensorflow", "keras", "scann")  # ScaNN's Python package loads TensorFlow


def imported(stderr: str) -> set[str]:
  """Top-level packages named in the import log on `stderr`."""
  return {
    line.rsplit("|", 1)[1].strip().split(".")[0]
    for line in stderr.splitlines()
    if line.startswith("import time:") and "|" in line
  }


def run_cli(tool: str, *args: str, env: dict | None = None) -> tuple[int, list[str], set[str]]:
  """(exit status, stderr lines other than the import log, top-level packages imported)."""
  proc = subprocess.run(
    [os.path.join(BIN, tool), *args],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1", **(env or {})},
  )
  lines = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
  return proc.returncode, lines, imported(proc.stderr)


def write_index(directory, meta: dict, items: int | None = None, rows: int | None = None) -> str:
  """An index folder as far as the cheap checks look: index.json, and items.jsonl / embeddings.npy
  / scann/ when asked for."""
  os.makedirs(directory)
  with open(os.path.join(directory, "index.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f)
  if items is not None:
    with open(os.path.join(directory, "items.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"id": str(i)}) + "\n" for i in range(items))
  if rows is not None:
    np.save(os.path.join(directory, "embeddings.npy"), np.zeros((rows, meta["dim"]), np.float32))
    os.makedirs(os.path.join(directory, "scann"))
  return str(directory)


META = {
  "format": index_folder.FORMAT,
  "fingerprint": "0123456789abcdef",
  "dim": 4,
  "count": 2,
  "backend": "scann",
  "settings": {"mode": "brute_force"},
}


@pytest.fixture
def paths(tmp_path):
  """Broken inputs: a missing path, an index with a damaged index.json, one without items, one
  whose embeddings do not match its index.json; an index and a query folder that pass."""
  bad_json = tmp_path / "bad_json"
  bad_json.mkdir()
  (bad_json / "index.json").write_text('{"format": "facetriplet-ind')
  queries = tmp_path / "queries"
  queries.mkdir()
  (queries / "face.jpg").write_bytes(b"listed by name, never decoded here")
  return {
    "tmp": str(tmp_path),
    "missing": str(tmp_path / "missing"),
    "bad_json": str(bad_json),
    "no_items": write_index(tmp_path / "no_items", META),
    "wrong_shape": write_index(tmp_path / "wrong_shape", META, items=2, rows=3),
    "index": write_index(tmp_path / "index", META, items=2, rows=2),  # passes the cheap checks
    "queries": str(queries),
  }


CASES = {  # name: (tool, args, what the error line must name); {key} is a path of `paths`
  "search, damaged index.json": (
    "facetriplet-search",
    ["--index={bad_json}", "{tmp}/photo.jpg"],
    "{bad_json} has no readable index.json",
  ),
  "retrieve, index without items": (
    "facetriplet-retrieve",
    ["--index={no_items}", "--queries={queries}", "--output={tmp}/out"],
    "{no_items} is incomplete or corrupt (no items.jsonl)",
  ),
  "retrieve, missing queries": (
    "facetriplet-retrieve",
    ["--index={index}", "--queries={missing}", "--output={tmp}/out"],
    "{missing} does not exist",
  ),
  "serve, embeddings of another shape": (
    "facetriplet-serve",
    ["--index={wrong_shape}"],
    "{wrong_shape} is inconsistent",
  ),
  "build-index --add, damaged index.json": (
    "facetriplet-build-index",
    ["--index_dir={bad_json}", "--add={queries}"],
    "{bad_json} has no readable index.json",
  ),
  "build-index, missing gallery": (
    "facetriplet-build-index",
    ["--model={tmp}/export", "--gallery={missing}", "--index_dir={tmp}/index"],
    "gallery {missing} does not exist",
  ),
  "evaluate, missing queries": (
    "facetriplet-evaluate",
    ["--model={tmp}/export", "--queries={missing}", "--gallery={queries}", "--output={tmp}/ev"],
    "queries {missing} does not exist",
  ),
  "train, missing config file": (
    "facetriplet-train",
    ["--config={missing}.py", "--workdir={tmp}/run"],
    "config file {missing}.py not found",
  ),
  "train, missing TFRecords": (
    "facetriplet-train",
    ["--config=orl:smoke", "--config.data.tfrecord_dir={missing}", "--workdir={tmp}/run"],
    "{missing}/manifest.json not found",
  ),
  "export, unknown pretrained network": (
    "facetriplet-export",
    ["--pretrained=no_such_net", "--export_dir={tmp}/export"],
    "'no_such_net' is not a pretrained face network",
  ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wrong_input_is_one_line_before_tensorflow_loads(case, paths):
  tool, args, named = CASES[case]
  status, lines, modules = run_cli(tool, *(a.format(**paths) for a in args))
  text = "\n".join(lines)
  assert status == 2 and "Traceback" not in text, text
  assert lines[-1].startswith(f"{tool}: error: ") and named.format(**paths) in lines[-1], text
  assert not modules & set(SLOW_IMPORTS), f"{tool} imported {modules & set(SLOW_IMPORTS)}"


def test_index_check_reads_no_more_than_it_needs(paths):
  good = paths["index"]
  assert index_folder.check(good)["count"] == 2
  with pytest.raises(UserError, match="no index at"):
    index_folder.check(paths["missing"])
  with pytest.raises(UserError, match="no readable index.json"):
    index_folder.check(paths["bad_json"])
  with pytest.raises(UserError, match=r"no items.jsonl"):
    index_folder.check(paths["no_items"])
  with pytest.raises(UserError, match=r"says 2 x 4, found embeddings \(3, 4\)\)"):
    index_folder.check(paths["wrong_shape"])
  os.remove(os.path.join(good, "embeddings.npy"))
  with pytest.raises(UserError, match="no embeddings.npy"):
    index_folder.check(good)


def test_tensorflow_log_level_of_a_tool():
  env = {}
  quiet_tensorflow(False, env)
  assert env["TF_CPP_MIN_LOG_LEVEL"] in ("2", "3")  # 3 where no NVIDIA driver is installed
  if sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia"):
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "3"  # XLA logs its failed cuInit as an error
  env = {"TF_CPP_MIN_LOG_LEVEL": "1"}
  quiet_tensorflow(False, env)
  assert env["TF_CPP_MIN_LOG_LEVEL"] == "1"  # the user's own setting stays
  quiet_tensorflow(True, env)
  assert env["TF_CPP_MIN_LOG_LEVEL"] == "0"  # --verbose: everything


def test_tensorflow_python_info_lines_hidden_the_projects_kept():
  """SavedModel bookkeeping (absl INFO from tensorflow's own files) is dropped without --verbose;
  TensorFlow's warnings and the project's INFO lines stay."""
  import logging  # pylint: disable=g-import-not-at-top

  def record(level, path):
    return logging.LogRecord("absl", level, path, 1, "m", None, None)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf_dir = os.path.dirname(tf.__file__)
  saver = os.path.join(tf_dir, "python", "checkpoint", "saver.py")
  ours = os.path.join(REPO, "facetriplet", "training", "export.py")
  # The project installed in an environment that happens to be called "tensorflow".
  ours_in_env = os.path.join(os.sep, "envs", "tensorflow", "site-packages", "facetriplet", "x.py")
  absl_logger, tf_logger = logging.getLogger("absl"), logging.getLogger("tensorflow")
  before = (list(absl_logger.filters), list(tf_logger.filters))
  try:
    absl_logger.filters[:], tf_logger.filters[:] = [], []  # an in-process tool run may add it
    assert absl_logger.filter(record(logging.INFO, saver))  # nothing hidden before
    quiet_tensorflow(True, {})
    assert absl_logger.filter(record(logging.INFO, saver))  # --verbose: everything
    quiet_tensorflow(False, {})
    quiet_tensorflow(False, {})  # twice: one filter
    assert len(absl_logger.filters) == 1
    assert not absl_logger.filter(record(logging.INFO, saver))
    assert not tf_logger.filter(record(logging.DEBUG, saver))
    assert absl_logger.filter(record(logging.WARNING, saver))
    assert absl_logger.filter(record(logging.INFO, ours))
    assert absl_logger.filter(record(logging.INFO, ours_in_env))
  finally:
    absl_logger.filters[:], tf_logger.filters[:] = before


def test_serve_help_states_the_services_upload_limit():
  """--max_upload_mb's default is the service's constant, named in the help without importing
  FastAPI for --help; the number shown must be that constant."""
  from facetriplet.serving import inputs  # pylint: disable=g-import-not-at-top

  with open(os.path.join(REPO, "tools", "serve.py"), encoding="utf-8") as f:
    source = f.read()
  assert f"({inputs.MAX_UPLOAD_BYTES / 2**20:g} MiB)" in source
