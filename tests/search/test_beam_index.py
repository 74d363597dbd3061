"""The Beam path of the gallery index (`search/beam_index.py`, `facetriplet-build-index --runner`):
the same items, embeddings, gallery.json and answers as `gallery.build_gallery_index`."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from facetriplet.data import faces, ingest  # noqa: E402
from facetriplet.errors import UserError  # noqa: E402
from facetriplet.search import beam_index, features, gallery, sharded_index  # noqa: E402
from facetriplet.search.index import GalleryIndex  # noqa: E402
from facetriplet.search.items import Item  # noqa: E402
from tests.training.test_export import make_export  # noqa: E402
from tests.search.test_retrieval import write_image_set  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABSL_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("beam_index"))
  rng = np.random.default_rng(5)
  export_dir = make_export(root, seed=0)
  folders = os.path.join(root, "folders")  # identity folders, 3 x 4 photos, one broken file
  write_image_set(folders, rng, per_identity=4)
  with open(os.path.join(folders, "bob", "broken.jpg"), "wb") as f:
    f.write(b"not a jpeg at all")
  flat = os.path.join(root, "flat")  # a flat folder: --faces=auto means every face
  write_image_set(flat, rng, per_identity=2, folders=False)
  records = os.path.join(root, "records")
  ingest.build_tfrecords(
    folders,
    records,
    crop=faces.CropSettings(detector="none", crop_size=32),
    val_fraction=0.34,
    num_shards=2,
    workers=1,
    progress=False,
  )
  queries = os.path.join(root, "queries")
  write_image_set(queries, rng, per_identity=1, folders=False, prefix="q_")
  extractor = features.make_extractor("embedding", export_dir)
  crops = [
    faces.load_and_crop(os.path.join(queries, n), extractor.crop_settings).image
    for n in sorted(os.listdir(queries))
  ]
  return dict(
    root=root,
    export=export_dir,
    folders=folders,
    flat=flat,
    records=records,
    extractor=extractor,
    queries=extractor.embed(np.stack(crops)),
  )


def _local(setup, source, name):
  index_dir = os.path.join(setup["root"], name)
  gallery.build_gallery_index(
    setup["extractor"], source, index_dir, progress=False, model_dir=setup["export"]
  )
  return index_dir


def _by_id(index_dir):
  index = GalleryIndex.load(index_dir)
  return index, {
    item.id: (item, np.asarray(index.embeddings)[i]) for i, item in enumerate(index.items)
  }


def assert_same_index(setup, local_dir, beam_dir, same_rows=True, k=5):
  """Same items and embeddings (within 1e-5), gallery.json and top-k answers."""
  local, local_rows = _by_id(local_dir)
  beam, beam_rows = _by_id(beam_dir)
  assert sorted(local_rows) == sorted(beam_rows) and local_rows
  if same_rows:
    assert local.items == beam.items
  for item_id, (item, vector) in local_rows.items():
    assert beam_rows[item_id][0] == item
    np.testing.assert_allclose(beam_rows[item_id][1], vector, atol=1e-5)
  for name in (gallery.GALLERY_FILE,):
    with open(os.path.join(local_dir, name)) as fa, open(os.path.join(beam_dir, name)) as fb:
      assert json.load(fa) == json.load(fb)
  (li, ls), (bi, bs) = local.search(setup["queries"], k), beam.search(setup["queries"], k)
  assert [[local.items[j].id for j in row] for row in li] == [
    [beam.items[j].id for j in row] for row in bi
  ]
  np.testing.assert_allclose(ls, bs, atol=1e-5)


def test_identity_folders_in_several_shards(setup):
  local_dir = _local(setup, setup["folders"], "local_folders")
  beam_dir = os.path.join(setup["root"], "beam_folders")
  kept = os.path.join(setup["root"], "embeddings")
  s = beam_index.build_gallery_index_beam(
    setup["extractor"],
    setup["folders"],
    beam_dir,
    "DirectRunner",
    model_dir=setup["export"],
    embeddings_dir=kept,
    shard_rows=5,
  )
  assert s.items == 12 and [p.reason for p in s.skipped] == ["not-an-image"]
  assert_same_index(setup, local_dir, beam_dir)
  assert sorted(os.listdir(kept)) == [
    "embeddings-00000-of-00003.npz",
    "embeddings-00001-of-00003.npz",
    "embeddings-00002-of-00003.npz",
    "embeddings.json",
  ]
  embeddings, items, problems = sharded_index.read_shards(kept, setup["extractor"].fingerprint)
  assert embeddings.shape == (12, setup["extractor"].dim) and len(items) == 12
  assert [p.rel_path for p in problems] == ["bob/broken.jpg"]
  with pytest.raises(UserError, match="embed the gallery again"):
    sharded_index.read_shards(kept, "another-model")
  leftovers = [n for n in os.listdir(setup["root"]) if ".embeddings-" in n]
  assert not leftovers  # the temporary embeddings folder of a run without embeddings_dir


def test_flat_folder_every_face_and_tfrecords(setup):
  built = {}
  for source, name in ((setup["flat"], "flat"), (setup["records"], "records")):
    local_dir = _local(setup, source, f"local_{name}")
    built[name] = os.path.join(setup["root"], f"beam_{name}")
    beam_index.build_gallery_index_beam(
      setup["extractor"], source, built[name], "DirectRunner", model_dir=setup["export"]
    )
    assert_same_index(setup, local_dir, built[name])
  assert all(i.id.endswith("#0") for i in GalleryIndex.load(built["flat"]).items)
  assert len(GalleryIndex.load(built["records"])) == 12


def test_partitions_trained_on_a_sample_then_the_rest_added(setup):
  local_dir = os.path.join(setup["root"], "local_folders")
  if not os.path.isdir(local_dir):
    local_dir = _local(setup, setup["folders"], "local_folders")
  beam_dir = os.path.join(setup["root"], "beam_sample")
  s = beam_index.build_gallery_index_beam(
    setup["extractor"],
    setup["folders"],
    beam_dir,
    "DirectRunner",
    model_dir=setup["export"],
    train_sample=5,
  )
  assert s.settings["trained_on"] == 12 and s.settings["training_sample"] == 5
  assert_same_index(setup, local_dir, beam_dir, same_rows=False, k=8)
  assert not GalleryIndex.load(beam_dir).needs_rebuild


def test_sample_and_add_with_partitions():
  """Above the sample the partitions are sized for the whole gallery; answers stay exact enough."""
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(40, 16))
  x = centres[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 16))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  items = [Item(str(i)) for i in range(len(x))]
  index = sharded_index.build_from_sample(
    x, items, "fp", train_sample=1000, mode="ah", num_leaves=30, num_leaves_to_search=30
  )
  assert len(index) == 3000 and index.config["num_leaves"] == 30
  assert index.config["trained_on"] == 3000 and index.config["training_sample"] == 1000
  queries = x[:50]
  found, _ = index.search(queries, 10)
  exact = np.argsort(-queries @ x.T, axis=1)[:, :10]
  ids = [[int(index.items[j].id) for j in row] for row in found]
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact.tolist())])
  assert recall > 0.9


def _tool(*args):
  return subprocess.run(
    [sys.executable, "-m", "facetriplet_tools.build_index", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )


@pytest.mark.slow
def test_tool_runner(setup):
  local_dir = os.path.join(setup["root"], "local_folders")
  if not os.path.isdir(local_dir):
    local_dir = _local(setup, setup["folders"], "local_folders")
  beam_dir = os.path.join(setup["root"], "tool_beam")
  proc = _tool(
    f"--model={setup['export']}",
    f"--gallery={setup['folders']}",
    f"--index_dir={beam_dir}",
    "--runner=DirectRunner",
    "--",
    "--direct_num_workers=1",
  )
  assert proc.returncode == 0, proc.stderr
  assert "12 items, 1 skipped" in proc.stdout
  assert_same_index(setup, local_dir, beam_dir)
  proc = _tool(f"--index_dir={beam_dir}", "--rebuild", "--runner=DirectRunner")
  lines = [line for line in proc.stderr.splitlines() if not ABSL_LOG.match(line)]
  assert proc.returncode == 2 and len(lines) == 1 and "leave --runner out" in lines[0]


@pytest.mark.slow
def test_lfw_gallery_same_index_and_answers(setup, lfw_2to4, tmp_path):
  """Real photos: 12 LFW people as an identity-folder gallery, embedded by the local path and by
  the Beam DirectRunner pipeline, give the same items, embeddings and top-k answers."""
  people = sorted(n for n in os.listdir(lfw_2to4) if os.path.isdir(os.path.join(lfw_2to4, n)))
  root = tmp_path / "lfw"
  for name in people[:12]:
    os.makedirs(root / name)
    for f in sorted(os.listdir(os.path.join(lfw_2to4, name))):
      os.symlink(os.path.join(lfw_2to4, name, f), root / name / f)
  local_dir = _local(setup, str(root), "local_lfw")
  beam_dir = str(tmp_path / "beam_lfw")
  s = beam_index.build_gallery_index_beam(
    setup["extractor"], str(root), beam_dir, "DirectRunner", model_dir=setup["export"], shard_rows=8
  )
  assert s.items >= 24 and not s.skipped
  assert_same_index(setup, local_dir, beam_dir, k=10)
