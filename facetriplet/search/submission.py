"""The competition's answer: submission.json and results.csv written from a retrieval result,
and their delivery, with nothing reported that did not happen.

`make_submission` / `write_submission` / `write_results_csv` turn typed results (a
`retrieval.Retrieval`, or any `engine.SearchResult`s of query files) into the competition's JSON
and a CSV (both written atomically).

`post_submission` sends the submission JSON and returns only on a 2xx answer from the URL the user
gave (or a 307/308 redirect to the same scheme, host and port, re-sent with the same method and
body). A 301/302/303 is never followed: standard clients turn such a POST into a GET without the
body, so the entry would never arrive; it is an error naming the `Location`. Each attempt has one
deadline, from connecting to the last byte (a watchdog closes the socket then), so a server that
trickles its answer cannot stretch an attempt past `timeout`. `check_submit_url` validates the
flag before any work.
"""

from __future__ import annotations

import csv
import dataclasses
import http.client
import io
import json
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Optional, Sequence

from absl import logging

from facetriplet import atomic
from facetriplet.errors import UserError
from facetriplet.search.engine import SearchResult
from facetriplet.search.retrieval import query_names, submit_name


@dataclasses.dataclass
class PostResult:
  status: int
  body: str
  attempts: int


def check_submit_url(url: str) -> str:
  """The URL, validated before any work: http(s) scheme (any case) and a host.

  Raises:
    UserError: anything else, naming the flag and the fix.
  """
  parts = urllib.parse.urlsplit(url.strip())
  if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
    raise UserError(
      f"--submit_url={url!r} must be an http:// or https:// URL with a host, e.g. "
      "https://competition.example/submit"
    )
  return urllib.parse.urlunsplit((parts.scheme.lower(),) + tuple(parts)[1:])


_MAX_SAME_HOST_REDIRECTS = 3


def _post_once(url: str, data: bytes, deadline: float) -> tuple[int, str, Optional[str]]:
  """One POST that ends by `deadline` (time.monotonic) whatever the server does: (status, body,
  Location header). Redirects are not followed here."""
  parts = urllib.parse.urlsplit(url)
  remaining = deadline - time.monotonic()
  if remaining <= 0:
    raise TimeoutError("timed out")
  conn_class = (
    http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
  )
  conn = conn_class(parts.hostname, parts.port, timeout=remaining)
  # A watchdog closes the socket at the deadline: a server that trickles a byte at a time
  # resets every per-read timeout, but not this one.
  expired = threading.Event()
  holder: list = []

  def stop():
    expired.set()
    for sock in holder:  # the socket itself: http.client hands it to the response (HTTP/1.0)
      try:
        sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass

  timer = threading.Timer(remaining, stop)
  timer.daemon = True
  timer.start()
  try:
    conn.connect()
    holder.append(conn.sock)
    if expired.is_set():
      stop()
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    chunks = []
    while True:
      chunk = response.read(65536)
      if not chunk:
        break
      chunks.append(chunk)
    if expired.is_set():
      raise TimeoutError("timed out")
    body = b"".join(chunks).decode("utf-8", errors="replace")
    return response.status, body, response.getheader("Location")
  except (OSError, http.client.HTTPException) as e:
    if expired.is_set():
      raise TimeoutError(f"timed out after {remaining:.1f} s") from None
    raise ConnectionError(str(e) or type(e).__name__) from None
  finally:
    timer.cancel()
    conn.close()
    for sock in holder:
      sock.close()


def post_submission(
  url: str,
  payload: dict[str, Any],
  timeout: float = 30.0,
  retries: int = 3,
  backoff: float = 1.0,
  sleep: Callable[[float], None] = time.sleep,
) -> PostResult:
  """POSTs the submission JSON; retries server errors and network failures with back-off.

  Success means a 2xx answer from `url` itself, or from a 307/308 redirect to the same scheme,
  host and port (followed with the same method and body). Any other redirect is never followed:
  standard clients turn a 301/302/303 POST into a GET without the body, so the entry would not
  arrive; it is an error naming the `Location`.

  Args:
    url: the competition server's endpoint.
    payload: the submission dict.
    timeout: seconds per attempt, from connecting to the last byte of the answer.
    retries: further attempts after the first (waiting backoff, 2*backoff, 4*backoff, ... s).
    backoff: first wait in seconds.
    sleep: the wait function (tests pass a fast one).

  Returns:
    PostResult with the HTTP status, the server's answer and the number of attempts.

  Raises:
    UserError: every attempt failed, the server refused the submission (4xx), or redirected it
      elsewhere.
  """
  url = check_submit_url(url)
  data = json.dumps(payload).encode("utf-8")
  last = ""
  for attempt in range(1, retries + 2):
    deadline = time.monotonic() + timeout
    target = url
    try:
      for _ in range(_MAX_SAME_HOST_REDIRECTS + 1):
        status, body, location = _post_once(target, data, deadline)
        if status not in (301, 302, 303, 307, 308):
          break
        where = urllib.parse.urljoin(target, location or "")
        a, b = urllib.parse.urlsplit(target), urllib.parse.urlsplit(where)
        same = (a.scheme, a.hostname, a.port) == (b.scheme.lower(), b.hostname, b.port)
        if status in (307, 308) and location and same:
          logging.info(
            "POST %s: HTTP %d, following to %s (same host, same body)", target, status, where
          )
          target = where
          continue
        raise UserError(
          f"the server at {url} answered HTTP {status} redirecting to "
          f"{location or '(no Location)'}; nothing was submitted (a redirected POST "
          "is not re-sent elsewhere): pass that URL as --submit_url if you trust it"
        )
      else:
        raise UserError(
          f"the server at {url} redirected more than {_MAX_SAME_HOST_REDIRECTS} "
          "times; nothing was submitted"
        )
      if 200 <= status < 300:
        logging.info("POST %s: HTTP %d after %d attempt(s)", target, status, attempt)
        return PostResult(status, body, attempt)
      last = f"HTTP {status}: {body[:500]}".strip()
      if 400 <= status < 500 and status not in (408, 429):
        raise UserError(
          f"the server at {url} refused the submission ({last}); fix the submission or the URL"
        )
    except (TimeoutError, ConnectionError, OSError) as e:
      last = str(e) or type(e).__name__
    logging.warning("POST %s attempt %d/%d failed: %s", url, attempt, retries + 1, last)
    if attempt <= retries:
      sleep(backoff * 2 ** (attempt - 1))
  raise UserError(
    f"could not submit to {url} after {retries + 1} attempts (last: {last}); the "
    "submission file is kept, re-send it later with --submit_url"
  )


def make_submission(
  results: Sequence[SearchResult], groupname: str, shared: frozenset = frozenset()
) -> dict[str, Any]:
  """`{"groupname": ..., "images": {query file: [gallery file, ... k]}}`, every query present.
  `shared`: gallery names several photos share (`retrieval.Retrieval.shared_names`)."""
  images = {
    name: [submit_name(m.item, shared) for m in r.matches]
    for name, r in zip(query_names(results), results)
  }
  return {"groupname": groupname, "images": images}


def write_submission(path: str, payload: dict[str, Any]) -> None:
  atomic.write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


CSV_COLUMNS = (
  "query",
  "rank",
  "gallery",
  "similarity",
  "gallery_identity",
  "query_identity",
  "query_note",
  "gallery_box",
)  # gallery_box: "x y w h" of the matched face


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
  """A text cell a spreadsheet will not run: one starting like a formula gets a leading "'"
  (OWASP's CSV-injection advice); submission.json keeps the exact names."""
  return "'" + value if value.startswith(_FORMULA_START) else value


def write_results_csv(
  path: str, results: Sequence[SearchResult], shared: frozenset = frozenset()
) -> int:
  """One row per (query, match); a query without matches gets one row with its note. Returns rows.

  Names and identities that start with =, +, -, @, tab or CR are written with a leading "'"
  (`csv_text`), so opening the file in a spreadsheet never evaluates them.
  """
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(CSV_COLUMNS)
  rows = 0
  for name, r in zip(query_names(results), results):
    note = r.problem or ""
    identity = csv_text((r.entry.identity if r.entry is not None else None) or "")
    name = csv_text(name)
    if not r.matches:
      writer.writerow([name, "", "", "", "", identity, note, ""])
      rows += 1
    for m in r.matches:
      writer.writerow(
        [
          name,
          m.rank,
          csv_text(submit_name(m.item, shared)),
          f"{m.score:.6f}",
          csv_text(m.identity or ""),
          identity,
          note,
          " ".join(f"{v:g}" for v in m.box) if m.box else "",
        ]
      )
      rows += 1
  atomic.write_text(path, buf.getvalue())
  return rows
