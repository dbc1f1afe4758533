"""A listing's pages (``lockwise.core.pages``): the query's limit and token, and the token of the next page."""

from __future__ import annotations

import datetime as dt

import pytest

from lockwise.core import errors, pages

LOCK = "0b6f4c3e-93c5-4c8e-9d1e-2f1f3a8b7c6d"


def test_a_token_names_the_row_the_next_page_starts_after() -> None:
    at = dt.datetime(2026, 12, 6, 5, 10, 3, 123456, tzinfo=dt.UTC)
    token = pages.token_after(at, LOCK)
    assert token.isascii() and "=" not in token and "|" not in token
    assert pages.requested({"page_token": token}) == pages.Page(pages.MAX_LIMIT, (at, LOCK))
    assert pages.requested({}) == pages.Page(pages.MAX_LIMIT, None)
    assert pages.requested({"limit": "7"}).limit == 7


@pytest.mark.parametrize("limit", ["0", "101", "00000", "1e2", " 5", "+5", "٥", ""])
def test_a_limit_outside_one_to_a_hundred_is_refused(limit: str) -> None:
    with pytest.raises(errors.BadRequest) as refused:
        pages.requested({"limit": limit})
    assert refused.value.code == "invalid_limit"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "é",
        "a" * 201,
        pages.token_after(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "not-a-uuid"),
        pages.token_after(dt.datetime(2026, 1, 1), LOCK),  # a time without its offset
        pages.token_after(dt.datetime(1990, 1, 1, tzinfo=dt.UTC), LOCK),  # outside the times we take
        "////",
    ],
)
def test_a_token_no_page_gave_is_refused(token: str) -> None:
    with pytest.raises(errors.BadRequest) as refused:
        pages.requested({"page_token": token})
    assert refused.value.code == "invalid_page_token"


def test_the_next_token_names_the_pages_last_row_only_when_another_follows() -> None:
    """A listing reads one row more than its page (``keyset_sql``, ``bind``): that row says another page follows,
    and the token names the page's last row, not it."""
    at = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    rows = [(at + dt.timedelta(seconds=n), f"0b6f4c3e-93c5-4c8e-9d1e-2f1f3a8b7c6{n}") for n in range(3)]
    page = pages.Page(2, None)
    assert pages.bind(page) == {"at": None, "after": None, "n": 3}
    assert pages.next_token(rows, page, lambda row: row) == pages.token_after(*rows[1])
    assert pages.next_token(rows[:2], page, lambda row: row) is None
    assert pages.bind(pages.Page(5, rows[0])) == {"at": rows[0][0], "after": rows[0][1], "n": 6}
    assert "ORDER BY t.at, t.id LIMIT :n" in pages.keyset_sql("t.at", "t.id")
