"""Listening and serving: `serve` (what `facetriplet-serve` runs) and `ServerThread` (a server on a
background thread, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Optional, Sequence

import uvicorn
from absl import logging
from fastapi import FastAPI

from facetriplet.data import detectors
from facetriplet.errors import UserError
from facetriplet.search.searcher import Searcher
from facetriplet.serving import connections, security
from facetriplet.serving.app import make_app

HEADER_TIMEOUT_S = 10.0  # a request's head must arrive within this (408 and closed if not)
MAX_CONNECTIONS = 1000  # open connections; more are answered 503 at once


def bind(host: str, port: int) -> tuple[socket.socket, str]:
  """A listening socket on host:port (0 = any free port) and its URL.

  Raises:
    UserError: the address cannot be bound (taken, or not an address of this machine).
  """
  try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
  except OSError as e:
    raise UserError(
      f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host"
    ) from None
  actual = sock.getsockname()[1]
  shown = f"[{host}]" if ":" in host else host
  return sock, f"http://{shown}:{actual}"


def _server(
  app: FastAPI,
  log_level: str,
  access_log: bool,
  header_timeout_s: float = HEADER_TIMEOUT_S,
  max_connections: int = MAX_CONNECTIONS,
) -> uvicorn.Server:
  return uvicorn.Server(
    uvicorn.Config(
      app,
      http=connections.protocol(header_timeout_s, max_connections),
      log_level=log_level,
      access_log=access_log,
      lifespan="on",
      timeout_graceful_shutdown=10,
    )
  )


def check_exposure(
  host: str, tokens: Optional[security.Tokens], allowed_hosts: Optional[Sequence[str]], insecure
) -> list[str]:
  """The Host names to answer, after refusing an exposed service without tokens.

  Raises:
    UserError: a non-loopback address without tokens (unless `insecure`), or an address of
      every interface without --allowed_hosts.
  """
  if not security.is_loopback(host) and not tokens and not insecure:
    raise UserError(
      f"--host={host} lets other machines connect, and the service has no tokens: pass "
      "--token_file (see facetriplet-serve --help), or --insecure to serve without them"
    )
  if allowed_hosts and "*" in allowed_hosts and not tokens and not insecure:
    raise UserError(
      "--allowed_hosts=* without tokens lets any web page reach the service through DNS "
      "rebinding: name the hosts, pass --token_file, or --insecure"
    )
  if allowed_hosts:
    return list(allowed_hosts)
  if host in ("0.0.0.0", "::", ""):
    raise UserError(
      f"--host={host} listens on every interface: pass --allowed_hosts=<the names clients "
      "use, comma-separated> (or '*' to answer any Host header)"
    )
  names = list(security.LOOPBACK_HOSTS)
  return names if security.is_loopback(host) else names + [host]


def serve(
  index_dir: str,
  host: str = "127.0.0.1",
  port: int = 8000,
  model: Optional[str] = None,
  features: Optional[str] = None,
  on_ready: Optional[Callable[[str, Searcher], None]] = None,
  log_level: str = "warning",
  access_log: bool = False,
  tokens: Optional[security.Tokens] = None,
  allowed_hosts: Optional[Sequence[str]] = None,
  insecure: bool = False,
  header_timeout_s: float = HEADER_TIMEOUT_S,
  max_connections: int = MAX_CONNECTIONS,
  **app_options: Any,
) -> None:
  """Opens the index and serves it until interrupted (Ctrl-C / SIGTERM stop it gracefully).

  Args:
    index_dir, model, features: as `Searcher.open`.
    host, port: where to listen (port 0: any free port).
    on_ready: called with the URL and the searcher once the socket is bound, before serving.
    tokens, allowed_hosts, insecure: see `check_exposure` and `make_app`.
    header_timeout_s, max_connections: see `connections`.
    app_options: `make_app` options (max_upload_bytes, max_pixels, batch_window_ms, ...).

  Raises:
    UserError: a missing index or model, an address that cannot be bound, or one exposed
      without tokens.
  """
  hosts = check_exposure(host, tokens, allowed_hosts, insecure)
  detectors.limit_blas_threads()  # the process is the service's: requests are its parallelism
  searcher = Searcher.open(index_dir, model, features)
  app = make_app(searcher, tokens=tokens, allowed_hosts=hosts, **app_options)
  sock, url = bind(host, port)
  logging.info("serving %s (%d items) at %s", index_dir, len(searcher), url)
  if on_ready is not None:
    on_ready(url, searcher)
  with sock:
    _server(app, log_level, access_log, header_timeout_s, max_connections).run(sockets=[sock])


class ServerThread:
  """A uvicorn server for `app` on a background thread (tests, benchmarks, notebooks).

  with ServerThread(make_app(searcher)) as server:
    urllib.request.urlopen(server.url + "/healthz")
  """

  def __init__(
    self,
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
  ):
    self.app = app
    self._sock, self.url = bind(host, port)
    self._server = _server(app, log_level, False, header_timeout_s, max_connections)
    self._thread = threading.Thread(
      target=self._server.run,
      kwargs={"sockets": [self._sock]},
      name="facetriplet-serve",
      daemon=True,
    )

  def start(self, timeout: float = 30.0) -> "ServerThread":
    self._thread.start()
    deadline = time.monotonic() + timeout
    while not self._server.started and self._thread.is_alive():
      if time.monotonic() > deadline:
        raise RuntimeError("the server did not start in time")
      time.sleep(0.01)
    if not self._server.started:
      raise RuntimeError("the server stopped while starting")
    return self

  def stop(self, timeout: float = 30.0) -> None:
    self._server.should_exit = True
    self._thread.join(timeout)
    self._sock.close()

  def __enter__(self) -> "ServerThread":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
