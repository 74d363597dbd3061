r"""Groups the faces of a photo collection (or of an index) by person, without labels.

  facetriplet-cluster --input=photos/ --output=runs/people              # every face, pretrained net
  facetriplet-cluster --input=photos/ --output=runs/people --threshold=0.62 --write_folders
  facetriplet-cluster --index=runs/index --output=runs/people            # the index's embeddings
  facetriplet-cluster --input=party.mp4 --output=runs/guests --every=0.5  # faces of a video

Every face of every photo (--faces=all; --faces=largest: one a photo) is embedded by --model
(default: the pretrained network dlib_resnet), linked to its --k nearest neighbours scoring at
least the threshold (a ScaNN graph, so it scales to millions of faces), and grouped by Chinese
whispers. The threshold is --threshold, else the model's calibrated one at --far. A video
--input is read as its frames every --every seconds, every face of each.

Writes, in one step, <output>/clusters.json (each cluster, largest first, with its faces: photo,
box), sheets/cluster_NNNN.jpg (a contact sheet of each cluster of at least --min_size faces) and,
with --write_folders, folders/cluster_NNNN/ (links to the photos; a video's frames as JPEGs):
rename those folders after the people and they are an identity-folder gallery
(facetriplet-build-index, or enrol them). The logic lives in `facetriplet.search.cluster` and
`facetriplet.search.cluster_output`.
"""

import os
import time
from typing import Sequence

import numpy as np

from absl import app
from absl import flags

from facetriplet import atomic
from facetriplet.data import faces, layouts
from facetriplet.errors import UserError, run_tool
from facetriplet.search import gallery, video

_INPUT = flags.DEFINE_string(
  "input", None, "Folder of photos (any layout, read recursively), or a video file."
)
_EVERY = flags.DEFINE_float("every", 0.5, "With a video --input: seconds between sampled frames.")
_INDEX = flags.DEFINE_string("index", None, "Or: an index folder; its items are clustered.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (replaced whole).")
_MODEL = flags.DEFINE_string(
  "model", "dlib_resnet", "Export folder or pretrained network (with --input)."
)
_THRESHOLD = flags.DEFINE_float(
  "threshold", None, "Link faces at or above this cosine similarity (default: calibrated)."
)
_FAR = flags.DEFINE_float("far", 0.001, "False-accept rate of the calibrated threshold.")
_K = flags.DEFINE_integer("k", 16, "Neighbours per face in the graph.")
_FACES = flags.DEFINE_enum("faces", "all", ["all", "largest"], "Every face, or one a photo.")
_MIN_FACE = flags.DEFINE_float(
  "min_face", faces.MIN_FACE_FRACTION, "Smallest face, as a fraction of the photo's short side."
)
_MIN_SIZE = flags.DEFINE_integer(
  "min_size", 2, "Contact sheets and folders for clusters of at least this many faces."
)
_WRITE_FOLDERS = flags.DEFINE_bool(
  "write_folders",
  False,
  "Link each cluster's photos into folders/cluster_NNNN/ (a video's frames: written as JPEGs).",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def _embed_folder():
  """(embeddings, faces, problems, model, extractor) of the faces of --input."""
  from facetriplet.search import cluster_output, embedding, features  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  model = export.resolve_model(_MODEL.value)
  extractor = features.make_extractor("embedding", model)
  if video.is_video(_INPUT.value):
    x, kept, problems = video.embed_video(
      extractor, _INPUT.value, _EVERY.value, progress=_PROGRESS.value, min_face=_MIN_FACE.value
    )
  else:
    x, kept, problems = embedding.embed_entries(
      extractor,
      layouts.list_images(_INPUT.value, "flat"),
      progress=_PROGRESS.value,
      desc="faces",
      faces_mode=_FACES.value,
      min_face=_MIN_FACE.value,
      with_faces=True,
    )
  # A photo without a detected face is in `problems` (no-face), not clustered as a face.
  rows = [i for i, e in enumerate(kept) if e.found]
  found = [
    cluster_output.Face(
      e.path,
      e.rel_path,
      tuple(e.box) if e.box else None,
      e.face,
      e.time,
      tuple(e.landmarks) if e.landmarks else None,
    )
    for e in (kept[i] for i in rows)
  ]
  return np.asarray(x)[rows], found, problems, extractor


def _from_index():
  from facetriplet.search import cluster_output  # pylint: disable=g-import-not-at-top
  from facetriplet.search.searcher import Searcher  # pylint: disable=g-import-not-at-top

  searcher = Searcher.open(_INDEX.value)
  rows = [r for r, i in enumerate(searcher.index.items) if i.box is not None]  # faces found
  items = [searcher.index.items[r] for r in rows]
  found = [
    cluster_output.Face(i.path or "", i.rel_path or i.id, i.box, i.face or 0, i.time, i.landmarks)
    for i in items
  ]
  return np.asarray(searcher.index.embeddings)[rows], found, [], searcher


def _check_output(output: str, source: str) -> None:
  """--output is replaced whole: it must not hold the photos, nor anything but a former run's."""
  out, src = os.path.realpath(output), os.path.realpath(source)
  if os.path.commonpath([out, src]) in (out, src):
    raise UserError(
      f"--output={output} and {source} contain one another: the output folder is replaced "
      "whole, so choose one outside the photos"
    )
  atomic.claim_folder(
    output, lambda n: n in ("clusters.json", "sheets", "folders"), "--output", "facetriplet-cluster"
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if bool(_INPUT.value) == bool(_INDEX.value) or not _OUTPUT.value:
    raise UserError("pass --input=<folder of photos> or --index=<index folder>, and --output")
  if _INPUT.value and not os.path.isdir(_INPUT.value) and not video.is_video(_INPUT.value):
    raise UserError(
      f"--input={_INPUT.value} is not a folder of photos or a video ({', '.join(video.EXTENSIONS)})"
    )
  if _EVERY.value <= 0:
    raise UserError(f"--every={_EVERY.value}: the seconds between sampled frames must be > 0")
  if _INPUT.value and video.is_video(_INPUT.value) and _FACES.value != "all":
    raise UserError(f"--input={_INPUT.value} is a video: its frames are clustered with every face")
  if _INDEX.value:
    gallery.check_index(_INDEX.value)
  _check_output(_OUTPUT.value, _INPUT.value or _INDEX.value)
  if _K.value < 1 or _MIN_SIZE.value < 1 or not 0 < _FAR.value < 1:
    raise UserError("--k and --min_size must be at least 1, --far between 0 and 1")
  if _THRESHOLD.value is not None and not -1 <= _THRESHOLD.value <= 1:
    raise UserError(f"--threshold={_THRESHOLD.value}: a cosine similarity, -1..1")
  from facetriplet.search import cluster, cluster_output  # pylint: disable=g-import-not-at-top

  start = time.time()
  x, found, problems, source = _embed_folder() if _INPUT.value else _from_index()
  if not len(found):
    raise UserError(f"no face to cluster in {_INPUT.value or _INDEX.value}")
  threshold = cluster.threshold_for(source, _FAR.value, _THRESHOLD.value)
  result = cluster.cluster(x, threshold, _K.value)
  settings = {
    "source": os.path.abspath(_INPUT.value or _INDEX.value),
    "model": _MODEL.value if _INPUT.value else "the index's",
    "threshold": threshold,
    "far": None if _THRESHOLD.value is not None else _FAR.value,
    "k": _K.value,
    "faces": len(found),
    "problems": [p.to_dict() for p in problems],
  }
  counts = cluster_output.write(
    _OUTPUT.value, result.labels, found, settings, _MIN_SIZE.value, _WRITE_FOLDERS.value
  )
  sizes = result.sizes
  print(f"{'cluster':>8}  {'faces':>6}  first photo")
  for c in range(min(len(sizes), 15)):
    first = found[int(next(i for i, v in enumerate(result.labels) if v == c))].shown
    print(f"{c:>8}  {int(sizes[c]):>6}  {first}")
  if len(sizes) > 15:
    print(f"{'…':>8}  {len(sizes) - 15} more")
  print(
    f"{len(found)} faces -> {len(sizes)} clusters ({int((sizes >= _MIN_SIZE.value).sum())} of "
    f"at least {_MIN_SIZE.value}, {int((sizes == 1).sum())} single faces) at threshold "
    f"{threshold:.3f}; {len(problems)} photo problem(s); {counts['sheets']} contact sheets"
    + (f", {counts['links']} photos in {counts['folders']} folders" if _WRITE_FOLDERS.value else "")
    + f"; {_OUTPUT.value} ({time.time() - start:.1f} s)"
  )


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
