"""What a gallery index holds per row: a typed `Item` (one face of one photo, or an enrolment).

Every path that fills an index makes its items here: a gallery photo's face (`Item.of_face`, from
the local embedding path and the Beam pipeline alike) and an image enrolled from memory
(`Item.enrolled`). On disk an item is one JSON object per line of the index's `items.jsonl`
(`to_json` / `from_json`; lines written before items had ids get their row number as id).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

FACE_SEPARATOR = "#"  # '<photo id>#<n>': the n-th face of a photo in an index of every face


def frame_suffix(seconds: float) -> str:
  """How a video frame is named after its video: 'clip.mp4@12.500s'."""
  return f"@{seconds:.3f}s"


@dataclasses.dataclass(frozen=True)
class Item:
  """One searchable face.

  Attributes:
    id: unique in its index: the photo's absolute path ('#<n>' appended per face in an index of
      every face), or the id given at enrolment.
    path: the photo's path ('' for an image enrolled from memory).
    rel_path: the path below the gallery folder ('' when enrolled).
    name: the file or display name (what a submission lists).
    identity: the person, where known.
    box: the face's (x, y, w, h) in the photo (None when no face was found: a centred crop).
    landmarks: the five points (x1..x5, y1..y5), when the detector gave them.
    face: the face's number in its photo (indexes of every face), else None.
    time: for a face of a video frame, the frame's time in seconds (`path` is the video).
  """

  id: str
  path: str = ""
  rel_path: str = ""
  name: str = ""
  identity: Optional[str] = None
  box: Optional[tuple[float, ...]] = None
  landmarks: Optional[tuple[float, ...]] = None
  face: Optional[int] = None
  time: Optional[float] = None

  @property
  def photo(self) -> str:
    """The photo this face belongs to (results list each photo once): a video's frame is
    '<video path>@<seconds>'."""
    if self.path:
      return os.path.abspath(self.path) + (frame_suffix(self.time) if self.time is not None else "")
    return self.id.rsplit(FACE_SEPARATOR, 1)[0] if self.face is not None else self.id

  @property
  def display_name(self) -> str:
    return self.name or os.path.basename(self.rel_path or self.path) or self.id

  def to_json(self) -> dict[str, Any]:
    out: dict[str, Any] = {
      "id": self.id,
      "path": self.path,
      "name": self.name,
      "identity": self.identity,
    }
    if self.rel_path:
      out["rel_path"] = self.rel_path
    for key in ("box", "landmarks"):
      if getattr(self, key) is not None:
        out[key] = [round(float(v), 2) for v in getattr(self, key)]
    if self.face is not None:
      out["face"] = int(self.face)
    if self.time is not None:
      out["time"] = round(float(self.time), 3)
    return out

  @classmethod
  def from_json(cls, d: Mapping[str, Any], row: int = 0) -> "Item":
    """An item from `to_json` output (or an older line: no id -> the row number)."""

    def tup(key):
      value = d.get(key)
      return tuple(float(v) for v in value) if value else None

    return cls(
      id=str(d["id"]) if d.get("id") is not None else str(row),
      path=str(d.get("path") or ""),
      rel_path=str(d.get("rel_path") or ""),
      name=str(d.get("name") or ""),
      identity=d.get("identity"),
      box=tup("box"),
      landmarks=tup("landmarks"),
      face=int(d["face"]) if d.get("face") is not None else None,
      time=float(d["time"]) if d.get("time") is not None else None,
    )

  @classmethod
  def of_face(cls, entry: Any, every_face: bool = False) -> "Item":
    """The item of one embedded face: `entry` is an `embedding.FaceEntry` (or any object with
    path, rel_path, identity and optionally face, box, landmarks, found)."""
    face = int(getattr(entry, "face", 0))
    found = getattr(entry, "found", True) and getattr(entry, "box", None) is not None
    landmarks = getattr(entry, "landmarks", None)
    time = getattr(entry, "time", None)
    path = os.path.abspath(entry.path) + (frame_suffix(time) if time is not None else "")
    return cls(
      id=path + (f"{FACE_SEPARATOR}{face}" if every_face else ""),
      path=entry.path,
      rel_path=entry.rel_path,
      name=os.path.basename(entry.rel_path),
      identity=entry.identity,
      box=tuple(round(float(v), 2) for v in entry.box) if found else None,
      landmarks=(
        tuple(round(float(v), 2) for v in landmarks)
        if found and landmarks and any(landmarks)
        else None
      ),
      face=face if every_face else None,
      time=float(time) if time is not None else None,
    )

  @classmethod
  def enrolled(
    cls,
    item_id: str,
    name: Optional[str],
    identity: Optional[str],
    crop: Any,
    face: Optional[int] = None,
  ) -> "Item":
    """An image enrolled from memory under `item_id` (its `crop`: a faces.CropResult)."""
    return cls(
      id=item_id if face is None else f"{item_id}{FACE_SEPARATOR}{face}",
      name=name or item_id,
      identity=identity,
      box=tuple(round(float(v), 2) for v in crop.box) if crop.found else None,
      face=face,
    )
