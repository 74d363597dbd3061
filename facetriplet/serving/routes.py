"""The service's endpoints: module-level functions on one `APIRouter`, the opened index and its
helpers (`Service`) injected with `Depends`, answers as `schemas` models.

  POST   /search       a photo -> its face's box and the k most similar gallery photos
  POST   /embed        a photo -> its face's embedding
  POST   /items        enrol a photo under an id (saved to the index folder before answering)
  DELETE /items/{id}   remove an item (saved before answering); 404 for an unknown id
  GET    /healthz      items, dim, model fingerprint, batching counters
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from typing import Any, Optional, Union

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from facetriplet.errors import UserError
from facetriplet.search.searcher import Searcher
from facetriplet.serving import batching, inputs, schemas


@dataclasses.dataclass
class Service:
  """What the endpoints share: the searcher and the service's limits and helpers."""

  searcher: Searcher
  batcher: Optional[batching.MicroBatcher]
  commit: batching.GroupCommit
  max_upload_bytes: int = inputs.MAX_UPLOAD_BYTES
  max_pixels: int = inputs.MAX_PIXELS
  max_k: int = inputs.MAX_K
  unbatched: dict = dataclasses.field(default_factory=lambda: {"requests": 0, "calls": 0})

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
      raise inputs.error(
        500,
        f"{change} in memory, but saving the index failed: {e}; the "
        "change is lost at a restart unless a later save succeeds",
      ) from None


def get_service(request: Request) -> Service:
  return request.app.state.service


def get_searcher(service: Service = Depends(get_service)) -> Searcher:
  return service.searcher


router = APIRouter(responses=schemas.ERRORS)


def _face(result: Any) -> dict[str, Any]:
  out = result.to_dict()
  out.pop("query")
  return out


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
) -> Any:
  """The k gallery photos most similar to the photo's face (its best face per photo)."""
  arriving = service.batcher.arriving() if service.batcher else contextlib.nullcontext()
  with arriving:
    upload = await inputs.read_upload(request, service.max_upload_bytes)
    params = inputs.search_params(upload, k, min_score, faces, service.max_k)
    rgb = await run_in_threadpool(inputs.decode, upload, service.max_pixels)
    # Queued before this request stops arriving, so the batcher waits for it.
    pending = service.start_search(
      batching.SearchRequest(rgb, params.k, params.min_score, params.faces)
    )
  answer = await service.finish_search(pending)
  query = upload.filename or "upload"
  if params.faces == "all":
    return schemas.SearchAllAnswer(query=query, k=params.k, faces=[_face(r) for r in answer])
  return schemas.SearchAnswer(query=query, k=params.k, **_face(answer))


@router.post("/embed", response_model=schemas.EmbedAnswer, openapi_extra=schemas.image_body(None))
async def embed(
  request: Request,
  service: Service = Depends(get_service),
  searcher: Searcher = Depends(get_searcher),
) -> schemas.EmbedAnswer:
  """The unit embedding of the photo's chosen face, from the index's model."""
  upload = await inputs.read_upload(request, service.max_upload_bytes)
  rgb = await run_in_threadpool(inputs.decode, upload, service.max_pixels)
  vector = await run_in_threadpool(searcher.embed, rgb)
  return schemas.EmbedAnswer(
    embedding=[float(v) for v in vector],
    dim=searcher.dim,
    fingerprint=searcher.extractor.fingerprint,
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
) -> schemas.EnrolAnswer:
  """Enrols the photo (replacing an item with the same id) and saves the index."""
  upload = await inputs.read_upload(request, service.max_upload_bytes)
  params = inputs.item_params(upload, item_id, name, identity, faces)
  new_id = params.id or hashlib.sha256(upload.data).hexdigest()[:16]
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
    )
  except UserError as e:
    raise inputs.error(422, str(e)) from None
  await service.save(f"enrolled {ids}")
  return schemas.EnrolAnswer(ids=ids, replaced=replaced, items=len(searcher))


@router.delete("/items/{item_id:path}", response_model=schemas.RemoveAnswer)
async def remove_item(
  item_id: str, service: Service = Depends(get_service), searcher: Searcher = Depends(get_searcher)
) -> schemas.RemoveAnswer:
  """Removes one item by id and saves the index (404 when no item has this id)."""
  unknown = inputs.error(
    404,
    f"no item with id {item_id!r} in the index (ids are what POST "
    "/items returned, or the 'id' of a match)",
  )
  if not searcher.contains(item_id):
    raise unknown
  try:
    removed = await run_in_threadpool(searcher.remove, [item_id])
  except UserError as e:
    if searcher.contains(item_id):  # e.g. the last item: an index is never empty
      raise inputs.error(409, str(e)) from None
    raise unknown from None  # removed meanwhile by another request
  await service.save(f"removed {item_id!r}")
  return schemas.RemoveAnswer(removed=removed, id=item_id, items=len(searcher))


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
    model=searcher.info.get("model"),
    features=searcher.info.get("features"),
    index=searcher.index_dir,
    micro_batch=batcher is not None,
    search_requests=stats["requests"],
    search_calls=stats["calls"],
    saves=service.commit.saves,
  )
