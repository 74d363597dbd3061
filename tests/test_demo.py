"""`facetriplet-demo` (facetriplet/demo, tools/demo.py): the whole job (--quick), its re-run, its
settings and refusals."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from facetriplet import config_files
from facetriplet.errors import UserError
from facetriplet.demo import settings as plan
from facetriplet.demo.state import State

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo(*args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(
    [sys.executable, "-m", "facetriplet_tools.demo", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.slow
def test_quick_demo_runs_every_step_then_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _demo(f"--workdir={workdir}", "--quick")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  for tool in (
    "make-demo-data",
    "build-tfrecords",
    "train",
    "export",
    "build-index",
    "retrieve",
    "evaluate",
  ):
    assert f"$ facetriplet-{tool} " in out
  table = out[out.index("=== results") :]
  for name in ("embedding", "pixels", "color_hist", "lbp", "hog"):
    assert f"| {name} |" in table
  assert "| method | top1 | top5 | top10 |" in table
  grid = os.path.join(workdir, "eval", "grid.png")
  assert f"retrieval grid:  {grid}" in out and "total time:" in out
  with Image.open(grid) as im:
    assert im.format == "PNG" and im.size[0] > im.size[1] > 0

  with open(os.path.join(workdir, "heldout", "labels.txt")) as f:
    labels = dict(line.split() for line in f)
  queries = sorted(os.listdir(os.path.join(workdir, "heldout", "query")))
  gallery = os.listdir(os.path.join(workdir, "heldout", "gallery"))
  assert queries and gallery and set(labels) == set(queries) | set(gallery)
  with open(os.path.join(workdir, "tfrecords", "manifest.json")) as f:
    manifest = json.load(f)
  train_labels = {
    label for shard in manifest["splits"]["train"]["shards"] for label, _ in shard["groups"]
  }
  train_ids = {name for name, label in manifest["labels"].items() if label in train_labels}
  assert not train_ids & set(labels.values())  # held-out identities only
  with open(os.path.join(workdir, "submissions", "submission.json")) as f:
    submission = json.load(f)
  assert sorted(submission["images"]) == queries
  assert all(set(v) <= set(gallery) and v for v in submission["images"].values())

  again = _demo(f"--workdir={workdir}", "--quick", timeout=60)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "$ facetriplet-" not in again.stdout and "| embedding |" in again.stdout
  assert again.stdout.count("done in an earlier run") == 8


@pytest.mark.slow
def test_demo_on_your_people_scores_the_pretrained_start_beside_the_fine_tuned(tmp_path, orl_faces):
  """`make demo DATA=...` with the pretrained extra fine-tunes dlib's network and shows its start
  on the same held-out photos: both rows carry the numbers their own evaluate runs wrote."""
  orl = orl_faces
  if not plan.pretrained_installed():
    pytest.skip("the 'pretrained' extra is not installed")
  people = tmp_path / "people"
  people.mkdir()
  for i in range(1, 11):
    os.symlink(os.path.join(orl, f"s{i}"), people / f"s{i}")
  workdir = str(tmp_path / "run")
  proc = _demo(f"--workdir={workdir}", f"--data={people}")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "--config=celeba " in proc.stdout and "$ facetriplet-evaluate --model=dlib_resnet " in (
    proc.stdout
  )
  table = proc.stdout[proc.stdout.index("=== results") :]
  for row, folder in (
    ("embedding (fine-tuned)", "eval"),
    ("embedding (pretrained start)", "eval_start"),
  ):
    with open(os.path.join(workdir, folder, "metrics.json")) as f:
      want = json.load(f)["results"]["embedding"]
    line = next(x for x in table.splitlines() if x.startswith(f"| {row} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == f"{want['top1']:.4f}" and cells[6] == f"{want['map@r']:.4f}", line
  assert "| hog |" in table


def test_plan_for_data_follows_the_data_size():
  lfw_like = plan.plan_for_data({f"p{i}": 2 + i % 3 for i in range(600)}, pretrained=False)
  assert (lfw_like["k"], lfw_like["p"], lfw_like["config"]) == (2, 48, "lfw")
  assert 3 <= lfw_like["epochs"] <= 60 and lfw_like["val_fraction"] == 0.2
  orl_like = plan.plan_for_data({f"p{i}": 10 for i in range(40)}, pretrained=False)
  assert (orl_like["k"], orl_like["p"], orl_like["config"]) == (4, 8, "orl")
  assert orl_like["epochs"] > lfw_like["epochs"]  # fewer photos: more epochs in the same time
  assert all(os.path.isfile(config_files.resolve(c)) for c in ("lfw", "orl"))  # shipped names
  tiny = plan.plan_for_data({"a": 3, "b": 3, "c": 3, "d": 3, "e": 1}, pretrained=False)
  assert tiny["val_fraction"] == 0.5 and tiny["p"] == 2
  assert plan.plan_for_data({f"p{i}": 10 for i in range(40)}, epochs=7)["epochs"] == 7
  # With the pretrained network installed: fine-tune it on dlib chips, a few short passes.
  tuned = plan.plan_for_data({f"p{i}": 10 for i in range(40)}, pretrained=True)
  assert (tuned["config"], tuned["crop_preset"], tuned["crop_size"]) == ("celeba", "dlib150", 150)
  assert 2 <= tuned["epochs"] <= 10 and tuned["p"] == 16
  with pytest.raises(UserError, match="at least 4"):
    plan.plan_for_data({"a": 5, "b": 5, "c": 5, "d": 1})


def test_refuses_a_folder_it_did_not_write_and_cleans_its_own(tmp_path, capsys):
  (tmp_path / "mine.txt").write_text("not the demo's")
  with pytest.raises(UserError, match="not written by the demo"):
    State(str(tmp_path), {"a": 1}, fresh=False)

  run = tmp_path / "run"
  state = State(str(run), {"photos": 1, "epochs": 1}, fresh=False)
  for step in ("faces", "train"):
    state.step(step, "noop", lambda step=step: (run / step).mkdir())
  resumed = State(str(run), {"photos": 1, "epochs": 1}, fresh=False)
  assert sorted(resumed.done) == ["faces", "train"] and (run / "faces").is_dir()
  (run / "notes.txt").write_text("the user's")
  longer = State(str(run), {"photos": 1, "epochs": 2}, fresh=False)  # training only
  assert list(longer.done) == ["faces"] and (run / "faces").is_dir()
  assert not (run / "train").exists()
  other = State(str(run), {"photos": 2, "epochs": 2}, fresh=False)  # other data
  assert other.done == {} and not (run / "faces").exists()
  assert (run / "notes.txt").read_text() == "the user's"  # only the demo's own folders go
  out = capsys.readouterr().out
  assert "training settings changed" in out and "data settings changed" in out


def test_bad_data_folder_is_one_clear_line(tmp_path):
  done = _demo(f"--workdir={tmp_path / 'w'}", f"--data={tmp_path / 'missing'}", timeout=60)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith("demo.py: error: --data=")


def test_refuses_data_inside_the_workdir(tmp_path, capsys):
  for person in ("a", "b", "c", "d"):
    (tmp_path / "faces" / person).mkdir(parents=True)
    for n in range(2):
      Image.new("RGB", (8, 8)).save(tmp_path / "faces" / person / f"{n}.jpg")
  done = _demo(f"--workdir={tmp_path}", f"--data={tmp_path / 'faces'}", timeout=60)
  assert done.returncode == 2 and "is inside --workdir" in done.stderr
