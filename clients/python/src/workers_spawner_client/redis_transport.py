"""The Redis transport: PROTOCOL.md as a consumer and producer sees it.

- ``spawn``: ``XADD <prefix>:spawn * data <request JSON>`` (never trimmed:
  the daemon's consumer group reads it).
- ``result``: ``XREAD BLOCK`` on ``<prefix>:result`` from ``0-0`` (the
  result may already be there), keeping the entry whose ``request_id`` is
  ours. A plain reader: no consumer group per request.
- ``events``: ``XREAD`` on the request's own stream ``<prefix>:events:<id>``
  (entry ids ``0-<seq>``, docs/api.md) from ``0-<last seq>``; while that key
  does not exist, also on ``<prefix>:events`` filtered by request id (a
  daemon that writes no per-request stream). Resumes from the last seq.
- ``cancel``: ``XADD <prefix>:control * data {"command":"cancel",...}``.
"""

from __future__ import annotations

import json
import time
from typing import (
    Any,
    Callable,
    Dict,
    Generator,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import urlsplit, urlunsplit

from .client import Client, check_id
from .errors import ResultTimeout, TransportError
from .models import Event, RequestStatus, Result, Submission, parse_json_object

__all__ = ["RedisClient"]

T = TypeVar("T")

_Entries = List[Tuple[str, Dict[str, str]]]


def _safe_url(url: str) -> str:
    """The URL without its password (for messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


class RedisClient(Client):
    """A :class:`Client` over Redis streams (make it with ``Client.redis``).

    ``block`` is the longest single ``XREAD BLOCK`` in seconds (timeouts are
    checked between them); ``retries`` how often a command is retried after
    a dropped connection before :class:`TransportError`.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "workers",
        *,
        block: float = 2.0,
        retries: int = 5,
    ) -> None:
        try:
            import redis
        except ImportError as e:  # pragma: no cover - redis is a dependency
            raise TransportError(
                "the Redis transport needs redis-py: pip install redis"
            ) from e
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._redis_mod = redis
        self.url = url
        self.prefix = prefix
        self._block = max(0.05, block)
        self._retries = max(0, retries)
        self._r = redis.Redis.from_url(url, decode_responses=True)
        #: Stream names of this prefix.
        self.spawn_stream = f"{prefix}:spawn"
        self.result_stream = f"{prefix}:result"
        self.events_stream = f"{prefix}:events"
        self.control_stream = f"{prefix}:control"

    def __repr__(self) -> str:
        return f"RedisClient({_safe_url(self.url)!r}, prefix={self.prefix!r})"

    def request_events_stream(self, request_id: str) -> str:
        """The per-request event stream ``<prefix>:events:<request_id>``."""
        return f"{self.events_stream}:{request_id}"

    # -- plumbing -------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Runs a command, retrying after connection errors."""
        errors = (self._redis_mod.ConnectionError, self._redis_mod.TimeoutError)
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                return fn()
            except errors as e:
                if attempt == self._retries:
                    raise TransportError(
                        f"Redis at {_safe_url(self.url)} failed on {what} "
                        f"after {attempt + 1} tries: {e}"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _xread(self, streams: Dict[str, str], block_s: Optional[float]) -> List[Tuple[str, _Entries]]:
        """XREAD COUNT 500 [BLOCK ms] STREAMS ...; ``None`` or ``<= 0`` does not block."""
        block_ms = int(block_s * 1000) if block_s is not None else 0
        kwargs: Dict[str, Any] = {"count": 500}
        if block_ms > 0:
            kwargs["block"] = block_ms
        keys: Dict[Any, Any] = dict(streams)
        resp: Any = self._call("XREAD", lambda: self._r.xread(keys, **kwargs))
        return _normalize_xread(resp)

    def _xadd(self, stream: str, payload: Dict[str, Any]) -> str:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return str(self._call("XADD", lambda: self._r.xadd(stream, {"data": data})))

    # -- Client -----------------------------------------------------------------

    def _publish(self, body: Dict[str, Any]) -> Submission:
        self._xadd(self.spawn_stream, body)
        return Submission(request_id=body["request_id"], state="queued", duplicate=None)

    def _result(self, request_id: str, timeout: float) -> Result:
        deadline = time.monotonic() + timeout
        last = "0-0"
        while True:
            remaining = deadline - time.monotonic()
            resp = self._xread(
                {self.result_stream: last}, min(remaining, self._block) if remaining > 0 else None
            )
            if not resp:
                if time.monotonic() >= deadline:
                    raise ResultTimeout(request_id, timeout)
                continue
            for _stream, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id
                    r = _result_of(fields)
                    if r is not None and r.request_id == request_id:
                        return r

    def _events(
        self,
        request_id: str,
        after: int,
        deadline: Optional[float],
        linger: float,
        timeout: Optional[float],
    ) -> Generator[Union[Event, Result], None, None]:
        own = self.request_events_stream(request_id)
        use_own = bool(self._call("EXISTS", lambda: self._r.exists(own)))
        main_last = "0-0"
        result_last = "0-0"
        last_seq = after
        result_at: Optional[float] = None
        removed = False
        while True:
            now = time.monotonic()
            if result_at is not None and (removed or now - result_at >= linger):
                return
            if deadline is not None and now >= deadline:
                if result_at is not None:
                    return  # the result is in; only the linger was cut short
                raise ResultTimeout(request_id, timeout or 0.0, "end of the events")
            wait = self._block
            if deadline is not None:
                wait = min(wait, deadline - now)
            if result_at is not None:
                wait = min(wait, result_at + linger - now)
            streams: Dict[str, str] = {own: f"0-{last_seq}"}
            if not use_own:
                streams[self.events_stream] = main_last
            if result_at is None:
                streams[self.result_stream] = result_last
            resp = self._xread(streams, wait if wait > 0 else None)
            found: Dict[int, Event] = {}
            result: Optional[Result] = None
            for stream, entries in resp:
                if stream == own:
                    use_own = True
                    for _entry_id, fields in entries:
                        ev = _event_of(fields)
                        if ev is not None and ev.request_id in ("", request_id):
                            found.setdefault(ev.seq, ev)
                elif stream == self.events_stream:
                    for entry_id, fields in entries:
                        main_last = entry_id
                        ev = _event_of(fields)
                        if ev is not None and ev.request_id == request_id:
                            found.setdefault(ev.seq, ev)
                elif stream == self.result_stream:
                    for entry_id, fields in entries:
                        result_last = entry_id
                        r = _result_of(fields)
                        if r is not None and r.request_id == request_id:
                            result = r
            for seq in sorted(found):
                if seq <= last_seq:
                    continue
                last_seq = seq
                ev = found[seq]
                if ev.type == "removed":
                    removed = True
                yield ev
            if result is not None and result_at is None:
                result_at = time.monotonic()
                yield result

    def status(self, request_id: str) -> RequestStatus:
        """``queued`` (no ``accepted`` event seen), ``running`` or the result's status."""
        check_id(request_id, "request_id")
        try:
            r = self._result(request_id, 0.0)
            return RequestStatus(request_id, r.status, r)
        except ResultTimeout:
            pass
        own = self.request_events_stream(request_id)
        entries: Any = self._call("XRANGE", lambda: self._r.xrange(own, "-", "+"))
        sources: List[Tuple[str, _Entries]] = [(own, list(entries or []))]
        if not entries:
            sources = []
            last = "0-0"
            while True:
                resp = self._xread({self.events_stream: last}, None)
                if not resp:
                    break
                for stream, batch in resp:
                    sources.append((stream, batch))
                    if batch:
                        last = batch[-1][0]
        for _stream, batch in sources:
            for _entry_id, fields in batch:
                ev = _event_of(fields)
                if ev is not None and ev.request_id == request_id and ev.type == "accepted":
                    return RequestStatus(request_id, "running", None)
        return RequestStatus(request_id, "queued", None)

    def cancel(self, request_id: str) -> None:
        """Publishes ``{"command": "cancel", "request_id": ...}`` on ``<prefix>:control``."""
        check_id(request_id, "request_id")
        self._xadd(self.control_stream, {"command": "cancel", "request_id": request_id})

    def cancel_session(self, session_id: str) -> None:
        """Publishes ``{"command": "cancel", "session_id": ...}`` on ``<prefix>:control``."""
        check_id(session_id, "session_id")
        self._xadd(self.control_stream, {"command": "cancel", "session_id": session_id})

    def close(self) -> None:
        """Closes the connection pool."""
        self._r.close()


def _normalize_xread(resp: Any) -> List[Tuple[str, _Entries]]:
    """XREAD's answer as ``[(stream, [(id, fields)])]`` for RESP2 and RESP3 replies."""
    if not resp:
        return []
    items = resp.items() if isinstance(resp, dict) else resp
    out: List[Tuple[str, _Entries]] = []
    for item in items:
        stream, entries = item[0], item[1]
        if (
            isinstance(entries, list)
            and len(entries) == 1
            and isinstance(entries[0], list)
            and entries[0]
            and isinstance(entries[0][0], (list, tuple))
        ):
            entries = entries[0]  # redis-py's RESP3 reply wraps the entries once more
        out.append((str(stream), [(str(e[0]), dict(e[1] or {})) for e in entries]))
    return out


def _data(fields: Dict[str, str]) -> Optional[Dict[str, Any]]:
    raw = fields.get("data")
    if raw is None:
        return None
    try:
        return parse_json_object(raw, "entry data")
    except ValueError:
        return None


def _result_of(fields: Dict[str, str]) -> Optional[Result]:
    d = _data(fields)
    if d is None or not isinstance(d.get("request_id"), str):
        return None
    return Result.from_dict(d)


def _event_of(fields: Dict[str, str]) -> Optional[Event]:
    d = _data(fields)
    if d is None:
        return None
    try:
        return Event.from_dict(d)
    except ValueError:
        return None
