"""What an evaluation writes: metrics.json, metrics.md (Markdown tables) and the retrieval grid.

`markdown_table` renders metrics dicts as a Markdown table (also used by the demo and the tools);
`verification_markdown` the verification table; `grid_rows` re-crops the queries and their
matches for `grid.make_grid`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from facetriplet import atomic
from facetriplet.verification import FARS, far_key
from facetriplet.data import faces
from facetriplet.errors import ImageError
from facetriplet.evaluation import grid


def _format(value) -> str:
  if isinstance(value, (bool, np.bool_)):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return f"{value:.4f}"
  return str(value)


def markdown_table(results: Union[Mapping[str, Any], Mapping[str, Mapping[str, Any]]]) -> str:
  """A Markdown table: one row per method for a dict of dicts, else `metric | value` rows.

  Args:
    results: one metrics dict, or {method name: metrics dict}.

  Returns:
    The table, ending with a newline.
  """
  if results and all(isinstance(v, Mapping) for v in results.values()):
    columns: list[str] = []
    for values in results.values():
      columns += [key for key in values if key not in columns]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for method, values in results.items():
      cells = [_format(values.get(key, "")) for key in columns]
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
  else:
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {key} | {_format(value)} |" for key, value in results.items()]
  return "\n".join(lines) + "\n"


def verification_markdown(verification: Mapping[str, Mapping[str, Any]], far: float) -> str:
  """The verification table of metrics.md: one row per feature ('n/a': too few negatives)."""
  rows = {}
  for name, v in verification.items():
    cells = {f"TAR@FAR={far_key(f)}": v.get(f"tar@far={far_key(f)}") for f in FARS}
    cells.update(
      {
        "EER": v.get("eer"),
        f"threshold@FAR={far_key(far)}": v.get("threshold_at_far"),
        "pairs (same/different)": f"{v['num_positive_pairs']}/{v['num_negative_pairs']}",
      }
    )
    rows[name] = {k: "n/a" if c is None else c for k, c in cells.items()}
  return markdown_table(rows) if rows else ""


def write_report(output_dir: str, report: Mapping[str, Any]) -> None:
  """metrics.json (the whole report) and metrics.md (retrieval, then verification)."""
  setup = report["setup"]
  atomic.write_json(os.path.join(output_dir, "metrics.json"), report)
  verification = report["verification"]
  atomic.write_text(
    os.path.join(output_dir, "metrics.md"),
    markdown_table(report["results"])
    + (
      f"\nVerification (pairs: {setup['verification_pairs']}; accept when cosine >= threshold; "
      "n/a: fewer than 1/FAR different-identity pairs):\n\n"
      + verification_markdown(verification, setup["far"])
      if verification
      else ""
    ),
  )


def _crop(path: str, settings) -> Optional[np.ndarray]:
  try:
    return faces.load_and_crop(path, settings).image
  except (ImageError, OSError):
    return None


def _cell_image(item, settings) -> Optional[np.ndarray]:
  """A match's picture: its face crop, or, for an index of every face of each photo, the whole
  photo with the matched face's box drawn."""
  if item.face is None or not item.box:
    return _crop(item.path, settings) if item.path else None
  try:
    return grid.photo_with_box(faces.load_rgb(item.path), item.box, settings.crop_size)
  except (ImageError, OSError):
    return None


def grid_rows(
  queries: Sequence[Any],
  identities: Sequence[Optional[str]],
  matches: Sequence[Sequence[Any]],
  identity_of,
  settings,
) -> list[grid.GridRow]:
  """GridRows for query entries and their `engine.Match`es (images re-cropped from their files;
  photos of an every-face index shown whole with the matched face boxed). `identity_of(item)`
  gives a gallery item's identity (labels files included)."""
  rows = []
  for entry, q_id, found in zip(queries, identities, matches):
    cells = []
    for m in found:
      g_id = identity_of(m.item)
      correct = None if g_id is None or q_id is None else g_id == q_id
      cells.append(
        grid.GridCell(_cell_image(m.item, settings), correct, f"#{m.rank} {m.score:.2f}")
      )
    rows.append(grid.GridRow(_crop(entry.path, settings), entry.rel_path, cells))
  return rows


def save_grid(output_dir: str, name: str, rows: Sequence[grid.GridRow]) -> None:
  grid.save_grid(os.path.join(output_dir, name), grid.make_grid(rows))
