"""Time zones, from the pinned ``tzdata`` package alone (every deployable's requirements name its version).

``zoneinfo`` reads the host's ``/usr/share/zoneinfo`` first and the package only for a zone the host lacks. The
host's rules are whatever its image carries: here Debian's 2025b, where 2026.6 moved America/Vancouver and 13 other
zones an hour for the coming years, so a Vancouver guest with a 09:00-17:00 window was let in from 10:00 to 18:00,
and two instances on different images judged one guest apart (attack run 80). Importing this module makes the
package the only source for the whole process (``zoneinfo.reset_tzpath``), before any zone is read through it.

A zone stored by a release whose data had it and read by one whose data does not is no zone (``stored``): that
member is judged outside any window that needs the zone, and everything else at their lock goes on (one guest's
zone failed every removal and every voice decision at that door: attack run 80)."""

from __future__ import annotations

import functools
import importlib.resources
import logging
import zoneinfo

import tzdata  # type: ignore[import-untyped]

zoneinfo.reset_tzpath(to=())
zoneinfo.ZoneInfo.clear_cache()  # a zone read before this, from the host's data, is not kept

_log = logging.getLogger(__name__)

#: the zone data's version (the ``tzdata`` package's, as pinned: ``2026.6``)
VERSION: str = tzdata.__version__


def newer(version: str, than: str | None) -> bool:
    """Whether zone data ``version`` is newer than ``than`` (None: none recorded), compared number by number."""

    def numbers(text: str) -> tuple[int, ...]:
        return tuple(int(part) if part.isdigit() else -1 for part in text.split("."))

    return than is None or numbers(version) > numbers(than)


#: names a zone database answers that are not places, refused as a member's zone: ``localtime`` is whatever the
#: serving machine is set to (a guest's window would move between instances), the others aliases or placeholders
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


#: the zones the pinned data lists (links such as ``US/Pacific`` among them): the package loads any resource path,
#: ``America.Indiana/Indianapolis`` too (a dot in a folder's name is the package's separator), a name no other zone
#: database has, which the app's platforms would refuse (attack run 82)
LISTED = frozenset(importlib.resources.files("tzdata").joinpath("zones").read_text().split()) - NOT_ZONES


def named(key: str) -> zoneinfo.ZoneInfo:
    """The zone ``key`` as a member's access may name it; ``zoneinfo.ZoneInfoNotFoundError`` when the pinned data
    lists no such zone (a folder such as ``America``, a file that is no zone, a dotted folder, a placeholder)."""
    if key not in LISTED:
        raise zoneinfo.ZoneInfoNotFoundError(key)
    return zoneinfo.ZoneInfo(key)


@functools.lru_cache(maxsize=1024)
def stored(key: str) -> zoneinfo.ZoneInfo | None:
    """A zone a row holds, or None (logged once per process and zone) when this release's data has no such zone."""
    try:
        return named(key)
    except zoneinfo.ZoneInfoNotFoundError:
        _log.warning("time zone %r is not in this release's tzdata: its members are judged outside their windows", key)
        return None
