"""Walking an input folder for `layouts`: every folder entered once (device and inode), links
followed except back up the tree, hidden names listed but not used (`Walk`); and what a listing
skipped, summed up with the flag that changes it (`skipped_summary`)."""

from __future__ import annotations

import os
from typing import Any

_SKIP_HINTS = {
  "outside-identity-folder": "photos directly in the folder: --layout=flat reads them",
  "not-an-image-file": "not an image by its extension",
  "hidden": "names starting with '.'",
  "link-to-ancestor": "links back to a folder above them",
  "folder-reached-twice": "a second path to a folder already read",
  "unreadable": "check the permissions",
  "no-identity": "not in the identity list",
  "no-partition": "not in the partition list",
}


def skipped_summary(listing: Any) -> str:
  """'; skipped: 3 outside-identity-folder (hint), ...' for what a listing left out, or ''."""
  counts: dict[str, int] = {}
  for _, reason in listing.ignored:
    counts[reason] = counts.get(reason, 0) + 1
  if listing.empty_identities:
    counts["empty identity folder"] = len(listing.empty_identities)
  if not counts:
    return ""
  parts = [
    f"{n} {reason}" + (f" ({_SKIP_HINTS[reason]})" if reason in _SKIP_HINTS else "")
    for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])
  ]
  return "; skipped: " + ", ".join(parts)


class Walk:
  """One listing's walk state: every folder is entered once (by device and inode); directory
  links are followed (a dataset assembled from links to identity folders elsewhere), except
  links back to a folder above them (a loop); hidden names are listed, not used."""

  def __init__(self, root: str, listing: Any):
    self.root = root
    self.real_root = os.path.realpath(root)
    self.listing = listing
    st = os.stat(root)
    self.seen = {(st.st_dev, st.st_ino)}

  def _rel(self, path: str) -> str:
    return os.path.relpath(path, self.root).replace(os.sep, "/")

  def enter(self, folder: str) -> bool:
    """Whether to list `folder`; a refusal is recorded in `listing.ignored` with its reason."""
    rel = self._rel(folder) + "/"
    if os.path.basename(folder).startswith("."):
      self.listing.ignored.append((rel, "hidden"))
      return False
    if os.path.islink(folder):  # followed wherever it leads, unless back up the tree
      real = os.path.realpath(folder)
      above = os.path.realpath(os.path.dirname(folder))
      if any(
        p == real or p.startswith(real.rstrip(os.sep) + os.sep) for p in (above, self.real_root)
      ):
        self.listing.ignored.append((rel, "link-to-ancestor"))
        return False
    try:
      st = os.stat(folder)
    except OSError:
      self.listing.ignored.append((rel, "unreadable"))
      return False
    if (st.st_dev, st.st_ino) in self.seen:
      self.listing.ignored.append((rel, "folder-reached-twice"))
      return False
    self.seen.add((st.st_dev, st.st_ino))
    return True

  def files(self, top: str) -> list[str]:
    """Relative paths ("/") of the files under `top` (already entered), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
      dirnames[:] = [d for d in sorted(dirnames) if self.enter(os.path.join(dirpath, d))]
      for name in filenames:
        rel = self._rel(os.path.join(dirpath, name))
        if name.startswith("."):
          self.listing.ignored.append((rel, "hidden"))
          continue
        out.append(rel)
    return sorted(out)
