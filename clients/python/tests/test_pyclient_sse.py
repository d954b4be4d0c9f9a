"""The SSE decoder on byte streams (the WHATWG event-stream rules), and the
typed models on wire objects. Pure functions: no daemon needed here."""

from __future__ import annotations

from typing import List

from workers_spawner_client import Event, Result
from workers_spawner_client.sse import SseComment, SseDecoder, SseItem, SseMessage


def feed_all(chunks: List[bytes]) -> List[SseItem]:
    d = SseDecoder()
    out: List[SseItem] = []
    for c in chunks:
        out.extend(d.feed(c))
    out.extend(d.close())
    return out


def test_fields_comments_and_ids() -> None:
    stream = (
        b": heartbeat\n\n"
        b"id: 1\nevent: accepted\ndata: {\"seq\":1}\n\n"
        b"id:2\nevent:output\ndata:{\"seq\":2}\n\n"
        b"event: result\ndata: {\"status\":\"succeeded\"}\n\n"
    )
    items = feed_all([stream])
    assert items == [
        SseComment("heartbeat"),
        SseMessage("accepted", '{"seq":1}', "1"),
        SseMessage("output", '{"seq":2}', "2"),
        # No id: line: the last event id stays what it was.
        SseMessage("result", '{"status":"succeeded"}', "2"),
    ]


def test_any_split_gives_the_same_messages() -> None:
    stream = b"id: 7\r\nevent: x\r\ndata: a\r\ndata: b\r\n\r\n:c\rdata: y\r\rdata: z\n\n"
    whole = feed_all([stream])
    assert whole == [
        SseMessage("x", "a\nb", "7"),
        SseComment("c"),
        SseMessage("message", "y", "7"),
        SseMessage("message", "z", "7"),
    ]
    for cut in range(1, len(stream)):
        assert feed_all([stream[:cut], stream[cut:]]) == whole, cut
    assert feed_all([bytes([b]) for b in stream]) == whole


def test_unfinished_message_is_dropped_and_empty_data_dispatches() -> None:
    assert feed_all([b"data: complete\n\ndata: never ended\n"]) == [
        SseMessage("message", "complete", None)
    ]
    assert feed_all([b"data\n\n"]) == [SseMessage("message", "", None)]
    # An event type alone, without data, dispatches nothing.
    assert feed_all([b"event: lonely\n\ndata: d\n\n"]) == [SseMessage("message", "d", None)]


def test_bom_retry_and_unknown_fields() -> None:
    d = SseDecoder()
    items = d.feed("\ufeffretry: 1500\nfoo: bar\nid: 3\ndata: x\n\n".encode())
    assert items == [SseMessage("message", "x", "3")]
    assert d.retry_ms == 1500
    assert d.last_event_id == "3"
    d.feed(b"retry: soon\n\n")
    assert d.retry_ms == 1500


def test_utf8_split_across_chunks() -> None:
    raw = "data: héllo ✓\n\n".encode()
    i = raw.index("✓".encode()) + 1
    assert feed_all([raw[:i], raw[i:]]) == [SseMessage("message", "héllo ✓", None)]


def test_models_keep_unknown_fields() -> None:
    r = Result.from_dict(
        {
            "request_id": "r1",
            "status": "rejected",
            "exit_code": None,
            "oom_killed": False,
            "error": {"code": "unknown_preset", "field": "worker_config_id", "message": "m"},
            "output": "",
            "output_truncated": False,
            "session_id": None,
            "timings": {"queue_ms": 3},
            "artifacts": [{"name": "transcript"}],
        }
    )
    assert r.status == "rejected" and not r.succeeded
    assert r.error is not None and r.error.field == "worker_config_id"
    assert r.timings.queue_ms == 3
    assert r.attempt == 1
    assert r.raw["artifacts"] == [{"name": "transcript"}]
    e = Event.from_dict({"request_id": "r1", "seq": 4, "type": "output", "ts": "t", "data": {"text": "x"}})
    assert (e.seq, e.type, e.data["text"]) == (4, "output", "x")


def test_final_cr_ends_the_stream_cleanly() -> None:
    assert feed_all([b"data: a\r\r"]) == [SseMessage("message", "a", None)]
    assert feed_all([b"data: a\n\n: unterminated comment"]) == [SseMessage("message", "a", None)]
