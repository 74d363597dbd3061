"""The search library (`Searcher`), `facetriplet-search`, and enrol/remove without rebuilding."""

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facetriplet.data import faces
from facetriplet.errors import UserError
from facetriplet.search import audit, features, gallery
from facetriplet.search.searcher import Searcher
from tests.training.test_export import make_export
from tests.search.test_retrieval import write_image_set

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _photos(folder):
  return sorted(os.path.join(folder, n) for n in os.listdir(folder))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("searcher"))
  rng = np.random.default_rng(3)
  export_dir = make_export(root, seed=0)
  full = os.path.join(root, "full")  # a flat gallery: 3 identities x 4 photos
  write_image_set(full, rng, per_identity=4, folders=False)
  first, later = os.path.join(root, "first"), os.path.join(root, "later")
  os.makedirs(first)
  os.makedirs(later)
  for i, path in enumerate(_photos(full)):  # the same files, split in two folders
    os.link(path, os.path.join(first if i % 3 else later, os.path.basename(path)))
  extractor = features.make_extractor("embedding", export_dir)
  index_dir = os.path.join(root, "index")
  gallery.build_gallery_index(extractor, first, index_dir, progress=False, model_dir=export_dir)
  fresh_dir = os.path.join(root, "fresh")
  gallery.build_gallery_index(extractor, full, fresh_dir, progress=False, model_dir=export_dir)
  queries = os.path.join(root, "queries")
  write_image_set(queries, rng, per_identity=1, folders=False, prefix="q_")
  return dict(
    root=root,
    export=export_dir,
    full=full,
    first=first,
    later=later,
    index=index_dir,
    fresh=fresh_dir,
    queries=queries,
    extractor=extractor,
  )


def test_search_matches_a_brute_force_reference(setup):
  searcher = Searcher.open(setup["fresh"])
  queries = _photos(setup["queries"])
  results = searcher.search(queries, k=5)
  index = searcher.index
  for path, result in zip(queries, results):
    crop = faces.load_and_crop(path, searcher.extractor.crop_settings).image
    q = setup["extractor"].embed(crop[None])[0]
    scores = np.asarray(index.embeddings) @ q
    order = np.argsort(-scores)[:5]
    assert [m.id for m in result] == [index.items[j].id for j in order]
    np.testing.assert_allclose([m.score for m in result], scores[order], atol=1e-5)
    assert [m.rank for m in result] == [1, 2, 3, 4, 5]
    assert result.query == path and result.problem is None


def test_one_image_as_path_bytes_or_array_gives_one_result(setup):
  searcher = Searcher.open(setup["fresh"])
  path = _photos(setup["queries"])[0]
  with open(path, "rb") as f:
    data = f.read()
  rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  by_path, by_bytes, by_array = (searcher.search(x, k=3) for x in (path, data, rgb))
  assert [m.id for m in by_path] == [m.id for m in by_bytes] == [m.id for m in by_array]
  np.testing.assert_allclose([m.score for m in by_path], [m.score for m in by_array], atol=1e-6)
  assert by_bytes.query == "<bytes 0>" and by_array.query == "<array 0>"
  np.testing.assert_allclose(searcher.embed(path), searcher.embed([rgb])[0], atol=1e-6)
  bad = searcher.search([b"not an image", path], k=2)
  assert bad[0].problem == "not-an-image" and not bad[0].matches and len(bad[1]) == 2


def test_min_score_is_a_no_match_answer(setup):
  searcher = Searcher.open(setup["fresh"])
  path = _photos(setup["queries"])[0]
  full = searcher.search(path, k=12)
  cut = (full[2].score + full[3].score) / 2
  assert [m.id for m in searcher.search(path, k=12, min_score=cut)] == [m.id for m in full][:3]
  assert len(searcher.search(path, k=12, min_score=1.01)) == 0
  same, score = searcher.verify(path, path, threshold=0.99)
  assert same and score == pytest.approx(1.0, abs=1e-5)
  assert searcher.verify(path, _photos(setup["full"])[0], threshold=1.01)[0] is False
  with pytest.raises(UserError, match="threshold"):
    searcher.verify(path, path)  # this export carries no calibration


def test_add_and_remove_match_a_fresh_build_and_persist(setup, tmp_path):
  searcher = Searcher.open(setup["index"])
  assert len(searcher) == 8
  junk = tmp_path / "junk"
  junk.mkdir()
  noise = np.random.default_rng(3).integers(0, 256, (40, 36, 3), np.uint8)
  Image.fromarray(noise).save(junk / "grey.png")  # no face in it: indexed from its centre
  summary = searcher.add(setup["later"])
  assert (summary.added, summary.already_indexed) == (4, 0)
  assert searcher.add(setup["later"]).already_indexed == 4  # nothing embedded twice
  searcher.add(str(junk))
  assert len(searcher) == 13
  junk_id = os.path.abspath(str(junk / "grey.png")) + "#0"
  assert searcher.contains(junk_id)
  assert searcher.remove([str(junk / "grey.png")]) == 1  # by path: every face of the photo
  with pytest.raises(UserError, match="not in the index"):
    searcher.remove(["no-such-id"])
  saved = str(tmp_path / "saved")
  searcher.save(saved)
  fresh = Searcher.open(setup["fresh"])
  reopened = Searcher.open(saved)
  queries = _photos(setup["queries"]) + [str(junk / "grey.png")]
  for s in (searcher, reopened):
    for got, want in zip(s.search(queries, k=6), fresh.search(queries, k=6)):
      # ids are absolute paths of the photos: the two builds used hard links in other folders
      assert [os.path.basename(m.path) for m in got] == [os.path.basename(m.path) for m in want]
      np.testing.assert_allclose([m.score for m in got], [m.score for m in want], atol=1e-5)
      assert all(m.id != junk_id for m in got)
  assert len(reopened) == 12
  info = json.load(open(os.path.join(saved, "gallery.json"), encoding="utf-8"))
  assert info["items"] == 12 and [list(h) for h in info["history"]][0] == ["add", "items"]


def test_enrol_one_uploaded_image_then_remove_it(setup, tmp_path):
  searcher = Searcher.open(setup["fresh"])
  with open(_photos(setup["queries"])[1], "rb") as f:
    data = f.read()
  assert searcher.add_image(data, "upload-1", name="visitor.png", identity="visitor") == [
    "upload-1"
  ]
  best = searcher.search(data, k=1).best
  assert (best.id, best.identity, best.name) == ("upload-1", "visitor", "visitor.png")
  assert best.score == pytest.approx(1.0, abs=1e-5)
  searcher.remove(["upload-1"])
  assert all(m.id != "upload-1" for m in searcher.search(data, k=13 - 1))


@pytest.mark.slow
def test_every_face_of_a_group_photo_is_indexed_with_its_box(lfw_2to4, tmp_path):
  """Two LFW faces side by side in one photo: --faces=all indexes both, each with its box, and a
  search with either person's other photo finds the group photo at that person's box."""
  lfw = lfw_2to4
  people = sorted(p for p in os.listdir(lfw) if os.path.isdir(os.path.join(lfw, p)))[:2]
  left, right = (sorted(os.listdir(os.path.join(lfw, p))) for p in people)
  a = np.asarray(Image.open(os.path.join(lfw, people[0], left[0])).convert("RGB"))
  b = np.asarray(Image.open(os.path.join(lfw, people[1], right[0])).convert("RGB"))
  group = tmp_path / "gallery"
  group.mkdir()
  Image.fromarray(np.concatenate([a, b], axis=1)).save(group / "group.jpg")
  crop = faces.CropSettings(detector="mtcnn", crop_size=64)
  extractor = features.make_extractor("hog", crop=crop)
  index_dir = str(tmp_path / "index")
  summary = gallery.build_gallery_index(extractor, str(group), index_dir, progress=False)
  assert summary.items >= 2  # every face (LFW photos may hold a third, smaller one)
  searcher = Searcher.open(index_dir)
  items = searcher.index.items
  assert all(item.id.startswith(str(group / "group.jpg") + "#") for item in items)
  width = a.shape[1]
  for person, photos, side in ((people[0], left, 0), (people[1], right, 1)):
    own = faces.load_and_crop(os.path.join(lfw, person, photos[0]), crop).image
    hit = searcher.search(own, k=1).best  # the very face the group photo was made from
    centre = hit.box[0] + hit.box[2] / 2
    assert (centre >= width) == bool(side), (person, hit.box)
    assert hit.score > 0.9
  many = searcher.search(str(group / "group.jpg"), k=1, faces_mode="all")
  assert len(many) >= 2 and {r.face for r in many} >= {0, 1}


def test_readme_notebook_example_runs(setup, tmp_path, monkeypatch, capsys):
  """The README's Python example, run exactly as written (from a folder holding runs/index and
  photo.jpg)."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  code = re.search(r"<!-- notebook-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
  assert len(code.strip().splitlines()) <= 5
  (tmp_path / "runs").mkdir()
  os.symlink(setup["fresh"], tmp_path / "runs" / "index")
  os.link(_photos(setup["queries"])[0], tmp_path / "photo.jpg")
  monkeypatch.chdir(tmp_path)
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 5 and lines[0].startswith("1 ")


@pytest.mark.slow
def test_search_tool_table_and_json(setup):
  query = _photos(setup["queries"])[0]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  run = lambda *a: subprocess.run(
    [os.path.join(BIN, "facetriplet-search"), *a],  # noqa: E731
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
  )
  table = run(f"--index={setup['fresh']}", "--k=3", query, "--min_score=1.01")
  assert table.returncode == 0, table.stderr
  assert "no match at or above 1.01" in table.stdout
  done = run(f"--index={setup['fresh']}", "--k=3", "--json", query)
  assert done.returncode == 0, done.stderr
  got = json.loads(done.stdout)
  want = Searcher.open(setup["fresh"]).search(query, k=3)
  assert [m["id"] for m in got[0]["matches"]] == [m.id for m in want]
  missing = run(f"--index={setup['fresh']}", str(setup["root"]) + "/nope.jpg")
  assert missing.returncode == 0 and "unreadable" in missing.stdout
  usage = run(f"--index={setup['fresh']}")
  assert usage.returncode == 2 and usage.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_build_index_tool_adds_removes_and_rebuilds(setup, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  index_dir = str(tmp_path / "index")
  tool = os.path.join(BIN, "facetriplet-build-index")
  run = lambda *a: subprocess.run(
    [tool, *a, "--noprogress"],
    capture_output=True,  # noqa: E731
    text=True,
    timeout=180,
    env=env,
  )
  built = run(
    f"--model={setup['export']}", f"--gallery={setup['first']}", f"--index_dir={index_dir}"
  )
  assert built.returncode == 0, built.stderr
  added = run(f"--index_dir={index_dir}", f"--add={setup['later']}")
  assert added.returncode == 0 and "added 4 item(s)" in added.stdout, added.stdout + added.stderr
  gone = tmp_path / "gone.txt"
  victim = os.path.join(setup["later"], sorted(os.listdir(setup["later"]))[0])
  gone.write_text(f"# photos to forget\n{victim}\n")
  removed = run(f"--index_dir={index_dir}", f"--remove={gone}", "--rebuild")
  assert removed.returncode == 0 and "removed 1 item(s)" in removed.stdout, removed.stderr
  searcher = Searcher.open(index_dir)
  assert len(searcher) == 11
  assert all(os.path.abspath(m.path) != victim for m in searcher.search(victim, k=11))
  bad = run(f"--index_dir={index_dir}", f"--remove={tmp_path / 'missing.txt'}")
  assert bad.returncode == 2 and "missing.txt" in bad.stderr
  # The audit trail records each change the tool made, as the command line's ('cli').
  trail = audit.Trail(index_dir).read()
  assert [e["action"] for e in trail] == ["build"] + ["enrol"] * 4 + ["remove"]
  assert trail[-1]["id"].startswith(victim) and all(e["client"] == "cli" for e in trail)
