"""Pages of a listing: the query's ``limit`` and ``page_token``, and the token of the next page.

A listing is ordered by a row's time and then its id (a UUID), and a page starts after the last row of the one
before (a keyset, so that rows added or removed meanwhile neither repeat nor skip any other). The token is that
last row's time and id, base64url-encoded: opaque to a client, which sends it back as it came.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from lockwise.core import errors, inputs

#: rows a page holds at most, and by default
MAX_LIMIT = 100
#: a token's length at most: a time and a UUID, base64url (about 90 characters)
_MAX_TOKEN = 200


@dataclass(frozen=True)
class Page:
    """Which page a request asked for: at most ``limit`` rows, after the row at ``after`` (None: the first page)."""

    limit: int
    after: tuple[dt.datetime, str] | None


def requested(query: dict[str, str]) -> Page:
    """The page a listing's query names (400 ``invalid_limit``, ``invalid_page_token``)."""
    limit = MAX_LIMIT
    if "limit" in query:
        text = query["limit"]
        if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_LIMIT):
            raise errors.BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}", code="invalid_limit")
        limit = int(text)
    token = query.get("page_token")
    return Page(limit, None if token is None else _position(token))


def first() -> Page:
    """A listing's first page at its largest: what a listing answered beside another's rows shows of it."""
    return Page(MAX_LIMIT, None)


T = TypeVar("T")


def keyset_sql(at_column: str, id_column: str) -> str:
    """How a listing's statement ends, after its own conditions: the rows after the page's position, in order, one
    more than the page holds (whether another page follows); its parameters are ``bind``'s."""
    return (
        f" AND (CAST(:at AS timestamptz) IS NULL OR ({at_column}, {id_column})"
        f" > (CAST(:at AS timestamptz), CAST(:after AS uuid))) ORDER BY {at_column}, {id_column} LIMIT :n"
    )


def bind(page: Page) -> dict[str, Any]:
    """``keyset_sql``'s parameters for ``page``."""
    at, after = page.after or (None, None)
    return {"at": at, "after": after, "n": page.limit + 1}


def next_token(found: Sequence[T], page: Page, position: Callable[[T], tuple[dt.datetime, str]]) -> str | None:
    """The next page's token from what ``keyset_sql`` found (None: no row after the page's last); ``position``: a
    row's time and id."""
    return token_after(*position(found[page.limit - 1])) if len(found) > page.limit else None


def token_after(at: dt.datetime, row_id: str) -> str:
    """The token of the page after the row of ``at`` and ``row_id``."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{row_id}".encode()).decode().rstrip("=")


def _position(token: str) -> tuple[dt.datetime, str]:
    bad = errors.BadRequest("page_token must be the next_page_token of an earlier page", code="invalid_page_token")
    if not (token.isascii() and 0 < len(token) <= _MAX_TOKEN):
        raise bad
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, ValueError) as exc:  # not base64url, or not ASCII inside
        raise bad from exc
    at, _, row_id = text.partition("|")
    canonical = inputs.canonical_uuid(row_id)
    if canonical is None:
        raise bad
    try:
        return inputs.parse_time(at, "page_token", code="invalid_page_token"), canonical
    except errors.BadRequest as exc:
        raise bad from exc
