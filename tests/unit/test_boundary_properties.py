"""Property tests of the values a caller sends at the ends of what the storage behind them holds (attack run 119):
times at and past the ends of a date (year 1, 9999, offsets up to a day), fractions of 12 digits, page tokens and
limits, a member's terms, names, ids and thresholds. Whatever comes, each parser answers with a value its column's
CHECK, PostgreSQL's type and Firestore take, or a 400 with its code; never another exception (a 500)."""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockwise.core import errors, inputs, pages, preconditions
from lockwise.devices import idempotency, locks, members

#: Hypothesis scans sys.modules: SpeechBrain's lazy modules are set aside (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("no_lazy_speechbrain_modules")

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _zone(sign: str, hours: int, minutes: int) -> str:
    return f"{sign}{hours:02d}{minutes:02d}"


#: HTTP dates (RFC 9110's IMF-fixdate) of any year a date holds and past it, at any zone offset email.utils reads
HTTP_DATES = st.builds(
    lambda wd, d, m, y, hh, mm, ss, zone: f"{wd}, {d:02d} {m} {y:04d} {hh:02d}:{mm:02d}:{ss:02d} {zone}",
    st.sampled_from(DAYS),
    st.integers(1, 31),
    st.sampled_from(MONTHS),
    st.one_of(st.integers(0, 99), st.integers(1, 10_000), st.sampled_from([1, 1969, 1970, 9998, 9999])),
    st.integers(0, 24),
    st.integers(0, 60),
    st.integers(0, 61),
    st.one_of(
        st.sampled_from(["GMT", "UTC", "-0000", "+0000", "EST"]),
        st.builds(_zone, st.sampled_from("+-"), st.integers(0, 99), st.integers(0, 99)),
    ),
)

#: the first and last moments of the years a date holds, at offsets far either way: where a reading in UTC leaves them
HTTP_DATE_ENDS = st.builds(
    lambda first, y, zone: f"Mon, 01 Jan {y:04d} 00:00:00 {zone}" if first else f"Fri, 31 Dec {y:04d} 23:59:59 {zone}",
    st.booleans(),
    st.sampled_from([1, 100, 1900, 9999]),
    st.builds(_zone, st.sampled_from("+-"), st.sampled_from([0, 1, 12, 23, 99]), st.sampled_from([0, 1, 59])),
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(HTTP_DATES, HTTP_DATE_ENDS, st.text(max_size=40)))
def test_an_if_unmodified_since_is_a_utc_moment_or_a_400(value: str) -> None:
    """The header at the ends of a date: ``Fri, 31 Dec 9999 23:59:59 -0001`` was an OverflowError, a 500."""
    try:
        moment = preconditions.unmodified_since(value)
    except errors.BadRequest as exc:
        assert exc.code == "invalid_if_unmodified_since"
        return
    assert moment is not None and moment.utcoffset() == dt.timedelta(0)


def _iso(year: int, month: int, day: int, hour: int, minute: int, second: int, fraction: str, offset: str) -> str:
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}"


#: ISO 8601 times with an offset, of any year a date holds, seconds up to a leap second's 60, fractions of 1 to 12
#: digits, offsets to a day either way (and Z, and none)
ISO_TIMES = st.builds(
    _iso,
    st.one_of(st.integers(1, 9999), st.sampled_from([1, 1999, 2000, 2199, 2200, 9999])),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 24),
    st.integers(0, 59),
    st.integers(0, 60),
    st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,12}", fullmatch=True)),
    st.one_of(
        st.sampled_from(["Z", "", "+00:00", "-00:00", "+14:00", "-12:00", "+23:59", "-23:59", "+24:00"]),
        st.from_regex(r"[+-][0-2][0-9]:[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?", fullmatch=True),
    ),
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(ISO_TIMES, st.text(max_size=45)))
def test_a_time_from_outside_is_a_utc_moment_between_2000_and_2200_or_a_400(value: str) -> None:
    try:
        moment = inputs.parse_time(value, "at", code="invalid_at")
    except errors.BadRequest as exc:
        assert exc.code == "invalid_at"
        return
    assert moment.tzinfo is dt.UTC and inputs.EARLIEST <= moment < inputs.LATEST


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=dt.datetime(2000, 1, 2),  # a day inside either end: an offset moves the instant by up to a day
        max_value=dt.datetime(2199, 12, 30),
        timezones=st.timezones(),
    )
)
def test_a_time_within_the_range_is_never_refused_and_keeps_its_instant(moment: dt.datetime) -> None:
    # (in UTC: Python holds an ambiguous wall time of another zone unequal to every instant)
    assert inputs.parse_time(moment.isoformat(), "at", code="invalid_at") == moment.astimezone(dt.UTC)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2199, 12, 31, 23, 59, 59, 999_999)),
    st.uuids(),
    st.integers(1, pages.MAX_LIMIT),
)
def test_a_page_token_gives_back_the_very_row_it_was_made_after(at: dt.datetime, row: uuid.UUID, limit: int) -> None:
    """To the microsecond, up to the range's last one: a keyset position that moved would repeat or skip a row."""
    at = at.replace(tzinfo=dt.UTC)
    page = pages.requested({"limit": str(limit), "page_token": pages.token_after(at, str(row))})
    assert page == pages.Page(limit, (at, str(row)))


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=8),
        st.integers(-(2**64), 2**64).map(str),
        st.sampled_from(["2147483648", "9223372036854775808", "1e2", "0x10", "١٠", "１０", "+5", " 5", "0100"]),
    ),
    st.one_of(
        st.none(),
        st.text(max_size=60),
        st.builds(  # well-formed tokens of any time a date holds
            lambda t, r: base64.urlsafe_b64encode(f"{t}|{r}".encode()).decode().rstrip("="),
            ISO_TIMES,
            st.one_of(st.uuids().map(str), st.text(max_size=40)),
        ),
    ),
)
def test_a_limit_and_a_page_token_are_in_range_or_a_400(limit: str, token: str | None) -> None:
    query = {"limit": limit} | ({} if token is None else {"page_token": token})
    try:
        page = pages.requested(query)
    except errors.BadRequest as exc:
        assert exc.code in ("invalid_limit", "invalid_page_token")
        return
    assert 1 <= page.limit <= pages.MAX_LIMIT and str(page.limit) == limit.lstrip("0")
    if page.after is not None:
        at, row = page.after
        assert at.tzinfo is dt.UTC and inputs.EARLIEST <= at < inputs.LATEST and inputs.canonical_uuid(row) == row


#: JSON values at the ends of what a column holds: integers past int2/int4/int8, floats past float4/float8, -0
EDGE_NUMBERS = st.one_of(
    st.sampled_from([0, -0.0, 1, -1, 1439, 1440, 1441, 2**15, 2**31, 2**63, -(2**63) - 1, 10**20 - 1]),
    st.integers(-(10**20) + 1, 10**20 - 1),
    st.floats(allow_nan=False),  # JSON's 1e309 is inf
    st.booleans(),
)
ACCESS_VALUES = st.one_of(
    st.none(),
    EDGE_NUMBERS,
    ISO_TIMES,
    st.text(max_size=70),
    st.lists(st.sampled_from([*members.WEEKDAY_NAMES, "MON", "", 1]), max_size=9),
    st.sampled_from(["UTC", "Pacific/Kiritimati", "Etc/GMT+12", "Etc/GMT-14", "localtime", "Factory", "posixrules"]),
)


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(["guest", "member", "admin"]),
    st.dictionaries(st.sampled_from([*members.ACCESS_FIELDS, "extra"]), ACCESS_VALUES, max_size=8),
)
def test_a_members_terms_are_what_their_columns_take_or_a_400(role: str, access: dict[str, Any]) -> None:
    """What ``lock_members``' CHECKs and types take (smallint day minutes and weekdays, a zone of 64 characters at
    most, times PostgreSQL and a Python date hold), or a 400 naming the access."""
    try:
        terms = members.parse_access(role, {"role": role, "access": access})
    except errors.BadRequest as exc:
        assert exc.code in ("invalid_access", "unknown_field")
        return
    weekdays, start, end = terms["weekdays"], terms["day_start_minute"], terms["day_end_minute"]
    assert weekdays is None or (type(weekdays) is int and 1 <= weekdays <= 127)
    assert (start is None) == (end is None)
    assert start is None or (type(start) is int and type(end) is int and 0 <= start <= 1439 and 1 <= end <= 1440)
    assert 1 <= len(terms["timezone"]) <= 64
    for name in ("valid_from", "valid_until", "expires_at"):
        moment = terms[name]
        assert moment is None or (moment.tzinfo is dt.UTC and inputs.EARLIEST <= moment < inputs.LATEST)
    if terms["valid_from"] is not None and terms["valid_until"] is not None:
        assert terms["valid_from"] < terms["valid_until"]
    if role != "guest":
        assert set(access) <= {"expires_at"} or all(access[k] is None for k in access if k != "expires_at")


@settings(max_examples=400, deadline=None)
@given(st.one_of(EDGE_NUMBERS, st.none(), st.text(max_size=3)))
def test_a_voice_threshold_is_one_a_float4_holds_or_a_400(value: Any) -> None:
    """``locks.voice_threshold`` is ``real`` within [-1, 1]: a value it cannot hold (5e-324) fails in PostgreSQL."""
    assert str(locks.parse_threshold(-0.0)) == "0.0"
    try:
        threshold = locks.parse_threshold(value)
    except errors.BadRequest as exc:
        assert exc.code == "invalid_threshold"
        return
    if threshold is None:
        assert value is None
        return
    single = float(np.float32(threshold))
    assert 0.0 <= threshold <= 1.0 and math.isfinite(single) and (threshold == 0.0) == (single == 0.0)
    assert math.copysign(1.0, threshold) == 1.0  # -0.0 kept its sign, read back as "-0.0" (run 119)


#: text at the byte and character limits: 4-byte characters, combining marks, lone surrogates, NUL
EDGE_TEXT = st.one_of(
    st.text(max_size=140),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "😀", "\u0301", "\ud800", "\x00", " ", "/"]),
              st.integers(0, 1600)),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(EDGE_TEXT)
def test_a_uid_a_request_names_is_one_every_store_takes_or_a_400(value: str) -> None:
    """``users.uid`` is text of 1-128 characters, and a Firestore document id of at most 1,500 bytes."""
    try:
        uid = members.parse_uid(value)
    except errors.BadRequest as exc:
        assert exc.code == "invalid_uid"
        return
    assert 1 <= len(uid) <= 128 and inputs.is_text(uid) and inputs.is_document_id(uid)
    assert len(uid.encode("utf-8")) <= 1500


@settings(max_examples=400, deadline=None)
@given(EDGE_TEXT)
def test_a_locks_name_is_one_its_column_takes_or_a_400(value: str) -> None:
    """``locks.name``: ``CHECK (length(btrim(name)) BETWEEN 1 AND 100)``; btrim strips spaces only. (NUL and lone
    surrogates are the JSON boundary's to refuse, before any field is read.)"""
    try:
        name = locks.parse_name(inputs.check_text(value, "name"))
    except errors.BadRequest as exc:
        assert exc.code in ("invalid_name", "invalid_text")
        return
    assert 1 <= len(name.strip(" ")) <= locks.MAX_NAME and inputs.is_text(name)


@settings(max_examples=400, deadline=None)
@given(st.one_of(EDGE_TEXT, st.from_regex(r"[A-Za-z0-9_.:-]{1,130}\n?", fullmatch=True)))
def test_an_idempotency_key_is_one_its_column_takes_or_a_400(value: str) -> None:
    """``commands.idempotency_key``: 1-128 characters of ``[A-Za-z0-9_.:-]`` (a final newline once slipped past)."""
    try:
        key = idempotency.parse(value)
    except errors.BadRequest as exc:
        assert exc.code == "invalid_idempotency_key"
        return
    assert key is None or (1 <= len(key) <= 128 and key.isascii() and "\n" not in key)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        EDGE_TEXT,
        st.builds(lambda local, domain: f"{local}@{domain}", EDGE_TEXT, st.sampled_from(["x.io", "İ.com", "ß.de"])),
    )
)
def test_a_typed_address_is_one_its_column_takes_or_none(value: str) -> None:
    """``invitations.email``: ``CHECK (length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1)``."""
    key = inputs.email_key(value, typed=True)
    assert key is None or (3 <= len(key) <= 320 and key.index("@") >= 1 and inputs.is_text(key))


def test_a_locks_name_at_its_limit_is_four_times_as_many_bytes_as_firmware_md_says() -> None:
    """A lock is handed its name (``GET /devices/lock/config``): 100 characters taken are 400 bytes of UTF-8, which
    the firmware contract names, so a lock sizes its buffer in bytes."""
    from pathlib import Path

    widest = "\U0001f6aa" * locks.MAX_NAME  # a door, 4 bytes each
    assert locks.parse_name(widest) == widest and len(widest.encode()) == 4 * locks.MAX_NAME
    page = (Path(__file__).parents[2] / "docs" / "FIRMWARE.md").read_text()
    assert f"1 to {locks.MAX_NAME} characters" in page and f"up to {4 * locks.MAX_NAME} bytes of\nUTF-8" in page
