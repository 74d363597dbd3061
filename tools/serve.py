r"""Serves an index over HTTP: search, embed, enrol and remove faces (FastAPI + uvicorn).

  facetriplet-serve --index=runs/index            # open http://127.0.0.1:8000 (API docs: /docs)
  facetriplet-serve --index=runs/index --token_file=tokens.txt --host=10.0.0.5 --port=8080
  facetriplet-serve --index=runs/index --token_file=tokens.txt --host=0.0.0.0 \
      --allowed_hosts=faces.example.org --rate_limit=20
  facetriplet-serve --index=runs/index --nomicro_batch        # one model call per request

  curl -F image=@face.jpg 'http://127.0.0.1:8000/search?k=5'
  curl -F image=@new.jpg -F id=alice-01 -F identity=alice http://127.0.0.1:8000/items
  curl -X DELETE http://127.0.0.1:8000/items/alice-01
  curl http://127.0.0.1:8000/healthz

  curl -H "Authorization: Bearer $TOKEN" -F image=@face.jpg http://10.0.0.5:8080/search

Tokens (--token_file, or the variable FACETRIPLET_TOKENS): lines `name read|write secret`; read
tokens may search and embed, write tokens also enrol and remove. Without tokens the service
listens only on this machine (loopback); another --host needs tokens, or --insecure. Requests
for a Host name not in --allowed_hosts are refused (DNS rebinding), and so are enrolments and
removals sent by a web page of another site; no CORS unless --cors_origin. TLS: put a reverse
proxy in front (see the README). A request's headers must arrive within --header_timeout_s and
its upload within --body_timeout_s; beyond --max_connections, or --max_queued searches, the
answer is 503 with Retry-After; beyond --rate_limit requests a second per token, 429.

Endpoints: POST /search, POST /embed, POST /verify, POST /items, DELETE /items/{id},
DELETE /identities/{name}, GET /thumbnails/{id}, GET /healthz, GET /docs; at / a web page to
drop a photo, see its matches, enrol it under a name and remove items (a service with tokens
asks the page's user for one).
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
  "Address to listen on (0.0.0.0: every interface, with --allowed_hosts). Other than "
  "loopback it needs --token_file (or --insecure).",
)
_TOKEN_FILE = flags.DEFINE_string(
  "token_file",
  None,
  "File of tokens, one 'name read|write secret' per line (default: $FACETRIPLET_TOKENS; "
  "none: no token asked, loopback only).",
)
_INSECURE = flags.DEFINE_bool(
  "insecure", False, "Serve a non-loopback --host without tokens (anyone who can connect)."
)
_ALLOWED_HOSTS = flags.DEFINE_list(
  "allowed_hosts",
  None,
  "Host names the service answers to ('*': any); default: loopback names and --host.",
)
_CORS_ORIGIN = flags.DEFINE_string(
  "cors_origin", None, "The one web origin (https://app.example.org) browsers may call from."
)
_RATE_LIMIT = flags.DEFINE_float(
  "rate_limit", 0.0, "Requests a second per token (per client address without tokens); 0: none."
)
_HEADER_TIMEOUT_S = flags.DEFINE_float(
  "header_timeout_s", 10.0, "A request's headers must arrive within this (408, closed)."
)
_BODY_TIMEOUT_S = flags.DEFINE_float(
  "body_timeout_s", 60.0, "An upload must arrive within this after its headers (408, closed)."
)
_MAX_CONNECTIONS = flags.DEFINE_integer(
  "max_connections", 1000, "Open connections; more are answered 503 with Retry-After."
)
_MAX_QUEUED = flags.DEFINE_integer(
  "max_queued", 256, "Searches in progress; more are answered 503 with Retry-After."
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
  if min(_HEADER_TIMEOUT_S.value, _BODY_TIMEOUT_S.value) <= 0 or _RATE_LIMIT.value < 0:
    raise UserError("--header_timeout_s and --body_timeout_s must be positive, --rate_limit >= 0")
  if min(_MAX_CONNECTIONS.value, _MAX_QUEUED.value) < 1:
    raise UserError("--max_connections and --max_queued must be at least 1")
  gallery.check_index(_INDEX.value)  # before the slow imports (the server checks it again)
  from facetriplet.serving import inputs, security, server  # pylint: disable=g-import-not-at-top

  tokens = security.Tokens.load(_TOKEN_FILE.value)
  hosts = server.check_exposure(_HOST.value, tokens, _ALLOWED_HOSTS.value, _INSECURE.value)

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
      f"serving {len(searcher)} items of {_INDEX.value}: open {url} (API docs: {url}/docs); "
      "Ctrl-C stops",
      flush=True,
    )
    if tokens:
      print(f"{len(tokens)} token(s); answering Host {', '.join(hosts)}", flush=True)
    elif security.is_loopback(_HOST.value):
      print(
        "no tokens: anyone on this machine can search and change the index; listening on "
        "loopback only (--token_file to serve other machines)",
        flush=True,
      )
    else:
      print("no tokens and --insecure: anyone who can connect can change the index", flush=True)

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
      tokens=tokens,
      allowed_hosts=hosts,
      insecure=_INSECURE.value,
      cors_origin=_CORS_ORIGIN.value,
      rate_limit=_RATE_LIMIT.value,
      header_timeout_s=_HEADER_TIMEOUT_S.value,
      body_timeout_s=_BODY_TIMEOUT_S.value,
      max_connections=_MAX_CONNECTIONS.value,
      max_queued=_MAX_QUEUED.value,
    )
  except KeyboardInterrupt:
    pass  # uvicorn re-raises the Ctrl-C it handled, after the graceful shutdown
  print("stopped", flush=True)


def run():
  run_tool(main)


if __name__ == "__main__":
  run()
