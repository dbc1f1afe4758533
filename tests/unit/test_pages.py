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
