"""Tests for facetriplet/ingest.py, shard_plan.py and tools/build_tfrecords.py on real shards."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facetriplet.data import crop_workers, faces, ingest, shard_plan, tfrecords
from facetriplet.errors import UserError

from tests.data.test_faces import write_huge_png_header

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABSL_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")  # absl log lines (settings, progress)
NONE = faces.CropSettings(detector="none", crop_size=32)


def _colourful(seed, h=40, w=56):
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def make_dataset(root, people=6, photos=3):
  """Identity folders whose photos use every supported kind of file; returns {identity: n}."""
  savers = [
    lambda a, p: Image.fromarray(a).save(p + ".jpg", quality=90),
    lambda a, p: Image.fromarray(a).save(p + ".png"),
    lambda a, p: Image.fromarray(a[..., 0]).save(p + ".pgm"),
    lambda a, p: Image.fromarray(a).save(p + ".bmp"),
    lambda a, p: Image.fromarray(np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]), "RGBA").save(
      p + ".png"
    ),
    lambda a, p: Image.fromarray(a[..., 1].astype(np.uint16) * 257).save(p + ".tif"),
    lambda a, p: Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE).save(p + ".gif"),
    lambda a, p: Image.fromarray(a).save(p + ".webp", quality=90),
    lambda a, p: Image.fromarray(a).save(p + ".jpg", exif=_rotated(), quality=90),
  ]
  counts = {}
  k = 0
  for i in range(people):
    name = f"person_{i:02d}"
    os.makedirs(os.path.join(root, name))
    for j in range(photos):
      savers[k % len(savers)](_colourful(k), os.path.join(root, name, f"{j}"))
      k += 1
    counts[name] = photos
  return counts


def _rotated():
  exif = Image.Exif()
  exif[0x0112] = 6
  return exif


def _records(out, split):
  return list(tfrecords.read_records(sorted(glob.glob(os.path.join(out, f"{split}-*.tfrecord")))))


def _shard_bytes(out):
  return {
    os.path.basename(p): open(p, "rb").read()
    for p in sorted(glob.glob(os.path.join(out, "*.tfrecord")))
  }


def test_round_trip(tmp_path):
  counts = make_dataset(str(tmp_path / "in"), people=7, photos=3)
  out = str(tmp_path / "out")
  summary = ingest.build_tfrecords(
    str(tmp_path / "in"), out, crop=NONE, val_fraction=0.3, num_shards=3, workers=1, progress=False
  )
  manifest = tfrecords.read_manifest(out)
  assert summary.written == 21 and summary.rejected == 0 and summary.decoded == 21
  assert summary.shards_written == 5 and summary.shards_skipped == 0  # val: 2 ids → 2 shards
  assert manifest["labels"] == {name: i for i, name in enumerate(sorted(counts))}
  assert manifest["identity_counts"] == counts
  assert manifest["crop"]["detector"] == "none" and manifest["crop"]["crop_size"] == 32
  with open(os.path.join(out, "plan.json"), encoding="utf-8") as f:
    plan = json.load(f)
  assert plan["fingerprint"] == manifest["fingerprint"]
  assert [s["file"] for s in plan["shards"]] == [
    s["file"] for split in ("train", "val") for s in manifest["splits"][split]["shards"]
  ]
  ids = {}
  for split in ("train", "val"):
    info = manifest["splits"][split]
    records = _records(out, split)
    assert info["images"] == len(records)
    assert [s["file"] for s in info["shards"]] == [
      tfrecords.shard_name(split, i, len(info["shards"])) for i in range(len(info["shards"]))
    ]
    ids[split] = {r["identity"] for r in records}
    assert info["identities"] == len(ids[split])
    seen = set()
    for shard in info["shards"]:
      recs = list(tfrecords.read_records([os.path.join(out, shard["file"])]))
      assert len(recs) == shard["records"] == sum(c for _, c in shard["groups"])
      labels = [r["label"] for r in recs]
      runs = [labels[0]] + [b for a, b in zip(labels, labels[1:]) if a != b]
      assert runs == [g[0] for g in shard["groups"]]
      assert not seen & set(runs), "an identity spans two shards or is not contiguous"
      seen |= set(runs)
    for r in records:
      assert manifest["labels"][r["identity"]] == r["label"]
      assert r["path"].startswith(r["identity"] + "/")
      assert r["found"]
      image = tfrecords._tf().io.decode_jpeg(r["image"]).numpy()
      assert image.shape == (32, 32, 3)
  assert len(manifest["splits"]["train"]["shards"]) == 3
  assert len(manifest["splits"]["val"]["shards"]) == 2
  assert not ids["train"] & ids["val"] and len(ids["val"]) == 2  # round(7 * 0.3)
  assert {r["path"] for s in ("train", "val") for r in _records(out, s)} == {
    os.path.relpath(p, tmp_path / "in") for p in glob.glob(str(tmp_path / "in" / "*" / "*"))
  }


def test_bad_files_are_listed_and_the_rest_written(tmp_path):
  root = tmp_path / "in"
  make_dataset(str(root), people=3, photos=2)
  bad = root / "person_00"
  (bad / "zero.jpg").write_bytes(b"")  # alongside person_00's two good photos
  (bad / "text.jpg").write_text("hello, not a JPEG\n")
  good = (root / "person_00" / "0.jpg").read_bytes()
  (bad / "trunc.jpg").write_bytes(good[: len(good) // 2])
  write_huge_png_header(str(bad / "huge.png"))
  os.makedirs(root / "nobody")
  os.makedirs(root / "solo")
  Image.fromarray(_colourful(99)).save(root / "solo" / "me.png")
  (root / "notes.txt").write_text("readme")
  out = str(tmp_path / "out")
  summary = ingest.build_tfrecords(
    str(root), out, crop=NONE, val_fraction=0, workers=1, progress=False
  )
  manifest = tfrecords.read_manifest(out)
  assert {r["path"]: r["reason"] for r in manifest["rejected"]} == {
    "person_00/zero.jpg": "empty-file",
    "person_00/text.jpg": "not-an-image",
    "person_00/trunc.jpg": "truncated",
    "person_00/huge.png": "too-large",
  }
  assert manifest["empty_identities"] == ["nobody"]
  assert manifest["single_photo_identities"] == ["solo"]
  assert manifest["ignored"] == [{"path": "notes.txt", "reason": "not-an-image-file"}]
  assert summary.written == 7 and summary.rejected == 4 and summary.empty_identities == 1
  assert summary.single_photo_identities == 1 and summary.identities == 4
  assert len(_records(out, "train")) == 7 and "val" not in manifest["splits"]
  text = summary.format()
  assert "rejected 4" in text and "images/s" in text and "single-photo identities" in text


def test_no_face_center_and_skip(tmp_path):
  root = tmp_path / "in"
  for name in ("a", "b"):
    os.makedirs(root / name)
    for j in range(2):
      noise = np.random.default_rng(j + ord(name)).integers(0, 256, (60, 80), dtype=np.uint8)
      Image.fromarray(noise).save(root / name / f"{j}.png")
  crop = faces.CropSettings(detector="haar", crop_size=32)
  out = str(tmp_path / "center")
  summary = ingest.build_tfrecords(
    str(root), out, crop=crop, val_fraction=0, workers=1, progress=False
  )
  records = _records(out, "train")
  assert summary.no_face == 4 and len(records) == 4
  assert all(not r["found"] and r["box"] == [10.0, 0.0, 60.0, 60.0] for r in records)
  assert len(tfrecords.read_manifest(out)["no_face"]) == 4
  out = str(tmp_path / "skip")
  summary = ingest.build_tfrecords(
    str(root),
    out,
    crop=faces.CropSettings(detector="haar", crop_size=32, on_no_face="skip"),
    val_fraction=0,
    workers=1,
    progress=False,
  )
  manifest = tfrecords.read_manifest(out)
  assert summary.written == 0 and summary.no_face == 4
  assert {r["reason"] for r in manifest["rejected"]} == {"no-face"}
  assert _records(out, "train") == []


def test_resume_rewrites_only_missing_shard(tmp_path):
  make_dataset(str(tmp_path / "in"), people=6, photos=2)
  out = str(tmp_path / "out")
  args = dict(crop=NONE, val_fraction=0, num_shards=3, workers=1, progress=False)
  ingest.build_tfrecords(str(tmp_path / "in"), out, **args)
  before = _shard_bytes(out)
  manifest_before = open(os.path.join(out, "manifest.json"), "rb").read()
  mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in before}
  victim = "train-00001-of-00003.tfrecord"
  os.remove(os.path.join(out, victim))
  open(os.path.join(out, f".{victim}.tmp-12345"), "wb").write(b"half a shard")  # killed run
  summary = ingest.build_tfrecords(str(tmp_path / "in"), out, **args)
  assert summary.shards_written == 1 and summary.shards_skipped == 2 and summary.decoded == 4
  assert _shard_bytes(out) == before
  assert open(os.path.join(out, "manifest.json"), "rb").read() == manifest_before
  assert not os.path.exists(os.path.join(out, f".{victim}.tmp-12345"))
  for name, mtime in mtimes.items():
    if name != victim:
      assert os.stat(os.path.join(out, name)).st_mtime_ns == mtime


def test_deterministic_across_runs_and_workers(tmp_path):
  make_dataset(str(tmp_path / "in"), people=5, photos=3)
  crop = faces.CropSettings(detector="haar", crop_size=32)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  ingest.build_tfrecords(str(tmp_path / "in"), a, crop=crop, workers=1, progress=False, seed=3)
  summary = ingest.build_tfrecords(
    str(tmp_path / "in"), b, crop=crop, workers=2, progress=False, seed=3
  )
  assert summary.workers == 2
  assert _shard_bytes(a) == _shard_bytes(b) and len(_shard_bytes(a)) == 2
  assert (
    open(os.path.join(a, "manifest.json"), "rb").read()
    == open(os.path.join(b, "manifest.json"), "rb").read()
  )


def test_output_from_another_run_is_refused(tmp_path):
  make_dataset(str(tmp_path / "in"), people=3, photos=2)
  out = str(tmp_path / "out")
  ingest.build_tfrecords(str(tmp_path / "in"), out, crop=NONE, workers=1, progress=False)
  other = faces.CropSettings(detector="none", crop_size=48)
  with pytest.raises(UserError, match="different run.*--overwrite"):
    ingest.build_tfrecords(str(tmp_path / "in"), out, crop=other, workers=1, progress=False)
  ingest.build_tfrecords(
    str(tmp_path / "in"), out, crop=other, workers=1, progress=False, overwrite=True
  )
  assert tfrecords.read_manifest(out)["crop"]["crop_size"] == 48
  (tmp_path / "out" / "mine.txt").write_text("keep me")
  with pytest.raises(UserError, match="holds mine.txt, which facetriplet-build-tfrecords did not"):
    ingest.build_tfrecords(
      str(tmp_path / "in"), out, crop=other, workers=1, progress=False, overwrite=True
    )
  assert (tmp_path / "out" / "mine.txt").exists()


def test_flat_and_celeba_layouts(tmp_path):
  flat = tmp_path / "gallery"
  os.makedirs(flat / "sub")
  for j, rel in enumerate(("g1.jpg", "g2.png", "sub/g3.bmp")):
    Image.fromarray(_colourful(j)).save(flat / rel)
  out = str(tmp_path / "flat_out")
  ingest.build_tfrecords(
    str(flat), out, layout="flat", crop=NONE, workers=1, progress=False, num_shards=2
  )
  manifest = tfrecords.read_manifest(out)
  records = _records(out, "all")
  assert list(manifest["splits"]) == ["all"] and manifest["labels"] == {}
  assert [r["path"] for r in records] == ["g1.jpg", "g2.png", "sub/g3.bmp"]
  assert all(r["label"] == -1 and r["identity"] == "" for r in records)
  celeba = tmp_path / "celeba"
  os.makedirs(celeba)
  ids, parts = [], []
  for i in range(1, 9):
    Image.fromarray(_colourful(i)).save(celeba / f"{i:06d}.jpg")
    ids.append(f"{i:06d}.jpg {i // 3}")
    parts.append(f"{i:06d}.jpg {min(2, (i - 1) // 3)}")
  (celeba / "identity_CelebA.txt").write_text("\n".join(ids) + "\n")
  (celeba / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
  out = str(tmp_path / "celeba_out")
  ingest.build_tfrecords(str(celeba), out, layout="celeba", crop=NONE, workers=1, progress=False)
  manifest = tfrecords.read_manifest(out)
  assert {k: v["images"] for k, v in manifest["splits"].items()} == {
    "train": 3,
    "val": 3,
    "test": 2,
  }
  assert manifest["labels"] == {"0": 0, "1": 1, "2": 2}


def test_plan_packing_and_split():
  assert shard_plan.pack_groups([5, 1, 1, 5, 4, 4], 3) == [[0, 1, 2], [3, 4], [5]]
  assert shard_plan.pack_groups([1, 1, 1], 3) == [[0], [1], [2]]
  assert shard_plan.pack_groups([9, 1], 1) == [[0, 1]]
  ids = [f"id{i}" for i in range(50)]
  a = shard_plan.assign_splits(ids, 0.2, seed=1)
  assert a == shard_plan.assign_splits(list(reversed(ids)), 0.2, seed=1)
  assert sum(v == "val" for v in a.values()) == 10
  assert a != shard_plan.assign_splits(ids, 0.2, seed=2)
  assert set(shard_plan.assign_splits(ids, 0.0, seed=1).values()) == {"train"}
  assert list(shard_plan.assign_splits(["a", "b"], 0.01, seed=0).values()).count("val") == 1


def _tool(*args):
  return subprocess.run(
    [sys.executable, "-m", "facetriplet_tools.build_tfrecords", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )


def test_tool_errors_are_one_line(tmp_path):
  missing = str(tmp_path / "no_such_folder")
  proc = _tool(f"--input={missing}", f"--output={tmp_path / 'out'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and missing in proc.stderr  # exactly one line
  out = tmp_path / "used"
  os.makedirs(out)
  (out / "train-00000-of-00001.tfrecord").write_bytes(b"")
  make_dataset(str(tmp_path / "in"), people=2, photos=2)
  proc = _tool(f"--input={tmp_path / 'in'}", f"--output={out}", "--detector=none")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if not ABSL_LOG.match(line)]
  assert len(lines) == 1 and str(out) in lines[0] and "--overwrite" in lines[0]
  bad = tmp_path / "all_bad" / "person"
  os.makedirs(bad)
  (bad / "a.jpg").write_bytes(b"")
  (bad / "b.jpg").write_bytes(b"not an image")
  proc = _tool(
    f"--input={tmp_path / 'all_bad'}",
    f"--output={tmp_path / 'bad_out'}",
    "--workers=1",
    "--noprogress",
  )
  lines = [line for line in proc.stderr.splitlines() if not ABSL_LOG.match(line)]
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert len(lines) == 1 and "no image" in lines[0] and "manifest.json" in lines[0], proc.stderr


@pytest.mark.slow
def test_tool_on_orl(tmp_path, orl_faces):
  proc = _tool(
    f"--input={orl_faces}",
    f"--output={tmp_path / 'orl'}",
    "--workers=2",
    "--detector=haar",
    "--noprogress",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  manifest = tfrecords.read_manifest(str(tmp_path / "orl"))
  assert sum(s["images"] for s in manifest["splits"].values()) == 400
  assert len(manifest["labels"]) == 40 and manifest["rejected"] == []
  assert "written 400" in proc.stdout and "images/s" in proc.stdout
  # Haar crops of real faces, one in-process worker: the same bytes as the two-process tool run.
  ingest.build_tfrecords(
    orl_faces,
    str(tmp_path / "orl1"),
    workers=1,
    progress=False,
    crop=faces.CropSettings(detector="haar"),
  )
  assert _shard_bytes(str(tmp_path / "orl1")) == _shard_bytes(str(tmp_path / "orl"))


def test_overwrite_never_deletes_look_alike_files(tmp_path):
  """Files named like facetriplet's but written by someone else (no plan.json lists them)."""
  make_dataset(str(tmp_path / "in"), people=3, photos=2)
  out = tmp_path / "out"
  os.makedirs(out)
  (out / "images-00000-of-00001.tfrecord").write_bytes(b"the user's own records")
  (out / "manifest.json").write_text('{"theirs": true}')
  with pytest.raises(UserError, match="images-00000-of-00001.tfrecord.*provably wrote"):
    ingest.build_tfrecords(
      str(tmp_path / "in"), str(out), crop=NONE, workers=1, progress=False, overwrite=True
    )
  assert (out / "images-00000-of-00001.tfrecord").read_bytes() == b"the user's own records"
  assert (out / "manifest.json").read_text() == '{"theirs": true}'
  # A real earlier run is replaced, but a look-alike shard it never wrote is still refused.
  real = tmp_path / "real"
  ingest.build_tfrecords(str(tmp_path / "in"), str(real), crop=NONE, workers=1, progress=False)
  (real / "extra-00000-of-00001.tfrecord").write_bytes(b"not from that run")
  with pytest.raises(UserError, match="extra-00000-of-00001.tfrecord"):
    ingest.build_tfrecords(
      str(tmp_path / "in"),
      str(real),
      workers=1,
      progress=False,
      overwrite=True,
      crop=faces.CropSettings(detector="none", crop_size=48),
    )
  assert (real / "extra-00000-of-00001.tfrecord").exists()


def test_large_photos_are_decoded_one_at_a_time_across_workers(tmp_path, monkeypatch):
  """Each worker holding a photo just under the pixel limit would need ~0.6 GB each: photos above
  LARGE_PIXELS go through one gate shared by all workers, alone and not kept for the batch."""

  class Gate:
    def __init__(self):
      self.entered = 0

    def __enter__(self):
      self.entered += 1

    def __exit__(self, *exc):
      return False

  rng = np.random.default_rng(0)  # noise: a flat image would be refused as blank
  small = rng.integers(0, 256, (20, 20, 3), np.uint8)
  large = rng.integers(0, 256, (60, 60, 3), np.uint8)
  for name, arr in (("a.png", small), ("b.png", large), ("c.png", small)):
    Image.fromarray(arr).save(tmp_path / name)
  monkeypatch.setattr(crop_workers, "LARGE_PIXELS", 1000)
  gate = Gate()
  crop_workers._init_worker(NONE.to_dict(), faces.MAX_PIXELS, large_gate=gate)  # pylint: disable=protected-access
  try:
    results = crop_workers._crop_chunk(
      [(str(tmp_path / n), n) for n in ("a.png", "b.png", "c.png")]
    )  # pylint: disable=protected-access
  finally:
    crop_workers._WORKER.clear()  # pylint: disable=protected-access
  assert gate.entered == 1
  assert [r[0] for r in results] == ["ok", "ok", "ok"]
  assert faces.image_pixels(str(tmp_path / "b.png")) == 3600
  assert faces.image_pixels(str(tmp_path / "missing.png")) == 0


def test_a_folder_of_symlinked_identity_folders_ingests(tmp_path, orl_faces):
  """Issue 19's probe: 60 symlinks to identity folders gave 'no images found'. Here: links to
  ORL's people, read through the links, the same records as the folders themselves."""
  people = sorted(p for p in os.listdir(orl_faces) if os.path.isdir(os.path.join(orl_faces, p)))[:6]
  linked = tmp_path / "linked"
  os.makedirs(linked)
  for person in people:
    os.symlink(os.path.join(orl_faces, person), linked / person)
  crop = faces.CropSettings(detector="none", crop_size=32)
  args = dict(crop=crop, val_fraction=0.0, num_shards=1, workers=1, progress=False)
  summary = ingest.build_tfrecords(str(linked), str(tmp_path / "out"), **args)
  assert summary.written == 60 and summary.rejected == 0
  manifest = tfrecords.read_manifest(str(tmp_path / "out"))
  assert manifest["identity_counts"] == dict.fromkeys(people, 10)
