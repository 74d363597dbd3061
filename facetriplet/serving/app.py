r"""The HTTP search service: a `Searcher` behind FastAPI (`facetriplet-serve`): `make_app`.

  POST   /search       a photo -> its face's box and the k most similar gallery photos
  POST   /embed        a photo -> its face's embedding
  POST   /verify       two photos (`a`, `b`) -> same person?, similarity, threshold used
  POST   /items        enrol a photo under an id (saved to the index folder before answering)
  DELETE /items/{id}   remove an item (saved before answering); 404 for an unknown id
  DELETE /identities/{name}  forget a person (every item, and their name in the index's files)
  GET    /thumbnails/{id}  an item's face thumbnail (JPEG)
  GET    /healthz      items, dim, model fingerprint, calibrated threshold, batching counters
  GET    /             the web page: drop a photo, see its matches, enrol it, remove items
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

The endpoints are `routes` (module-level functions on an APIRouter, the searcher through
`Depends`, answers as `schemas` models, so /docs shows every schema); upload reading and checks
are `inputs`; listening and serving is `server`; the web page is the files of `page/`
(plain HTML, CSS and JavaScript, no build step), served with a strict Content-Security-Policy.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional, Sequence

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from facetriplet.search.searcher import Searcher
from facetriplet.serving import batching, inputs, routes, security

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PAGE_FILES = {"page.js": "text/javascript", "page.css": "text/css", "icon.svg": "image/svg+xml"}
PAGE_HEADERS = {
  "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "X-Content-Type-Options": "nosniff",
  "Cache-Control": "no-cache",
}


def make_app(
  searcher: Searcher,
  max_upload_bytes: int = inputs.MAX_UPLOAD_BYTES,
  max_pixels: int = inputs.MAX_PIXELS,
  batch_window_ms: float = 5.0,
  max_batch: int = 32,
  micro_batch: bool = True,
  max_k: int = inputs.MAX_K,
  tokens: Optional[security.Tokens] = None,
  allowed_hosts: Sequence[str] = security.LOOPBACK_HOSTS,
  cors_origin: Optional[str] = None,
  rate_limit: float = 0.0,
  body_timeout_s: float = inputs.BODY_TIMEOUT_S,
  max_queued: int = 256,
) -> FastAPI:
  """The FastAPI application serving `searcher` (see the module docstring for the endpoints).

  Args:
    searcher: an opened index.
    max_upload_bytes: largest image accepted (413 above it, from Content-Length or as read).
    max_pixels: largest image accepted, in pixels (413 above it; read from the header).
    batch_window_ms: how long a search waits for concurrent ones to share its model call.
    max_batch: most searches answered by one model call.
    micro_batch: False calls the searcher once per request (for comparison).
    max_k: largest k a request may ask for.
    tokens: who may read and write (`security.Tokens`); none: anyone who can connect.
    allowed_hosts: Host names answered ('*': any); others get 400 (DNS rebinding).
    cors_origin: the one web origin allowed to call from a browser (CORS); none by default.
    rate_limit: requests a second per token (per client address without tokens); 0: no limit.
    body_timeout_s: an upload must have arrived this long after its headers (408).
    max_queued: searches in progress at once; more get 503 with Retry-After.
  """
  batcher = (
    batching.MicroBatcher(searcher, batch_window_ms / 1000, max_batch) if micro_batch else None
  )
  # Looked up at each save (not bound now), so a wrapped or replaced `save` is the one called.
  save = lambda: searcher.save()  # pylint: disable=unnecessary-lambda
  service = routes.Service(
    searcher,
    batcher,
    batching.GroupCommit(save),
    max_upload_bytes,
    max_pixels,
    max_k,
    body_timeout_s,
    max_queued,
  )

  @contextlib.asynccontextmanager
  async def lifespan(_):
    yield
    if batcher is not None:
      await run_in_threadpool(batcher.close)

  app = FastAPI(
    title="facetriplet face search",
    lifespan=lifespan,
    description=(
      f"Search, embed, enrol and remove faces of an index of {len(searcher)} items (model "
      f"`{searcher.extractor.fingerprint}`). Send a photo as the multipart file `image`, as "
      'JSON `{"image_base64": ...}` or as the raw body. Enrolments and removals are saved to '
      "the index folder before they are answered."
    ),
  )
  app.state.service = service
  app.state.guard = security.Guard(
    tokens or security.Tokens(), cors_origin, security.RateLimiter(rate_limit)
  )
  app.include_router(routes.router)
  if cors_origin:
    app.add_middleware(
      CORSMiddleware,
      allow_origins=[cors_origin],
      allow_methods=["GET", "POST", "DELETE"],
      allow_headers=["Authorization", "Content-Type"],
    )
  app.add_middleware(security.HostCheck, allowed=list(allowed_hosts))  # outermost: first

  @app.exception_handler(RequestValidationError)
  async def invalid(_, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's checks of query parameters, as one line like the others."""
    problems = [f"{e['loc'][-1]}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

  @app.get("/", include_in_schema=False)
  async def page() -> Response:
    return _page_file("index.html", "text/html; charset=utf-8")

  @app.get("/page/{name}", include_in_schema=False)
  async def page_part(name: str) -> Response:
    if name not in PAGE_FILES:  # only the page's own files, never a path
      raise inputs.error(404, f"no page file {name!r}")
    return _page_file(name, PAGE_FILES[name])

  return app


def _page_file(name: str, media_type: str) -> Response:
  with open(os.path.join(PAGE_DIR, name), "rb") as f:
    return Response(f.read(), media_type=media_type, headers=PAGE_HEADERS)
