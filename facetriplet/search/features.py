"""Which features embed a face, and with which crop: the one place that decides.

`make_extractor(features, model_dir, crop, source)` returns the learned `embedder.Embedder`
('embedding', from an export folder) or a classical descriptor (`data.classical`). For a classical
descriptor the crop settings come from, in order: `crop` (e.g. an index's gallery.json), the
export's metadata (`model_dir`), the manifest of a TFRecord folder (`source`), the defaults. So
classical features always see the crops the model or the records were made with.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from facetriplet.data import classical, faces, tfrecords
from facetriplet.errors import UserError
from facetriplet import export_format
from facetriplet.search import embedder

FEATURES = ("embedding",) + classical.EXTRACTORS


def crop_for(
  model_dir: Optional[str] = None,
  source: Optional[str] = None,
  crop: Union[faces.CropSettings, Mapping[str, Any], None] = None,
) -> faces.CropSettings:
  """The crop settings for a classical extractor (see the module docstring for the order)."""
  if isinstance(crop, faces.CropSettings):
    return crop
  if crop:
    return faces.CropSettings.from_dict(crop)
  if model_dir:
    return faces.CropSettings.from_dict(export_format.read_metadata(model_dir)["crop"])
  if source and tfrecords.is_shard_folder(source):
    recorded = tfrecords.ShardSet.open(source).crop
    if recorded:
      return faces.CropSettings.from_dict(recorded)
  return faces.CropSettings()


def make_extractor(
  features: str,
  model_dir: Optional[str] = None,
  crop: Union[faces.CropSettings, Mapping[str, Any], None] = None,
  source: Optional[str] = None,
):
  """The feature extractor `features`: `.embed(uint8 [N,S,S,3])`, `.dim`, `.fingerprint`,
  `.crop_settings`.

  Args:
    features: one of FEATURES.
    model_dir: export folder written by facetriplet-export (required for 'embedding').
    crop: crop settings for a classical extractor (a CropSettings or its dict).
    source: the images' folder; a TFRecord folder's manifest gives a classical crop.

  Raises:
    UserError: unknown feature name or missing export.
  """
  if features not in FEATURES:
    raise UserError(f"features={features!r} is not one of {', '.join(FEATURES)}")
  if features == "embedding":
    if not model_dir:
      raise UserError(
        "features 'embedding' need an export folder: pass --model=<export dir "
        "written by facetriplet-export>"
      )
    return embedder.load_embedder(model_dir)
  return classical.get_extractor(features, crop_for(model_dir, source, crop))
