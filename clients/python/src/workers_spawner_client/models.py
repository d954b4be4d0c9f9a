"""Typed views of what the daemon publishes: results, events, request states.

Every class keeps the whole JSON object it was made from in ``raw``, so
fields this version of the client does not know (artifacts, a workspace
report, a dry run's ``config`` and ``files``) are never lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Union

__all__ = [
    "TERMINAL_STATUSES",
    "ResultError",
    "WorkerInfo",
    "Timings",
    "Result",
    "Event",
    "Submission",
    "RequestStatus",
]

#: The statuses a result can have (PROTOCOL.md section 7).
TERMINAL_STATUSES = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "rejected", "error"}
)

JsonObject = Dict[str, Any]


def _obj(value: Any) -> JsonObject:
    return dict(value) if isinstance(value, Mapping) else {}


def _opt_str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _opt_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int) else None


def _opt_bool(value: Any) -> Optional[bool]:
    return value if isinstance(value, bool) else None


def parse_json_object(data: Union[str, bytes], what: str) -> JsonObject:
    """Parses ``data`` as a JSON object; raises ``ValueError`` naming ``what``."""
    try:
        value = json.loads(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object: {data!r:.200}")
    return value


@dataclass(frozen=True)
class ResultError:
    """The ``error`` object of a ``rejected`` or ``error`` result.

    ``field`` names the offending request field (e.g. ``worker_config_id``)
    when there is one.
    """

    code: str
    message: str
    field: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ResultError":
        """Builds it from the wire object."""
        return cls(
            code=str(d.get("code", "")),
            message=str(d.get("message", "")),
            field=_opt_str(d.get("field")),
        )


@dataclass(frozen=True)
class WorkerInfo:
    """The ``worker`` object of a result: which container ran the request."""

    container: str
    image: str
    config_hash: str
    instance: str
    preset: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WorkerInfo":
        """Builds it from the wire object."""
        return cls(
            container=str(d.get("container", "")),
            image=str(d.get("image", "")),
            config_hash=str(d.get("config_hash", "")),
            instance=str(d.get("instance", "")),
            preset=_opt_str(d.get("preset")),
        )


@dataclass(frozen=True)
class Timings:
    """The ``timings`` object of a result (instants are RFC 3339 strings)."""

    received_at: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    queue_ms: Optional[int] = None
    start_ms: Optional[int] = None
    run_ms: Optional[int] = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Timings":
        """Builds it from the wire object."""
        return cls(
            received_at=_opt_str(d.get("received_at")),
            started_at=_opt_str(d.get("started_at")),
            finished_at=_opt_str(d.get("finished_at")),
            queue_ms=_opt_int(d.get("queue_ms")),
            start_ms=_opt_int(d.get("start_ms")),
            run_ms=_opt_int(d.get("run_ms")),
        )


@dataclass(frozen=True)
class Result:
    """The one terminal result of a request (PROTOCOL.md section 7).

    A ``rejected`` request is a result like any other: look at ``status``
    and ``error`` (``error.field`` names the field), no exception is raised.
    """

    request_id: str
    #: ``succeeded``, ``failed``, ``timed_out``, ``cancelled``, ``rejected`` or ``error``.
    status: str
    exit_code: Optional[int] = None
    oom_killed: Optional[bool] = None
    error: Optional[ResultError] = None
    #: The tail of the agent's stdout (redacted by the daemon).
    output: str = ""
    output_truncated: bool = False
    session_id: Optional[str] = None
    worker: Optional[WorkerInfo] = None
    timings: Timings = field(default_factory=Timings)
    #: Which run of the request this is (1 unless a retry policy ran it again).
    attempt: int = 1
    #: The whole result object as published.
    raw: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @property
    def succeeded(self) -> bool:
        """Whether ``status`` is ``succeeded``."""
        return self.status == "succeeded"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Result":
        """Builds it from the wire object (unknown fields stay in ``raw``)."""
        err = d.get("error")
        worker = d.get("worker")
        attempt = _opt_int(d.get("attempt"))
        return cls(
            request_id=str(d.get("request_id", "")),
            status=str(d.get("status", "")),
            exit_code=_opt_int(d.get("exit_code")),
            oom_killed=_opt_bool(d.get("oom_killed")),
            error=ResultError.from_dict(err) if isinstance(err, Mapping) else None,
            output=_opt_str(d.get("output")) or "",
            output_truncated=bool(d.get("output_truncated", False)),
            session_id=_opt_str(d.get("session_id")),
            worker=WorkerInfo.from_dict(worker) if isinstance(worker, Mapping) else None,
            timings=Timings.from_dict(_obj(d.get("timings"))),
            attempt=attempt if attempt is not None else 1,
            raw=dict(d),
        )


@dataclass(frozen=True)
class Event:
    """One event of a request (PROTOCOL.md section 8).

    ``seq`` starts at 1 and grows by one per event of the request, so a gap
    means events were lost (e.g. trimmed away).
    """

    request_id: str
    seq: int
    #: ``accepted``, ``started``, ``output``, ``finished``, ``removed``, ...
    type: str
    ts: str
    data: JsonObject = field(default_factory=dict)
    #: The whole event object as published.
    raw: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Event":
        """Builds it from the wire object; raises ``ValueError`` without a usable ``seq``."""
        seq = _opt_int(d.get("seq"))
        if seq is None:
            raise ValueError(f"event without an integer seq: {dict(d)!r:.200}")
        return cls(
            request_id=str(d.get("request_id", "")),
            seq=seq,
            type=str(d.get("type", "")),
            ts=str(d.get("ts", "")),
            data=_obj(d.get("data")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Submission:
    """What publishing a spawn request answered.

    ``duplicate`` is what the HTTP API says (``True`` when it had already
    published this ``request_id`` and published nothing now); over Redis it
    is ``None``: the daemon itself makes repeats harmless.
    """

    request_id: str
    state: str = "queued"
    duplicate: Optional[bool] = None


@dataclass(frozen=True)
class RequestStatus:
    """Where a request is: ``state`` is ``queued``, ``running`` or the result's status."""

    request_id: str
    state: str
    result: Optional[Result] = None

    @property
    def done(self) -> bool:
        """Whether the request has its result."""
        return self.result is not None
