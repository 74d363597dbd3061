"""Who may use the service, and from where: tokens with two scopes, allowed Host names,
same-origin writes, per-caller rate limits.

Tokens come from a file (`--token_file`) or the environment variable `FACETRIPLET_TOKENS`, one
per line (`;` also separates them in the variable), `#` starting a comment:

  # name    scope  secret (at least 16 characters; e.g. python -c 'import secrets;
  #                        print(secrets.token_urlsafe(32))')
  alice     write  9f2c...                  # search, embed, enrol, delete, forget
  dashboard read   c41e...                  # search and embed only

A client sends `Authorization: Bearer <secret>`. Secrets are kept only as SHA-256 digests and
compared in constant time with every token (`hmac.compare_digest`), so neither timing nor an
early exit tells which one nearly matched. Missing or wrong: 401; a read token on a write: 403.

`Guard.admit` is what the endpoints depend on (`require("read")`, `require("write")`): writes
carrying a cross-site `Origin` (a web page the user opened, posting a form to 127.0.0.1) are
refused with 403 before anything else; then the token; then the caller's rate (429 with
Retry-After). `HostCheck` refuses any request whose `Host` is not an allowed name (DNS
rebinding), before routing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import threading
import time
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from facetriplet.errors import UserError

SCOPES = ("read", "write")  # write includes read
ENV = "FACETRIPLET_TOKENS"
MIN_SECRET = 16
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True)
class Token:
  name: str
  scope: str
  digest: bytes  # SHA-256 of the secret


def _digest(secret: str) -> bytes:
  return hashlib.sha256(secret.encode("utf-8")).digest()


class Tokens:
  """The service's tokens (possibly none: then nobody is asked for one)."""

  def __init__(self, tokens: Sequence[Token] = ()):
    self.tokens = list(tokens)

  def __bool__(self) -> bool:
    return bool(self.tokens)

  def __len__(self) -> int:
    return len(self.tokens)

  @classmethod
  def parse(cls, text: str, source: str) -> "Tokens":
    """Tokens from `name scope secret` lines (UserError naming the line when one is bad)."""
    tokens, names, digests = [], set(), set()
    for number, line in enumerate(text.replace(";", "\n").splitlines(), 1):
      words = line.split()
      comment = next((i for i, w in enumerate(words) if w.startswith("#")), len(words))
      words = words[:comment]  # a '#' starts a comment only at the start of a word
      if not words:
        continue
      where = f"{source} line {number}"
      if len(words) != 3:
        raise UserError(f"{where}: expected 'name scope secret' ({len(words)} words found)")
      name, scope, secret = words
      if scope not in SCOPES:
        raise UserError(f"{where}: scope must be read or write, got {scope!r}")
      if len(secret) < MIN_SECRET:
        raise UserError(
          f"{where}: the secret of {name!r} is shorter than {MIN_SECRET} characters; make one "
          "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
      if name in names or _digest(secret) in digests:
        raise UserError(f"{where}: token name or secret {name!r} appears twice")
      names.add(name)
      digests.add(_digest(secret))
      tokens.append(Token(name, scope, _digest(secret)))
    if not tokens:
      raise UserError(f"{source} holds no token: write lines 'name read|write secret'")
    return cls(tokens)

  @classmethod
  def load(cls, path: Optional[str], environ: Mapping[str, str] = os.environ) -> "Tokens":
    """The tokens of `path`, else of $FACETRIPLET_TOKENS, else none."""
    if path:
      try:
        with open(path, encoding="utf-8") as f:
          text = f.read()
      except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --token_file={path} ({e})") from None
      return cls.parse(text, path)
    if environ.get(ENV, "").strip():
      return cls.parse(environ[ENV], f"${ENV}")
    return cls()

  def find(self, secret: str) -> Optional[Token]:
    """The token whose secret this is, compared in constant time with every token."""
    digest, found = _digest(secret), None
    for token in self.tokens:
      if hmac.compare_digest(digest, token.digest):
        found = token
    return found


def is_loopback(host: str) -> bool:
  """Whether an address to listen on is reachable only from this machine."""
  if host.strip("[]") == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return False


class RateLimiter:
  """A token bucket per caller: `rate` requests a second on average, bursts of `burst`."""

  def __init__(self, rate: float, burst: Optional[float] = None):
    self.rate = rate
    self.burst = burst if burst is not None else max(1.0, 2 * rate)
    self._buckets: dict[str, tuple[float, float]] = {}
    self._lock = threading.Lock()

  def wait(self, key: str) -> float:
    """0 when the caller may go on (one request counted), else the seconds to wait."""
    if self.rate <= 0:
      return 0.0
    now = time.monotonic()
    with self._lock:
      level, then = self._buckets.get(key, (self.burst, now))
      level = min(self.burst, level + (now - then) * self.rate)
      if level >= 1:
        self._buckets[key] = (level - 1, now)
        return 0.0
      self._buckets[key] = (level, now)
      return (1 - level) / self.rate


@dataclasses.dataclass(frozen=True)
class Caller:
  """Who made a request: the token's name (None without tokens) and the client address."""

  token: Optional[str]
  address: str


def refuse(status: int, message: str, headers: Optional[dict[str, str]] = None) -> HTTPException:
  return HTTPException(status_code=status, detail=" ".join(message.split()), headers=headers)


@dataclasses.dataclass
class Guard:
  """The service's admission rules (see the module docstring)."""

  tokens: Tokens = dataclasses.field(default_factory=Tokens)
  cors_origin: Optional[str] = None
  limiter: RateLimiter = dataclasses.field(default_factory=lambda: RateLimiter(0))

  def cross_site(self, request: Request) -> Optional[str]:
    """The Origin of a request sent by a page of another site, else None."""
    origin = request.headers.get("origin")
    if origin is None:
      return "a cross-site page" if request.headers.get("sec-fetch-site") == "cross-site" else None
    if self.cors_origin and origin == self.cors_origin:
      return None
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return None if parts.scheme in ("http", "https") and parts.netloc == host else origin

  def admit(self, request: Request, scope: str) -> Caller:
    """The caller of a request needing `scope`, or the refusal (403, 401, 429)."""
    address = request.client.host if request.client else "unknown"
    if scope == "write":
      origin = self.cross_site(request)
      if origin is not None:
        raise refuse(
          403,
          f"cross-site write refused (Origin {origin}): enrolments and removals are accepted "
          "only from this service's own page, or the --cors_origin",
        )
    token = None
    if self.tokens:
      header = request.headers.get("authorization", "")
      kind, _, secret = header.partition(" ")
      if kind.lower() != "bearer" or not secret.strip():
        raise refuse(
          401,
          "this service needs a token: send the header 'Authorization: Bearer <secret>'",
          {"WWW-Authenticate": "Bearer"},
        )
      found = self.tokens.find(secret.strip())
      if found is None:
        wait = self.limiter.wait(f"bad token from {address}")  # guessing is rate limited too
        if wait > 0:
          raise refuse(429, "too many wrong tokens", {"Retry-After": str(max(1, round(wait)))})
        raise refuse(401, "unknown token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
      if SCOPES.index(found.scope) < SCOPES.index(scope):
        raise refuse(403, f"token {found.name!r} may only {found.scope}; this needs {scope}")
      token = found.name
    wait = self.limiter.wait(token or address)
    if wait > 0:
      raise refuse(
        429,
        f"too many requests from {token or address}: at most {self.limiter.rate:g} a second",
        {"Retry-After": str(max(1, round(wait + 0.5)))},
      )
    return Caller(token, address)


def require(scope: str) -> Any:
  """A FastAPI dependency admitting callers that may `scope` (the app's `state.guard`)."""

  def dependency(request: Request) -> Caller:
    return request.app.state.guard.admit(request, scope)

  dependency.__name__ = f"require_{scope}"
  return dependency


def host_name(header: str) -> str:
  """The name of a Host header without its port ('[::1]:80' -> '::1')."""
  header = header.strip().lower()
  if header.startswith("["):
    return header[1:].split("]", 1)[0]
  return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
  """ASGI middleware: 400 for a request whose Host is not one of `allowed` ('*': any)."""

  def __init__(self, app: Any, allowed: Sequence[str]):
    self.app = app
    self.allowed = {host_name(h) for h in allowed}

  async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] in ("http", "websocket") and "*" not in self.allowed:
      headers = dict(scope.get("headers") or [])
      host = host_name(headers.get(b"host", b"").decode("latin-1"))
      if host not in self.allowed:
        body = json.dumps(
          {
            "detail": f"Host {host or '(none)'!r} is not served here (the server's "
            "--allowed_hosts names the hosts it answers to)"
          }
        ).encode()
        await send(
          {
            "type": "http.response.start",
            "status": 400,
            "headers": [
              (b"content-type", b"application/json"),
              (b"content-length", str(len(body)).encode()),
              (b"connection", b"close"),
            ],
          }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await self.app(scope, receive, send)
