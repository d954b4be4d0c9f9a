"""Exceptions of the client.

A ``rejected`` *result* is not an exception (it is a :class:`Result` with
``status == "rejected"``); the HTTP API's ``400`` answer to a request it can
see is bad before publishing it is (:class:`RequestRejected`).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "WorkersSpawnerError",
    "TransportError",
    "ResultTimeout",
    "ApiError",
    "RequestRejected",
    "AuthError",
    "NotFound",
    "RateLimited",
]


class WorkersSpawnerError(Exception):
    """Base class of every error this client raises."""


class TransportError(WorkersSpawnerError, ConnectionError):
    """Redis or the HTTP API could not be reached (after the client's retries)."""


class ResultTimeout(WorkersSpawnerError, TimeoutError):
    """No result (or, for ``events(timeout=...)``, no end of the events) in time."""

    def __init__(self, request_id: str, timeout: float, what: str = "result") -> None:
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(f"no {what} for request {request_id!r} within {timeout:g} s")


class ApiError(WorkersSpawnerError):
    """The HTTP API answered with an error (``{"error": {code, field, message}}``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: Optional[str] = None,
    ) -> None:
        self.status = status
        self.code = code
        self.field = field
        self.message = message
        where = f" (field {field})" if field else ""
        super().__init__(f"HTTP {status} {code}{where}: {message}")


class RequestRejected(ApiError):
    """``400``: the request is what the daemon would reject; ``field`` names the field."""


class AuthError(ApiError):
    """``401`` (missing or unknown token) or ``403`` (token below the route's role)."""


class NotFound(ApiError):
    """``404``: the API knows nothing of this request."""


class RateLimited(ApiError):
    """``429`` still after the client's retries; ``retry_after`` is the last wait asked for."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(status, code, message, field)
        self.retry_after = retry_after
