"""The Beam path of ingest (`data/beam_ingest.py`, `facetriplet-build-tfrecords --runner`) writes
what the local path writes: the same shards, byte for byte, and the same manifest."""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("apache_beam")

from facetriplet.data import beam_ingest, faces, ingest, tfrecords  # noqa: E402
from facetriplet.errors import UserError  # noqa: E402

from tests.data.test_faces import write_huge_png_header  # noqa: E402
from tests.data.test_ingest import NONE, make_dataset  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABSL_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")


def _bad_files(root):
  """A corrupt, an empty, a truncated and a too-large photo, and a file that is no image."""
  folder = os.path.join(root, "person_00")
  with open(os.path.join(folder, "corrupt.jpg"), "wb") as f:
    f.write(b"\xff\xd8 not really a JPEG")
  open(os.path.join(folder, "empty.png"), "wb").close()
  with open(os.path.join(folder, "0.jpg"), "rb") as f:
    good = f.read()
  with open(os.path.join(folder, "trunc.jpg"), "wb") as f:
    f.write(good[: len(good) // 2])
  write_huge_png_header(os.path.join(folder, "huge.png"))
  with open(os.path.join(root, "notes.txt"), "w") as f:
    f.write("not a photo")


def _shards(out):
  return {os.path.basename(p): p for p in sorted(glob.glob(os.path.join(out, "*.tfrecord")))}


def assert_same_output(local, beam):
  """Same shard files with the same records (and bytes), same manifest."""
  a, b = _shards(local), _shards(beam)
  assert list(a) == list(b) and a
  for name in a:
    assert list(tfrecords.read_records([a[name]])) == list(tfrecords.read_records([b[name]]))
    with open(a[name], "rb") as fa, open(b[name], "rb") as fb:
      assert fa.read() == fb.read(), name
  ma, mb = tfrecords.read_manifest(local), tfrecords.read_manifest(beam)
  assert ma["rejected"] == mb["rejected"] and ma["splits"] == mb["splits"]
  assert ma == mb


def test_beam_writes_what_the_local_path_writes(tmp_path):
  root = str(tmp_path / "in")
  make_dataset(root, people=7, photos=3)
  _bad_files(root)
  local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
  a = ingest.build_tfrecords(
    root, local, crop=NONE, val_fraction=0.3, num_shards=3, workers=1, progress=False
  )
  b = beam_ingest.build_tfrecords_beam(
    root, beam, "DirectRunner", crop=NONE, val_fraction=0.3, num_shards=3
  )
  assert_same_output(local, beam)
  assert (b.written, b.rejected, b.decoded, b.shards_written) == (21, 4, 21, 5)
  assert (a.written, a.rejected, a.decoded, a.splits) == (
    b.written,
    b.rejected,
    b.decoded,
    b.splits,
  )
  assert b.rejected_by_reason == {
    "empty-file": 1,
    "not-an-image": 1,
    "truncated": 1,
    "too-large": 1,
  }
  assert b.engine == "DirectRunner" and "Beam DirectRunner" in b.format()
  assert sorted(os.listdir(os.path.join(beam, ingest.STATE_DIR))) == sorted(
    os.listdir(os.path.join(local, ingest.STATE_DIR))
  )  # tasks.jsonl removed


def test_beam_resumes_a_local_run_and_skip_faces_match(tmp_path):
  root = str(tmp_path / "in")
  make_dataset(root, people=5, photos=2)
  crop = faces.CropSettings(detector="haar", crop_size=32, on_no_face="skip")  # no face in these
  local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
  ingest.build_tfrecords(
    root, local, crop=crop, val_fraction=0, num_shards=2, workers=1, progress=False
  )
  shutil.copytree(local, beam)
  first = sorted(_shards(beam))[0]
  os.remove(os.path.join(beam, first))  # a killed run: one shard missing
  os.remove(os.path.join(beam, tfrecords.MANIFEST))
  b = beam_ingest.build_tfrecords_beam(
    root, beam, "DirectRunner", crop=crop, val_fraction=0, num_shards=2
  )
  assert (b.shards_written, b.shards_skipped) == (1, 1)
  assert_same_output(local, beam)
  assert {r["reason"] for r in tfrecords.read_manifest(beam)["rejected"]} <= {"no-face"}


def test_bad_options_are_refused_before_any_work(tmp_path):
  root = str(tmp_path / "in")
  make_dataset(root, people=2, photos=2)
  out = str(tmp_path / "out")
  with pytest.raises(UserError, match="--name=value"):
    beam_ingest.build_tfrecords_beam(root, out, "DirectRunner", ["stray"], crop=NONE)
  with pytest.raises(UserError, match="runner once"):
    beam_ingest.build_tfrecords_beam(root, out, "DirectRunner", ["--runner=FlinkRunner"], crop=NONE)
  with pytest.raises(UserError, match="NoSuchRunner"):
    beam_ingest.build_tfrecords_beam(root, out, "NoSuchRunner", crop=NONE)
  assert not os.path.exists(out)


def _tool(*args):
  return subprocess.run(
    [sys.executable, "-m", "facetriplet_tools.build_tfrecords", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )


@pytest.mark.slow
def test_tool_runner_and_pipeline_options(tmp_path):
  root = str(tmp_path / "in")
  make_dataset(root, people=4, photos=2)
  common = [
    f"--input={root}",
    "--detector=none",
    "--crop_size=32",
    "--num_shards=2",
    "--noprogress",
  ]
  local = str(tmp_path / "local")
  assert _tool(*common, f"--output={local}", "--workers=1").returncode == 0
  beam = str(tmp_path / "beam")
  proc = _tool(*common, f"--output={beam}", "--runner=DirectRunner", "--", "--direct_num_workers=1")
  assert proc.returncode == 0, proc.stderr
  assert "Beam DirectRunner" in proc.stdout
  assert_same_output(local, beam)
  proc = _tool(*common, f"--output={tmp_path / 'x'}", "--", "--direct_num_workers=1")
  assert proc.returncode == 1 and "need --runner" in proc.stderr  # absl usage error
  proc = _tool(*common, f"--output={tmp_path / 'y'}", "--runner=DirectRunner", "--", "stray")
  lines = [line for line in proc.stderr.splitlines() if not ABSL_LOG.match(line)]
  assert proc.returncode == 2 and len(lines) == 1 and "--name=value" in lines[0], proc.stderr


def _linked(tmp_path, source, people, ext):
  """The first `people` identity folders of `source`, linked photo by photo."""
  root = tmp_path / "in"
  folders = [n for n in sorted(os.listdir(source)) if os.path.isdir(os.path.join(source, n))]
  for name in folders[:people]:
    os.makedirs(root / name)
    for f in sorted(os.listdir(os.path.join(source, name))):
      if f.endswith(ext):
        os.symlink(os.path.join(source, name, f), root / name / f)
  return str(root)


def _build(*args):
  """facetriplet-build-tfrecords in its own process, as a user runs it; it must succeed."""
  proc = subprocess.run(
    [sys.executable, "-m", "tools.build_tfrecords", "--noprogress", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
  "detector,dataset", [("yunet", "orl_faces"), ("yunet", "lfw_2to4"), ("mtcnn", "orl_faces")]
)
def test_a_crop_does_not_depend_on_its_engine_batch_or_threads(
  tmp_path, request, detector, dataset
):
  """On orl_faces and lfw_2to4 photos, the local process pool (one thread per worker) and Beam's
  DirectRunner (in the tool's own process) write the same shards byte for byte. Each photo
  cropped alone, at another OpenCV thread count, gives the very bytes the shards hold (YuNet;
  MTCNN's numbers also depend on TensorFlow's thread count, which this test process has already
  fixed)."""
  import cv2  # pylint: disable=g-import-not-at-top

  if dataset == "orl_faces":
    root, photos = _linked(tmp_path, request.getfixturevalue(dataset), 4, ".pgm"), 40
  else:
    root = _linked(tmp_path, request.getfixturevalue(dataset), 12, ".jpg")
    photos = len(glob.glob(os.path.join(root, "*", "*.jpg")))
  local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
  common = [f"--input={root}", f"--detector={detector}", "--val_fraction=0.25"]
  _build(*common, f"--output={local}", "--workers=2")
  _build(*common, f"--output={beam}", "--runner=DirectRunner")
  assert_same_output(local, beam)
  records = [r for path in _shards(local).values() for r in tfrecords.read_records([path])]
  assert len(records) == photos and sum(r["method"] == detector for r in records) >= 0.9 * photos
  settings = faces.CropSettings.from_dict(tfrecords.read_manifest(local)["crop"])
  cropper = faces.FaceCropper(settings)
  threads = cv2.getNumThreads()
  try:
    cv2.setNumThreads(2)
    for r in records[:12] if detector == "yunet" else []:
      alone = cropper.crop(faces.load_rgb(os.path.join(root, r["path"])))
      assert faces.encode_jpeg(alone.image) == r["image"], r["path"]
  finally:
    cv2.setNumThreads(threads)
