"""Idempotency keys: how an app's request that may be sent again (its answer lost, or sent twice at once) names
itself, so that a retry is answered as the first request was instead of acting twice (a command, a new lock)."""

from __future__ import annotations

import re
from typing import Any

from lockwise.core import errors

_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def from_request(header: str | None, field: Any) -> str | None:
    """The request's idempotency key: the ``Idempotency-Key`` header or the body's ``idempotency_key``; both, and
    different, 400 ``conflicting_idempotency_keys`` (the header silently won: a retry carrying the body's key made a
    second command)."""
    if header not in (None, "") and field not in (None, "") and header != field:
        raise errors.BadRequest(
            "the Idempotency-Key header and the body's idempotency_key differ; send one",
            code="conflicting_idempotency_keys",
        )
    return parse(header or field)


def parse(value: Any) -> str | None:
    """None for no key; else 1-128 characters of ``[A-Za-z0-9_.:-]`` (400 ``invalid_idempotency_key``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _KEY_RE.fullmatch(value):
        raise errors.BadRequest(
            "idempotency key must be 1-128 chars of [A-Za-z0-9_.:-]", code="invalid_idempotency_key"
        )
    return value
