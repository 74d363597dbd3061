"""The audit trail of an index: every enrolment, replacement, removal and erasure, in
`audit.jsonl` inside the index folder, one JSON object a line:

  {"time": "2026-12-03T07:40:12Z", "action": "enrol", "id": "alice-01", "identity": "alice",
   "token": "enrolment", "client": "10.0.0.7"}

Actions: `build` (a new gallery), `enrol` (an id new to the index), `replace` (an id enrolled
again), `remove`, `forget` (the erasure of a person). `token` is the service token's name (None
without tokens or from a tool), `client` the caller's address, or `cli` for the tools.

The trail is written with the index, in the same atomic save (`index_folder.write`'s extra
files, checksummed and flushed to the disk with the rest), so the trail and the index never
disagree: an answer given after a save covers its entries, and a change lost to a crash before
its save is absent from both.

Erasure. Forgetting a person must not leave their name in the trail that records it: the
`forget` entry names neither the person nor their ids, only keyed hashes of them
(`erased:<HMAC-SHA256 with the index's audit.key, 16 hex digits>`), and every earlier entry about
that person (their identity, or one of the ids removed) is rewritten the same way. The key
(`audit.key`, random, kept in the index folder) lets the index's operator confirm that a given
name was erased (`hashed(key, name)`); without it the hashes tell nothing. This is
pseudonymisation, not anonymity: whoever holds the folder, key included, can test a guessed
name, so backups of an index folder need the same care as the folder.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
from typing import Any, Iterable, Optional

from absl import logging

from facetriplet.errors import UserError

AUDIT_FILE = "audit.jsonl"
KEY_FILE = "audit.key"
ACTIONS = ("build", "enrol", "replace", "remove", "forget")
CLI = {"token": None, "client": "cli"}


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hashed(key: bytes, text: str) -> str:
  """The keyed hash standing for an erased name or id."""
  return "erased:" + hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class Trail:
  """The audit trail of one index folder: what is on disk, plus the entries and erasures
  waiting for the next save (`contents` renders both; `saved` clears them)."""

  def __init__(self, index_dir: str):
    self.index_dir = index_dir
    self.pending: list[dict[str, Any]] = []
    self._erase: set[str] = set()  # names, ids and paths to rewrite as hashes
    self._identities: set[str] = set()  # people erased: every entry about them is rewritten
    self._key: Optional[bytes] = None

  def record(
    self,
    action: str,
    actor: Optional[dict[str, Any]] = None,
    item_id: Optional[str] = None,
    identity: Optional[str] = None,
    **extra: Any,
  ) -> None:
    if action not in ACTIONS:
      raise ValueError(f"unknown audit action {action!r}")
    actor = actor or CLI
    entry = {
      "time": now(),
      "action": action,
      "id": item_id,
      "identity": identity,
      "token": actor.get("token"),
      "client": actor.get("client"),
    }
    self.pending.append(dict(entry, **extra))

  def forget(self, identity: str, ids: Iterable[str], actor: Optional[dict[str, Any]]) -> None:
    """Records an erasure: the name and ids hashed, and every entry before it naming them (or
    about an item of that identity) rewritten."""
    self._erase.update([identity, *ids])
    self._identities.add(identity)
    self.pending = [self._scrub(e) for e in self.pending]  # later enrolments stay as they are
    self.record("forget", actor, None, hashed(self.key(), identity), items=len(set(ids)))

  def key(self) -> bytes:
    if self._key is None:
      path = os.path.join(self.index_dir, KEY_FILE)
      try:
        with open(path, encoding="ascii") as f:
          self._key = bytes.fromhex(f.read().strip())
      except FileNotFoundError:
        self._key = secrets.token_bytes(32)
      except (OSError, ValueError) as e:
        raise UserError(
          f"{path} is unreadable ({e}): restore the index folder from a backup"
        ) from None
    return self._key

  def _on_disk(self) -> list[dict[str, Any]]:
    path = os.path.join(self.index_dir, AUDIT_FILE)
    try:
      with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    except FileNotFoundError:
      return []
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(
        f"{path} is unreadable ({e}): restore the index folder from a backup"
      ) from None
    entries = []
    for number, line in enumerate(lines, 1):
      try:
        entry = json.loads(line)
      except ValueError:
        entry = None
      if not isinstance(entry, dict):
        raise UserError(f"{path} line {number} is damaged: restore the index folder from a backup")
      entries.append(entry)
    return entries

  def _scrub(self, entry: dict[str, Any]) -> dict[str, Any]:
    """An entry without an erased name, id or path: hashed where it names one, and its id hashed
    too when the entry is about an erased person (an item removed before the erasure)."""
    if not self._erase:
      return entry
    key = self.key()
    out = dict(entry)
    about = out.get("identity") in self._identities
    for field in ("id", "identity"):
      value = out.get(field)
      if isinstance(value, str) and not value.startswith("erased:"):
        parts = value.replace("\\", "/").replace("#", "/").split("/")
        if about or value in self._erase or self._identities & set(parts):
          out[field] = hashed(key, value)
    return out

  def contents(self) -> dict[str, bytes]:
    """The files the next save writes: the trail (erasures applied), and the key once made."""
    entries = [self._scrub(e) for e in self._on_disk()] + self.pending
    files = {}
    if entries:
      text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
      files[AUDIT_FILE] = text.encode("utf-8")
    if self._key is not None or os.path.exists(os.path.join(self.index_dir, KEY_FILE)):
      files[KEY_FILE] = (self.key().hex() + "\n").encode("ascii")
    return files

  def saved(self) -> None:
    """Call once a save that wrote `contents` has completed."""
    self.pending = []
    self._erase = set()
    self._identities = set()

  def read(self) -> list[dict[str, Any]]:
    """The trail as saved (for tools and tests)."""
    return self._on_disk()


def for_build(index_dir: str, items: int) -> dict[str, bytes]:
  """The trail files of a gallery built into `index_dir`: the trail of the index it replaces
  (when readable: a damaged one is started afresh, with a warning) and a `build` entry."""
  trail = Trail(index_dir)
  try:
    trail.read()
    if os.path.exists(os.path.join(index_dir, KEY_FILE)):
      trail.key()
  except UserError as e:
    logging.warning("starting a new audit trail: %s", e)
    trail = Trail(os.path.join(index_dir, ".no-trail"))
  trail.record("build", items=items)
  return trail.contents()


SCRUBBED = ("skipped", "no_face", "history")  # gallery.json's lists of photos and changes


def scrub(info: dict[str, Any], erased: set, identity: str) -> dict[str, Any]:
  """gallery.json's contents without the photos and changes of an erased person: in its lists of
  skipped and faceless photos and its history, any string equal to an erased name, id or path,
  containing an erased id or path, or with the name as a path component, is replaced by
  'erased'. The settings (model, crop, layout, ...) are left as they are."""
  return {k: _scrub_value(v, erased, identity) if k in SCRUBBED else v for k, v in info.items()}


def _scrub_value(value: Any, erased: set, identity: str) -> Any:
  if isinstance(value, dict):
    return {k: _scrub_value(v, erased, identity) for k, v in value.items()}
  if isinstance(value, list):
    return [_scrub_value(v, erased, identity) for v in value]
  if isinstance(value, str):
    parts = value.replace("\\", "/").replace("#", "/").split("/")
    if value in erased or identity in parts or any(e in value for e in erased if len(e) > 3):
      return "erased"
  return value
