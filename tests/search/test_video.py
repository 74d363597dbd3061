"""Finding people in a video: a clip the test writes (cv2.VideoWriter) from gallery photos of
two people with known time ranges, then blank frames; searched through the library and the tool."""

import json
import os
import subprocess

import cv2
import numpy as np
import pytest
from PIL import Image

from facetriplet.errors import UserError
from facetriplet.search import video
from facetriplet.search.searcher import Searcher
from tests.serving.test_serve import BIN
from tests.serving.test_serve import setup  # noqa: F401  (the fixture)

FPS = 10


def _write_clip(path, scenes):
  """scenes: [(RGB image, seconds)] -> an MJPG .avi at FPS frames a second, 160 x 144."""
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), FPS, (160, 144))
  assert writer.isOpened()
  for image, seconds in scenes:
    frame = cv2.cvtColor(np.asarray(Image.fromarray(image).resize((160, 144))), cv2.COLOR_RGB2BGR)
    for _ in range(int(seconds * FPS)):
      writer.write(frame)
  writer.release()


def test_two_people_are_found_in_their_time_ranges(setup, tmp_path):  # noqa: F811
  gallery = os.path.join(os.path.dirname(setup["index"]), "gallery")
  alice = np.asarray(Image.open(os.path.join(gallery, "alice", "alice_0.png")).convert("RGB"))
  bob = np.asarray(Image.open(os.path.join(gallery, "bob", "bob_1.png")).convert("RGB"))
  grey = np.full_like(alice, 128)  # nobody: a blank frame is no face at all
  clip = str(tmp_path / "clip.avi")
  _write_clip(clip, [(alice, 2.0), (bob, 2.0), (grey, 2.0)])
  searcher = Searcher.open(setup["index"])
  people = video.find_people(searcher, clip, every_s=0.5, min_score=0.9)
  assert [p.identity for p in people] == ["alice", "bob"]  # carol never appears; nobody else
  # Sampled at 0, 0.5, ... 5.5 s: alice 0-1.5, bob 2.0-3.5 (within one sampled frame).
  (a,), (b,) = people[0].ranges, people[1].ranges
  assert a.start == pytest.approx(0.0, abs=0.51) and a.end == pytest.approx(1.5, abs=0.51)
  assert b.start == pytest.approx(2.0, abs=0.51) and b.end == pytest.approx(3.5, abs=0.51)
  assert 0 <= people[0].best_time <= 2.0 and people[0].best_frame.shape == (144, 160, 3)
  (tmp_path / "notes.txt").write_text("not a video\n")
  with pytest.raises(UserError, match="not a video"):
    video.find_people(searcher, str(tmp_path / "notes.txt"), min_score=0.9)
  with pytest.raises(UserError, match="no calibrated threshold"):  # this test model has none
    video.find_people(searcher, clip)
  # The tool: the same answer as JSON, and each person's best frame as a thumbnail.
  proc = subprocess.run(
    [
      os.path.join(BIN, "facetriplet-search"),
      f"--index={setup['index']}",
      f"--video={clip}",
      "--min_score=0.9",
      "--json",
      f"--thumbs={tmp_path / 'seen'}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  assert proc.returncode == 0, proc.stderr
  answer = json.loads(proc.stdout)
  assert answer == [p.to_dict() for p in people]
  assert sorted(os.listdir(tmp_path / "seen")) == ["alice.jpg", "bob.jpg"]


def test_a_video_is_indexed_and_clustered_frame_by_frame(setup, tmp_path):  # noqa: F811
  from facetriplet.search import thumbnails  # pylint: disable=g-import-not-at-top

  gallery = os.path.join(os.path.dirname(setup["index"]), "gallery")
  alice = np.asarray(Image.open(os.path.join(gallery, "alice", "alice_0.png")).convert("RGB"))
  bob = np.asarray(Image.open(os.path.join(gallery, "bob", "bob_1.png")).convert("RGB"))
  clip = str(tmp_path / "clip.avi")
  _write_clip(clip, [(alice, 2.0), (bob, 2.0)])
  index_dir = str(tmp_path / "index")
  tool = lambda name, *args: subprocess.run(  # noqa: E731
    [os.path.join(BIN, name), *args, "--noprogress"],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  proc = tool(
    "facetriplet-build-index",
    f"--model={setup['export']}",
    f"--gallery={clip}",
    f"--index_dir={index_dir}",
    "--every=0.5",
  )
  assert proc.returncode == 0, proc.stderr
  searcher = Searcher.open(index_dir)
  # One face per sampled frame (this test model's detector takes the whole frame), 0 .. 3.5 s.
  items = searcher.index.items
  assert [i.time for i in items] == [0.5 * n for n in range(8)]
  assert items[3].rel_path == "clip.avi@1.500s" and items[3].id == f"{clip}@1.500s#0"
  result = searcher.search(alice, k=8)
  alice_times = sorted(m.item.time for m in result.matches[:4])
  assert alice_times == [0.0, 0.5, 1.0, 1.5] and result.matches[0].to_dict()["time"] <= 1.5
  # A frame's thumbnail is cut from the video at its time: the frame written there (MJPG loss).
  face = thumbnails.face_square(video.frame_at(clip, 2.5), None, 144)
  frame = np.asarray(Image.fromarray(bob).resize((160, 144)))[:, 8:152]
  assert np.abs(face.astype(float) - frame).mean() < 12
  assert searcher.thumbs.of(items[5]) == thumbnails.face_thumbnail(
    video.frame_at(clip, 2.5), items[5].box
  )
  # Clustered without labels: the first two seconds one person, the last two another.
  out = tmp_path / "people"
  proc = tool(
    "facetriplet-cluster",
    f"--input={clip}",
    f"--model={setup['export']}",
    f"--output={out}",
    "--threshold=0.995",  # this test model puts the two people at 0.985, a frame at 1.0
    "--write_folders",
  )
  assert proc.returncode == 0, proc.stderr
  doc = json.loads((out / "clusters.json").read_text())
  groups = sorted(sorted(f["time"] for f in c["faces"]) for c in doc["clusters"])
  assert groups == [[0.0, 0.5, 1.0, 1.5], [2.0, 2.5, 3.0, 3.5]], groups
  frames_ = sorted(os.listdir(out / "folders" / "cluster_0000"))
  assert len(frames_) == 4 and all(
    f.startswith("clip.avi@") and f.endswith("s.jpg") for f in frames_
  )
  assert Image.open(out / "folders" / "cluster_0000" / frames_[0]).size == (160, 144)


@pytest.mark.parametrize("codec,ext", [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_a_frame_read_by_its_time_is_the_frame_sampled_there(codec, ext, tmp_path):
  """Thumbnails and cluster folders seek to a frame by its time: every frame differs here, so a
  seek landing one frame off (a known weakness of compressed streams) shows."""
  path = str(tmp_path / f"count{ext}")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), 10, (64, 48))
  for i in range(60):  # 6 s; mp4v puts a key frame every dozen frames or so
    writer.write(np.full((48, 64, 3), 20 + 3 * i, np.uint8))
  writer.release()
  sampled = list(video.frames(path, 0.1))
  assert len(sampled) == 60
  for t, frame in sampled[::-1]:  # backwards: every seek goes back
    np.testing.assert_array_equal(video.frame_at(path, t), frame, err_msg=f"{codec} at {t}")
  assert video.frame_count(path, 0.5) == 12
