r"""Searches an index for the people in one or more photos and prints the ranked matches.

  facetriplet-search --index=runs/index photo.jpg
  facetriplet-search --index=runs/index --k=5 --min_score=0.45 a.jpg b.png
  facetriplet-search --index=runs/index --faces=all --json group.jpg > matches.json
  facetriplet-search --index=runs/index --verify a.jpg b.jpg        # the same person?
  facetriplet-search --index=runs/index --video=clip.mp4 --every=0.5 --thumbs=runs/seen

Each photo is cropped as the gallery was and embedded by the index's model. With --min_score a
query whose best match scores lower prints "no match" (see the threshold_at_far of
facetriplet-evaluate); --faces=all answers for every face in the photo. --verify compares the
faces of two photos against the model's calibrated threshold at --far (or --threshold). The logic is
`facetriplet.search.searcher.Searcher`.
"""

import json
import os
from typing import Sequence

from PIL import Image

from absl import flags

from facetriplet.data import faces
from facetriplet.errors import UserError, run_tool
from facetriplet.search.searcher import Searcher

_INDEX = flags.DEFINE_string("index", None, "Index folder written by facetriplet-build-index.")
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Export folder, or a pretrained network's name (default: the one the index was built with).",
)
_K = flags.DEFINE_integer("k", 10, "Matches per photo (per face with --faces=all).")
_MIN_SCORE = flags.DEFINE_float(
  "min_score", None, "Leave out matches below this cosine similarity."
)
_FACES = flags.DEFINE_enum(
  "faces",
  "largest",
  ["largest", "all"],
  "Search the chosen face of each photo, or every face found.",
)
_MIN_FACE = flags.DEFINE_float(
  "min_face",
  faces.MIN_FACE_FRACTION,
  "With --faces=all: smallest face, as a fraction of the short side.",
)
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
_VERIFY = flags.DEFINE_bool(
  "verify", False, "Two photos: are their faces the same person? (similarity vs a threshold)"
)
_THRESHOLD = flags.DEFINE_float(
  "threshold",
  None,
  "With --verify: same person at or above this similarity (default: the "
  "model's calibrated threshold at --far).",
)
_VIDEO = flags.DEFINE_string(
  "video", None, "A video: when does each indexed person appear in it (time ranges)."
)
_EVERY = flags.DEFINE_float("every", 0.5, "With --video: seconds between sampled frames.")
_THUMBS = flags.DEFINE_string(
  "thumbs", None, "With --video: write each person's best-scoring frame here (<identity>.jpg)."
)
_FAR = flags.DEFINE_float(
  "far",
  0.01,
  "With --verify and --video: the false-accept rate of the calibrated threshold (--video "
  "without --min_score counts a face for a person at that threshold).",
)


def video(searcher) -> None:
  """--video: each person's time ranges in the video, best frame first seen."""
  from facetriplet.search import video as video_lib  # pylint: disable=g-import-not-at-top

  people = video_lib.find_people(searcher, _VIDEO.value, _EVERY.value, _MIN_SCORE.value, _FAR.value)
  if _THUMBS.value:
    from facetriplet import atomic  # pylint: disable=g-import-not-at-top
    from facetriplet.evaluation import grid  # pylint: disable=g-import-not-at-top

    os.makedirs(_THUMBS.value, exist_ok=True)
    for p in people:
      image = grid.photo_with_box(p.best_frame, p.best_box, 320) if p.best_box else p.best_frame
      safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in p.identity)
      with atomic.atomic_path(os.path.join(_THUMBS.value, f"{safe}.jpg")) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=90)
  if _JSON.value:
    print(json.dumps([p.to_dict() for p in people], indent=2, ensure_ascii=False))
    return
  for p in people:
    spans = ", ".join(f"{r.start:.1f}-{r.end:.1f} s" for r in p.ranges)
    print(f"{p.identity}: {spans} (best {p.best_score:.3f} at {p.best_time:.1f} s)")
  print(
    f"{len(people)} known people in {_VIDEO.value}; index {_INDEX.value} ({len(searcher)} items)"
  )


def verify(searcher, photos: Sequence[str]) -> None:
  """--verify: one line saying whether two photos show the same person, and why."""
  if len(photos) != 2:
    raise UserError(f"--verify compares two photos, got {len(photos)}")
  same, score = searcher.verify(photos[0], photos[1], _THRESHOLD.value, _FAR.value)
  used = _THRESHOLD.value if _THRESHOLD.value is not None else searcher.threshold(_FAR.value)
  basis = "given" if _THRESHOLD.value is not None else f"calibrated at FAR {_FAR.value:g}"
  if _JSON.value:
    answer = {"same": same, "score": score, "threshold": used, "far": _FAR.value}
    print(json.dumps(dict(answer, a=photos[0], b=photos[1]), indent=2))
    return
  print(
    f"{'same person' if same else 'different people'}: similarity {score:.4f} "
    f"{'>=' if same else '<'} threshold {used:.4f} ({basis}); {photos[0]} vs {photos[1]}"
  )


def _model():
  """--model: an export folder, or a pretrained network's name (its cached export)."""
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  return export.resolve_model(_MODEL.value)


def main(argv: Sequence[str]) -> None:
  photos = list(argv[1:])
  if not 0 < _FAR.value < 1:
    raise UserError(f"--far={_FAR.value}: a false-accept rate between 0 and 1")
  if _VIDEO.value:
    if photos or not _INDEX.value:
      raise UserError("usage: facetriplet-search --index=<index folder> --video=clip.mp4")
    if not os.path.isfile(_VIDEO.value) or _EVERY.value <= 0:
      raise UserError(f"--video={_VIDEO.value} is not a file, or --every={_EVERY.value} <= 0")
    video(Searcher.open(_INDEX.value, _model()))
    return
  if not _INDEX.value or not photos:
    raise UserError("usage: facetriplet-search --index=<index folder> photo.jpg [photo ...]")
  if _K.value < 1:
    raise UserError(f"--k={_K.value}: ask for at least one match")
  if _VERIFY.value and len(photos) != 2:
    raise UserError(f"--verify compares two photos, got {len(photos)}")
  if not 0 < _FAR.value < 1:
    raise UserError(f"--far={_FAR.value}: a false-accept rate between 0 and 1")
  searcher = Searcher.open(_INDEX.value, _model())
  if _VERIFY.value:
    verify(searcher, photos)
    return
  results = searcher.search(
    photos,
    k=_K.value,
    min_score=_MIN_SCORE.value,
    faces_mode=_FACES.value,
    min_face=_MIN_FACE.value,
  )
  if _JSON.value:
    print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    return
  for r in results:
    face = (
      f" face {r.face} at {[round(v) for v in r.box]}" if r.box and _FACES.value == "all" else ""
    )
    print(f"{r.query}{face}" + (f"  ({r.problem})" if r.problem else ""))
    if not r.matches:
      print(
        "  no match" + (f" at or above {_MIN_SCORE.value}" if _MIN_SCORE.value is not None else "")
      )
    for m in r.matches:
      who = m.identity or "-"
      print(
        f"  {m.rank:>3}  {m.score:7.4f}  {who:<24}  {m.item.photo if m.path else m.name}"
        + (f"  box {[round(v) for v in m.box]}" if m.box else "")
      )
  unreadable = sum(1 for r in results if r.problem and r.problem != "no-face")
  print(
    f"{len(photos)} photo(s), {len(results)} quer{'y' if len(results) == 1 else 'ies'}, "
    f"{sum(1 for r in results if r.matches)} with a match, {unreadable} unreadable; "
    f"index {_INDEX.value} ({len(searcher)} items)"
  )


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
