"""A soak of the real HTTP service: searching, enrolling and deleting clients against
`facetriplet-serve`, the server killed with SIGKILL and restarted (`run_soak`).

What must hold, checked against what the clients were told (violations are returned, and
`tests/serving/test_soak.py` asserts there are none):
  * no answer is a 5xx (a refused connection while the server is down is not an answer);
  * after each restart every acknowledged enrolment (201) is in the index, unless a DELETE of it
    was sent since (a DELETE cut off by the kill may or may not have been applied), and no
    acknowledged deletion is undone;
  * no id is returned by a search sent after its DELETE was acknowledged (200);
  * at the end the folder opens (checksums verified) holding what the clients were told, and its
    audit trail records every acknowledged enrolment and deletion.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Sequence

BIN = os.path.dirname(sys.executable)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _post(port: int, path: str, data: bytes, fields: dict[str, str]) -> tuple[int, Any]:
  boundary = uuid.uuid4().hex
  parts = [
    f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for k, v in fields.items()
  ]
  parts.append(
    f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n".encode()
    + data
    + f"\r\n--{boundary}--\r\n".encode()
  )
  headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
  return _request(port, "POST", path, b"".join(parts), headers)


def _request(port, method, path, body=None, headers=None) -> tuple[int, Any]:
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  try:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    kind = resp.getheader("content-type", "")
    return resp.status, (json.loads(data) if "json" in kind else data)
  finally:
    conn.close()


def start_server(index_dir: str, port: int, extra: Sequence[str] = ()) -> subprocess.Popen:
  """`facetriplet-serve` on 127.0.0.1:port, returned once it says it is serving."""
  proc = subprocess.Popen(
    [os.path.join(BIN, "facetriplet-serve"), f"--index={index_dir}", f"--port={port}", *extra],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  line = proc.stdout.readline()
  if "serving" not in line:
    raise RuntimeError(f"the server did not start: {line} {proc.stderr.read()}")
  return proc


class Ledger:
  """What the clients were told, with times."""

  def __init__(self):
    self.lock = threading.Lock()
    self.answers = self.searches = self.refused = 0
    self.server_errors: list[Any] = []
    self.enrolled: dict[str, float] = {}  # id -> when its 201 came
    self.deleted: dict[str, float] = {}  # id -> when its 200 came
    self.delete_sent: set[str] = set()
    self.violations: list[str] = []

  def count(self, status: int, what: str) -> None:
    with self.lock:
      self.answers += 1
      self.searches += what == "search"
      if status >= 500:
        self.server_errors.append((status, what))

  def call(self, fn) -> Any:
    """fn() -> (status, answer); None when the server is down (refused, reset)."""
    try:
      return fn()
    except (OSError, http.client.HTTPException):
      with self.lock:
        self.refused += 1
      time.sleep(0.05)
      return None


def run_soak(
  index_dir: str,
  queries: Sequence[bytes],
  faces: Sequence[bytes],
  restarts: int = 3,
  period_s: float = 5.0,
  searchers: int = 16,
  server_flags: Sequence[str] = (),
) -> dict[str, Any]:
  """Runs the soak over `index_dir` (changed in place); returns its figures and violations."""
  port = _free_port()
  ledger, stop = Ledger(), threading.Event()

  def searching(n: int) -> None:
    rng = random.Random(n)
    while not stop.is_set():
      sent = time.monotonic()
      got = ledger.call(lambda: _post(port, "/search?k=1000", rng.choice(queries), {}))
      if got is None:
        continue
      ledger.count(got[0], "search")
      if got[0] == 200:
        ids = {m["id"] for m in got[1]["matches"]}
        with ledger.lock:
          for gone in ids & set(ledger.deleted):
            if ledger.deleted[gone] < sent:
              ledger.violations.append(f"{gone} returned after its DELETE was acknowledged")

  def enrolling() -> None:
    n = 0
    while not stop.is_set():
      item_id = f"soak-{n}"
      fields = {"id": item_id, "identity": f"soak-person-{n % 7}"}
      got = ledger.call(lambda: _post(port, "/items", faces[n % len(faces)], fields))
      if got is None:
        continue
      ledger.count(got[0], "enrol")
      if got[0] == 201:
        with ledger.lock:
          ledger.enrolled[item_id] = time.monotonic()
      n += 1

  def deleting() -> None:
    rng = random.Random(99)
    while not stop.is_set():
      with ledger.lock:
        live = sorted(set(ledger.enrolled) - ledger.delete_sent)
      if len(live) < 3:
        time.sleep(0.05)
        continue
      item_id = rng.choice(live[:-1])
      with ledger.lock:
        ledger.delete_sent.add(item_id)
      got = ledger.call(lambda: _request(port, "DELETE", f"/items/{item_id}"))
      if got is None:
        continue
      ledger.count(got[0], "delete")
      if got[0] == 200:
        with ledger.lock:
          ledger.deleted[item_id] = time.monotonic()

  def check_after_restart() -> int:
    status, answer = _post(port, "/search?k=1000", queries[0], {})
    if status != 200:
      ledger.violations.append(f"search after a restart answered {status}")
      return 0
    ids = {m["id"] for m in answer["matches"]}
    with ledger.lock:
      missing = set(ledger.enrolled) - ledger.delete_sent - ids
      back = set(ledger.deleted) & ids
    ledger.violations += [f"acknowledged enrolment {i} lost" for i in sorted(missing)]
    ledger.violations += [f"acknowledged deletion of {i} undone" for i in sorted(back)]
    return len(ids)

  start = time.monotonic()
  proc = start_server(index_dir, port, server_flags)
  threads = [threading.Thread(target=searching, args=(n,)) for n in range(searchers)]
  threads += [threading.Thread(target=enrolling), threading.Thread(target=deleting)]
  for t in threads:
    t.start()
  sizes, found = [], 0
  try:
    for _ in range(restarts):
      time.sleep(period_s)
      proc.send_signal(signal.SIGKILL)
      proc.wait(30)
      proc = start_server(index_dir, port, server_flags)
      sizes.append(check_after_restart())
    time.sleep(period_s)
  finally:
    stop.set()
    for t in threads:
      t.join(60)
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
  seconds = time.monotonic() - start
  found = _check_files(index_dir, ledger)
  return {
    "seconds": round(seconds, 1),
    "restarts": restarts,
    "answers": ledger.answers,
    "searches": ledger.searches,
    "server_errors": len(ledger.server_errors),
    "refused_while_down": ledger.refused,
    "enrolments_acknowledged": len(ledger.enrolled),
    "deletions_acknowledged": len(ledger.deleted),
    "live_acknowledged_found": found,
    "index_sizes_after_restarts": sizes,
    "violations": ledger.violations + [f"{s} on {w}" for s, w in ledger.server_errors],
  }


def _check_files(index_dir: str, ledger: Ledger) -> str:
  """The folder at the end: opens, holds every live acknowledged enrolment and no acknowledged
  deletion, and its audit trail records them all. Returns 'found/expected'."""
  from facetriplet.search import audit  # pylint: disable=g-import-not-at-top
  from facetriplet.search.searcher import Searcher  # pylint: disable=g-import-not-at-top

  ids = {item.id for item in Searcher.open(index_dir).index.items}
  live = set(ledger.enrolled) - ledger.delete_sent
  ledger.violations += [f"{i} lost from the files" for i in sorted(live - ids)]
  ledger.violations += [f"{i} back in the files" for i in sorted(set(ledger.deleted) & ids)]
  trail = audit.Trail(index_dir).read()
  enrolled = {e["id"] for e in trail if e["action"] == "enrol"}
  removed = {e["id"] for e in trail if e["action"] == "remove"}
  ledger.violations += [
    f"{i} enrolled, not in the audit trail" for i in set(ledger.enrolled) - enrolled
  ]
  ledger.violations += [
    f"{i} deleted, not in the audit trail" for i in set(ledger.deleted) - removed
  ]
  return f"{len(live & ids)}/{len(live)}"
