"""The service's endpoints: module-level functions on one `APIRouter`, the opened index and its
helpers (`Service`) injected with `Depends`, answers as `schemas` models.

  POST   /search       a photo -> its face's box and the k most similar gallery photos
  POST   /embed        a photo -> its face's embedding
  POST   /verify       two photos -> same person?, their similarity, the threshold used
  POST   /items        enrol a photo under an id (saved to the index folder before answering)
  DELETE /items/{id}   remove an item (saved before answering); 404 for an unknown id
  DELETE /identities/{name}  forget a person: all their items, their name in every file
  GET    /thumbnails/{id}  the face thumbnail of an item (JPEG; from the index, never a path)
  GET    /healthz      items, dim, model fingerprint, calibrated threshold, batching counters

Searches and embeddings need a read token, enrolments and removals a write token, when the
service has tokens (`security`); writes from a cross-site page are refused either way. Ids are
shown without filesystem paths (`public_ids`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
from typing import Any, Optional, Union

from absl import logging
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from facetriplet.errors import ImageError, UserError
from facetriplet.search.searcher import Searcher
from facetriplet.serving import batching, inputs, public_ids, schemas
from facetriplet.serving.security import Caller, require


@dataclasses.dataclass
class Service:
  """What the endpoints share: the searcher and the service's limits and helpers."""

  searcher: Searcher
  batcher: Optional[batching.MicroBatcher]
  commit: batching.GroupCommit
  max_upload_bytes: int = inputs.MAX_UPLOAD_BYTES
  max_pixels: int = inputs.MAX_PIXELS
  max_k: int = inputs.MAX_K
  body_timeout_s: float = inputs.BODY_TIMEOUT_S
  max_queued: int = 256  # searches being read, decoded or waiting for the model (503 above)
  unbatched: dict = dataclasses.field(default_factory=lambda: {"requests": 0, "calls": 0})
  searching: int = 0
  ids: public_ids.PublicIds = dataclasses.field(init=False)

  def __post_init__(self):
    self.ids = public_ids.PublicIds(self.searcher.index)

  @contextlib.contextmanager
  def slot(self):
    """A place among the uploads in progress (searches, embeddings, enrolments); 503 with
    Retry-After when they are full."""
    if self.searching >= self.max_queued:
      raise inputs.error(
        503, f"{self.searching} requests are waiting: try again shortly", {"Retry-After": "1"}
      )
    self.searching += 1
    try:
      yield
    finally:
      self.searching -= 1

  async def upload(self, request: Request) -> inputs.Upload:
    return await inputs.read_upload(request, self.max_upload_bytes, self.body_timeout_s)

  def face(self, result: Any) -> dict[str, Any]:
    """A SearchResult as the service shows it: ids and names, no paths."""
    out = result.to_dict()
    out.pop("query")
    out["matches"] = [self.match(m) for m in result.matches]
    return out

  def match(self, match: Any) -> dict[str, Any]:
    out = dict(match.to_dict(), id=self.ids.shown(match.item))
    out.pop("path")
    return out

  def start_search(self, request: batching.SearchRequest) -> Any:
    """Queues the search (micro-batched) or starts it alone; returns what to await."""
    if self.batcher is not None:
      return asyncio.wrap_future(self.batcher.submit(request))
    self.unbatched["requests"] += 1
    self.unbatched["calls"] += 1
    return run_in_threadpool(batching.search_batch, self.searcher, [request])

  async def finish_search(self, pending: Any) -> Any:
    try:
      answer = await pending
    except UserError as e:
      raise inputs.error(400, str(e)) from None
    return answer if self.batcher is not None else answer[0]

  async def save(self, change: str) -> None:
    """Returns once the change is on disk (500 naming the problem when saving failed)."""
    try:
      await run_in_threadpool(self.commit.commit)
    except (OSError, UserError) as e:
      # The full reason (with the folder's path) goes to the server's log, not to the client.
      logging.error("saving the index after %s failed: %s", change, e)
      reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
      raise inputs.error(
        500,
        f"{change} in memory, but saving the index failed ({reason}; see the server's log): "
        "the change is lost at a restart unless a later save succeeds",
      ) from None


def _name(path: Optional[str]) -> Optional[str]:
  """A folder's name, never its path."""
  return os.path.basename(os.path.normpath(path)) if path else None


def _actor(caller: Caller) -> dict[str, Any]:
  """Who made a change, as the audit trail records it."""
  return {"token": caller.token, "client": caller.address}


def get_service(request: Request) -> Service:
  return request.app.state.service


def get_searcher(service: Service = Depends(get_service)) -> Searcher:
  return service.searcher


router = APIRouter(responses=schemas.ERRORS)


@router.post(
  "/search",
  response_model=Union[schemas.SearchAnswer, schemas.SearchAllAnswer],
  openapi_extra=schemas.image_body(schemas.SearchParams),
)
async def search(
  request: Request,
  k: Optional[int] = Query(None, ge=1),
  min_score: Optional[float] = Query(None),
  faces: Optional[str] = Query(None, description="largest or all"),
  service: Service = Depends(get_service),
  _: Caller = Depends(require("read")),
) -> Any:
  """The k gallery photos most similar to the photo's face (its best face per photo)."""
  with service.slot():
    return await _search(request, k, min_score, faces, service)


async def _search(request, k, min_score, faces, service: Service) -> Any:
  arriving = service.batcher.arriving() if service.batcher else contextlib.nullcontext()
  with arriving:
    upload = await service.upload(request)
    params = inputs.search_params(upload, k, min_score, faces, service.max_k)
    rgb = await run_in_threadpool(inputs.decode, upload, service.max_pixels)
    # Queued before this request stops arriving, so the batcher waits for it.
    pending = service.start_search(
      batching.SearchRequest(rgb, params.k, params.min_score, params.faces)
    )
  answer = await service.finish_search(pending)
  query = upload.filename or "upload"
  if params.faces == "all":
    faces_ = [service.face(r) for r in answer]
    return schemas.SearchAllAnswer(query=query, k=params.k, faces=faces_)
  return schemas.SearchAnswer(query=query, k=params.k, **service.face(answer))


@router.post("/embed", response_model=schemas.EmbedAnswer, openapi_extra=schemas.image_body(None))
async def embed(
  request: Request,
  service: Service = Depends(get_service),
  searcher: Searcher = Depends(get_searcher),
  _: Caller = Depends(require("read")),
) -> schemas.EmbedAnswer:
  """The unit embedding of the photo's chosen face, from the index's model."""
  with service.slot():
    upload = await service.upload(request)
    rgb = await run_in_threadpool(inputs.decode, upload, service.max_pixels)
    vector = await run_in_threadpool(searcher.embed, rgb)
  return schemas.EmbedAnswer(
    embedding=[float(v) for v in vector],
    dim=searcher.dim,
    fingerprint=searcher.extractor.fingerprint,
  )


@router.post(
  "/verify",
  response_model=schemas.VerifyAnswer,
  openapi_extra=schemas.image_body(schemas.VerifyParams, ("a", "b")),
)
async def verify(
  request: Request,
  threshold: Optional[float] = Query(None),
  far: Optional[float] = Query(None, gt=0, lt=1),
  service: Service = Depends(get_service),
  searcher: Searcher = Depends(get_searcher),
  _: Caller = Depends(require("read")),
) -> schemas.VerifyAnswer:
  """Whether the faces of photos `a` and `b` are the same person: their similarity against a
  threshold (the model's calibrated one at `far` unless `threshold` is given)."""
  with service.slot():
    a, b = await inputs.read_uploads(
      request, service.max_upload_bytes, service.body_timeout_s, ("a", "b")
    )
    threshold = inputs.parse_min_score(inputs.param(a.fields, "threshold", threshold), "threshold")
    far = inputs.parse_far(inputs.param(a.fields, "far", far))
    images_ = [await run_in_threadpool(inputs.decode, u, service.max_pixels) for u in (a, b)]
    try:
      same, score = await run_in_threadpool(searcher.verify, *images_, threshold, far)
    except UserError as e:
      raise inputs.error(422, str(e)) from None
  used = threshold if threshold is not None else searcher.threshold(far)
  return schemas.VerifyAnswer(
    same=same, score=score, threshold=used, far=None if threshold is not None else far
  )


@router.post(
  "/items",
  status_code=201,
  response_model=schemas.EnrolAnswer,
  openapi_extra=schemas.image_body(schemas.ItemParams),
)
async def add_item(
  request: Request,
  item_id: Optional[str] = Query(None, alias="id"),
  name: Optional[str] = Query(None),
  identity: Optional[str] = Query(None),
  faces: Optional[str] = Query(None, description="largest or all"),
  service: Service = Depends(get_service),
  searcher: Searcher = Depends(get_searcher),
  caller: Caller = Depends(require("write")),
) -> schemas.EnrolAnswer:
  """Enrols the photo (replacing an item with the same id) and saves the index."""
  with service.slot():
    upload = await service.upload(request)
    params = inputs.item_params(upload, item_id, name, identity, faces)
    new_id = params.id or hashlib.sha256(upload.data).hexdigest()[:16]
    _check_new_id(new_id, service, searcher)
    rgb = await run_in_threadpool(inputs.decode, upload, service.max_pixels)
    replaced = searcher.contains(new_id if params.faces == "largest" else f"{new_id}#0")
    try:
      ids = await run_in_threadpool(
        searcher.add_image,
        rgb,
        new_id,
        params.name or upload.filename or None,
        params.identity,
        params.faces,
        actor=_actor(caller),
      )
    except UserError as e:
      raise inputs.error(422, str(e)) from None
  service.ids.refresh()
  await service.save(f"enrolled {ids}")
  return schemas.EnrolAnswer(ids=ids, replaced=replaced, items=len(searcher))


def _check_new_id(new_id: str, service: Service, searcher: Searcher) -> None:
  """An enrolment's id names an enrolment: not a path, not a gallery photo (409)."""
  if new_id.startswith("/") or "\\" in new_id or new_id in (".", ".."):
    raise inputs.error(422, f"id {new_id!r}: ids are names, not paths (no leading / or \\)")
  row = searcher.index.row_of(new_id)
  if service.ids.is_photo(new_id) or (row is not None and searcher.index.items[row].path):
    raise inputs.error(
      409, f"id {new_id!r} names a gallery photo: DELETE /items/{new_id} first, or pick another id"
    )


@router.delete("/items/{item_id:path}", response_model=schemas.RemoveAnswer)
async def remove_item(
  item_id: str,
  service: Service = Depends(get_service),
  searcher: Searcher = Depends(get_searcher),
  caller: Caller = Depends(require("write")),
) -> schemas.RemoveAnswer:
  """Removes one item by id and saves the index (404 when no item has this id)."""
  unknown = inputs.error(
    404,
    f"no item with id {item_id!r} in the index (ids are what POST "
    "/items returned, or the 'id' of a match)",
  )
  internal = service.ids.item_id(item_id)
  if internal is None or not searcher.contains(internal):
    raise unknown
  try:
    removed = await run_in_threadpool(searcher.remove, [internal], _actor(caller))
  except UserError as e:
    if searcher.contains(internal):  # e.g. the last item: an index is never empty
      raise inputs.error(409, str(e)) from None
    raise unknown from None  # removed meanwhile by another request
  service.ids.refresh()
  await service.save(f"removed {item_id!r}")
  return schemas.RemoveAnswer(removed=removed, id=item_id, items=len(searcher))


@router.delete("/identities/{identity:path}", response_model=schemas.ForgetAnswer)
async def forget_identity(
  identity: str,
  service: Service = Depends(get_service),
  searcher: Searcher = Depends(get_searcher),
  caller: Caller = Depends(require("write")),
) -> schemas.ForgetAnswer:
  """Erases a person: every item of this identity, and their name and ids in the index's
  files and audit trail (saved before answering); 404 when no item has this identity."""
  if not any(item.identity == identity for item in searcher.index.items):
    raise inputs.error(404, f"no item of identity {identity!r} in the index: nothing to forget")
  try:
    removed = await run_in_threadpool(searcher.forget, identity, _actor(caller))
  except UserError as e:  # only they are left (an index is never empty), or forgotten meanwhile
    raise inputs.error(409, str(e)) from None
  service.ids.refresh()
  await service.save(f"forgot {removed} items")
  return schemas.ForgetAnswer(removed=removed, items=len(searcher))


@router.get(
  "/thumbnails/{item_id:path}",
  response_class=Response,
  responses={200: {"content": {"image/jpeg": {}}, "description": "the face, 112 px a side"}},
)
async def thumbnail(
  item_id: str,
  service: Service = Depends(get_service),
  searcher: Searcher = Depends(get_searcher),
  _: Caller = Depends(require("read")),
) -> Response:
  """The face thumbnail of an item (its id as /search shows it): cut from the gallery photo the
  index was built from, or the one kept at enrolment; 404 for an unknown id."""
  unknown = inputs.error(404, f"no item with id {item_id!r} in the index")
  internal = service.ids.item_id(item_id)
  if internal is None:
    raise unknown
  try:
    data = await run_in_threadpool(searcher.thumbnail, internal)
  except ImageError as e:
    logging.warning("thumbnail of %s: %s", internal, e)  # the path goes to the log only
    raise inputs.error(
      404,
      f"item {item_id!r}: its photo cannot be read ({e.reason}): restore the photo, or remove "
      "the item",
    ) from None
  if data is None and not searcher.contains(internal):
    raise unknown  # removed meanwhile
  if data is None:
    raise inputs.error(
      404, f"item {item_id!r} has no thumbnail (enrolled by an older version): enrol it again"
    )
  return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-cache"})


@router.get("/healthz", response_model=schemas.Health)
async def healthz(
  service: Service = Depends(get_service), searcher: Searcher = Depends(get_searcher)
) -> schemas.Health:
  """Liveness, and what is served: items, dim, model fingerprint, batching counters."""
  batcher = service.batcher
  stats = (
    {"requests": batcher.requests, "calls": batcher.calls}
    if batcher is not None
    else dict(service.unbatched)
  )
  return schemas.Health(
    status="ok",
    items=len(searcher),
    dim=searcher.dim,
    fingerprint=searcher.extractor.fingerprint,
    threshold=searcher.threshold(schemas.PAGE_FAR),
    far=schemas.PAGE_FAR,
    model=_name(searcher.info.get("model")),
    features=searcher.info.get("features"),
    index=_name(searcher.index_dir),
    micro_batch=batcher is not None,
    search_requests=stats["requests"],
    search_calls=stats["calls"],
    saves=service.commit.saves,
  )
