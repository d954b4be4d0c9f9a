"""What only the Redis transport has: the exact entries it writes
(PROTOCOL.md sections 2 and 9), rejected requests as results, plain XREAD
readers (no consumer group), and following events from the main stream when
a request has no per-request stream.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from workers_spawner_client import Result

from pyclient_support import Daemon, rand_hex

RESULT_TIMEOUT = 90.0


def entries_of(daemon: Daemon, stream: str) -> List[Dict[str, Any]]:
    raw = daemon.raw_redis()
    try:
        return [json.loads(fields["data"]) for _id, fields in raw.xrange(daemon.stream(stream), "-", "+")]
    finally:
        raw.close()


def test_rejected_request_is_a_result(daemon: Daemon) -> None:
    c = daemon.redis_client()
    rid = c.spawn("no_such_preset_v9", "hi")
    r = c.result(rid, timeout=RESULT_TIMEOUT)
    assert isinstance(r, Result)
    assert r.status == "rejected", r
    assert r.error is not None
    assert r.error.field == "worker_config_id", r.error
    assert r.error.code == "unknown_preset", r.error
    assert r.error.message
    # Its events end too (there is no container, so no `removed`).
    events = list(c.events(rid, timeout=60, linger=1.0))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_spawn_writes_the_protocol_request(daemon: Daemon) -> None:
    c = daemon.redis_client()
    rid = f"py-wire-{rand_hex()}"
    sid = f"py-sess-{rand_hex()}"
    # An unknown preset: the daemon answers at once and runs nothing.
    c.spawn(
        "no_such_preset_wire",
        "wire prompt",
        request_id=rid,
        user_id="u-1",
        session_id=sid,
        override={"limits": {"timeout_sec": 30}},
        repo={"url": "http://127.0.0.1:1/none.git", "ref": "main"},
        dry_run=True,
    )
    mine = [e for e in entries_of(daemon, "spawn") if e.get("request_id") == rid]
    assert mine == [
        {
            "request_id": rid,
            "worker_config_id": "no_such_preset_wire",
            "worker_config_override": {"limits": {"timeout_sec": 30}},
            "task": {
                "prompt": "wire prompt",
                "user_id": "u-1",
                "session_id": sid,
                "repo": {"url": "http://127.0.0.1:1/none.git", "ref": "main"},
            },
            "dry_run": True,
        }
    ], mine
    r = c.result(rid, timeout=RESULT_TIMEOUT)
    assert r.request_id == rid and r.status == "rejected", r


def test_cancel_writes_control_entries(daemon: Daemon) -> None:
    c = daemon.redis_client()
    c.cancel("py-not-running")
    c.cancel_session("py-sess-none")
    control = entries_of(daemon, "control")
    assert {"command": "cancel", "request_id": "py-not-running"} in control
    assert {"command": "cancel", "session_id": "py-sess-none"} in control


def test_readers_make_no_consumer_group(daemon: Daemon) -> None:
    c = daemon.redis_client()
    rid = c.spawn("echo_v1", "no-groups")
    assert c.result(rid, timeout=RESULT_TIMEOUT).status == "succeeded"
    list(c.events(rid, timeout=60))
    raw = daemon.raw_redis()
    try:
        assert raw.xinfo_groups(daemon.stream("result")) == []
        assert raw.xinfo_groups(daemon.stream("events")) == []
    finally:
        raw.close()


def test_events_from_the_main_stream_without_a_per_request_stream(daemon: Daemon) -> None:
    c = daemon.redis_client()
    rid = c.spawn("echo_v1", "main-stream")
    assert c.result(rid, timeout=RESULT_TIMEOUT).status == "succeeded"
    via_own = list(c.events(rid, timeout=60))
    raw = daemon.raw_redis()
    try:
        raw.delete(c.request_events_stream(rid))  # as if the daemon wrote none
    finally:
        raw.close()
    via_main = list(c.events(rid, timeout=60))
    assert [e.seq for e in via_main] == list(range(1, len(via_main) + 1))
    assert [(e.seq, e.type) for e in via_main] == [(e.seq, e.type) for e in via_own]
    rest = list(c.events(rid, after=3, timeout=60))
    assert [e.seq for e in rest] == [e.seq for e in via_main if e.seq > 3]


def test_status(daemon: Daemon) -> None:
    c = daemon.redis_client()
    assert c.status(f"py-unknown-{rand_hex()}").state == "queued"
    rid = c.spawn("echo_v1", "status")
    r = c.result(rid, timeout=RESULT_TIMEOUT)
    st = c.status(rid)
    assert st.state == "succeeded" and st.done and st.result == r
