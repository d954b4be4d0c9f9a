"""What only the HTTP transport has: status codes, tokens, idempotent
submission, rate limits, and resuming an event stream after a dropped
connection (``Last-Event-ID``). Against the real daemon's API (docs/api.md).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Callable, List, Optional, Tuple

import pytest

from workers_spawner_client import (
    AuthError,
    HttpClient,
    NotFound,
    RateLimited,
    RequestRejected,
)

from pyclient_support import Daemon, free_port, rand_hex

RESULT_TIMEOUT = 90.0


def test_rejected_request_raises_request_rejected(daemon: Daemon) -> None:
    c = daemon.http_client("submit")
    with pytest.raises(RequestRejected) as ei:
        c.spawn("no_such_preset_v9", "hi")
    e = ei.value
    assert e.status == 400
    assert e.field == "worker_config_id", e
    assert e.code == "unknown_preset", e
    assert e.message


def test_empty_prompt_is_rejected_with_its_field(daemon: Daemon) -> None:
    with pytest.raises(RequestRejected) as ei:
        daemon.http_client("submit").spawn("echo_v1", "")
    assert ei.value.field == "task.prompt", ei.value


def test_reader_token_cannot_spawn(daemon: Daemon) -> None:
    with pytest.raises(AuthError) as ei:
        daemon.http_client("read").spawn("echo_v1", "nope")
    assert ei.value.status == 403
    assert ei.value.code == "forbidden"


def test_no_token_is_401(daemon: Daemon) -> None:
    with pytest.raises(AuthError) as ei:
        daemon.http_client(None).spawn("echo_v1", "nope")
    assert ei.value.status == 401
    assert ei.value.code == "unauthorized"


def test_unknown_token_is_401(daemon: Daemon) -> None:
    c = HttpClient(daemon.api_url, token="not-a-token-" + rand_hex())
    with pytest.raises(AuthError) as ei:
        c.status("py-whatever")
    assert ei.value.status == 401


def test_roles(daemon: Daemon) -> None:
    submitter = daemon.http_client("submit")
    reader = daemon.http_client("read")
    rid = submitter.spawn("shell_v1", "sleep 30")
    # read: GETs, events
    assert reader.status(rid).state in ("queued", "running")
    # submit is below admin: no cancels
    with pytest.raises(AuthError) as ei:
        submitter.cancel(rid)
    assert ei.value.status == 403
    with pytest.raises(AuthError):
        reader.cancel_session("py-sess-x")
    daemon.http_client("admin").cancel(rid)
    r = reader.result(rid, timeout=45)
    assert r.status == "cancelled", r


def test_unknown_request_is_not_found(daemon: Daemon) -> None:
    c = daemon.http_client("read")
    with pytest.raises(NotFound) as ei:
        c.status(f"py-never-{rand_hex()}")
    assert ei.value.status == 404


def test_idempotent_spawn_yields_one_result(daemon: Daemon) -> None:
    c = daemon.http_client("submit")
    rid = f"py-idem-{rand_hex()}"
    first = c.submit("echo_v1", "once", request_id=rid)
    second = c.submit("echo_v1", "once", request_id=rid)
    assert first.request_id == second.request_id == rid
    assert first.duplicate is False
    assert second.duplicate is True
    assert c.spawn("echo_v1", "once", request_id=rid) == rid
    r = c.result(rid, timeout=RESULT_TIMEOUT)
    assert r.status == "succeeded", r
    # Exactly one result on the Redis result stream (wait a moment for a
    # second one that must not come).
    raw = daemon.raw_redis()
    try:
        time.sleep(2)
        entries = raw.xrange(daemon.stream("result"), "-", "+")
        mine = [e for e in entries if json.loads(e[1]["data"]).get("request_id") == rid]
        assert len(mine) == 1, mine
        spawned = [
            e for e in raw.xrange(daemon.stream("spawn"), "-", "+")
            if json.loads(e[1]["data"]).get("request_id") == rid
        ]
        assert len(spawned) == 1, f"the API published the request {len(spawned)} times"
    finally:
        raw.close()


def test_rate_limit_is_retried_then_raised(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"WORKERS_SPAWNER_API_RATE_PER_MINUTE": "120"})
    rid = d.http_client("submit").spawn("echo_v1", "rate")
    impatient = d.http_client("read", max_retries=0)
    raised: Optional[RateLimited] = None
    for _ in range(400):
        try:
            impatient.status(rid)
        except RateLimited as e:
            raised = e
            break
    assert raised is not None, "400 calls at 120/min were never limited"
    assert raised.status == 429 and raised.code == "rate_limited"
    assert raised.retry_after is not None and 0 < raised.retry_after <= 60, raised.retry_after
    # The same token, with retries: it waits for Retry-After and gets through.
    patient = d.http_client("read", max_retries=3)
    assert patient.status(rid).request_id == rid
    assert d.http_client("admin").result(rid, timeout=RESULT_TIMEOUT).status == "succeeded"


class CuttingProxy:
    """A TCP proxy to the API that cuts the FIRST event stream it carries
    right after its second ``id:`` message, like a dropped connection; the
    later connections pass through. Records each request's head."""

    def __init__(self, target: Tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.heads: List[str] = []
        self._cut_done = False
        self._lock = threading.Lock()
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", self.port))
        self._srv.listen(16)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        self._srv.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        up = socket.create_connection(self.target, timeout=30)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.heads.append(head.decode("latin-1"))
            up.sendall(head)
            is_events = head.split(b"\r\n", 1)[0].split(b" ")[1].split(b"?")[0].endswith(b"/events")
            with self._lock:
                cut_this = is_events and not self._cut_done
                if cut_this:
                    self._cut_done = True
            seen = b""
            sent = 0
            up.settimeout(60)
            while True:
                data = up.recv(65536)
                if not data:
                    return
                if not cut_this:
                    client.sendall(data)
                    continue
                seen += data
                end = seen.find(b"\r\n\r\n")
                cut_at = None
                if end != -1:
                    ids = list(re.finditer(rb"(?m)^id: ?\d+", seen[end:]))
                    if len(ids) >= 2:
                        blank = seen.find(b"\n\n", end + ids[1].end())
                        if blank != -1:
                            cut_at = blank + 2
                if cut_at is not None:
                    client.sendall(seen[sent:cut_at])
                    return  # close both: the client sees a dropped stream
                client.sendall(seen[sent:])
                sent = len(seen)
        except OSError:
            return
        finally:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()
            up.close()


def test_events_resume_after_a_dropped_connection(daemon: Daemon) -> None:
    host, port = daemon.api_url.rsplit("//", 1)[1].split(":")
    proxy = CuttingProxy((host, int(port)))
    try:
        submitter = daemon.http_client("submit")
        rid = submitter.spawn("shell_v1", "echo one; sleep 1; echo two; sleep 1; echo three")
        follower = HttpClient(proxy.url, token=daemon.tokens["read"])
        stream = follower.events(rid, timeout=120)
        events = list(stream)
        got = [e.seq for e in events]
        assert got == list(range(1, len(got) + 1)), f"a gap or a repeat after the drop: {got}"
        types = [e.type for e in events]
        assert "finished" in types, types
        assert [e.data.get("text") for e in events if e.type == "output"] == ["one", "two", "three"]
        assert stream.result is not None and stream.result.status == "succeeded"
        event_heads = [h for h in proxy.heads if "/events" in h.split("\r\n", 1)[0]]
        assert len(event_heads) >= 2, f"the client did not reconnect: {proxy.heads}"
        assert "last-event-id" not in event_heads[0].lower()
        assert re.search(r"(?im)^last-event-id: 2\r$", event_heads[1]), event_heads[1]
    finally:
        proxy.close()
