"""The client's methods over both transports, against the real daemon.

Every test here runs twice: ``[redis]`` (PROTOCOL.md over Redis streams)
and ``[http]`` (the daemon's HTTP API, docs/api.md, with the admin token).
"""

from __future__ import annotations

import re
import time
from typing import List

import pytest

from workers_spawner_client import Client, Event, EventStream, Result, ResultTimeout

from pyclient_support import Daemon, rand_hex

RESULT_TIMEOUT = 90.0
EVENTS_TIMEOUT = 120.0


def seqs(events: List[Event]) -> List[int]:
    return [e.seq for e in events]


def assert_contiguous(events: List[Event], start: int = 1) -> None:
    got = seqs(events)
    assert got == list(range(start, start + len(got))), f"seqs with a gap or a repeat: {got}"


def wait_for_event(c: Client, rid: str, kind: str) -> List[Event]:
    """Follows ``rid`` until an event of ``kind``; returns the events seen."""
    seen: List[Event] = []
    with c.events(rid, timeout=EVENTS_TIMEOUT) as stream:
        for ev in stream:
            seen.append(ev)
            if ev.type == kind:
                return seen
    pytest.fail(f"the events of {rid} ended without {kind!r}: {[e.type for e in seen]}")


def test_spawn_and_result(client: Client) -> None:
    prompt = f"hello-{rand_hex()}"
    rid = client.spawn("echo_v1", prompt)
    assert re.fullmatch(r"py-[0-9a-f]{32}", rid), rid
    r = client.result(rid, timeout=RESULT_TIMEOUT)
    assert isinstance(r, Result)
    assert r.request_id == rid
    assert r.status == "succeeded", r
    assert r.succeeded
    assert r.exit_code == 0
    assert f"prompt={prompt}" in r.output, r.output
    assert r.worker is not None and r.worker.preset == "echo_v1"
    assert r.error is None
    # The result is still there for a second reader.
    again = client.result(rid, timeout=5)
    assert again.status == "succeeded"
    assert client.status(rid).state == "succeeded"


def test_spawn_with_own_request_id_and_user(client: Client) -> None:
    rid = f"py-own-{rand_hex()}"
    assert client.spawn("echo_v1", "mine", request_id=rid, user_id="user-py") == rid
    r = client.result(rid, timeout=RESULT_TIMEOUT)
    assert r.status == "succeeded" and "prompt=mine" in r.output


def test_run(client: Client) -> None:
    r = client.run("echo_v1", "run-it", timeout=RESULT_TIMEOUT)
    assert r.status == "succeeded", r
    assert "prompt=run-it" in r.output


def test_run_failed_exit_code(client: Client) -> None:
    r = client.run("shell_v1", "echo bad; exit 3", timeout=RESULT_TIMEOUT)
    assert r.status == "failed", r
    assert r.exit_code == 3
    assert "bad" in r.output


def test_run_with_override(client: Client) -> None:
    r = client.run(
        "shell_v1",
        'echo "tools=$ORCHESTRATOR_ALLOWED_TOOLS"',
        override={"allowed_tools": ["respond"]},
        timeout=RESULT_TIMEOUT,
    )
    assert r.status == "succeeded", r
    assert "tools=respond" in r.output, r.output


def test_dry_run(client: Client) -> None:
    r = client.run("echo_v1", "dry", dry_run=True, timeout=RESULT_TIMEOUT)
    assert r.status == "succeeded", r
    assert r.raw.get("config", {}).get("id") == "echo_v1", r.raw
    assert isinstance(r.raw.get("files"), list)


def test_events_in_order_and_end(client: Client) -> None:
    rid = client.spawn("echo_v1", "events-please")
    stream = client.events(rid, timeout=EVENTS_TIMEOUT)
    assert isinstance(stream, EventStream)
    events = list(stream)  # ends by itself after the result
    assert_contiguous(events)
    assert all(e.request_id == rid for e in events)
    types = [e.type for e in events]
    for kind in ("accepted", "started", "output", "finished"):
        assert kind in types, types
    idx = {k: types.index(k) for k in ("accepted", "started", "output", "finished")}
    assert idx["accepted"] < idx["started"] < idx["output"] < idx["finished"], types
    assert any(
        e.type == "output" and "prompt=events-please" in str(e.data.get("text")) for e in events
    ), events
    assert stream.result is not None and stream.result.status == "succeeded"
    assert stream.last_seq == events[-1].seq


def test_events_resume_after(client: Client) -> None:
    rid = client.spawn("shell_v1", "echo one; sleep 1; echo two; sleep 1; echo three")
    first: List[Event] = []
    stream = client.events(rid, timeout=EVENTS_TIMEOUT)
    for ev in stream:
        first.append(ev)
        if len(first) == 3:
            break
    stream.close()
    assert stream.last_seq == first[-1].seq == 3
    rest_stream = client.events(rid, after=stream.last_seq, timeout=EVENTS_TIMEOUT)
    rest = list(rest_stream)
    assert rest, "nothing after the resumption"
    assert rest[0].seq == 4, seqs(rest)
    assert_contiguous(first + rest)
    outputs = [e.data.get("text") for e in first + rest if e.type == "output"]
    assert outputs == ["one", "two", "three"], outputs
    assert "finished" in [e.type for e in rest]
    assert rest_stream.result is not None and rest_stream.result.status == "succeeded"


def test_events_of_a_finished_request_replay_and_end(client: Client) -> None:
    rid = client.spawn("echo_v1", "replay")
    assert client.result(rid, timeout=RESULT_TIMEOUT).status == "succeeded"
    events = list(client.events(rid, timeout=EVENTS_TIMEOUT))
    assert_contiguous(events)
    assert "finished" in [e.type for e in events]
    later = list(client.events(rid, after=2, timeout=EVENTS_TIMEOUT))
    assert [e.seq for e in later] == [e.seq for e in events if e.seq > 2]


def test_cancel(client: Client) -> None:
    rid = client.spawn("shell_v1", "sleep 30")
    wait_for_event(client, rid, "started")
    t0 = time.monotonic()
    client.cancel(rid)
    r = client.result(rid, timeout=45)
    assert r.status == "cancelled", r
    assert time.monotonic() - t0 < 25, "the cancel did not stop the worker early"


def test_cancel_session(client: Client) -> None:
    sid = f"py-sess-{rand_hex()}"
    rid = client.spawn("shell_v1", "sleep 30", session_id=sid)
    wait_for_event(client, rid, "started")
    client.cancel_session(sid)
    r = client.result(rid, timeout=45)
    assert r.status == "cancelled", r
    assert r.session_id == sid


def test_result_timeout(client: Client) -> None:
    rid = client.spawn("shell_v1", "sleep 20")
    t0 = time.monotonic()
    with pytest.raises(ResultTimeout) as ei:
        client.result(rid, timeout=1.5)
    took = time.monotonic() - t0
    assert isinstance(ei.value, TimeoutError)
    assert 1.4 <= took < 10, took
    client.cancel(rid)
    assert client.result(rid, timeout=45).status == "cancelled"


def test_bad_ids_are_refused_before_publishing(client: Client) -> None:
    with pytest.raises(ValueError, match="request_id"):
        client.spawn("echo_v1", "x", request_id="has space")
    with pytest.raises(ValueError, match="session_id"):
        client.spawn("echo_v1", "x", session_id="s" * 200)


def test_concurrent_runs(client: Client, daemon: Daemon) -> None:
    rids = [client.spawn("echo_v1", f"many-{i}") for i in range(4)]
    results = [client.result(rid, timeout=RESULT_TIMEOUT) for rid in rids]
    for i, r in enumerate(results):
        assert r.status == "succeeded", r
        assert f"prompt=many-{i}" in r.output
