"""The HTTP search service (FastAPI + uvicorn; the `serve` extra): `app.make_app` builds the
application over a `Searcher`, `server.serve` runs it.

  schemas   requests and answers as pydantic models (what /docs shows)
  inputs    an upload read and checked: the photo within its limits, its parameters
  batching  micro-batched searches and group-committed saves (no HTTP in it)
  routes    the endpoints, on one APIRouter
  app       the FastAPI application
  server    listening, serving, a server on a background thread
"""
