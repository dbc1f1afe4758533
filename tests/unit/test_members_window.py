"""Guest access windows and the parsing of the ``access`` object (pure functions)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from lockwise.core import errors
from lockwise.devices import members
from lockwise.devices.members import Membership, parse_access

UTC = dt.UTC


def guest(**access: object) -> Membership:
    return Membership(lock_id="L", user_uid="g", role="guest", **access)  # type: ignore[arg-type]


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_non_guests_have_no_window() -> None:
    member = Membership(lock_id="L", user_uid="m", role="member")
    assert member.may_operate(at("2030-01-01T03:00:00+00:00"))


def test_absolute_bounds() -> None:
    g = guest(valid_from=at("2030-01-01T00:00:00+00:00"), valid_until=at("2030-01-02T00:00:00+00:00"))
    assert not g.in_window(at("2029-12-31T23:59:59+00:00"))
    assert g.in_window(at("2030-01-01T12:00:00+00:00"))
    assert not g.in_window(at("2030-01-02T00:00:00+00:00"))


def test_weekdays_and_hours_in_the_guests_time_zone() -> None:
    # Mondays and Tuesdays, 09:00-17:00 in New York
    g = guest(weekdays=0b0000011, day_start_minute=9 * 60, day_end_minute=17 * 60, timezone="America/New_York")
    assert g.in_window(at("2030-01-07T14:30:00+00:00"))  # Monday 09:30 New York
    assert not g.in_window(at("2030-01-07T13:30:00+00:00"))  # Monday 08:30 New York
    assert not g.in_window(at("2030-01-09T15:00:00+00:00"))  # Wednesday
    assert not g.in_window(at("2030-01-07T22:30:00+00:00"))  # Monday 17:30 New York


def test_overnight_hours_wrap_midnight() -> None:
    g = guest(day_start_minute=22 * 60, day_end_minute=6 * 60)
    assert g.in_window(at("2030-01-01T23:00:00+00:00"))
    assert g.in_window(at("2030-01-02T05:59:00+00:00"))
    assert not g.in_window(at("2030-01-02T06:00:00+00:00"))


def test_expiry_and_revocation_end_access() -> None:
    now = at("2030-01-01T00:00:00+00:00")
    assert not guest(expires_at=now).active(now)
    assert not guest(revoked_at=now - dt.timedelta(seconds=1)).active(now)
    assert guest(expires_at=now + dt.timedelta(seconds=1)).active(now)


def test_parse_access_builds_columns() -> None:
    cols = parse_access(
        "guest",
        {
            "access": {
                "weekdays": ["mon", "fri"],
                "day_start_minute": 60,
                "day_end_minute": 120,
                "timezone": "Europe/Paris",
            }
        },
    )
    assert cols["weekdays"] == 0b0010001 and cols["timezone"] == "Europe/Paris"
    assert cols["day_start_minute"] == 60 and cols["valid_from"] is None


@pytest.mark.parametrize(
    ("role", "access"),
    [
        ("member", {"weekdays": ["mon"]}),  # windows are for guests
        ("guest", {"weekdays": ["funday"]}),
        ("guest", {"weekdays": []}),
        ("guest", {"day_start_minute": 60}),
        ("guest", {"day_start_minute": 60, "day_end_minute": 60}),
        ("guest", {"day_start_minute": True, "day_end_minute": 60}),
        ("guest", {"timezone": "Mars/Olympus"}),
        ("guest", {"timezone": "America"}),  # a folder of the tz database: IsADirectoryError, once a 500
        ("guest", {"timezone": "Etc"}),
        # zones that are the serving host's setting or copies of the database, not places (attack run)
        ("guest", {"timezone": "localtime"}),
        ("guest", {"timezone": "posixrules"}),
        ("guest", {"timezone": "Factory"}),
        ("guest", {"timezone": "posix/UTC"}),
        ("guest", {"timezone": "right/UTC"}),
        ("guest", {"valid_from": "yesterday"}),
        ("guest", {"valid_from": "2030-01-01T00:00:00"}),  # no offset
        ("guest", {"valid_from": "2030-01-02T00:00:00Z", "valid_until": "2030-01-01T00:00:00Z"}),
        ("guest", "not an object"),
    ],
)
def test_parse_access_rejects_bad_input(role: str, access: object) -> None:
    with pytest.raises(errors.BadRequest) as info:
        parse_access(role, {"access": access})
    assert info.value.code == "invalid_access"


def test_utc_offset_finds_the_next_change_to_the_minute() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    before = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.UTC)
    assert members.utc_offset(berlin, before) == (60, dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC))
    summer = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
    assert members.utc_offset(berlin, summer) == (120, dt.datetime(2026, 10, 25, 1, 0, tzinfo=dt.UTC))
    kolkata = members.utc_offset(ZoneInfo("Asia/Kolkata"), summer)
    assert kolkata == (330, summer + dt.timedelta(days=366))  # no change within the horizon
    found = members._utc_offset.cache_info().misses
    later_that_minute = before + dt.timedelta(seconds=42, microseconds=7)  # one guest's access, then its next edge
    assert members.utc_offset(berlin, later_that_minute) == members.utc_offset(berlin, before)
    assert members._utc_offset.cache_info().misses == found  # found once for the zone and the minute


def test_rules_access_carries_the_window_for_the_security_rules() -> None:
    now = dt.datetime(2026, 7, 1, 8, 0, tzinfo=dt.UTC)
    guest = members.Membership(
        "L",
        "g",
        "guest",
        weekdays=0b0010101,
        day_start_minute=540,
        day_end_minute=720,
        timezone="America/New_York",
        expires_at=now + dt.timedelta(days=2),
    )
    access = guest.rules_access(now)
    assert access["weekdays"] == [0, 2, 4] and access["utc_offset_min"] == -240
    assert access["expires_ms"] == int((now + dt.timedelta(days=2)).timestamp() * 1000)
    assert access["offset_until_ms"] == int(dt.datetime(2026, 11, 1, 6, 0, tzinfo=dt.UTC).timestamp() * 1000)
    # and the offset after that change, until the one after it (attack run 95: the rules refused every guest of the
    # zone from the change until their lock was mirrored again)
    assert access["next_offset_min"] == -300
    assert access["next_offset_until_ms"] == int(dt.datetime(2027, 3, 14, 7, 0, tzinfo=dt.UTC).timestamp() * 1000)
    member = members.Membership("L", "m", "member", valid_from=now)  # only guests have windows
    assert member.rules_access(now)["valid_from_ms"] is None and member.rules_access(now)["offset_until_ms"] is None


def test_a_member_request_names_what_is_misplaced_and_what_is_unknown() -> None:
    with pytest.raises(errors.BadRequest) as misplaced:
        members.request_body({"role": "member", "uid": "x", "expires_at": "2030-01-01T00:00:00Z"}, ("role", "uid"))
    assert misplaced.value.code == "invalid_access" and "put access limits in the access object" in str(misplaced.value)
    with pytest.raises(errors.BadRequest) as unknown:
        members.request_body({"role": "member", "uid": "x", "acess": {}}, ("role", "uid", "email", "access"))
    assert unknown.value.code == "unknown_field" and unknown.value.details == {"fields": ["acess"]}
    assert str(unknown.value).endswith("it takes access, email, role, uid")  # the top level only, not the limits
    body = {"role": "guest", "uid": "x", "access": {"weekdays": ["mon"]}}
    assert members.request_body(body, ("role", "uid", "email", "access")) is body


def test_a_field_access_does_not_take_is_named_as_any_unknown_field_is() -> None:
    with pytest.raises(errors.BadRequest) as caught:
        parse_access("guest", {"access": {"colour": "red", "weekdays": ["mon"]}})
    assert caught.value.code == "unknown_field" and caught.value.details == {"fields": ["colour"]}
    assert "in access" in str(caught.value)


def test_the_next_edge_of_what_a_member_may_read() -> None:
    """The mirror is refreshed at each member's next edge, so that a listener the rules let in is checked again
    there (attack run 12: an expired member's and a guest's open listeners kept the live view)."""
    now = at("2026-12-03T10:00:00+00:00")  # a Thursday; 11:00 in Berlin
    assert Membership(lock_id="L", user_uid="m", role="member").next_edge(now) is None
    ends = at("2026-12-03T10:05:00+00:00")
    assert Membership(lock_id="L", user_uid="m", role="member", expires_at=ends).next_edge(now) == ends
    office = guest(timezone="Europe/Berlin", day_start_minute=9 * 60, day_end_minute=17 * 60)
    assert office.next_edge(now) == at("2026-12-03T16:00:00+00:00")  # 17:00 local, today's end
    assert office.next_edge(at("2026-12-03T16:00:00+00:00")) == at("2026-12-04T08:00:00+00:00")  # tomorrow's start
    night = guest(timezone="UTC", day_start_minute=22 * 60, day_end_minute=6 * 60)
    assert night.next_edge(at("2026-12-03T23:00:00+00:00")) == at("2026-12-04T06:00:00+00:00")
    thursdays = guest(timezone="America/New_York", weekdays=1 << 3)  # whole days: each local midnight
    assert thursdays.next_edge(now) == at("2026-12-04T05:00:00+00:00")
    closing = guest(timezone="UTC", day_start_minute=0, day_end_minute=1440, valid_until=ends)
    assert closing.next_edge(now) == ends  # before the window's own edges


def test_a_guest_past_their_last_day_has_ended_and_one_between_days_has_not() -> None:
    last = at("2026-12-03T10:00:00+00:00")
    assert guest(valid_until=last).ended(at("2026-12-03T10:00:00+00:00"))
    assert not guest(valid_until=last).ended(at("2026-12-03T09:59:59+00:00"))
    assert not guest(timezone="UTC", day_start_minute=0, day_end_minute=60).ended(at("2026-12-03T12:00:00+00:00"))
    member = Membership(lock_id="L", user_uid="m", role="member", valid_until=last)  # a guest's bound only
    assert not member.ended(at("2026-12-04T00:00:00+00:00"))


def test_an_overnight_window_on_some_days_is_their_nights_and_a_change_of_clocks_is_an_edge() -> None:
    """Attack run 41: a Monday-only 22:00-06:00 window let the guest in early on Monday (Sunday's night) and closed
    at Tuesday's midnight (the local weekday of each moment was read); it is Monday's night, until Tuesday 06:00.
    ``next_edge`` still names each midnight (a harmless extra refresh). A wall time the clocks pass twice is an
    edge at both instants, the change of offset itself one too."""
    mondays = guest(timezone="UTC", weekdays=1 << 0, day_start_minute=22 * 60, day_end_minute=6 * 60)
    monday_night = at("2026-11-30T22:30:00+00:00")  # a Monday
    assert mondays.in_window(monday_night) and mondays.in_window(at("2026-12-01T00:00:00+00:00"))
    assert mondays.in_window(at("2026-12-01T05:59:00+00:00")) and not mondays.in_window(at("2026-12-01T06:00:00+00:00"))
    assert not mondays.in_window(at("2026-11-30T03:00:00+00:00"))  # Sunday's night
    assert not mondays.in_window(at("2026-12-01T22:30:00+00:00"))  # Tuesday's
    assert mondays.next_edge(monday_night) == at("2026-12-01T00:00:00+00:00")
    # New York's clocks go back on 2026-11-01 at 06:00Z (02:00 EDT): 01:30 local is 05:30Z and again 06:30Z
    early = guest(timezone="America/New_York", day_start_minute=0, day_end_minute=90)
    assert early.next_edge(at("2026-11-01T05:40:00+00:00")) == at("2026-11-01T06:00:00+00:00")
    assert early.next_edge(at("2026-11-01T06:10:00+00:00")) == at("2026-11-01T06:30:00+00:00")
    assert early.in_window(at("2026-11-01T06:10:00+00:00")) and not early.in_window(at("2026-11-01T06:30:00+00:00"))


def test_when_what_a_member_may_do_ends_within_a_commands_lifetime() -> None:
    """Attack run 41: a guest's unlock made in the last seconds of her window was delivered and acted on after it
    (the relay and the lock check the command's expiry, not her window). A command now expires when the issuer's
    permission ends within its lifetime (``allowed_until``), whichever bound ends it."""
    now = at("2030-01-07T16:59:50-05:00")  # a Monday, 10 s before 17:00 in New York
    horizon = now + dt.timedelta(seconds=30)
    hours = guest(weekdays=0b0000011, day_start_minute=9 * 60, day_end_minute=17 * 60, timezone="America/New_York")
    assert hours.allowed_until(now, horizon) == at("2030-01-07T17:00:00-05:00")
    assert hours.allowed_until(now - dt.timedelta(minutes=5), horizon - dt.timedelta(minutes=5)) is None
    until = guest(valid_until=at("2030-01-07T22:00:07+00:00"))
    assert until.allowed_until(now, horizon) == at("2030-01-07T22:00:07+00:00")
    member = Membership(lock_id="L", user_uid="m", role="member", expires_at=at("2030-01-07T22:00:20+00:00"))
    assert member.allowed_until(now, horizon) == at("2030-01-07T22:00:20+00:00")
    assert Membership(lock_id="L", user_uid="m", role="member").allowed_until(now, horizon) is None
    # every day, 22:00-06:00: midnight inside the window is an edge, not an end
    nights = guest(weekdays=0b1111111, day_start_minute=22 * 60, day_end_minute=6 * 60, timezone="UTC")
    late = at("2030-01-07T23:59:50+00:00")
    assert nights.allowed_until(late, late + dt.timedelta(seconds=30)) is None
    # Mondays only, overnight: Monday's night runs past midnight, and ends on Tuesday at 06:00
    monday_nights = guest(weekdays=0b0000001, day_start_minute=22 * 60, day_end_minute=6 * 60, timezone="UTC")
    assert monday_nights.allowed_until(late, late + dt.timedelta(seconds=30)) is None
    dawn = at("2030-01-08T05:59:45+00:00")
    assert monday_nights.allowed_until(dawn, dawn + dt.timedelta(seconds=30)) == at("2030-01-08T06:00:00+00:00")


#: a Monday, the invitations' clock in the cases below
SENT = at("2030-01-07T09:00:00+00:00")


@pytest.mark.parametrize(
    ("access", "lets_in"),
    [
        # a window on Mondays between a Tuesday and a Wednesday, or its hours outside the one day it spans: never
        ({"valid_from": "2030-01-08T00:00:00Z", "valid_until": "2030-01-09T00:00:00Z", "weekdays": ["mon"]}, False),
        (
            {"valid_from": "2030-01-08T10:00:00Z", "valid_until": "2030-01-08T11:00:00Z", "day_start_minute": 720,
             "day_end_minute": 780},
            False,
        ),
        # the same hours in a zone 14 hours ahead: 12:00-13:00 there is 22:00-23:00 UTC the day before
        (
            {"valid_from": "2030-01-07T21:00:00Z", "valid_until": "2030-01-07T23:30:00Z", "day_start_minute": 720,
             "day_end_minute": 780, "timezone": "Pacific/Kiritimati"},
            True,
        ),
        # 02:00-02:30 on the one day New York's clocks skip from 02:00 to 03:00 (2030-03-10), and to 03:01
        (
            {"valid_from": "2030-03-10T05:00:00Z", "valid_until": "2030-03-11T04:00:00Z", "day_start_minute": 120,
             "day_end_minute": 150, "timezone": "America/New_York"},
            False,
        ),
        (
            {"valid_from": "2030-03-10T05:00:00Z", "valid_until": "2030-03-11T04:00:00Z", "day_start_minute": 120,
             "day_end_minute": 181, "timezone": "America/New_York"},
            True,
        ),
        ({"weekdays": ["mon"], "expires_at": "2030-01-13T00:00:00Z"}, True),  # today, a Monday
        ({"weekdays": ["sun"], "expires_at": "2030-01-13T00:00:00Z"}, False),  # ends on Sunday's first minute
        ({"weekdays": ["sun"], "expires_at": "2030-01-13T00:01:00Z"}, True),
        ({"weekdays": ["tue"], "valid_from": "2030-01-08T23:59:00Z", "valid_until": "2030-01-09T00:00:00Z"}, True),
        ({"weekdays": ["wed"]}, True),  # no end: it recurs
        ({"weekdays": ["sat"], "valid_until": "2030-06-01T00:00:00Z"}, True),  # longer than the search: some day
        ({"expires_at": "2030-01-08T00:00:00Z"}, True),
    ],
)  # fmt: skip
def test_an_invitation_whose_window_never_opens_before_it_ends_is_refused(
    access: dict[str, object], lets_in: bool
) -> None:
    """Sent, 202, its guest would accept, be told she joined, and never get in (attack run 119)."""
    terms = parse_access("guest", {"access": access})
    assert members.lets_in(terms, SENT) is lets_in
    if lets_in:
        members.require_future(terms, SENT)
    else:
        with pytest.raises(errors.BadRequest) as refused:
            members.require_future(terms, SENT)
        assert refused.value.code == "invalid_access"
