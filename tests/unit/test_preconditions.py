"""``If-Unmodified-Since`` read and judged (``lockwise.core.preconditions``); served in
``tests/integration/test_deletion_preconditions.py``."""

from __future__ import annotations

import datetime as dt

import pytest

from lockwise.core import errors, preconditions

T = dt.datetime(2026, 12, 7, 10, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "value",
    ["Mon, 07 Dec 2026 10:00:00 GMT", "Monday, 07-Dec-26 10:00:00 GMT", "Mon Dec  7 10:00:00 2026"],
)
def test_the_three_http_date_forms_are_read_as_utc(value: str) -> None:
    assert preconditions.unmodified_since(value) == T


def test_no_header_is_no_precondition() -> None:
    assert preconditions.unmodified_since(None) is None
    preconditions.refuse_if_changed(T + dt.timedelta(days=1), None, "it", "changed")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2026-12-07T10:00:00Z",
        "Mon, 32 Dec 2026 10:00:00 GMT",
        "\x00",
        # past what a date holds once in UTC: an OverflowError, a 500 (attack run 119)
        "Fri, 31 Dec 9999 23:59:59 -0001",
        "Fri, 31 Dec 9999 20:00:00 -1200",
    ],
)
def test_what_is_no_http_date_is_400(value: str) -> None:
    with pytest.raises(errors.BadRequest) as refused:
        preconditions.unmodified_since(value)
    assert refused.value.code == "invalid_if_unmodified_since"


def test_a_change_is_judged_in_whole_seconds_as_the_date_is() -> None:
    preconditions.refuse_if_changed(T + dt.timedelta(microseconds=999_999), T, "it", "changed")  # the same second
    preconditions.refuse_if_changed(None, T, "it", "changed")  # nothing there
    with pytest.raises(errors.PreconditionFailed) as refused:
        preconditions.refuse_if_changed(T + dt.timedelta(seconds=1), T, "it", "changed")
    assert (refused.value.status, refused.value.code) == (412, "changed")
