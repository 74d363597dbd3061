"""Listening and serving: `serve` (what `facetriplet-serve` runs) and `ServerThread` (a server on a
background thread, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Optional

import uvicorn
from absl import logging
from fastapi import FastAPI

from facetriplet.errors import UserError
from facetriplet.search.searcher import Searcher
from facetriplet.serving.app import make_app


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


def _server(app: FastAPI, log_level: str, access_log: bool) -> uvicorn.Server:
  return uvicorn.Server(
    uvicorn.Config(
      app, log_level=log_level, access_log=access_log, lifespan="on", timeout_graceful_shutdown=10
    )
  )


def serve(
  index_dir: str,
  host: str = "127.0.0.1",
  port: int = 8000,
  model: Optional[str] = None,
  features: Optional[str] = None,
  on_ready: Optional[Callable[[str, Searcher], None]] = None,
  log_level: str = "warning",
  access_log: bool = False,
  **app_options: Any,
) -> None:
  """Opens the index and serves it until interrupted (Ctrl-C / SIGTERM stop it gracefully).

  Args:
    index_dir, model, features: as `Searcher.open`.
    host, port: where to listen (port 0: any free port).
    on_ready: called with the URL and the searcher once the socket is bound, before serving.
    app_options: `make_app` options (max_upload_bytes, max_pixels, batch_window_ms, ...).

  Raises:
    UserError: a missing index or model, or an address that cannot be bound.
  """
  searcher = Searcher.open(index_dir, model, features)
  app = make_app(searcher, **app_options)
  sock, url = bind(host, port)
  logging.info("serving %s (%d items) at %s", index_dir, len(searcher), url)
  if on_ready is not None:
    on_ready(url, searcher)
  with sock:
    _server(app, log_level, access_log).run(sockets=[sock])


class ServerThread:
  """A uvicorn server for `app` on a background thread (tests, benchmarks, notebooks).

  with ServerThread(make_app(searcher)) as server:
    urllib.request.urlopen(server.url + "/healthz")
  """

  def __init__(
    self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
  ):
    self.app = app
    self._sock, self.url = bind(host, port)
    self._server = _server(app, log_level, access_log=False)
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
