r"""The HTTP search service: a `Searcher` behind FastAPI + uvicorn (`facetriplet-serve`).

  POST   /search       a photo -> its face's box and the k most similar gallery photos
  POST   /embed        a photo -> its face's embedding
  POST   /items        enrol a photo under an id (saved to the index folder before answering)
  DELETE /items/{id}   remove an item (saved before answering); 404 for an unknown id
  GET    /healthz      items, dim, model fingerprint, batching counters
  GET    /docs         the OpenAPI page (try every endpoint from the browser)

A photo is sent as the multipart file field `image`, as JSON `{"image_base64": "..."}` or as the
raw body (`Content-Type: image/jpeg`); `k`, `min_score`, `faces` (largest|all), and for /items
`id`, `name`, `identity`, come as form fields, JSON keys or query parameters:

  curl -F image=@face.jpg 'http://127.0.0.1:8000/search?k=5&min_score=0.5'
  curl -F image=@new.jpg -F id=alice-01 -F identity=alice http://127.0.0.1:8000/items
  curl -X DELETE http://127.0.0.1:8000/items/alice-01

A bad upload gets one line naming the problem and never stops the server: not an image 415,
empty or broken image 400, more than `max_pixels` or more than `max_upload_bytes` 413, bad k
422, unknown id 404. "No match" (nothing above min_score) is an empty `matches` list.

Concurrent searches are micro-batched (`batching.MicroBatcher`): one model call answers every
request that arrived within `batch_window_ms`, up to `max_batch`. Enrolments and removals take
the Searcher's writer lock, so they are safe while searches run, and are reported only after a
`Searcher.save()` covering them has completed (`batching.GroupCommit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
import time
from typing import Any, Callable, Optional

import numpy as np
import uvicorn
from absl import logging
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse

from facetriplet.errors import UserError
from facetriplet.search import batching
from facetriplet.search import serve_inputs as inputs
from facetriplet.search.searcher import Searcher

FACE_MODES = inputs.FACE_MODES


def _plain(value: Any) -> Any:
  """JSON-ready: numpy scalars and tuples become Python numbers and lists."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _result(result: Any) -> dict[str, Any]:
  out = result.to_dict()
  out.pop("query")
  return _plain(out)


def _body_doc(form: dict[str, str]) -> dict[str, Any]:
  """OpenAPI request body: multipart with the file 'image', JSON with 'image_base64', raw image."""
  props = {name: {"type": kind, "description": text}
           for name, (kind, text) in ((n, t.split(":", 1)) for n, t in form.items())}
  return {"requestBody": {"required": True, "content": {
      "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
          "image": {"type": "string", "format": "binary"}, **props}}},
      "application/json": {"schema": {"type": "object", "required": ["image_base64"],
                                      "properties": {"image_base64": {"type": "string"},
                                                     **props}}},
      "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}


_SEARCH_FIELDS = {"k": "integer:matches wanted (1..1000, default 10)",
                  "min_score": "number:leave out matches below this cosine similarity",
                  "faces": "string:largest (default) or all (every face of the photo)"}
_ITEM_FIELDS = {"id": "string:item id (default: from the SHA-256 of the image)",
                "name": "string:display name", "identity": "string:the person",
                "faces": "string:largest (default) or all (one item per face, '<id>#<n>')"}


def make_app(searcher: Searcher, max_upload_bytes: int = inputs.MAX_UPLOAD_BYTES,
             max_pixels: int = inputs.MAX_PIXELS, batch_window_ms: float = 5.0, max_batch: int = 32,
             micro_batch: bool = True, max_k: int = inputs.MAX_K) -> FastAPI:
  """The FastAPI application serving `searcher` (see the module docstring for the endpoints).

  Args:
    searcher: an opened index.
    max_upload_bytes: largest image accepted (413 above it, from Content-Length or as read).
    max_pixels: largest image accepted, in pixels (413 above it; read from the header).
    batch_window_ms: how long a search waits for concurrent ones to share its model call.
    max_batch: most searches answered by one model call.
    micro_batch: False calls the searcher once per request (for comparison).
    max_k: largest k a request may ask for.
  """
  batcher = batching.MicroBatcher(searcher, batch_window_ms / 1000, max_batch) if micro_batch \
      else None
  commit = batching.GroupCommit(lambda: searcher.save())  # pylint: disable=unnecessary-lambda
  unbatched = {"requests": 0, "calls": 0}

  @contextlib.asynccontextmanager
  async def lifespan(_):
    yield
    if batcher is not None:
      await run_in_threadpool(batcher.close)

  app = FastAPI(title="facetriplet face search", lifespan=lifespan, description=(
      f"Search, embed, enrol and remove faces of the index `{searcher.index_dir}` (model "
      f"`{searcher.extractor.fingerprint}`). Send a photo as the multipart file `image`, as "
      "JSON `{\"image_base64\": ...}` or as the raw body. Enrolments and removals are saved to "
      "the index folder before they are answered."))
  app.state.searcher, app.state.batcher, app.state.commit = searcher, batcher, commit

  @app.exception_handler(RequestValidationError)
  async def invalid(_, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's checks of query parameters, as one line like the others."""
    problems = [f"{e['loc'][-1]}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

  def start_search(rgb: np.ndarray, k: int, min_score: Optional[float], mode: str) -> Any:
    """Queues the search (micro-batched) or starts it alone; returns what to await."""
    request = batching.SearchRequest(rgb, k, min_score, mode)
    if batcher is not None:
      return asyncio.wrap_future(batcher.submit(request))
    unbatched["requests"] += 1
    unbatched["calls"] += 1
    return run_in_threadpool(batching.search_batch, searcher, [request])

  async def finish_search(pending: Any) -> Any:
    try:
      answer = await pending
    except UserError as e:
      raise inputs.error(400, str(e)) from None
    return answer if batcher is not None else answer[0]

  async def save(change: str) -> None:
    """Returns once the change is on disk (500 naming the problem when saving failed)."""
    try:
      await run_in_threadpool(commit.commit)
    except (OSError, UserError) as e:
      raise inputs.error(500, f"{change} in memory, but saving {searcher.index_dir} failed: {e}; "
                         "the change is lost at a restart unless a later save succeeds") from None

  @app.post("/search", openapi_extra=_body_doc(_SEARCH_FIELDS))
  async def search(request: Request, k: Optional[int] = Query(None, ge=1, le=max_k),
                   min_score: Optional[float] = Query(None), faces: Optional[str] = Query(None),
                   ) -> JSONResponse:
    """The k gallery photos most similar to the photo's face (its best face per photo)."""
    with batcher.arriving() if batcher is not None else contextlib.nullcontext():
      upload = await inputs.read_upload(request, max_upload_bytes)
      k_ = inputs.parse_k(inputs.param(upload.fields, "k", k), max_k=max_k)
      score = inputs.parse_min_score(inputs.param(upload.fields, "min_score", min_score))
      mode = inputs.parse_faces(inputs.param(upload.fields, "faces", faces))
      rgb = await run_in_threadpool(inputs.decode, upload, max_pixels)
      pending = start_search(rgb, k_, score, mode)  # queued before this request stops arriving
    answer = await finish_search(pending)
    out: dict[str, Any] = {"query": upload.filename or "upload", "k": k_}
    if mode == "all":
      out["faces"] = [_result(r) for r in answer]
    else:
      out.update(_result(answer))
    return JSONResponse(out)

  @app.post("/embed", openapi_extra=_body_doc({}))
  async def embed(request: Request) -> JSONResponse:
    """The unit embedding of the photo's chosen face, from the index's model."""
    upload = await inputs.read_upload(request, max_upload_bytes)
    rgb = await run_in_threadpool(inputs.decode, upload, max_pixels)
    vector = await run_in_threadpool(searcher.embed, rgb)
    return JSONResponse({"embedding": [float(v) for v in vector], "dim": searcher.dim,
                         "fingerprint": searcher.extractor.fingerprint})

  @app.post("/items", status_code=201, openapi_extra=_body_doc(_ITEM_FIELDS))
  async def add_item(request: Request, item_id: Optional[str] = Query(None, alias="id"),
                     name: Optional[str] = Query(None), identity: Optional[str] = Query(None),
                     faces: Optional[str] = Query(None)) -> JSONResponse:
    """Enrols the photo (replacing an item with the same id) and saves the index."""
    upload = await inputs.read_upload(request, max_upload_bytes)
    fields = upload.fields
    item_id = inputs.param(fields, "id", item_id) or hashlib.sha256(upload.data).hexdigest()[:16]
    label, who = inputs.param(fields, "name", name), inputs.param(fields, "identity", identity)
    mode = inputs.parse_faces(inputs.param(fields, "faces", faces))
    for key, value in (("id", item_id), ("name", label), ("identity", who)):
      if value is not None and (not isinstance(value, str) or len(value) > 1024
                                or not value.isprintable()):
        raise inputs.error(422, f"{key} must be printable text of at most 1024 characters")
    rgb = await run_in_threadpool(inputs.decode, upload, max_pixels)
    replaced = searcher.contains(item_id if mode == "largest" else f"{item_id}#0")
    try:
      ids = await run_in_threadpool(searcher.add_image, rgb, item_id,
                                    label or upload.filename or None, who, mode)
    except UserError as e:
      raise inputs.error(422, str(e)) from None
    await save(f"enrolled {ids}")
    return JSONResponse({"ids": ids, "replaced": replaced, "items": len(searcher)},
                        status_code=201)

  @app.delete("/items/{item_id:path}")
  async def remove_item(item_id: str) -> JSONResponse:
    """Removes one item by id and saves the index (404 when no item has this id)."""
    unknown = inputs.error(404, f"no item with id {item_id!r} in the index (ids are what POST "
                           "/items returned, or the 'id' of a match)")
    if not searcher.contains(item_id):
      raise unknown
    try:
      removed = await run_in_threadpool(searcher.remove, [item_id])
    except UserError as e:
      if searcher.contains(item_id):  # e.g. the last item: an index is never empty
        raise inputs.error(409, str(e)) from None
      raise unknown from None  # removed meanwhile by another request
    await save(f"removed {item_id!r}")
    return JSONResponse({"removed": removed, "id": item_id, "items": len(searcher)})

  @app.get("/healthz")
  async def healthz() -> JSONResponse:
    """Liveness, and what is served: items, dim, model fingerprint, model path, batching."""
    stats = ({"requests": batcher.requests, "calls": batcher.calls} if batcher is not None
             else dict(unbatched))
    return JSONResponse(_plain({
        "status": "ok", "items": len(searcher), "dim": searcher.dim,
        "fingerprint": searcher.extractor.fingerprint, "model": searcher.info.get("model"),
        "features": searcher.info.get("features"), "index": searcher.index_dir,
        "micro_batch": batcher is not None, "search_requests": stats["requests"],
        "search_calls": stats["calls"], "saves": commit.saves}))

  @app.get("/", include_in_schema=False)
  async def root() -> RedirectResponse:
    return RedirectResponse("/docs")

  return app


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
    raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port "
                    "or --host") from None
  actual = sock.getsockname()[1]
  shown = f"[{host}]" if ":" in host else host
  return sock, f"http://{shown}:{actual}"


def _server(app: FastAPI, log_level: str, access_log: bool) -> uvicorn.Server:
  return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log,
                                       lifespan="on", timeout_graceful_shutdown=10))


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8000, model: Optional[str] = None,
          features: Optional[str] = None,
          on_ready: Optional[Callable[[str, Searcher], None]] = None,
          log_level: str = "warning", access_log: bool = False, **app_options: Any) -> None:
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

  def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0,
               log_level: str = "warning"):
    self.app = app
    self._sock, self.url = bind(host, port)
    self._server = _server(app, log_level, access_log=False)
    self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                    name="facetriplet-serve", daemon=True)

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
