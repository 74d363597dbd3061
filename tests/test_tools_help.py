"""Every console script answers --help with its own docstring (examples line by line) and flags."""

import ast
import configparser
import os
import subprocess
import sys

import pytest

from tests.test_tools_fast_errors import imported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SLOW = {"tensorflow", "keras", "scann", "fastapi", "uvicorn", "apache_beam"}
# Flags each tool's help must mention (beyond its docstring).
FLAGS = {
  "facetriplet-build-tfrecords": ["--layout", "--on_no_face", "--val_fraction", "--runner"],
  "facetriplet-train": ["--config", "--workdir"],
  "facetriplet-export": ["--workdir", "--export_dir"],
  "facetriplet-build-index": [
    "--gallery",
    "--target_recall",
    "--add",
    "--remove",
    "--faces",
    "--runner",
    "--embeddings_dir",
  ],
  "facetriplet-retrieve": ["--submit_url", "exclude_self", "--groupname", "--min_score"],
  "facetriplet-evaluate": ["--leave_one_out", "--features"],
  "facetriplet-make-demo-data": ["--identities", "--photos"],
  "facetriplet-search": ["--index", "--min_score", "--json"],
  "facetriplet-demo": ["--workdir", "--data"],
}


def _scripts() -> dict[str, str]:
  """{console script: module} from setup.cfg, so a new tool is covered without editing here."""
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  out = {}
  for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
    name, target = (part.strip() for part in line.split("="))
    out[name] = target.split(":")[0]
  return out


def test_every_tool_is_covered():
  assert set(FLAGS) <= set(_scripts())


@pytest.mark.parametrize("tool,module", sorted(_scripts().items()))
def test_help_shows_the_docstring_line_by_line_and_the_flags(tool, module):
  proc = subprocess.run(
    [os.path.join(BIN, tool), "--help"],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPROFILEIMPORTTIME": "1"},
  )
  # --help stays well under a second: none of the slow libraries is imported for it.
  assert not imported(proc.stderr) & SLOW, f"{tool} --help imports {imported(proc.stderr) & SLOW}"
  stderr = "".join(x for x in proc.stderr.splitlines(True) if not x.startswith("import time:"))
  text = proc.stdout + stderr
  assert proc.returncode in (0, 1) and "Traceback" not in text, text  # absl exits 1 after --help
  for flag in FLAGS.get(tool, []) + ["--[no]verbose"]:  # --verbose: every tool's, from run_tool
    assert flag in text, f"{tool} --help does not mention {flag}:\n{text}"
  shown = {line.strip() for line in text.splitlines()}
  source = os.path.join(REPO, "tools", module.split(".")[-1] + ".py")  # not imported: absl
  with open(source, encoding="utf-8") as f:  # flags of two tools would collide in one process
    text_of_file = f.read()
  node = ast.parse(text_of_file).body[0]
  # The docstring as written in the file (not evaluated: in a non-raw string "\<newline>"
  # joins two lines, which is exactly what --help must not do to the examples).
  doc = ast.get_source_segment(text_of_file, node).lstrip("rR").strip('"')
  assert "facetriplet-" in doc, f"{module} has no usage examples in its docstring"
  for line in doc.strip().splitlines():
    # A docstring that is not raw turns "\<newline>" into one joined line: the examples collapse.
    assert not line.strip() or line.strip() in shown, f"{tool} --help lost the line {line!r}"
