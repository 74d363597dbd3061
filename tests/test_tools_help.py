"""Every console script answers --help with its own docstring and flags (not the wrapper's)."""

import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)
TOOLS = {
    "facetriplet-build-tfrecords": ["--layout", "--on_no_face", "--val_fraction"],
    "facetriplet-train": ["--config", "--workdir"],
    "facetriplet-export": ["--workdir", "--export_dir"],
    "facetriplet-build-index": ["--gallery", "--target_recall"],
    "facetriplet-retrieve": ["--submit_url", "exclude_self", "--groupname"],
    "facetriplet-evaluate": ["--leave_one_out", "--features"],
    "facetriplet-make-demo-data": ["--identities", "--photos"],
}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_lists_the_tools_flags(tool):
  proc = subprocess.run([os.path.join(BIN, tool), "--help"], capture_output=True, text=True,
                        timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  text = proc.stdout + proc.stderr
  assert proc.returncode in (0, 1) and "Traceback" not in text, text  # absl exits 1 after --help
  for flag in TOOLS[tool]:
    assert flag in text, f"{tool} --help does not mention {flag}:\n{text}"
  assert "facetriplet-" in text.split("flags:")[0], "the tool's docstring is missing"
