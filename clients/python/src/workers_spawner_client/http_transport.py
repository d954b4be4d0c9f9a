"""The HTTP transport: the daemon's ``/v1`` API (docs/api.md), standard library only.

- ``spawn``: ``POST /v1/requests`` (``202``; ``400`` is :class:`RequestRejected`);
- ``status``: ``GET /v1/requests/{id}``;
- ``events``: ``GET /v1/requests/{id}/events`` as Server-Sent Events, read by
  :class:`~workers_spawner_client.sse.SseDecoder`; a dropped connection is
  resumed with ``Last-Event-ID`` (the last seq handed out), so nothing is
  missed or repeated; the stream ends with ``event: result``;
- ``result``: ``GET /v1/requests/{id}``, then the event stream until its
  ``result`` message;
- ``cancel`` / ``cancel_session``: ``POST /v1/requests/{id}/cancel``,
  ``POST /v1/sessions/{id}/cancel``.

``401``/``403`` raise :class:`AuthError`, ``404`` :class:`NotFound`; ``429``
is retried after its ``Retry-After`` a few times, then :class:`RateLimited`.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import time
from datetime import datetime, timezone
from typing import Any, Dict, Generator, Mapping, Optional, Union
from urllib.parse import quote, urlsplit

from . import __version__
from .client import Client, check_id
from .errors import (
    ApiError,
    AuthError,
    NotFound,
    RateLimited,
    RequestRejected,
    ResultTimeout,
    TransportError,
    WorkersSpawnerError,
)
from .models import Event, RequestStatus, Result, Submission, parse_json_object
from .sse import SseComment, SseDecoder

__all__ = ["HttpClient"]


def _retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` as seconds (a number or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _api_error(status: int, body: bytes, retry_after: Optional[float] = None) -> ApiError:
    """The exception for an error answer (``{"error": {code, field, message}}``)."""
    code, field, message = "", None, ""
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or "")
            f = err.get("field")
            field = f if isinstance(f, str) else None
            message = str(err.get("message") or "")
    except (ValueError, AttributeError):
        message = body[:500].decode("utf-8", errors="replace").strip()
    if not message:
        message = http.client.responses.get(status, "error")
    if status == 400:
        return RequestRejected(status, code or "bad_request", message, field)
    if status in (401, 403):
        return AuthError(status, code or ("unauthorized" if status == 401 else "forbidden"), message, field)
    if status == 404:
        return NotFound(status, code or "not_found", message, field)
    if status == 429:
        return RateLimited(status, code or "rate_limited", message, field, retry_after)
    return ApiError(status, code or "http_error", message, field)


class HttpClient(Client):
    """A :class:`Client` of the HTTP API (make it with ``Client.http``).

    - ``timeout``: connect and read timeout of plain calls, in seconds;
    - ``read_timeout``: how long an event stream may stay silent before it
      is taken as dropped and resumed (the daemon sends a heartbeat every 15 s);
    - ``max_retries``: how often a ``429`` is retried (after its
      ``Retry-After``, at most ``max_retry_wait`` s) before :class:`RateLimited`;
    - ``reconnects``: how many reconnections in a row that bring nothing an
      event stream makes before :class:`TransportError`.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        read_timeout: float = 45.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        reconnects: int = 8,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._read_timeout = read_timeout
        self._max_retries = max(0, max_retries)
        self._max_retry_wait = max_retry_wait
        self._reconnects = max(0, reconnects)

    def __repr__(self) -> str:
        return f"HttpClient({self.url!r}, token={'***' if self._token else None})"

    # -- plumbing -------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        h = {"User-Agent": f"workers-spawner-client/{__version__}", "Accept": "application/json"}
        if self._token is not None:
            h["Authorization"] = f"Bearer {self._token}"
        if extra:
            h.update(extra)
        return h

    def _path(self, *segments: str) -> str:
        return self._base + "/v1/" + "/".join(quote(s, safe=":") for s in segments)

    def _request(self, method: str, path: str, payload: Optional[Any] = None) -> Dict[str, Any]:
        """One JSON call: retries dropped connections and ``429``; raises for errors."""
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = self._headers({"Content-Type": "application/json"} if payload is not None else None)
        rate_tries = 0
        conn_tries = 0
        while True:
            conn = self._connection(self._timeout)
            try:
                conn.request(method, path, body=body if method != "GET" else None, headers=headers)
                resp = conn.getresponse()
                status = resp.status
                data = resp.read()
                retry_after = _retry_after(resp.getheader("Retry-After"))
            except (OSError, http.client.HTTPException) as e:
                conn_tries += 1
                if conn_tries > 2:
                    raise TransportError(
                        f"cannot reach the workers-spawner API at {self.url} ({method} {path}): {e}"
                    ) from e
                time.sleep(0.2 * conn_tries)
                continue
            finally:
                conn.close()
            if status == 429 and rate_tries < self._max_retries:
                rate_tries += 1
                time.sleep(min(retry_after if retry_after is not None else 1.0, self._max_retry_wait))
                continue
            if status >= 400:
                raise _api_error(status, data, retry_after)
            if not data:
                return {}
            try:
                return parse_json_object(data, f"the answer to {method} {path}")
            except ValueError as e:
                raise ApiError(status, "bad_response", str(e)) from e

    # -- Client -----------------------------------------------------------------

    def _publish(self, body: Dict[str, Any]) -> Submission:
        answer = self._request("POST", self._path("requests"), body)
        dup = answer.get("duplicate")
        return Submission(
            request_id=str(answer.get("request_id", body["request_id"])),
            state=str(answer.get("state", "queued")),
            duplicate=dup if isinstance(dup, bool) else None,
        )

    def status(self, request_id: str) -> RequestStatus:
        """``GET /v1/requests/{id}``; raises :class:`NotFound` when the API knows nothing of it."""
        check_id(request_id, "request_id")
        answer = self._request("GET", self._path("requests", request_id))
        res = answer.get("result")
        result = Result.from_dict(res) if isinstance(res, dict) else None
        state = answer.get("state")
        return RequestStatus(
            request_id=str(answer.get("request_id", request_id)),
            state=str(state) if isinstance(state, str) else (result.status if result else "queued"),
            result=result,
        )

    def _result(self, request_id: str, timeout: float) -> Result:
        deadline = time.monotonic() + timeout
        st = self.status(request_id)
        if st.result is not None:
            return st.result
        for item in self._sse(request_id, 0, deadline, timeout, "result"):
            if isinstance(item, Result):
                return item
        # The stream ended with a result, so this is not reached; but be clear.
        st = self.status(request_id)  # pragma: no cover
        if st.result is not None:  # pragma: no cover
            return st.result
        raise ResultTimeout(request_id, timeout)  # pragma: no cover

    def _events(
        self,
        request_id: str,
        after: int,
        deadline: Optional[float],
        linger: float,
        timeout: Optional[float],
    ) -> Generator[Union[Event, Result], None, None]:
        # The server ends the stream after the result (once `removed` is out,
        # or 5 s later); `linger` bounds how long we wait for that here.
        result_at: Optional[float] = None
        for item in self._sse(request_id, after, deadline, timeout, "end of the events", linger):
            if isinstance(item, Result):
                result_at = time.monotonic()
            yield item
            if isinstance(item, Event) and item.type == "removed" and result_at is not None:
                return

    def _sse(
        self,
        request_id: str,
        after: int,
        deadline: Optional[float],
        timeout: Optional[float],
        what: str,
        linger: Optional[float] = None,
    ) -> Generator[Union[Event, Result], None, None]:
        """Follows the event stream, resuming after drops; ``what == "result"`` stops at the result."""
        path = self._path("requests", request_id, "events")
        last_seq = after
        idle = 0  # connections in a row that brought nothing
        delay = 0.5
        rate_tries = 0
        result_at: Optional[float] = None

        def remaining() -> Optional[float]:
            ends = []
            if deadline is not None:
                ends.append(deadline)
            if result_at is not None and linger is not None:
                ends.append(result_at + linger)
            return None if not ends else min(ends) - time.monotonic()

        def expired() -> bool:
            r = remaining()
            return r is not None and r <= 0

        while True:
            if result_at is not None and expired():
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(request_id, timeout or 0.0, what)
            extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_seq > 0:
                extra["Last-Event-ID"] = str(last_seq)
            left = remaining()
            conn = self._connection(self._timeout if left is None else max(0.05, min(self._timeout, left)))
            progressed = False
            try:
                conn.connect()
                sock = conn.sock
                conn.request("GET", path, headers=self._headers(extra))
                resp = conn.getresponse()
                if resp.status == 429 and rate_tries < self._max_retries:
                    rate_tries += 1
                    ra = _retry_after(resp.getheader("Retry-After"))
                    resp.read()
                    wait = min(ra if ra is not None else 1.0, self._max_retry_wait)
                    left = remaining()
                    time.sleep(wait if left is None else max(0.0, min(wait, left)))
                    continue
                if resp.status != 200:
                    raise _api_error(resp.status, resp.read(), _retry_after(resp.getheader("Retry-After")))
                rate_tries = 0
                decoder = SseDecoder()
                while True:
                    left = remaining()
                    if left is not None and left <= 0:
                        break
                    if sock is not None:
                        sock.settimeout(self._read_timeout if left is None else min(self._read_timeout, left))
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    for item in decoder.feed(chunk):
                        progressed = True
                        if decoder.retry_ms is not None:
                            delay = decoder.retry_ms / 1000.0
                        if isinstance(item, SseComment):
                            continue
                        try:
                            obj = parse_json_object(item.data, f"SSE {item.event} message")
                        except ValueError:
                            continue
                        if item.event == "result":
                            if result_at is None:
                                result_at = time.monotonic()
                                yield Result.from_dict(obj)
                                if what == "result":
                                    return
                            continue
                        try:
                            ev = Event.from_dict(obj)
                        except ValueError:
                            continue
                        if ev.seq <= last_seq:
                            continue
                        last_seq = ev.seq
                        yield ev
                if result_at is not None:
                    return  # the server ended the stream after the result
            except WorkersSpawnerError:
                raise
            except (OSError, http.client.HTTPException) as e:
                # A drop (reset, cut chunk, silence past read_timeout): resume
                # from last_seq, unless the result is already here.
                if result_at is not None:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    raise ResultTimeout(request_id, timeout or 0.0, what) from e
                if not progressed and idle + 1 > self._reconnects:
                    raise TransportError(
                        f"the event stream of {request_id!r} at {self.url} failed "
                        f"{idle + 1} times in a row without bringing anything: {e}"
                    ) from e
            finally:
                conn.close()
            if progressed:
                idle = 0
            else:
                # Ended (or dropped) without bringing anything, not even a heartbeat.
                idle += 1
                if idle > self._reconnects:
                    raise TransportError(
                        f"the event stream of {request_id!r} at {self.url} ended "
                        f"{idle} times in a row without bringing anything"
                    )
            left = remaining()
            time.sleep(delay if left is None else max(0.0, min(delay, left)))

    def cancel(self, request_id: str) -> None:
        """``POST /v1/requests/{id}/cancel`` (admin token)."""
        check_id(request_id, "request_id")
        self._request("POST", self._path("requests", request_id, "cancel"))

    def cancel_session(self, session_id: str) -> None:
        """``POST /v1/sessions/{id}/cancel`` (admin token)."""
        check_id(session_id, "session_id")
        self._request("POST", self._path("sessions", session_id, "cancel"))

    def close(self) -> None:
        """Nothing to release: every call uses its own connection."""

