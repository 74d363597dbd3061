"""CropStore: a set's crops made once and replayed, only for the same entries and settings."""

import numpy as np
from PIL import Image

from facetriplet.data import faces
from facetriplet.data.layouts import ImageEntry
from facetriplet.search import embedding


def _photos(tmp_path, n):
  entries = []
  for i in range(n):
    path = str(tmp_path / f"p{i}.png")
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(path)
    entries.append(ImageEntry(path, f"p{i}.png", f"person{i % 2}", None))
  return entries


def _pass(store, entries, settings, stop=None):
  out = []
  for n, batch in enumerate(store.batches(entries, settings, batch_size=2, workers=1)):
    out.extend(batch)
    if stop is not None and n + 1 == stop:
      break
  return out


def test_replayed_only_for_the_same_entries_and_settings(tmp_path, monkeypatch):
  entries = _photos(tmp_path, 5)
  small = faces.CropSettings(detector="none", crop_size=16)
  large = faces.CropSettings(detector="none", crop_size=24)
  made = []
  crop_each = faces.FaceCropper.crop_each
  monkeypatch.setattr(
    faces.FaceCropper, "crop_each", lambda self, d, *a: made.extend(d) or crop_each(self, d, *a)
  )
  store = embedding.CropStore()
  _pass(store, entries, small, stop=1)  # a pass left early is not kept
  assert 2 <= len(made) < 5
  made.clear()
  first = _pass(store, entries, small)
  assert len(made) == 5
  again = _pass(store, entries, small)
  assert len(made) == 5 and [e for e, _ in again] == entries  # replayed
  for (_, a), (_, b) in zip(first, again):
    np.testing.assert_array_equal(a.image, b.image)
  assert _pass(store, entries, large)[0][1].image.shape == (24, 24, 3)  # other settings: made
  assert len(made) == 10
  # The same files under other names and identities (a list file): cropped again, not mixed up.
  relabelled = [e._replace(identity="someone") for e in entries]
  assert [e for e, _ in _pass(store, relabelled, small)] == relabelled and len(made) == 15
  # A set above the store's size streams as without a store.
  tiny = embedding.CropStore(max_photos=3)
  _pass(tiny, entries, small)
  _pass(tiny, entries, small)
  assert len(made) == 25
