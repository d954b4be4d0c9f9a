"""Python client of workers-spawner.

::

    from workers_spawner_client import Client

    c = Client.redis("redis://127.0.0.1:6379/0")           # PROTOCOL.md over Redis
    c = Client.http("http://127.0.0.1:9092", token="...")  # docs/api.md

    rid = c.spawn("echo_v1", "hello")
    for ev in c.events(rid):
        print(ev.seq, ev.type, ev.data)
    print(c.result(rid, timeout=60).status)

Both clients have the same methods: :meth:`Client.spawn`, :meth:`Client.submit`,
:meth:`Client.events`, :meth:`Client.result`, :meth:`Client.run`,
:meth:`Client.status`, :meth:`Client.cancel`, :meth:`Client.cancel_session`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .client import DEFAULT_TIMEOUT, Client, EventStream, new_request_id  # noqa: E402
from .errors import (  # noqa: E402
    ApiError,
    AuthError,
    NotFound,
    RateLimited,
    RequestRejected,
    ResultTimeout,
    TransportError,
    WorkersSpawnerError,
)
from .http_transport import HttpClient  # noqa: E402
from .models import (  # noqa: E402
    TERMINAL_STATUSES,
    Event,
    RequestStatus,
    Result,
    ResultError,
    Submission,
    Timings,
    WorkerInfo,
)
from .redis_transport import RedisClient  # noqa: E402

__all__ = [
    "__version__",
    "Client",
    "RedisClient",
    "HttpClient",
    "EventStream",
    "DEFAULT_TIMEOUT",
    "new_request_id",
    "Result",
    "ResultError",
    "WorkerInfo",
    "Timings",
    "Event",
    "Submission",
    "RequestStatus",
    "TERMINAL_STATUSES",
    "WorkersSpawnerError",
    "TransportError",
    "ResultTimeout",
    "ApiError",
    "RequestRejected",
    "AuthError",
    "NotFound",
    "RateLimited",
]
