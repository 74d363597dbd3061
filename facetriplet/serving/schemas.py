"""The service's requests and answers as pydantic models: what /docs shows, what the endpoints
return, and the parameters each upload may carry (as form fields, JSON keys or query
parameters)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

FacesMode = Literal["largest", "all"]
PAGE_FAR = 0.001  # the false-accept rate of the "same person" threshold /healthz reports (1:N)


class SearchParams(BaseModel):
  """Parameters of a search (form fields, JSON keys or query parameters)."""

  k: int = Field(10, ge=1, description="matches wanted (1..max_k, default 10)")
  min_score: Optional[float] = Field(
    None,
    description="leave out matches below this cosine similarity (then no match is an empty list)",
  )
  faces: FacesMode = Field(
    "largest",
    description="largest: the photo's chosen face; all: every face of the photo, one answer each",
  )


class ItemParams(BaseModel):
  """Parameters of an enrolment."""

  id: Optional[str] = Field(
    None,
    max_length=1024,
    description="item id (default: the first 16 "
    "hex digits of the image's SHA-256); an existing id is replaced",
  )
  name: Optional[str] = Field(None, max_length=1024, description="display name")
  identity: Optional[str] = Field(None, max_length=1024, description="the person")
  faces: FacesMode = Field("largest", description="all: one item per face, '<id>#<n>'")


class MatchOut(BaseModel):
  """One gallery photo found (its best face)."""

  rank: int
  score: float = Field(description="cosine similarity, -1..1")
  id: str = Field(
    description="the item id (what DELETE /items/{id} takes): an enrolment's id, or the "
    "photo's path within its gallery folder"
  )
  name: str
  identity: Optional[str]
  box: Optional[list[float]] = Field(description="the matched face's x, y, w, h")
  time: Optional[float] = Field(None, description="a video frame's time in seconds")


class FaceAnswer(BaseModel):
  """The matches of one query face."""

  box: Optional[list[float]] = Field(
    description="the query face's x, y, w, h; null when no "
    "face was found (answered from the centred crop)"
  )
  face: int = 0
  problem: Optional[str] = Field(None, description="e.g. 'no-face'")
  matches: list[MatchOut]


class SearchAnswer(FaceAnswer):
  """The answer of /search for the chosen face (faces=largest)."""

  query: str
  k: int


class SearchAllAnswer(BaseModel):
  """The answer of /search for every face (faces=all)."""

  query: str
  k: int
  faces: list[FaceAnswer]


class EmbedAnswer(BaseModel):
  embedding: list[float]
  dim: int
  fingerprint: str = Field(description="the model's fingerprint")


class EnrolAnswer(BaseModel):
  ids: list[str] = Field(description="the ids written (one per face with faces=all)")
  replaced: bool
  items: int = Field(description="items in the index now")


class RemoveAnswer(BaseModel):
  removed: int
  id: str
  items: int


class VerifyParams(BaseModel):
  """Parameters of a verification."""

  threshold: Optional[float] = Field(
    None, description="same person at or above this similarity (default: the calibrated one)"
  )
  far: float = Field(0.01, description="false-accept rate of the calibrated threshold")


class VerifyAnswer(BaseModel):
  same: bool = Field(description="whether the two photos' faces are the same person")
  score: float = Field(description="cosine similarity of the two faces, -1..1")
  threshold: float = Field(description="the threshold used")
  far: Optional[float] = Field(description="its false-accept rate, when calibrated")


class ForgetAnswer(BaseModel):
  removed: int = Field(description="the person's items removed")
  items: int = Field(description="items in the index now")


class Health(BaseModel):
  status: Literal["ok"]
  items: int
  dim: int
  fingerprint: str
  threshold: Optional[float] = Field(
    description="the model's calibrated 'same person' similarity at false-accept rate `far` "
    "(null: not calibrated)"
  )
  far: float
  model: Optional[str] = Field(description="the model's name (its folder's name)")
  features: Optional[str]
  index: str = Field(description="the index folder's name")
  micro_batch: bool
  search_requests: int
  search_calls: int
  saves: int


class ErrorAnswer(BaseModel):
  """Every refusal: one line naming the problem."""

  detail: str


def image_body(
  params: Optional[type[BaseModel]], names: tuple[str, ...] = ("image",)
) -> dict[str, Any]:
  """The OpenAPI request body of an upload endpoint: the photos `names` as multipart files or
  JSON `<name>_base64` (one photo: also the raw body); the parameters of `params` beside them."""
  fields = params.model_json_schema()["properties"] if params is not None else {}
  binary = {"type": "string", "format": "binary"}
  encoded = {"type": "string", "description": "the photo, base64"}
  content: dict[str, Any] = {
    "multipart/form-data": {
      "schema": {
        "type": "object",
        "required": list(names),
        "properties": {**dict.fromkeys(names, binary), **fields},
      }
    },
    "application/json": {
      "schema": {
        "type": "object",
        "required": [f"{n}_base64" for n in names],
        "properties": {**{f"{n}_base64": encoded for n in names}, **fields},
      }
    },
  }
  if len(names) == 1:
    content["image/jpeg"] = {"schema": binary}  # one photo may be the raw body
  return {"requestBody": {"required": True, "content": content}}


_CODES = (400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 500, 503)
ERRORS = {code: {"model": ErrorAnswer} for code in _CODES}
