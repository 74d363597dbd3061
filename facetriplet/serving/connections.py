"""Slow and greedy clients, cut off at the connection: uvicorn's HTTP/1.1 protocol (h11) with a
deadline for a request's head and a cap on open connections.

uvicorn closes a connection idle *between* requests (its keep-alive timeout) but waits forever
for the head of a request: a socket that connects and sends nothing, or trickles a header a
byte at a time, stays open and holds its buffers. Here every request's head (request line and
headers) must arrive within `header_timeout_s` of the connection opening, or of the previous
answer; otherwise the client gets 408 and the connection is closed. The body is the
application's to time (`inputs.read_upload`, `body_timeout_s`).

A connection beyond `max_connections` is answered 503 with Retry-After at once and closed,
before anything of it is read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

from uvicorn.protocols.http.h11_impl import H11Protocol


def _raw_answer(status: str, detail: str, retry_after: Optional[int] = None) -> bytes:
  body = json.dumps({"detail": detail}).encode()
  head = [
    f"HTTP/1.1 {status}",
    "Content-Type: application/json",
    f"Content-Length: {len(body)}",
    "Connection: close",
  ]
  if retry_after is not None:
    head.append(f"Retry-After: {retry_after}")
  return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
  """H11Protocol with a deadline for each request head and a connection cap (class settings,
  see `protocol`)."""

  header_timeout_s: float = 10.0
  max_connections: int = 1000
  closed_slow = 0  # connections closed for a late request head (all servers of the class)
  refused_busy = 0  # connections refused over the cap

  def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
    super().connection_made(transport)
    self._head_timer: Optional[asyncio.TimerHandle] = None
    if len(self.connections) > self.max_connections:
      type(self).refused_busy += 1
      transport.write(
        _raw_answer(
          "503 Service Unavailable",
          f"the server has {self.max_connections} connections open: try again shortly",
          retry_after=1,
        )
      )
      transport.close()
      return
    self._arm()

  def _arm(self) -> None:
    if self._head_timer is None:
      self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_too_late)

  def _disarm(self) -> None:
    if self._head_timer is not None:
      self._head_timer.cancel()
      self._head_timer = None

  def _head_too_late(self) -> None:
    self._head_timer = None
    if self.transport.is_closing() or not self._between_requests():
      return
    type(self).closed_slow += 1
    self.transport.write(
      _raw_answer(
        "408 Request Timeout",
        f"the request's headers did not arrive within {self.header_timeout_s:g} s",
      )
    )
    self.transport.close()

  def _between_requests(self) -> bool:
    return self.cycle is None or self.cycle.response_complete

  def data_received(self, data: bytes) -> None:
    before = self.cycle
    if self._between_requests():
      self._arm()  # a new request starts (on a kept-alive connection: the previous answered)
    super().data_received(data)
    if self.cycle is not before and not self._between_requests():
      self._disarm()  # its head is complete; the application reads (and times) the body

  def on_response_complete(self) -> None:
    super().on_response_complete()
    if not self.transport.is_closing() and self._between_requests():
      self._disarm()  # uvicorn's keep-alive timeout covers the idle time until the next bytes

  def connection_lost(self, exc: Optional[Exception]) -> None:
    self._disarm()
    super().connection_lost(exc)


def protocol(header_timeout_s: float, max_connections: int) -> Any:
  """A `GuardedH11Protocol` class with these settings (uvicorn's `http=`)."""
  return type(
    "FacetripletH11Protocol",
    (GuardedH11Protocol,),
    {"header_timeout_s": float(header_timeout_s), "max_connections": int(max_connections)},
  )
