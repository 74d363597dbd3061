"""What an HTTP request to the search service carries, read and checked: the photo (multipart
file `image`, JSON `image_base64` or the raw body) within the size limits, and its parameters
(`schemas.SearchParams`, `schemas.ItemParams`).

Every problem becomes an `HTTPException` with one line naming it: 413 for too many bytes
(Content-Length or bytes actually read) or pixels, 415 for something that is not an image or an
unsupported Content-Type, 400 for a broken body or image, 422 for a bad parameter.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import math
import time
from typing import Any, Optional

import numpy as np
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from facetriplet.data import faces, images
from facetriplet.data.images import MAX_PIXELS  # noqa: F401  (the service's default bound)
from facetriplet.errors import ImageError
from facetriplet.serving.schemas import ItemParams, SearchParams

MAX_UPLOAD_BYTES = 10 * 2**20
BODY_TIMEOUT_S = 60.0  # an upload must have arrived this long after its headers (408 if not)
MAX_K = 1000
FIELD_BYTES = 64 * 1024  # form fields other than the image
_STATUS = {"not-an-image": 415, "too-large": 413}  # other image problems: 400
_HINT = {
  "not-an-image": "send a JPEG, PNG, WebP, BMP, TIFF or GIF photo",
  "empty-file": "the image was empty",
  "truncated": "the upload was cut short, or its header claims more than its data holds",
  "unreadable": "the image data is damaged",
  "blank": "the image is tiny or one flat colour: send a photo with a face",
}


@dataclasses.dataclass
class Upload:
  """A request's photo (encoded bytes), its file name and its other fields."""

  data: bytes
  filename: str
  fields: dict[str, Any]


def error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> HTTPException:
  """An HTTP error whose detail is the message on one line."""
  return HTTPException(status_code=status, detail=" ".join(message.split()), headers=headers)


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
  """The body, refused (413) when its Content-Length or the bytes actually sent pass `limit`,
  and (408, the connection closed) when it has not all arrived `timeout_s` after the headers."""
  declared = request.headers.get("content-length")
  if declared is not None:
    if not declared.strip().isdigit():
      raise error(400, f"bad Content-Length {declared!r}")
    if int(declared) > limit:
      raise error(413, f"upload too large: Content-Length {int(declared)} bytes, at most {limit}")
  chunks, size = [], 0
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      message = await asyncio.wait_for(request.receive(), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
      raise HTTPException(
        408,
        f"the upload did not arrive within {timeout_s:g} s ({size} bytes received)",
        headers={"Connection": "close"},
      ) from None
    if message["type"] == "http.disconnect":
      raise error(400, "the client disconnected during the upload")
    chunk = message.get("body", b"")
    size += len(chunk)
    if size > limit:
      raise error(413, f"upload too large: more than {limit} bytes sent")
    chunks.append(chunk)
    if not message.get("more_body", False):
      return b"".join(chunks)


async def read_upload(
  request: Request, max_upload_bytes: int, body_timeout_s: float = BODY_TIMEOUT_S
) -> Upload:
  """The photo and fields of a multipart, JSON or raw-image request (4xx with one line if not)."""
  return (await read_uploads(request, max_upload_bytes, body_timeout_s, ("image",)))[0]


async def read_uploads(
  request: Request,
  max_upload_bytes: int,
  body_timeout_s: float = BODY_TIMEOUT_S,
  names: tuple[str, ...] = ("image",),
) -> list[Upload]:
  """The photos `names` (multipart file fields, or JSON '<name>_base64' keys; one photo may be
  the raw body) and the request's other fields, in every Upload (4xx with one line if not)."""
  body_limit = len(names) * max_upload_bytes * 4 // 3 + FIELD_BYTES  # base64 and form overhead
  body = await _read_body(request, body_limit, body_timeout_s)
  kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
  fields: dict[str, Any] = {}
  files: dict[str, tuple[bytes, str]] = {}
  expected = " and ".join(repr(n) for n in names)
  if kind == "multipart/form-data":

    async def stream():
      yield body
      yield b""

    try:
      form = await MultiPartParser(
        request.headers,
        stream(),
        max_files=len(names),
        max_fields=32,
        max_part_size=FIELD_BYTES,
      ).parse()
    except MultiPartException as e:
      raise error(400, f"bad multipart body: {e.message}") from None
    for key, value in form.multi_items():
      if isinstance(value, UploadFile):
        if key not in names:
          raise error(400, f"unexpected file field {key!r}: send the photos as {expected}")
        files[key] = (await value.read(), value.filename or "")
        await value.close()
      else:
        fields[key] = value
  elif kind == "application/json":
    try:
      fields = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep to parse
      reason = str(e) if isinstance(e, ValueError) else "nested too deep"
      raise error(400, f"bad JSON body: {reason}") from None
    if not isinstance(fields, dict):
      raise error(400, f"the JSON body must be an object with an '{names[0]}_base64' key")
  elif (kind.startswith("image/") or kind == "application/octet-stream") and len(names) == 1:
    files[names[0]] = (body, "")
  else:
    raise error(
      415,
      f"unsupported Content-Type {kind or '(none)'!r}: send multipart/form-data "
      f'with the file field(s) {expected}, JSON {{"{names[0]}_base64": ...}}'
      + (" or the raw image" if len(names) == 1 else ""),
    )
  uploads = []
  for name in names:
    data, filename = files.get(name) or (_base64_field(fields, name), "")
    if len(data) > max_upload_bytes:
      raise error(413, f"image too large: {len(data)} bytes, at most {max_upload_bytes}")
    uploads.append(Upload(data, filename, fields))
  return uploads


def _base64_field(fields: dict[str, Any], name: str) -> bytes:
  """The photo `name` sent as JSON '<name>_base64' (400 when absent or not base64)."""
  key = f"{name}_base64"
  encoded = fields.pop(key, None)
  if not isinstance(encoded, str) or not encoded:
    raise error(
      400,
      f'no image: send the photo as the multipart file field {name!r} or as JSON {{"{key}": ...}}',
    )
  if encoded.startswith("data:") and "," in encoded:  # a data: URL
    encoded = encoded.split(",", 1)[1]
  encoded = "".join(encoded.split())  # line breaks of wrapped base64
  try:
    return base64.b64decode(encoded, validate=True)
  except (binascii.Error, ValueError):
    raise error(400, f"{key} is not valid base64") from None


def decode(upload: Upload, max_pixels: int) -> np.ndarray:
  """The upload as RGB uint8 (413/415/400 with the reason when it is not a usable image)."""
  try:
    return images.decode_rgb(upload.data, upload.filename or "upload", max_pixels)
  except ImageError as e:
    hint = _HINT.get(e.reason) or (
      f"at most {max_pixels} pixels" if e.reason == "too-large" else "send another photo"
    )
    raise error(
      _STATUS.get(e.reason, 400),
      f"image {e.reason}: {hint}"
      + (f" ({e.detail})" if e.detail and e.reason != "not-an-image" else ""),
    ) from None


def param(fields: dict[str, Any], name: str, query: Any) -> Any:
  """A parameter from the body (form field or JSON key), else from the query string."""
  value = fields.get(name)
  return query if value is None or value == "" else value


def parse_k(value: Any, default: int = 10, max_k: int = MAX_K) -> int:
  """k from a form field, JSON value or query parameter (422 unless an integer 1..max_k)."""
  if value is None:
    return default
  try:
    if isinstance(value, bool):
      raise ValueError
    k = int(value) if isinstance(value, (int, str)) else None
    if k is None and isinstance(value, float) and value.is_integer():
      k = int(value)
  except ValueError:
    k = None
  if k is None or not 1 <= k <= max_k:
    raise error(422, f"k must be an integer from 1 to {max_k}, got {value!r}")
  return k


def _number(value: Any) -> float:
  """A form field, JSON value or query parameter as a float; NaN when it is not a number."""
  if isinstance(value, bool):
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def parse_min_score(value: Any, name: str = "min_score") -> Optional[float]:
  """min_score, or another similarity `name` (422 unless a finite number); None when not given."""
  if value is None:
    return None
  score = _number(value)
  if not math.isfinite(score):
    raise error(422, f"{name} must be a number (a cosine similarity, -1..1), got {value!r}")
  return score


def parse_far(value: Any) -> float:
  """far: a false-accept rate strictly between 0 and 1 (default 0.01)."""
  if value is None:
    return 0.01
  far = _number(value)
  if not 0 < far < 1:
    raise error(422, f"far must be a false-accept rate between 0 and 1, got {value!r}")
  return far


def parse_faces(value: Any) -> str:
  """faces: 'largest' (the default) or 'all'."""
  if value is None:
    return "largest"
  if value not in faces.FACE_MODES:
    raise error(422, f"faces must be one of {', '.join(faces.FACE_MODES)}, got {value!r}")
  return value


def search_params(
  upload: Upload, k: Any, min_score: Any, faces_mode: Any, max_k: int = MAX_K
) -> SearchParams:
  """A search's parameters from the body, else the query string (422 naming a bad one)."""
  fields = upload.fields
  return SearchParams(
    k=parse_k(param(fields, "k", k), max_k=max_k),
    min_score=parse_min_score(param(fields, "min_score", min_score)),
    faces=parse_faces(param(fields, "faces", faces_mode)),
  )


def item_params(
  upload: Upload, item_id: Any, name: Any, identity: Any, faces_mode: Any
) -> ItemParams:
  """An enrolment's parameters (422 for text that is not printable or over 1024 characters)."""
  fields = upload.fields
  values = {
    "id": param(fields, "id", item_id),
    "name": param(fields, "name", name),
    "identity": param(fields, "identity", identity),
  }
  for key, value in values.items():
    if value is not None and (
      not isinstance(value, str) or len(value) > 1024 or not value.isprintable()
    ):
      raise error(422, f"{key} must be printable text of at most 1024 characters")
  return ItemParams(**values, faces=parse_faces(param(fields, "faces", faces_mode)))
