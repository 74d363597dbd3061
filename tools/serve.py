r"""Serves an index over HTTP: search, embed, enrol and remove faces (FastAPI + uvicorn).

  facetriplet-serve --index=runs/index                        # http://127.0.0.1:8000, docs at /docs
  facetriplet-serve --index=runs/index --host=0.0.0.0 --port=8080 --max_upload_mb=5
  facetriplet-serve --index=runs/index --nomicro_batch        # one model call per request

  curl -F image=@face.jpg 'http://127.0.0.1:8000/search?k=5'
  curl -F image=@new.jpg -F id=alice-01 -F identity=alice http://127.0.0.1:8000/items
  curl -X DELETE http://127.0.0.1:8000/items/alice-01
  curl http://127.0.0.1:8000/healthz

Endpoints: POST /search, POST /embed, POST /items, DELETE /items/{id}, GET /healthz, GET /docs.
Enrolments and removals are written to --index (atomically) before they are answered. Concurrent
searches share one model call (--batch_window_ms, --max_batch). Ctrl-C stops the server after
the requests in flight. The logic lives in `facetriplet.serving`.
"""

from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from facetriplet.data import images
from facetriplet.errors import UserError, run_tool
from facetriplet.search import features, gallery

# facetriplet.serving (FastAPI, uvicorn) is imported in main, after the flags are checked: it
# takes longer to import than the rest of the tool.

_INDEX = flags.DEFINE_string("index", None, "Index folder written by facetriplet-build-index.")
_HOST = flags.DEFINE_string(
  "host",
  "127.0.0.1",
  "Address to listen on (0.0.0.0: every interface; the service has no authentication).",
)
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).")
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Export folder, or a pretrained network's name (default: the one the index was built with, "
  "from its gallery.json).",
)
_FEATURES = flags.DEFINE_enum(
  "features", None, list(features.FEATURES), "Features (default: the index's)."
)
_MAX_UPLOAD_MB = flags.DEFINE_float(
  "max_upload_mb",
  None,
  "Largest image upload in MiB (413 above it); default: the service's, "
  "facetriplet.serving.inputs.MAX_UPLOAD_BYTES (10 MiB).",
)
_MAX_PIXELS = flags.DEFINE_integer(
  "max_pixels", images.MAX_PIXELS, "Largest image in pixels (413 above it)."
)
_BATCH_WINDOW_MS = flags.DEFINE_float(
  "batch_window_ms", 5.0, "How long a search waits for concurrent ones to share its model call."
)
_MAX_BATCH = flags.DEFINE_integer("max_batch", 32, "Most searches answered by one model call.")
_MICRO_BATCH = flags.DEFINE_bool(
  "micro_batch", True, "Batch concurrent searches (off: one model call per request)."
)
_ACCESS_LOG = flags.DEFINE_bool("access_log", False, "Log every request.")


def _model():
  """--model: an export folder, or a pretrained network's name (its cached export)."""
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  return export.resolve_model(_MODEL.value)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _INDEX.value:
    raise UserError("--index=<index folder> is required (see facetriplet-build-index)")
  if (_MAX_UPLOAD_MB.value is not None and _MAX_UPLOAD_MB.value <= 0) or _MAX_PIXELS.value <= 0:
    raise UserError("--max_upload_mb and --max_pixels must be positive")
  if _MAX_BATCH.value < 1 or _BATCH_WINDOW_MS.value < 0:
    raise UserError("--max_batch must be at least 1 and --batch_window_ms at least 0")
  if not 0 <= _PORT.value <= 65535:
    raise UserError(f"--port={_PORT.value}: use 0..65535")
  gallery.check_index(_INDEX.value)  # before the slow imports (the server checks it again)
  from facetriplet.serving import inputs, server  # pylint: disable=g-import-not-at-top

  upload_mb = _MAX_UPLOAD_MB.value or inputs.MAX_UPLOAD_BYTES / 2**20
  logging.info(
    "serve: index=%s host=%s port=%d model=%s features=%s max_upload_mb=%g "
    "max_pixels=%d micro_batch=%s batch_window_ms=%g max_batch=%d",
    _INDEX.value,
    _HOST.value,
    _PORT.value,
    _model(),
    _FEATURES.value,
    upload_mb,
    _MAX_PIXELS.value,
    _MICRO_BATCH.value,
    _BATCH_WINDOW_MS.value,
    _MAX_BATCH.value,
  )

  def ready(url: str, searcher) -> None:
    print(
      f"serving {len(searcher)} items of {_INDEX.value} at {url} (API docs: {url}/docs); "
      "Ctrl-C stops",
      flush=True,
    )

  try:
    server.serve(
      _INDEX.value,
      _HOST.value,
      _PORT.value,
      _model(),
      _FEATURES.value,
      on_ready=ready,
      access_log=_ACCESS_LOG.value,
      max_upload_bytes=int(upload_mb * 2**20),
      max_pixels=_MAX_PIXELS.value,
      batch_window_ms=_BATCH_WINDOW_MS.value,
      max_batch=_MAX_BATCH.value,
      micro_batch=_MICRO_BATCH.value,
    )
  except KeyboardInterrupt:
    pass  # uvicorn re-raises the Ctrl-C it handled, after the graceful shutdown
  print("stopped", flush=True)


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
