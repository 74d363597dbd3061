"""What `facetriplet-cluster` writes into its output folder (all of it at once, atomically):

clusters.json      the settings, and every cluster (largest first) with its faces: the photo
                   (its path below the input folder, or the index item's photo), the face's
                   box, its number in the photo; plus the photos that could not be read
sheets/cluster_0000.jpg …   one contact sheet per cluster of at least --min_size faces: up to
                   48 face thumbnails, to see who a cluster is
folders/cluster_0000/ …     with --write_folders: links to each cluster's photos, one folder per
                   cluster of at least --min_size faces, ready to rename after the person and
                   use with --layout=folders (ingest, or build-index then enrol); a face of a
                   video frame gets the frame itself ('<video>@<seconds>s.jpg'), not a link
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facetriplet import atomic
from facetriplet.data import images
from facetriplet.search import thumbnails, video

THUMB = 96
PER_ROW = 8
MAX_THUMBS = 48


@dataclasses.dataclass(frozen=True)
class Face:
  """One clustered face: its photo (path on disk and as shown), box and number in the photo."""

  path: str
  shown: str
  box: Optional[tuple[float, ...]]
  face: int = 0
  time: Optional[float] = None  # a video frame's time (seconds); path is the video
  landmarks: Optional[tuple[float, ...]] = None  # to show a face found turned upright

  def rgb(self) -> np.ndarray:
    """The photo, or the video frame."""
    if self.time is not None:
      return video.frame_at(self.path, self.time)
    return images.load_rgb(self.path)


def members_of(labels: np.ndarray) -> list[np.ndarray]:
  """The face indices of each cluster 0..C-1 (one sort, not a pass per cluster)."""
  labels = np.asarray(labels)
  if not len(labels):
    return []
  order = np.argsort(labels, kind="stable")
  return np.split(order, np.cumsum(np.bincount(labels))[:-1])


def clusters_json(labels: np.ndarray, faces: Sequence[Face], settings: dict[str, Any]) -> dict:
  clusters = []
  for c, rows in enumerate(members_of(labels)):
    members = [faces[i] for i in rows]
    clusters.append(
      {
        "cluster": c,
        "size": len(members),
        "faces": [
          {
            "photo": f.shown,
            "box": list(f.box) if f.box else None,
            "face": f.face,
            **({"time": f.time} if f.time is not None else {}),
          }
          for f in members
        ],
      }
    )
  return dict(settings, clusters=clusters)


def _face_thumb(face: Face) -> Image.Image:
  try:
    rgb = face.rgb()
  except Exception:  # pylint: disable=broad-except  (a photo gone since: a grey square)
    return Image.new("RGB", (THUMB, THUMB), (70, 70, 70))
  return Image.fromarray(
    thumbnails.face_square(rgb, face.box, THUMB, margin=0.15, landmarks=face.landmarks)
  )


def contact_sheet(cluster: int, members: Sequence[Face]) -> Image.Image:
  """Up to MAX_THUMBS face thumbnails of a cluster, under a line naming it and its size."""
  shown = list(members)[:MAX_THUMBS]
  rows = max(1, -(-len(shown) // PER_ROW))
  sheet = Image.new("RGB", (PER_ROW * (THUMB + 4) + 4, 20 + rows * (THUMB + 4) + 4), (24, 24, 24))
  draw = ImageDraw.Draw(sheet)
  more = f" (first {len(shown)} shown)" if len(members) > len(shown) else ""
  draw.text(
    (6, 4),
    f"cluster {cluster}: {len(members)} faces{more}",
    fill=(230, 230, 230),
    font=ImageFont.load_default(),
  )
  for i, face in enumerate(shown):
    sheet.paste(
      _face_thumb(face), (4 + (i % PER_ROW) * (THUMB + 4), 24 + (i // PER_ROW) * (THUMB + 4))
    )
  return sheet


def write(
  output: str,
  labels: np.ndarray,
  faces: Sequence[Face],
  settings: dict[str, Any],
  min_size: int = 2,
  write_folders: bool = False,
) -> dict[str, int]:
  """Writes the output folder (replacing one there) in one step; returns what it holds."""
  doc = clusters_json(labels, faces, settings)
  counts = {"sheets": 0, "folders": 0, "links": 0}
  groups = members_of(labels)
  with atomic.atomic_path(output) as tmp:
    os.makedirs(os.path.join(tmp, "sheets"))
    with open(os.path.join(tmp, "clusters.json"), "w", encoding="utf-8") as f:
      json.dump(doc, f, indent=1, ensure_ascii=False)
    for entry in doc["clusters"]:
      if entry["size"] < min_size:
        break  # numbered by size: the rest are smaller
      c = entry["cluster"]
      members = [faces[i] for i in groups[c]]
      contact_sheet(c, members).save(
        os.path.join(tmp, "sheets", f"cluster_{c:04d}.jpg"), quality=90
      )
      counts["sheets"] += 1
      if write_folders:
        counts["links"] += _link_photos(os.path.join(tmp, "folders", f"cluster_{c:04d}"), members)
        counts["folders"] += 1
  return counts


def _link_photos(folder: str, members: Sequence[Face]) -> int:
  """Links to the cluster's photos, the frames of videos as JPEGs (each photo once; names made
  unique)."""
  os.makedirs(folder)
  seen, made = set(), 0
  for face in members:
    if not face.path:
      continue  # enrolled from memory: no photo to link
    target = os.path.abspath(face.path)
    if (target, face.time) in seen:
      continue
    seen.add((target, face.time))
    shown = face.shown + (".jpg" if face.time is not None else "")
    base, ext = os.path.splitext(shown.replace("/", "__"))
    if len(base.encode()) > 150:  # file names are at most 255 bytes
      digest = hashlib.sha256(face.shown.encode()).hexdigest()[:8]
      base = base.encode()[-140:].decode("utf-8", "ignore") + "-" + digest
    name, n = f"{base}{ext}", 1
    while os.path.lexists(os.path.join(folder, name)):
      name, n = f"{base}-{n}{ext}", n + 1
    if face.time is None:
      os.symlink(target, os.path.join(folder, name))
    else:
      try:
        frame = face.rgb()
      except Exception:  # pylint: disable=broad-except  (the video changed since: no file)
        continue
      with open(os.path.join(folder, name), "wb") as f:
        f.write(images.encode_jpeg(frame))
    made += 1
  return made
