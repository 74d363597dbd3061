"""dlib's face ResNet in Keras (`networks.dlib_resnet`, `networks.dlib_dat`) against dlib itself.

The reference is dlib's own `face_recognition_model_v1.compute_face_descriptor` (dlib-bin, extra
`reference`) on 150-px chips that dlib cuts itself (HOG detector, 5-point predictor,
`get_face_chip`) from real photos: a wrong layer, padding, mean or weight layout cannot reach a
cosine of 0.9999 on every chip. Skipped with a reason without the extras or the photos.
"""

import glob
import os

import numpy as np
import pytest

dlib = pytest.importorskip("dlib", reason="dlib's reference needs the 'reference' extra (dlib-bin)")
frm = pytest.importorskip(
  "face_recognition_models", reason="the weights need the 'pretrained' extra"
)

import ml_collections  # noqa: E402

from facetriplet.errors import UserError  # noqa: E402
from facetriplet.training import model as model_lib  # noqa: E402
from facetriplet.training import networks  # noqa: E402
from facetriplet.training.networks import dlib_dat, dlib_resnet  # noqa: E402
from tests.conftest import shared_dataset  # noqa: E402


@pytest.fixture(scope="module")
def chips():
  """dlib's own chips and descriptors of the first photos of LFW and CelebA where HOG finds a
  face."""
  detector = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
  rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
  paths = sorted(glob.glob(os.path.join(shared_dataset("lfw_2to4"), "*", "*.jpg")))[:40]
  celeba = os.path.join(shared_dataset("celeba_199"), "img_celeba")
  paths += sorted(glob.glob(os.path.join(celeba, "*.jpg")))[:10]
  out = []
  for path in paths:
    img = dlib.load_rgb_image(path)
    dets = detector(img, 1)
    if dets:
      shape = predictor(img, max(dets, key=lambda r: r.area()))
      chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
      out.append((chip, np.asarray(rec.compute_face_descriptor(chip), np.float32)))
    if len(out) == 24:
      break
  assert len(out) >= 20
  return np.stack([c for c, _ in out]), np.stack([d for _, d in out])


@pytest.fixture(scope="module")
def keras_net(tmp_path_factory):
  os.environ["FACETRIPLET_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  return networks.build("dlib_resnet", 150, "dlib_resnet")


def _cos(a, b):
  return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_keras_network_reproduces_dlibs_descriptors(chips, keras_net):
  images, reference = chips
  out = keras_net.predict_on_batch(images.astype(np.float32))
  cosines = _cos(out, reference)
  assert cosines.min() >= 0.9999, cosines
  np.testing.assert_allclose(out, reference, atol=2e-5)  # the raw descriptor, not just its angle


def test_the_file_parses_layer_by_layer_and_other_files_are_refused():
  net = dlib_dat.read_dat(frm.face_recognition_model_location())
  kinds = [layer.kind for layer in net.param_layers()]
  assert (kinds.count("con"), kinds.count("affine"), kinds.count("fc")) == (29, 29, 1)
  np.testing.assert_allclose(net.layers[0].attrs["mean_rgb"], dlib_resnet.DLIB_MEAN_RGB, atol=1e-3)
  with pytest.raises(dlib_dat.DatFormatError, match="loss_mmod"):
    dlib_dat.read_dat(frm.cnn_face_detector_model_location())


def test_weights_are_converted_once_into_the_cache(keras_net):
  path = dlib_resnet.pretrained_weights_file()
  assert os.path.isfile(path) and path.startswith(os.environ["FACETRIPLET_CACHE"])
  mtime = os.path.getmtime(path)
  assert dlib_resnet.pretrained_weights_file() == path and os.path.getmtime(path) == mtime


def test_the_embedding_model_is_the_normalised_descriptor(chips):
  images, reference = chips
  config = ml_collections.ConfigDict(
    {
      "model": {
        "backbone": "dlib_resnet",
        "weights": "dlib_resnet",
        "image_size": 150,
        "crop_size": 150,
        "embedding_dim": 128,
        "width": 1.0,
      },
      "augment": {},
      "seed": 0,
    }
  )
  model = model_lib.build_embedding_model(config)
  out = model.predict_on_batch(images)
  assert "projection" not in [layer.name for layer in model.layers]
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
  assert _cos(out, reference).min() >= 0.9999
  config.model.embedding_dim = 64
  with pytest.raises(UserError, match="embedding_dim=128"):
    model_lib.build_embedding_model(config)


def test_a_cached_export_with_older_crop_settings_is_exported_again(keras_net):
  """--model=dlib_resnet is the cached export; one made by an older version (MTCNN crops,
  before YuNet was the default) is replaced, so the name always crops as this version does."""
  import json  # pylint: disable=g-import-not-at-top

  from facetriplet.data import faces  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  path = export.pretrained_export("dlib_resnet")
  assert path.startswith(os.environ["FACETRIPLET_CACHE"])
  assets = os.path.join(path, "assets", "facetriplet.json")
  with open(assets, encoding="utf-8") as f:
    meta = json.load(f)
  want = faces.CropSettings.preset("dlib150").to_dict()
  assert meta["crop"] == want
  # It carries the network's measured "same person" thresholds (Searcher.verify, clustering).
  assert (
    meta["verification"]["thresholds"]["0.001"] == dlib_resnet.CALIBRATION["thresholds"]["0.001"]
  )
  mtime = os.path.getmtime(os.path.join(path, "saved_model.pb"))
  assert export.pretrained_export("dlib_resnet") == path  # current: kept as it is
  assert os.path.getmtime(os.path.join(path, "saved_model.pb")) == mtime
  meta["crop"] = dict(want, detector="mtcnn")
  with open(assets, "w", encoding="utf-8") as f:
    json.dump(meta, f)
  export.pretrained_export("dlib_resnet")
  with open(assets, encoding="utf-8") as f:
    assert json.load(f)["crop"] == want
