"""The service as a hostile client meets it, on a real uvicorn server on 127.0.0.1: tokens and
scopes, foreign Host headers, cross-site writes, CORS, paths in answers, deeply nested JSON,
idle and trickling sockets, and the caps on connections, queued searches and request rates.

Every case here was probed against the service before it had these defences (issue 18) and got
the wrong answer then: a 201 for a cross-site enrolment, 200 for a foreign Host, absolute paths
in /healthz, 500 for nested JSON, sockets open forever.
"""

import concurrent.futures
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from facetriplet.errors import UserError
from facetriplet.search.searcher import Searcher
from facetriplet.serving import security
from facetriplet.serving.app import make_app
from facetriplet.serving.server import ServerThread, check_exposure
from tests.serving.test_serve import BIN, Client, _new_face, _read
from tests.serving.test_serve import setup  # noqa: F401  (the fixture)

READ = "r" * 20
WRITE = "w" * 20
TOKENS = security.Tokens.parse(f"viewer read {READ}\neditor write {WRITE}\n", "test")


def _bearer(secret):
  return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def guarded(setup, tmp_path):  # noqa: F811
  """A server with tokens over a copy of the index."""
  import shutil

  index_dir = str(tmp_path / "index")
  shutil.copytree(setup["index"], index_dir)
  searcher = Searcher.open(index_dir)
  with ServerThread(make_app(searcher, tokens=TOKENS, batch_window_ms=2)) as server:
    yield dict(searcher=searcher, client=Client(server.url), url=server.url, index=index_dir)


def test_tokens_and_scopes_are_enforced(guarded, setup):  # noqa: F811
  client, searcher = guarded["client"], guarded["searcher"]
  photo = _read(setup["queries"][0])
  face = _new_face(5)
  # Missing, wrong, malformed: 401 with WWW-Authenticate; nothing searched or enrolled.
  for headers in ({}, _bearer("x" * 20), {"Authorization": f"Basic {READ}"}, _bearer("")):
    status, answer = client.post_image("/search", photo, headers=headers)
    assert status == 401, (headers, answer)
    status, answer = client.post_image("/items", face, {"id": "eve"}, headers=headers)
    assert status == 401 and not searcher.contains("eve")
  # A read token searches and embeds but may not write.
  assert client.post_image("/search", photo, headers=_bearer(READ))[0] == 200
  assert client.post_image("/embed", photo, headers=_bearer(READ))[0] == 200
  status, answer = client.post_image("/items", face, {"id": "eve"}, headers=_bearer(READ))
  assert status == 403 and "viewer" in answer["detail"] and not searcher.contains("eve")
  status, _ = client.call("DELETE", "/items/anything", headers=_bearer(READ))
  assert status == 403
  # A write token does both.
  status, answer = client.post_image("/items", face, {"id": "eve"}, headers=_bearer(WRITE))
  assert status == 201 and searcher.contains("eve")
  assert client.post_image("/search", photo, headers=_bearer(WRITE))[0] == 200
  assert client.call("DELETE", "/items/eve", headers=_bearer(WRITE))[0] == 200
  # Liveness needs no token.
  assert client.call("GET", "/healthz")[0] == 200


def test_token_files_are_checked():
  with pytest.raises(UserError, match="line 1: scope must be read or write"):
    security.Tokens.parse(f"a admin {READ}", "f")
  with pytest.raises(UserError, match="shorter than 16"):
    security.Tokens.parse("a read short", "f")
  with pytest.raises(UserError, match="appears twice"):
    security.Tokens.parse(f"a read {READ}\nb write {READ}", "f")
  with pytest.raises(UserError, match="holds no token"):
    security.Tokens.parse("# nothing\n", "f")
  tokens = security.Tokens.load(None, {security.ENV: f"a read {READ}; b write {WRITE}"})
  assert tokens.find(WRITE).name == "b" and tokens.find(READ).scope == "read"
  assert tokens.find(READ[:-1]) is None and not security.Tokens.load(None, {})


def test_exposure_needs_tokens_or_insecure():
  with pytest.raises(UserError, match="--token_file"):
    check_exposure("192.168.1.5", security.Tokens(), None, False)
  assert "192.168.1.5" in check_exposure("192.168.1.5", TOKENS, None, False)
  assert "192.168.1.5" in check_exposure("192.168.1.5", security.Tokens(), None, True)
  with pytest.raises(UserError, match="--allowed_hosts"):
    check_exposure("0.0.0.0", TOKENS, None, False)
  assert check_exposure("0.0.0.0", TOKENS, ["faces.example.org"], False) == ["faces.example.org"]
  with pytest.raises(UserError, match="DNS rebinding"):  # any Host and no token: refused
    check_exposure("127.0.0.1", security.Tokens(), ["*"], False)
  assert check_exposure("127.0.0.1", TOKENS, ["*"], False) == ["*"]
  assert set(check_exposure("127.0.0.1", security.Tokens(), None, False)) == {
    "127.0.0.1",
    "localhost",
    "::1",
  }


def test_the_tool_refuses_to_expose_an_index_without_tokens(setup):  # noqa: F811
  proc = subprocess.run(
    [os.path.join(BIN, "facetriplet-serve"), f"--index={setup['index']}", "--host=0.0.0.0"],
    capture_output=True,
    text=True,
    timeout=120,
    env={k: v for k, v in os.environ.items() if k != security.ENV},
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert len(lines) == 1 and "--token_file" in lines[0] and "--insecure" in lines[0], lines


def test_cross_site_writes_and_foreign_hosts_are_refused(setup, tmp_path):  # noqa: F811
  import shutil

  index_dir = str(tmp_path / "index")
  shutil.copytree(setup["index"], index_dir)
  searcher = Searcher.open(index_dir)
  with ServerThread(make_app(searcher, batch_window_ms=2)) as server:
    client = Client(server.url)
    host = server.url.removeprefix("http://")
    face, photo = _new_face(3), _read(setup["queries"][0])
    # The probe: a page on evil.example posting a form to the local service.
    evil = {"Origin": "http://evil.example"}
    status, answer = client.post_image("/items", face, {"id": "x"}, headers=evil)
    assert status == 403 and "cross-site" in answer["detail"] and not searcher.contains("x")
    status, _ = client.call("DELETE", "/items/alice/alice_0.png", headers=evil)
    assert status == 403 and len(searcher) == 9
    fetch = {"Sec-Fetch-Site": "cross-site"}
    assert client.post_image("/items", face, {"id": "x"}, headers=fetch)[0] == 403
    assert client.post_image("/items", face, {"id": "x"}, headers={"Origin": "null"})[0] == 403
    # The service's own page (same origin) and non-browser clients (no Origin) may write.
    own = {"Origin": f"http://{host}"}
    assert client.post_image("/items", face, {"id": "x"}, headers=own)[0] == 201
    assert client.post_image("/items", face, {"id": "y"})[0] == 201
    # DNS rebinding: a foreign Host is refused for reads too; loopback names are served.
    for path in ("/healthz", "/docs", "/openapi.json"):
      status, answer = client.call("GET", path, headers={"Host": "evil.example"})
      assert status == 400 and "evil.example" in answer["detail"], path
    status, _ = client.post_image("/search", photo, headers={"Host": "evil.example:80"})
    assert status == 400
    for name in ("localhost", "127.0.0.1", "[::1]"):
      assert client.call("GET", "/healthz", headers={"Host": f"{name}:1"})[0] == 200, name
    # No CORS: a preflight gets no Access-Control-Allow-Origin.
    head = _raw(
      server.url,
      b"OPTIONS /search HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
      b"Access-Control-Request-Method: POST\r\n\r\n",
    )
    assert b"access-control-allow-origin" not in head.lower()


def test_cors_only_for_the_origin_given(setup):  # noqa: F811
  searcher = Searcher.open(setup["index"])
  app = make_app(searcher, cors_origin="https://app.example.org")
  with ServerThread(app) as server:
    preflight = (
      "OPTIONS /search HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {}\r\n"
      "Access-Control-Request-Method: POST\r\n\r\n"
    )
    ok = _raw(server.url, preflight.format("https://app.example.org").encode()).lower()
    assert b"access-control-allow-origin: https://app.example.org" in ok
    other = _raw(server.url, preflight.format("https://evil.example").encode()).lower()
    assert b"access-control-allow-origin" not in other


def test_no_filesystem_path_in_any_answer(setup):  # noqa: F811
  searcher = Searcher.open(setup["index"])
  root = os.path.dirname(os.path.abspath(setup["index"]))
  with ServerThread(make_app(searcher)) as server:
    client = Client(server.url)
    photo = _read(setup["queries"][0])
    answers = [
      client.call("GET", "/healthz"),
      client.call("GET", "/openapi.json"),
      client.post_image("/search", photo, {"k": 9}),
      client.post_image("/search", photo, {"k": 9, "faces": "all"}),
      client.post_image("/embed", photo),
    ]
  for status, answer in answers:
    assert status == 200
    text = json.dumps(answer)
    assert root not in text and "/tmp" not in text, text[:300]
  matches = answers[2][1]["matches"]
  assert len(matches) == 9 and all(not m["id"].startswith("/") for m in matches)


def test_json_nested_however_deep_is_a_400(setup):  # noqa: F811
  searcher = Searcher.open(setup["index"])
  with ServerThread(make_app(searcher)) as server:
    client = Client(server.url)
    for depth in (100_000, 1_000_000):
      body = b"[" * depth + b"]" * depth
      status, answer = client.call("POST", "/search", body, {"Content-Type": "application/json"})
      assert status == 400 and "JSON" in answer["detail"], answer
    body = b'{"image_base64": ' + b"[" * 50_000
    status, answer = client.call("POST", "/search", body, {"Content-Type": "application/json"})
    assert status == 400
    assert client.post_image("/search", _read(setup["queries"][0]))[0] == 200


def _raw(url, request: bytes, timeout=10.0) -> bytes:
  host, port = url.removeprefix("http://").rsplit(":", 1)
  with socket.create_connection((host, int(port)), timeout=timeout) as sock:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
      more = sock.recv(65536)
      if not more:
        break
      data += more
  return data


def _closed_by_server(sock, wait_s):
  """True when the server closes the socket within wait_s (whatever it wrote first)."""
  sock.settimeout(wait_s)
  deadline = time.monotonic() + wait_s
  try:
    while time.monotonic() < deadline:
      if not sock.recv(65536):
        return True
  except (socket.timeout, TimeoutError):
    return False
  except OSError:
    return True  # reset
  return False


def _timed(fn):
  start = time.perf_counter()
  status = fn()[0]
  return status, time.perf_counter() - start


@pytest.mark.slow
def test_idle_and_trickling_sockets_are_cut_off_and_others_still_served(setup):  # noqa: F811
  searcher = Searcher.open(setup["index"])
  app = make_app(searcher, body_timeout_s=2.0, batch_window_ms=2)
  with ServerThread(app, header_timeout_s=2.0) as server:
    client = Client(server.url)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    photo = _read(setup["queries"][0])
    normal = {
      "healthz": sorted(_timed(lambda: client.call("GET", "/healthz"))[1] for _ in range(5)),
      "search": sorted(_timed(lambda: client.post_image("/search", photo))[1] for _ in range(5)),
    }
    idle, trickle, stalled = [], [], []
    for n in range(300):  # 200 sockets that send nothing, 50 slow heads, 50 stalled uploads
      sock = socket.create_connection((host, int(port)), timeout=10)
      if n < 200:
        idle.append(sock)
      elif n < 250:
        sock.sendall(b"POST /search HTTP/1.1\r\nHo")
        trickle.append(sock)
      else:
        sock.sendall(
          b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
          b"Content-Length: 5000000\r\n\r\n" + b"\xff" * 1000
        )
        stalled.append(sock)
    stop = threading.Event()

    def drip():  # the slow heads send a byte now and then, never finishing
      while not stop.is_set():
        for sock in trickle:
          try:
            sock.send(b"s")
          except OSError:
            pass
        time.sleep(0.3)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
      # With the 300 sockets open, the others are served in their normal time.
      busy = {
        "healthz": [_timed(lambda: client.call("GET", "/healthz")) for _ in range(5)],
        "search": [_timed(lambda: client.post_image("/search", photo)) for _ in range(5)],
      }
      for name, runs in busy.items():
        assert all(status == 200 for status, _ in runs), name
        median = sorted(t for _, t in runs)[2]
        assert median < 3 * normal[name][2] + 0.1, (name, median, normal[name])
      # Then every one of them is closed by the server, none later than its deadline + slack.
      with concurrent.futures.ThreadPoolExecutor(32) as pool:
        closed = list(pool.map(lambda s: _closed_by_server(s, 6.0), idle + trickle + stalled))
    finally:
      stop.set()
      dripper.join()
      for sock in idle + trickle + stalled:
        sock.close()
    assert sum(closed[:200]) == 200, "idle sockets left open"
    assert sum(closed[200:250]) == 50, "trickling heads left open"
    assert sum(closed[250:]) == 50, "stalled uploads left open"
    assert client.call("GET", "/healthz")[0] == 200


def test_connection_cap_and_search_queue_answer_503_with_retry_after(setup):  # noqa: F811
  searcher = Searcher.open(setup["index"])
  search = searcher.search
  gate = threading.Event()

  def slow_search(*args, **kwargs):  # holds every search until the test lets it go
    gate.wait(20)
    return search(*args, **kwargs)

  searcher.search = slow_search
  app = make_app(searcher, micro_batch=False, max_queued=2)
  with ServerThread(app, max_connections=8) as server:
    client = Client(server.url)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    photo = _read(setup["queries"][0])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      held = [pool.submit(client.post_image, "/search", photo) for _ in range(2)]
      time.sleep(1.0)
      head = _raw(
        server.url,
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        b"Content-Length: %d\r\n\r\n" % len(photo) + photo,
      )
      assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower(), head
      # More connections than the cap: the extra ones are answered 503 at once.
      socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(10)]
      try:
        answers = []
        for sock in socks[-4:]:
          sock.settimeout(5)
          answers.append(sock.recv(4096))
      except (socket.timeout, TimeoutError):
        answers.append(b"")
      finally:
        for sock in socks:
          sock.close()
      busy = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
      assert busy and all(b"Retry-After: 1" in a for a in busy), answers
      gate.set()
      assert [f.result()[0] for f in held] == [200, 200]
    assert client.call("GET", "/healthz")[0] == 200


def test_rate_limit_per_token(setup):  # noqa: F811
  searcher = Searcher.open(setup["index"])
  app = make_app(searcher, tokens=TOKENS, rate_limit=1.0)  # bursts of 2, then 1 a second
  with ServerThread(app) as server:
    client = Client(server.url)
    photo = _read(setup["queries"][0])
    statuses = [client.post_image("/search", photo, headers=_bearer(READ)) for _ in range(4)]
    assert [s for s, _ in statuses[:2]] == [200, 200]
    assert statuses[-1][0] == 429 and "at most 1 a second" in statuses[-1][1]["detail"]
    # Another token has its own allowance.
    assert client.post_image("/search", photo, headers=_bearer(WRITE))[0] == 200
    time.sleep(1.2)
    assert client.post_image("/search", photo, headers=_bearer(READ))[0] == 200


def _lying_jpeg(photo: bytes) -> bytes:
  """A real JPEG whose header claims 6000 x 6000 pixels (its data holds its own size)."""
  import io
  import struct

  from PIL import Image

  buf = io.BytesIO()
  Image.open(io.BytesIO(photo)).convert("RGB").resize((250, 250)).save(buf, "JPEG", quality=90)
  data = buf.getvalue()
  sof = data.find(b"\xff\xc0")
  return data[: sof + 5] + struct.pack(">HH", 6000, 6000) + data[sof + 9 :]


def test_images_that_lie_get_a_problem_not_matches(setup):  # noqa: F811
  import io

  import numpy as np
  from PIL import Image

  searcher = Searcher.open(setup["index"])
  with ServerThread(make_app(searcher)) as server:
    client = Client(server.url)
    photo = _read(setup["queries"][0])
    status, answer = client.post_image("/search", _lying_jpeg(photo), filename="short.jpg")
    assert status == 400 and "truncated" in answer["detail"], answer
    for array in (np.full((1, 1, 3), 120, np.uint8), np.full((300, 300, 3), 255, np.uint8)):
      buf = io.BytesIO()
      Image.fromarray(array).save(buf, "PNG")
      status, answer = client.post_image("/search", buf.getvalue())
      assert status == 400 and "blank" in answer["detail"], answer
    assert client.post_image("/search", photo)[0] == 200
