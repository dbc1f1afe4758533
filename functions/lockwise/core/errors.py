"""The one error tree of the back-end, and the one table that maps it to HTTP.

Domain code raises these; ``lockwise.core.http`` turns them into ``{"error": {"code", "message"}}`` responses.
Messages are written for the caller: they never carry SQL, stack traces, or whether some other user exists.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

#: the most of a message an error carries: its answer and the log line of its request quote it (whatever a message
#: quotes of the request, a body of megabytes is never echoed back and logged whole: attack run 94)
MESSAGE_MAX = 1000


class LockwiseError(Exception):
    """Base of every error a caller may see. ``code`` is stable and machine-readable."""

    status: int = 500
    default_code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        message = message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 3] + "..."
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details or {}

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries (``Retry-After``, ``Allow``)."""
        return {}


class BadRequest(LockwiseError):
    status, default_code = 400, "bad_request"


class InvalidAudio(BadRequest):
    status, default_code = 422, "invalid_audio"


class PayloadTooLarge(BadRequest):
    status, default_code = 413, "payload_too_large"


class UnsupportedMediaType(BadRequest):
    status, default_code = 415, "unsupported_media_type"


class Unauthenticated(LockwiseError):
    status, default_code = 401, "unauthenticated"


class Forbidden(LockwiseError):
    status, default_code = 403, "forbidden"


class NotFound(LockwiseError):
    status, default_code = 404, "not_found"


class MethodNotAllowed(LockwiseError):
    status, default_code = 405, "method_not_allowed"

    def __init__(self, message: str, *, allowed: list[str]) -> None:
        super().__init__(message, details={"allowed": allowed})
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class Conflict(LockwiseError):
    status, default_code = 409, "conflict"


class PreconditionFailed(LockwiseError):
    """412: the caller's precondition (``If-Unmodified-Since``) no longer holds: what it meant changed since."""

    status, default_code = 412, "precondition_failed"


class RateLimited(LockwiseError):
    status, default_code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code, details={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


def seconds_until(moment: dt.datetime, now: dt.datetime) -> int:
    """Whole seconds from ``now`` until ``moment``, at least 1: a ``Retry-After`` never invites a retry too early."""
    return max(1, math.ceil((moment - now).total_seconds()))


class Unavailable(LockwiseError):
    """503: a dependency is down or busy; nothing was done (but for ``commit_unconfirmed``: the database never
    confirmed a change that may have been made, ``lockwise.core.db``). ``Retry-After`` (and
    ``details.retry_after_s``) says when to try again: a second, since what it meets (a lock wait, a pooled
    connection lost, a slow forward) is usually over by then, and a client told nothing either hammers or gives
    up."""

    status, default_code = 503, "unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, code=code, details={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


def error_body(err: LockwiseError, request_id: str) -> dict[str, Any]:
    """The JSON body for an error response (the shape the OpenAPI ``Error`` schema describes)."""
    body: dict[str, Any] = {"code": err.code, "message": err.message, "request_id": request_id}
    if err.details:
        body["details"] = err.details
    return {"error": body}
