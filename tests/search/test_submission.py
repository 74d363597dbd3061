"""Tests of facetriplet/submission.py against real HTTP servers on 127.0.0.1: redirects are never
followed silently, each attempt has one deadline, the URL is checked before any work."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from facetriplet.search import submission
from facetriplet.errors import UserError

BIN = os.path.dirname(sys.executable)


class _Server:
  """A local server whose POST/GET answers come from `route(handler) -> (status, headers, body)`;
  every request is recorded as (method, path, body)."""

  def __init__(self, route, host="127.0.0.1"):
    self.requests = []
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        outer.requests.append((self.command, self.path, body))
        result = route(self)
        if result is None:
          return
        status, headers, payload = result
        self.send_response(status)
        for k, v in headers.items():
          self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

      do_POST = do_GET = _answer  # noqa: N815

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
    self.port = self.httpd.server_address[1]
    self.url = f"http://{host}:{self.port}/submit"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


def _post(url, **kw):
  kw.setdefault("timeout", 5)
  kw.setdefault("retries", 0)
  return submission.post_submission(
    url, {"groupname": "g", "images": {"q.jpg": ["a.jpg"]}}, sleep=lambda s: None, **kw
  )


@pytest.mark.parametrize("status", [301, 302, 303])
def test_moved_post_is_an_error_naming_the_location(status):
  server = _Server(
    lambda h: (
      (status, {"Location": "https://elsewhere.example/in"}, b"")
      if h.path == "/submit"
      else (200, {}, b"ok")
    )
  )
  try:
    with pytest.raises(
      UserError,
      match=f"HTTP {status} redirecting to "
      r"https://elsewhere\.example/in; nothing was submitted",
    ):
      _post(server.url)
  finally:
    server.close()
  assert [r[0] for r in server.requests] == ["POST"]  # never turned into a GET


def test_same_host_307_308_are_followed_with_the_body():
  def route(h):
    if h.path == "/submit":
      return 307, {"Location": "/v2/submit"}, b""
    if h.path == "/v2/submit":
      return 308, {"Location": f"http://127.0.0.1:{server.port}/final"}, b""
    return 200, {}, b'{"top1": 1.0}'

  server = _Server(route)
  try:
    answer = _post(server.url)
  finally:
    server.close()
  assert answer.status == 200 and "top1" in answer.body
  assert [(m, p) for m, p, _ in server.requests] == [
    ("POST", "/submit"),
    ("POST", "/v2/submit"),
    ("POST", "/final"),
  ]
  assert json.loads(server.requests[-1][2])["images"] == {"q.jpg": ["a.jpg"]}


def test_307_to_another_host_is_refused():
  server = _Server(lambda h: (307, {"Location": "http://localhost:1/submit"}, b""))
  try:
    with pytest.raises(UserError, match="redirecting to http://localhost:1/submit"):
      _post(server.url)
  finally:
    server.close()
  assert len(server.requests) == 1


def test_timeout_bounds_the_whole_attempt():
  """A server that sends its answer one byte every 0.2 s never trips a per-read timeout."""

  def route(h):
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    try:
      for _ in range(1000):
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.2)
    except OSError:
      pass
    return None

  server = _Server(route)
  start = time.monotonic()
  try:
    with pytest.raises(UserError, match="after 2 attempts"):
      _post(server.url, timeout=1.0, retries=1)
  finally:
    server.close()
  assert time.monotonic() - start < 4.0  # two attempts of 1 s each, not 200 s


def test_url_checks():
  assert submission.check_submit_url("HTTP://Example.org:8080/x?y=1").startswith("http://")
  for bad in ("ftp://example.org/x", "example.org/submit", "http://", "https:///path"):
    with pytest.raises(UserError, match="--submit_url"):
      submission.check_submit_url(bad)


def test_connection_refused_is_retried_then_reported():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with pytest.raises(UserError, match="after 3 attempts"):
    _post(f"http://127.0.0.1:{port}/submit", retries=2)


def test_retrieve_tool_checks_the_url_before_any_work(tmp_path):
  start = time.monotonic()
  proc = subprocess.run(
    [
      os.path.join(BIN, "facetriplet-retrieve"),
      f"--index={tmp_path / 'no_index'}",
      f"--queries={tmp_path}",
      f"--output={tmp_path / 'out'}",
      "--groupname=g",
      "--submit_url=htp://typo.example/submit",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith("facetriplet-retrieve: error: --submit_url='htp://typo.example")
  )
  assert not os.path.exists(tmp_path / "out")
  assert time.monotonic() - start < 60


def test_csv_cells_never_start_like_a_formula():
  for name in ('=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tx", "\rx"):
    assert submission.csv_text(name) == "'" + name
  for name in ("query.jpg", "a=b.jpg", "", "1-2.png"):
    assert submission.csv_text(name) == name


def test_results_csv_escapes_formula_names_and_json_keeps_them(tmp_path):
  import csv  # pylint: disable=g-import-not-at-top
  from facetriplet.data.layouts import ImageEntry  # pylint: disable=g-import-not-at-top
  from facetriplet.search.engine import Match, SearchResult  # pylint: disable=g-import-not-at-top
  from facetriplet.search.items import Item  # pylint: disable=g-import-not-at-top

  query = ImageEntry(str(tmp_path / "=cmd.jpg"), "=cmd.jpg", "@person", None)
  matches = [
    Match(1, 0.9, Item("a", name="+gallery.jpg", identity="-x")),
    Match(2, 0.8, Item("b", name="plain.jpg", identity="y")),
  ]
  result = [SearchResult(query.path, matches, entry=query)]
  path = str(tmp_path / "results.csv")
  assert submission.write_results_csv(path, result) == 2
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  assert rows[1][0] == "'=cmd.jpg" and rows[1][2] == "'+gallery.jpg" and rows[1][4] == "'-x"
  assert rows[1][5] == "'@person" and rows[2][2] == "plain.jpg" and rows[2][4] == "y"
  payload = submission.make_submission(result, "g")
  assert payload["images"] == {"=cmd.jpg": ["+gallery.jpg", "plain.jpg"]}


def test_hanging_and_resetting_servers_end_in_a_clear_error():
  """A server that accepts and never answers, and one that resets the connection: each attempt
  ends (by the deadline or the reset), is retried, and the run says nothing was delivered."""
  import struct  # pylint: disable=g-import-not-at-top

  def serve(behaviour):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()
    accepted = []

    def loop():
      sock.settimeout(0.2)
      while not stop.is_set():
        try:
          conn, _ = sock.accept()
        except OSError:
          continue
        accepted.append(conn)
        if behaviour == "reset":  # RST instead of an answer
          conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
          conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return sock, stop, accepted

  for behaviour, timeout in (("hang", 0.5), ("reset", 5.0)):
    sock, stop, accepted = serve(behaviour)
    start = time.monotonic()
    try:
      with pytest.raises(UserError, match="after 3 attempts"):
        _post(f"http://127.0.0.1:{sock.getsockname()[1]}/submit", timeout=timeout, retries=2)
    finally:
      stop.set()
      for conn in accepted:
        conn.close()
      sock.close()
    assert len(accepted) == 3, behaviour
    assert time.monotonic() - start < 3 * timeout + 2, behaviour
