"""The ids the service shows: no filesystem path ever leaves it.

Inside an index, a gallery photo's item id is its absolute path. The service answers with the
photo's path relative to the gallery folder it was indexed from instead (`alice/02.jpg`, with
`#<n>` for the n-th face of a photo in an index of every face), and takes that id back in
`DELETE /items/{id}`. Enrolled items keep the id they were enrolled with. Where two items would
show the same id (photos added from two folders with the same layout), the later ones get
`~<8 hex digits of a hash of the item id>` appended, so every shown id names one item.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Optional

from facetriplet.search.items import FACE_SEPARATOR, Item


def shown_id(item: Item) -> str:
  """The id shown for an item, before collisions are resolved."""
  if not item.path:
    return item.id
  base = item.rel_path or item.display_name
  return base if item.face is None else f"{base}{FACE_SEPARATOR}{item.face}"


class PublicIds:
  """Shown id <-> item id for an index, rebuilt when the index changed (`version`)."""

  def __init__(self, index: Any):
    self._index = index
    self._lock = threading.Lock()
    self._key: Optional[tuple] = None
    self._to_item: dict[str, str] = {}
    self._to_shown: dict[str, str] = {}

  def _current(self) -> None:
    items = self._index.items
    key = (id(items), len(items), items[-1].id if items else None, items[0].id if items else None)
    if key == self._key:
      return
    to_item: dict[str, str] = {}
    to_shown: dict[str, str] = {}
    for item in sorted(items, key=lambda i: (bool(i.path), i.id)):  # enrolled ids first
      shown = shown_id(item)
      if shown in to_item:
        shown = f"{shown}~{hashlib.sha256(item.id.encode()).hexdigest()[:8]}"
      to_item[shown] = item.id
      to_shown[item.id] = shown
    self._key, self._to_item, self._to_shown = key, to_item, to_shown

  def refresh(self) -> None:
    """Call after the index changed (enrolment, removal)."""
    with self._lock:
      self._key = None
      self._current()

  def shown(self, item: Item) -> str:
    with self._lock:
      self._current()
      return self._to_shown.get(item.id) or shown_id(item)

  def item_id(self, shown: str) -> Optional[str]:
    """The item id an id shown by the service names, or None."""
    with self._lock:
      self._current()
      return self._to_item.get(shown)

  def is_photo(self, shown: str) -> bool:
    """Whether a shown id names a gallery photo (not an enrolment)."""
    item_id = self.item_id(shown)
    return item_id is not None and item_id != shown
