"""The transport-independent part: :class:`Client`, :class:`EventStream`.

``Client.redis(url)`` and ``Client.http(url, token)`` give a client with the
same methods; only how they reach the daemon differs.
"""

from __future__ import annotations

import abc
import re
import time
import uuid
from types import TracebackType
from typing import (
    Any,
    Dict,
    Generator,
    Iterator,
    Mapping,
    Optional,
    Type,
    Union,
)

from .models import Event, RequestStatus, Result, Submission

__all__ = ["Client", "EventStream", "DEFAULT_TIMEOUT", "new_request_id"]

#: How long :meth:`Client.result` and :meth:`Client.run` wait by default, in seconds.
DEFAULT_TIMEOUT = 600.0

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    """A fresh request id, ``py-<uuid4 hex>``."""
    return f"py-{uuid.uuid4().hex}"


def check_id(value: str, what: str) -> str:
    """Raises ``ValueError`` unless ``value`` is a valid request or session id
    (1-128 characters of ``[A-Za-z0-9._:-]``, PROTOCOL.md section 2)."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not valid: use 1-128 characters of A-Z a-z 0-9 . _ : -"
        )
    return value


# What the transports' event generators yield: events, and the result once.
_Item = Union[Event, Result]


class EventStream(Iterator[Event]):
    """The events of one request, in ``seq`` order, without duplicates.

    Iterate it; it ends after the request's result arrived (once the
    ``removed`` event is out, or a few seconds after the result). The result
    is then in :attr:`result`. :attr:`last_seq` is the seq of the last event
    handed out: pass it as ``after=`` to :meth:`Client.events` to carry on
    where this stream stopped. Close it (or use ``with``) to stop early.
    """

    def __init__(self, request_id: str, after: int, items: Generator[_Item, None, None]) -> None:
        self.request_id = request_id
        #: The seq of the last event handed out (``after`` before the first).
        self.last_seq: int = after
        #: The request's result, once it arrived.
        self.result: Optional[Result] = None
        self._items = items

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> Event:
        while True:
            item = next(self._items)
            if isinstance(item, Result):
                self.result = item
                continue
            self.last_seq = item.seq
            return item

    def close(self) -> None:
        """Stops following (closes the connection the stream used)."""
        self._items.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class Client(abc.ABC):
    """A client of workers-spawner. Make one with :meth:`redis` or :meth:`http`.

    Both kinds have the same methods. A client may be used as a context
    manager (``with Client.redis(url) as c: ...``), which closes it.
    """

    @staticmethod
    def redis(url: str, prefix: str = "workers") -> "Client":
        """A client that speaks PROTOCOL.md over Redis streams.

        ``url`` is a redis-py URL (``redis://host:6379/0``); ``prefix`` the
        daemon's ``stream_prefix`` (streams ``<prefix>:spawn``, ``:result``,
        ``:events``, ``:control``).
        """
        from .redis_transport import RedisClient

        return RedisClient(url, prefix=prefix)

    @staticmethod
    def http(url: str, token: Optional[str] = None) -> "Client":
        """A client of the daemon's HTTP API (docs/api.md).

        ``url`` is the API's base (``http://127.0.0.1:9092``), ``token`` the
        bearer token (``None``: send none).
        """
        from .http_transport import HttpClient

        return HttpClient(url, token=token)

    # -- publishing ---------------------------------------------------------

    @staticmethod
    def build_request(
        preset: Optional[str],
        prompt: str,
        *,
        request_id: str,
        user_id: Optional[str] = None,
        session_id: Optional[str] = None,
        override: Optional[Mapping[str, Any]] = None,
        repo: Optional[Mapping[str, Any]] = None,
        dry_run: bool = False,
    ) -> Dict[str, Any]:
        """The spawn request (PROTOCOL.md section 2) :meth:`spawn` publishes."""
        check_id(request_id, "request_id")
        if session_id is not None:
            check_id(session_id, "session_id")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        task: Dict[str, Any] = {"prompt": prompt}
        if user_id is not None:
            task["user_id"] = user_id
        if session_id is not None:
            task["session_id"] = session_id
        if repo is not None:
            task["repo"] = dict(repo)
        body: Dict[str, Any] = {"request_id": request_id}
        if preset is not None:
            body["worker_config_id"] = preset
        if override is not None:
            body["worker_config_override"] = dict(override)
        body["task"] = task
        if dry_run:
            body["dry_run"] = True
        return body

    def submit(
        self,
        preset: Optional[str],
        prompt: str,
        *,
        request_id: Optional[str] = None,
        user_id: Optional[str] = None,
        session_id: Optional[str] = None,
        override: Optional[Mapping[str, Any]] = None,
        repo: Optional[Mapping[str, Any]] = None,
        dry_run: bool = False,
    ) -> Submission:
        """Like :meth:`spawn`, returning the whole :class:`Submission`."""
        body = self.build_request(
            preset,
            prompt,
            request_id=request_id if request_id is not None else new_request_id(),
            user_id=user_id,
            session_id=session_id,
            override=override,
            repo=repo,
            dry_run=dry_run,
        )
        return self._publish(body)

    def spawn(
        self,
        preset: Optional[str],
        prompt: str,
        *,
        request_id: Optional[str] = None,
        user_id: Optional[str] = None,
        session_id: Optional[str] = None,
        override: Optional[Mapping[str, Any]] = None,
        repo: Optional[Mapping[str, Any]] = None,
        dry_run: bool = False,
    ) -> str:
        """Publishes a spawn request and returns its ``request_id``.

        - ``preset``: the ``worker_config_id`` (``None`` for an inline config
          in ``override``, where the daemon's policy allows it);
        - ``request_id``: the idempotency key; ``py-<uuid4 hex>`` when omitted.
          Publishing the same id again never runs a second worker;
        - ``override``: the ``worker_config_override`` merge patch (a dict);
        - ``repo``: ``task.repo`` (``{"url", "ref", "branch", ...}``);
        - ``session_id``, ``user_id``: ``task.session_id``, ``task.user_id``;
        - ``dry_run``: resolve and render only; the result holds the merged
          config and the files (``result.raw["config"]``, ``["files"]``).

        Raises ``ValueError`` for an id the daemon could not answer (not
        1-128 characters of ``[A-Za-z0-9._:-]``). Over HTTP a request the
        daemon would reject raises :class:`RequestRejected`; over Redis it
        gets a ``rejected`` result.
        """
        return self.submit(
            preset,
            prompt,
            request_id=request_id,
            user_id=user_id,
            session_id=session_id,
            override=override,
            repo=repo,
            dry_run=dry_run,
        ).request_id

    def run(
        self,
        preset: Optional[str],
        prompt: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        request_id: Optional[str] = None,
        user_id: Optional[str] = None,
        session_id: Optional[str] = None,
        override: Optional[Mapping[str, Any]] = None,
        repo: Optional[Mapping[str, Any]] = None,
        dry_run: bool = False,
    ) -> Result:
        """:meth:`spawn`, then :meth:`result`: the request's result.

        Raises :class:`ResultTimeout` when none came within ``timeout`` s
        (the worker goes on: :meth:`cancel` it if it should not).
        """
        rid = self.spawn(
            preset,
            prompt,
            request_id=request_id,
            user_id=user_id,
            session_id=session_id,
            override=override,
            repo=repo,
            dry_run=dry_run,
        )
        return self.result(rid, timeout=timeout)

    # -- following ----------------------------------------------------------

    def events(
        self,
        request_id: str,
        *,
        after: int = 0,
        timeout: Optional[float] = None,
        linger: float = 5.0,
    ) -> EventStream:
        """The request's events with a seq above ``after``, as they happen.

        The stream ends once the result arrived and then the ``removed``
        event, or ``linger`` s after the result (sessions keep their
        container). ``timeout`` bounds the whole stream
        (:class:`ResultTimeout`); ``None`` waits as long as it takes.
        Dropped connections are resumed from the last seq handed out.
        """
        check_id(request_id, "request_id")
        if after < 0:
            raise ValueError("after must be >= 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        return EventStream(
            request_id, after, self._events(request_id, after, deadline, linger, timeout)
        )

    def result(self, request_id: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Waits for the request's one result (it may already be there).

        Raises :class:`ResultTimeout` (a ``TimeoutError``) after ``timeout``
        seconds. A ``rejected`` request is a result, not an exception.
        """
        check_id(request_id, "request_id")
        return self._result(request_id, timeout)

    @abc.abstractmethod
    def status(self, request_id: str) -> RequestStatus:
        """Where the request is now: ``queued``, ``running`` or its result's status."""

    # -- control ------------------------------------------------------------

    @abc.abstractmethod
    def cancel(self, request_id: str) -> None:
        """Asks the daemons to stop the request's worker; its result will say ``cancelled``."""

    @abc.abstractmethod
    def cancel_session(self, session_id: str) -> None:
        """Asks the daemons to stop the session's container (and its running task)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases connections."""

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    # -- what a transport provides ------------------------------------------

    @abc.abstractmethod
    def _publish(self, body: Dict[str, Any]) -> Submission:
        """Publishes a spawn request."""

    @abc.abstractmethod
    def _events(
        self,
        request_id: str,
        after: int,
        deadline: Optional[float],
        linger: float,
        timeout: Optional[float],
    ) -> Generator[_Item, None, None]:
        """Yields the events after ``after`` and, once, the result."""

    @abc.abstractmethod
    def _result(self, request_id: str, timeout: float) -> Result:
        """Waits for the result."""
