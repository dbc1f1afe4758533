"""``lockwise.core.zones``: every zone comes from the pinned ``tzdata`` package, whatever the host's database says,
and a stored zone this release lacks is no zone (its guest outside her window), not an error."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
import tzdata  # type: ignore[import-untyped]

from infra import pins
from lockwise.core import errors, zones
from lockwise.devices import members
from lockwise.devices.members import Membership
from tests.zone_data import pinned

REPO = Path(__file__).resolve().parents[2]
#: instants the rules of 2025b and 2026.6 answer differently for America/Vancouver and 13 other zones, and others
INSTANTS = [dt.datetime(year, month, 15, 12, tzinfo=dt.UTC) for year in (2026, 2027, 2030) for month in (1, 7, 12)]


def test_every_zone_is_the_pinned_packages_whatever_the_host_has() -> None:
    """Attack run 80: the host's 2025b put Vancouver at UTC-8 for the coming years, where 2026.6, the version the
    requirements pin, puts it at UTC-7; ``zoneinfo`` read the host's first."""
    for function in ("devices", "embed", "verify"):  # the data tested is the data each function ships
        asked = (REPO / "functions" / function / "requirements.txt").read_text().split(pins.MARK)[0]
        assert f"\ntzdata=={tzdata.__version__}  #" in asked  # asked for by name: no other requirement's to drop
    keys = sorted(zones.LISTED)
    assert len(keys) > 500 and "America/Vancouver" in keys
    differ = [
        (key, at) for key in keys for at in INSTANTS if zones.named(key).utcoffset(at) != pinned(key).utcoffset(at)
    ]
    assert differ == []
    assert ZoneInfo("America/Vancouver").utcoffset(INSTANTS[-1]) == dt.timedelta(hours=-7)  # the process's too


@pytest.mark.parametrize(
    "key",
    [
        "America",
        "localtime",
        "posixrules",
        "Factory",
        "posix/Europe/Paris",
        "right/UTC",
        "../etc/passwd",
        "Europe/Paris\x00",
        "A" * 65,
        "Mars/Olympus_Mons",
        "tzdata.zi",
        "",
        # a dot in a folder's name is the package's separator: a real zone under a name no database has (attack
        # run 82: stored, and handed to the app, whose platform refuses it)
        "America.Argentina/Buenos_Aires",
        "America.Indiana/Indianapolis",
        "__init__.py",
    ],
)
def test_what_is_no_place_is_no_zone(key: str) -> None:
    with pytest.raises(ZoneInfoNotFoundError):
        zones.named(key)
    body = {"access": {"weekdays": ["mon"], "timezone": key}}
    with pytest.raises(errors.BadRequest):
        members.parse_access("guest", body)


@pytest.mark.parametrize("key", ["US/Pacific", "Asia/Calcutta", "UTC", "Etc/GMT-14", "America/Indiana/Indianapolis"])
def test_the_packages_links_and_nested_zones_are_zones(key: str) -> None:
    assert zones.named(key).utcoffset(INSTANTS[0]) == pinned(key).utcoffset(INSTANTS[0])


def test_a_guest_whose_zone_this_release_lacks_is_outside_her_window_and_holds_up_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)

    def guest(zone: str, **access: object) -> Membership:
        return Membership("L", "g", "guest", timezone=zone, **access)  # type: ignore[arg-type]

    every_day = {"weekdays": 0b1111111, "day_start_minute": 0, "day_end_minute": 1440}
    lost = guest("Mars/Olympus_Mons", **every_day)
    with caplog.at_level(logging.WARNING, "lockwise.core.zones"):
        assert lost.in_window(now) is False and lost.may_operate(now) is False
        access = lost.rules_access(now)
    assert "Mars/Olympus_Mons" in caplog.text
    # the rules refuse her too, by an offset that stood until the epoch: the same at every mirror (not written again)
    assert (access["in_window"], access["offset_until_ms"], access["next_offset_until_ms"]) == (False, 0, 0)
    assert lost.rules_access(now + dt.timedelta(minutes=5)) == access
    # and she is looked at again in an hour: a release whose data has the zone lets her in, the rules with it
    assert lost.next_edge(now) == now + members.UNKNOWN_ZONE_RETRY
    assert guest("Europe/Paris", **every_day).in_window(now) is True
    # a window of dates alone needs no zone: the one she has stored keeps nobody out (a review)
    dates = guest("Mars/Olympus_Mons", valid_from=now - dt.timedelta(days=1), valid_until=now + dt.timedelta(days=1))
    assert dates.in_window(now) is True and dates.next_edge(now) == now + dt.timedelta(days=1)
    assert dates.rules_access(now)["in_window"] is True


def test_zone_data_versions_are_compared_number_by_number() -> None:
    assert zones.newer("2026.6", None) and zones.newer("2026.10", "2026.9") and zones.newer("2027.1", "2026.12")
    assert not zones.newer("2026.6", "2026.6") and not zones.newer("2026.5", "2026.6")
