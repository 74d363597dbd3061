"""A bounded soak of the real service (loopback only, under a minute): 16 searching clients, one
enrolling and one deleting client against `facetriplet-serve`, killed with SIGKILL and restarted
three times.

What must hold, checked against what the clients were told:
  * no answer is a 5xx (a refused connection while the server is down is not an answer);
  * every acknowledged enrolment (201) is in the index after each restart, unless a DELETE of
    it was sent since (a DELETE cut off by the kill may or may not have been applied);
  * no id is ever returned by a search sent after its DELETE was acknowledged (200);
  * the folder's files are consistent: the index opens (checksums verified), its audit trail
    records every acknowledged write.
The figures are printed (`-s`) and recorded in BENCHMARKS.md.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from facetriplet.search import audit
from facetriplet.search.searcher import Searcher
from tests.serving.test_serve import BIN, Client, _new_face, _read
from tests.serving.test_serve import setup  # noqa: F401  (the fixture)

RESTARTS = 3
PERIOD_S = 5.0  # serving time between kills


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(index_dir, port):
  proc = subprocess.Popen(
    [os.path.join(BIN, "facetriplet-serve"), f"--index={index_dir}", f"--port={port}"],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  line = proc.stdout.readline()
  assert "serving" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
  return proc


class Ledger:
  """What the clients were told, with times."""

  def __init__(self):
    self.lock = threading.Lock()
    self.requests = self.refused = 0
    self.server_errors: list = []
    self.enrolled: dict[str, float] = {}  # id -> ack time
    self.deleted: dict[str, float] = {}  # id -> ack time
    self.delete_sent: set[str] = set()  # a DELETE sent: gone or not, unless acknowledged
    self.violations: list = []

  def count(self, status, what):
    with self.lock:
      self.requests += 1
      if status >= 500:
        self.server_errors.append((status, what))


def _call(ledger, fn):
  """fn() -> (status, answer); None when the server is down (connection refused or reset)."""
  try:
    return fn()
  except (ConnectionError, OSError, http_errors()):
    with ledger.lock:
      ledger.refused += 1
    time.sleep(0.05)
    return None


def http_errors():
  import http.client

  return http.client.HTTPException


@pytest.mark.slow
def test_soak_with_kill_9_and_restarts(setup, tmp_path):  # noqa: F811
  index_dir = str(tmp_path / "index")
  shutil.copytree(setup["index"], index_dir)
  port = _free_port()
  client = Client(f"http://127.0.0.1:{port}")
  photos = [_read(p) for p in setup["queries"]]
  faces = [_new_face(seed) for seed in range(20)]
  ledger = Ledger()
  stop = threading.Event()

  def searcher_client(n):
    rng = random.Random(n)
    while not stop.is_set():
      sent = time.monotonic()
      got = _call(ledger, lambda: client.post_image("/search?k=1000", rng.choice(photos)))
      if got is None:
        continue
      status, answer = got
      ledger.count(status, "search")
      if status == 200:
        ids = {m["id"] for m in answer["matches"]}
        with ledger.lock:
          for gone in ids & set(ledger.deleted):
            if ledger.deleted[gone] < sent:
              ledger.violations.append((gone, "returned after its DELETE was acknowledged"))

  def enroller():
    n = 0
    while not stop.is_set():
      item_id = f"soak-{n}"
      got = _call(
        ledger, lambda: client.post_image("/items", faces[n % 20], {"id": item_id, "identity": "x"})
      )
      if got is None:
        continue
      ledger.count(got[0], "enrol")
      if got[0] == 201:
        with ledger.lock:
          ledger.enrolled[item_id] = time.monotonic()
      n += 1

  def deleter():
    rng = random.Random(99)
    while not stop.is_set():
      with ledger.lock:
        live = sorted(set(ledger.enrolled) - set(ledger.deleted))
      if len(live) < 3:
        time.sleep(0.05)
        continue
      item_id = rng.choice(live[:-1])
      with ledger.lock:
        ledger.delete_sent.add(item_id)
      got = _call(ledger, lambda: client.call("DELETE", f"/items/{item_id}"))
      if got is None:
        continue
      ledger.count(got[0], "delete")
      if got[0] == 200:
        with ledger.lock:
          ledger.deleted[item_id] = time.monotonic()

  def check_index():
    """After a restart: every acknowledged enrolment not deleted since is there, no deleted."""
    status, answer = client.post_image("/search?k=1000", photos[0])
    assert status == 200
    ids = {m["id"] for m in answer["matches"]}
    with ledger.lock:
      missing = set(ledger.enrolled) - ledger.delete_sent - ids
      back = set(ledger.deleted) & ids
    assert not missing, f"acknowledged enrolments lost: {sorted(missing)[:5]}"
    assert not back, f"acknowledged deletions undone: {sorted(back)[:5]}"
    return len(ids)

  start = time.monotonic()
  proc = _start(index_dir, port)
  threads = [threading.Thread(target=searcher_client, args=(n,)) for n in range(16)]
  threads += [threading.Thread(target=enroller), threading.Thread(target=deleter)]
  for t in threads:
    t.start()
  sizes = []
  try:
    for _ in range(RESTARTS):
      time.sleep(PERIOD_S)
      proc.send_signal(signal.SIGKILL)
      proc.wait(30)
      proc = _start(index_dir, port)
      sizes.append(check_index())
    time.sleep(PERIOD_S)
  finally:
    stop.set()
    for t in threads:
      t.join(60)
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
  elapsed = time.monotonic() - start

  # The files: the index opens (checksums verified), and holds what the clients were told.
  reopened = Searcher.open(index_dir)
  live = set(ledger.enrolled) - ledger.delete_sent
  assert live <= {item.id for item in reopened.index.items}
  assert not set(ledger.deleted) & {item.id for item in reopened.index.items}
  trail = audit.Trail(index_dir).read()
  assert set(ledger.enrolled) <= {e["id"] for e in trail if e["action"] == "enrol"}
  assert set(ledger.deleted) <= {e["id"] for e in trail if e["action"] == "remove"}
  print(
    f"\nsoak: {elapsed:.0f} s, {RESTARTS} SIGKILL restarts, {ledger.requests} answers "
    f"({len(ledger.server_errors)} 5xx), {ledger.refused} refused while down, "
    f"{len(ledger.enrolled)} enrolments and {len(ledger.deleted)} deletions acknowledged, "
    f"all {len(live)} live ones found, index sizes after restarts {sizes}"
  )
  assert not ledger.server_errors, ledger.server_errors[:5]
  assert not ledger.violations, ledger.violations[:5]
  assert ledger.enrolled and ledger.deleted and ledger.requests > 100
