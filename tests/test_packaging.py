"""The wheel carries the files the code opens at run time: the YuNet detector's model and its
licence, and the service's web page (a user who pip-installs gets a working detector and page)."""

import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_wheel_holds_the_detector_model_and_the_page(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    + ["-w", str(tmp_path), REPO],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=str(tmp_path),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  (wheel,) = [n for n in os.listdir(tmp_path) if n.endswith(".whl")]
  with zipfile.ZipFile(tmp_path / wheel) as z:
    sizes = {n: z.getinfo(n).file_size for n in z.namelist()}
  models = "facetriplet/data/detectors/models/"
  assert sizes[models + "face_detection_yunet_2023mar.onnx"] == 232_589
  assert sizes[models + "LICENSE.yunet"] > 0
  for name in ("index.html", "page.js", "page.css", "icon.svg"):
    page = f"facetriplet/serving/page/{name}"
    assert sizes[page] == os.path.getsize(os.path.join(REPO, page)), page
