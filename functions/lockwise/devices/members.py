"""Who may do what at a lock: roles, guest access windows, revocation.

Roles, strongest first: owner (one per lock), admin, member, guest. A guest may carry an access window (absolute
bounds, weekdays, minutes of the day in a time zone) and any non-owner an expiry. Every check reads the membership
row at request time, so a revocation takes effect on the very next verify or command.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lockwise.core import errors, inputs, mirror, users, zones
from lockwise.core.db import Connection, Database, clock, in_transaction, rows_as_dicts
from lockwise.devices import transfer_offers

ROLES = ("owner", "admin", "member", "guest")
#: the roles a grant gives (the owner's is only ever transferred)
GRANTABLE_ROLES = ROLES[1:]
#: how ``get`` holds the lock's own row (``FOR KEY SHARE`` / ``FOR UPDATE``)
LockRowMode = Literal["KEY SHARE", "UPDATE"]
RANK = {role: len(ROLES) - i for i, role in enumerate(ROLES)}  # owner 4 ... guest 1
ACCESS_FIELDS = (
    "valid_from",
    "valid_until",
    "weekdays",
    "day_start_minute",
    "day_end_minute",
    "timezone",
    "expires_at",
)
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: locks whose access is mirrored again in one transaction of the upkeep, and how long it goes on taking batches
REFRESH_BATCH = 100
REFRESH_BUDGET_S = 5.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Membership:
    lock_id: str
    user_uid: str
    role: str
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None
    weekdays: int | None = None  # bit 0 = Monday
    day_start_minute: int | None = None
    day_end_minute: int | None = None
    timezone: str = "UTC"
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    @property
    def recurring(self) -> bool:
        """A guest's window that recurs (weekdays, hours of the day): read in her zone, where dates alone are not."""
        return self.role == "guest" and (self.weekdays is not None or self.day_start_minute is not None)

    def active(self, now: dt.datetime) -> bool:
        """Not revoked and not expired."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def in_window(self, now: dt.datetime) -> bool:
        """True when the access window (guests only) includes ``now``."""
        if self.role != "guest":
            return True
        if self.valid_from is not None and now < self.valid_from:
            return False
        if self.valid_until is not None and now >= self.valid_until:
            return False
        if not self.recurring:  # no zone is read
            return True
        start, end = self.day_start_minute, self.day_end_minute
        zone = zones.stored(self.timezone)
        if zone is None:  # a zone this release's data lacks: outside (``lockwise.core.zones``)
            return False
        local = now.astimezone(zone)
        minute = local.hour * 60 + local.minute
        # an overnight window (its start after its end) is the night of the day it opens: its hours after midnight
        # belong to the day before (Fridays 22:00-06:00 had let the guest in early on Friday, Thursday's night, and
        # not early on Saturday: attack run 41)
        after_midnight = start is not None and end is not None and not start < end and minute < end
        opened = (local - dt.timedelta(days=1)).weekday() if after_midnight else local.weekday()
        if self.weekdays is not None and not (self.weekdays >> opened) & 1:
            return False
        if start is not None and end is not None:
            inside = start <= minute < end if start < end else (minute >= start or minute < end)  # overnight
            if not inside:
                return False
        return True

    def may_operate(self, now: dt.datetime) -> bool:
        """May open or lock the door right now (commands and voice)."""
        return self.active(now) and self.in_window(now)

    def allowed_until(self, now: dt.datetime, horizon: dt.datetime) -> dt.datetime | None:
        """When this member stops being allowed to operate the lock (``may_operate``) after ``now``, if that is by
        ``horizon``; None if they still may then. A command they send (or their voice's unlock) expires by it: issued
        a moment before a guest's window ended, it was delivered and acted on after it (attack run 41)."""
        edge = now
        for _ in range(64):  # edges a few minutes apart at most: a command's lifetime holds a handful
            after = self.next_edge(edge)
            if after is None or after > horizon:
                return None
            if not self.may_operate(after):
                return after
            edge = after
        return edge  # edges without end (not seen): the command is not issued past what was checked

    def ended(self, now: dt.datetime) -> bool:
        """Access over for good: revoked, expired, or a guest whose ``valid_until`` has passed."""
        closed = self.role == "guest" and self.valid_until is not None and now >= self.valid_until
        return not self.active(now) or closed

    def next_edge(self, now: dt.datetime) -> dt.datetime | None:
        """The next time after ``now`` at which what this member may read changes without anyone writing: their
        expiry, a guest's ``valid_until``, or a start or end of a recurring window: its minutes and, with weekdays,
        each local midnight (an overnight window on Mondays only ends at Tuesday's; a review), on the next local
        days, each wall time at both its instants when the clocks go back, and the zone's next change of offset
        (where a wall time the clocks skip falls). One where nothing changes is a harmless extra refresh. None when
        there is none."""
        guest = self.role == "guest"
        edges = [t for t in (self.expires_at, self.valid_until if guest else None) if t is not None and t > now]
        zone = zones.stored(self.timezone) if self.recurring else None
        if self.recurring and zone is None:  # a zone this release's data lacks: looked at again in an hour (a release
            edges.append(now + UNKNOWN_ZONE_RETRY)  # whose data has it lets her in, and the rules too, by then)
        if zone is not None:
            today = now.astimezone(zone).date()
            minutes = {self.day_start_minute or 0, self.day_end_minute or 0}  # whole days: each midnight
            if self.weekdays is not None:
                minutes.add(0)
            for days in range(3):
                for minute in minutes:
                    wall = dt.datetime.combine(today + dt.timedelta(days=days), dt.time()) + dt.timedelta(
                        minutes=minute
                    )
                    for fold in (0, 1):
                        edges.append(wall.replace(tzinfo=zone, fold=fold).astimezone(dt.UTC))
            edges.append(utc_offset(zone, now)[1])
        return min((t for t in edges if t > now), default=None)

    def rules_access(self, now: dt.datetime) -> dict[str, Any]:
        """What the Firestore security rules need to end this member's reads when the API ends their access:
        bounds as epoch milliseconds, and for a recurring guest window its days (0 = Monday), minutes and the time
        zone's UTC offset, valid until the zone's next offset change (``offset_until_ms``), and the offset after it,
        valid until the change after that (``next_offset_min``, ``next_offset_until_ms``; past it the rules refuse
        until the mirror is refreshed). With one offset only, every guest inside a window of a zone whose clocks
        changed was refused the live view from the change until the upkeep had mirrored their lock again, every lock
        with a guest of that zone due at once (attack run 95)."""
        guest = self.role == "guest"
        out: dict[str, Any] = {
            "role": self.role,  # owners and admins read the whole activity feed, others what names them
            "expires_ms": _ms(self.expires_at),
            "valid_from_ms": _ms(self.valid_from) if guest else None,
            "valid_until_ms": _ms(self.valid_until) if guest else None,
            "weekdays": None,
            "day_start_minute": None,
            "day_end_minute": None,
            "utc_offset_min": 0,
            "offset_until_ms": None,
            "next_offset_min": 0,
            "next_offset_until_ms": None,
            # changes at each edge of a recurring window, when the mirror is refreshed (``next_edge``): a listener
            # the rules let in is checked again only when a document they read changes (attack run 12: a guest's
            # open listener kept the door's state and feed after their window ended)
            "in_window": self.in_window(now) if guest else None,
        }
        if self.recurring:
            zone = zones.stored(self.timezone)
            # a zone this release's data lacks: an offset that stood until the epoch, which the rules refuse (the
            # same every time: the document is not written again at each mirror of the lock)
            offset, until = (0, _EPOCH) if zone is None else utc_offset(zone, now)
            after, then = (0, _EPOCH) if zone is None else utc_offset(zone, until)
            out.update(
                weekdays=None if self.weekdays is None else [d for d in range(7) if (self.weekdays >> d) & 1],
                day_start_minute=self.day_start_minute,
                day_end_minute=self.day_end_minute,
                utc_offset_min=offset,
                offset_until_ms=_ms(until),
                next_offset_min=after,
                next_offset_until_ms=_ms(then),
            )
        return out

    def public(self) -> dict[str, Any]:
        access = {name: getattr(self, name) for name in ACCESS_FIELDS}
        return {"uid": self.user_uid, "role": self.role, "access": public_terms(self.role, access)}


def public_terms(role: str, access: dict[str, Any]) -> dict[str, Any]:
    """The terms ``access`` (``parse_access``'s keys, one absent unset) as the API shows them, and the audit log
    keeps them (an invitation's, a member's change: which window, which expiry, not the role alone)."""
    terms = {
        "valid_from": _iso(access.get("valid_from")),
        "valid_until": _iso(access.get("valid_until")),
        "weekdays": _weekday_names(access.get("weekdays")),
        "day_start_minute": access.get("day_start_minute"),
        "day_end_minute": access.get("day_end_minute"),
        "timezone": access.get("timezone") if role == "guest" else None,
        "expires_at": _iso(access.get("expires_at")),
    }
    return {k: v for k, v in terms.items() if v is not None}


def active_sql(alias: str, at: Literal[":now", "now()"] = ":now") -> str:
    """``Membership.active`` in SQL, for the ``lock_members`` row ``alias``, judged at ``at``: the statement's
    ``:now`` (the caller's clock, the one its other checks use), or ``now()`` for a statement judged wholly on the
    database's clock (the relay's outbox)."""
    return f"{alias}.revoked_at IS NULL AND ({alias}.expires_at IS NULL OR {alias}.expires_at > {at})"


def issuer_gone_sql(command: str) -> str:
    """Whether the issuer of the ``commands`` row ``command`` may no longer have it carried out, in SQL judged on the
    database's clock: no longer an active member, their commands withdrawn since it was made (a removal, their role
    or access narrowed), or their account found disabled or deleted (it keeps its memberships, or its locks: attack
    run 36, an app unlock of an account disabled while the lock was offline went out when it came back), or the
    session that made it signed out since (``commands.issuer_signed_in_at``, ``users.vouches_sql``: a stolen phone's
    unlock tapped a moment before its owner signed out everywhere was sent to the lock once back, attack run 81). The
    relay sends no such command, and a voice clip sent again is not answered with its grant (attack run 39's review)."""
    c = command
    return (
        f"{c}.issuer_uid IS NOT NULL AND (NOT EXISTS (SELECT 1 FROM lock_members m WHERE m.lock_id = {c}.lock_id"
        f" AND m.user_uid = {c}.issuer_uid AND "
        + active_sql("m", at="now()")
        + f" AND (m.commands_withdrawn_before IS NULL OR {c}.created_at > m.commands_withdrawn_before))"
        + " OR NOT "
        + users.vouches_sql(f"{c}.issuer_uid", f"{c}.issuer_signed_in_at")
        + ")"
    )


def utc_offset(zone: ZoneInfo, now: dt.datetime) -> tuple[int, dt.datetime]:
    """``zone``'s UTC offset at ``now`` in minutes, and when it next changes (to the minute; a year on when it does
    not change within one). Found once per zone and minute (about 1 ms each: a day's step through the year, then
    halving to the minute), not for each guest's access and again for its next edge: offsets change on whole
    minutes, so within one minute the answer is the same."""
    return _utc_offset(zone, now.astimezone(dt.UTC).replace(second=0, microsecond=0))


@functools.lru_cache(maxsize=512)
def _utc_offset(zone: ZoneInfo, now: dt.datetime, horizon_days: int = 366) -> tuple[int, dt.datetime]:

    def minutes_at(t: dt.datetime) -> int:
        offset = t.astimezone(zone).utcoffset()
        return int(offset.total_seconds() // 60) if offset is not None else 0

    current = minutes_at(now)
    step = dt.timedelta(days=1)
    day = now
    for _ in range(horizon_days):
        if minutes_at(day + step) != current:
            low, high = day, day + step  # the change lies in (low, high]: narrow it to the minute
            while high - low > dt.timedelta(minutes=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if minutes_at(middle) == current else (low, middle)
            return current, high.replace(second=0, microsecond=0)
        day += step
    return current, now + dt.timedelta(days=horizon_days)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: how soon a guest's access whose zone this release's data lacks is mirrored again (``next_edge``)
UNKNOWN_ZONE_RETRY = dt.timedelta(hours=1)


def _ms(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _weekday_names(mask: int | None) -> list[str] | None:
    return None if mask is None else [name for i, name in enumerate(WEEKDAY_NAMES) if (mask >> i) & 1]


_SELECT = (
    "SELECT lock_id::text AS lock_id, user_uid, role, valid_from, valid_until, weekdays, day_start_minute,"
    " day_end_minute, timezone, expires_at, revoked_at FROM lock_members"
)


def now_held(con: Connection, lock_id: str, uid: str) -> dt.datetime:
    """The database's clock, read once ``uid``'s membership row at ``lock_id`` is held (``FOR NO KEY UPDATE``): the
    time a change to their access takes effect, on the clock commands are made by (``commands.from_app``, which
    holds that row ``FOR SHARE`` while it makes one). Read in the UPDATE itself, or before the row lock, it could be
    older than a command made while the change waited (PostgreSQL takes ``clock_timestamp()`` before a row wait:
    attack runs 70, 71)."""
    con.run(
        "SELECT 1 FROM lock_members WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u FOR NO KEY UPDATE",
        l=lock_id,
        u=uid,
    )
    return clock(con)


def get(
    con: Connection,
    lock_id: str,
    uid: str,
    *,
    for_update: bool = False,
    for_share: bool = False,
    lock_row: LockRowMode | None = None,
) -> Membership | None:
    """The membership row (``for_update``: locked to change it; ``for_share``: kept from changing until commit).

    ``lock_row`` locks the lock's own row first, in the same statement: ``"KEY SHARE"`` keeps the lock from being
    deleted until commit, so what the caller then writes for it (a command, an invitation, a pairing code) cannot
    meet its deletion half way (a deletion under way is waited for and the lock then found gone); ``"UPDATE"`` is
    for the owner's changes to the lock itself (deletion, transfer, re-pairing). Every path takes the lock's row
    before any membership row, so none waits in a cycle with another."""
    locking = " FOR UPDATE" if for_update else " FOR SHARE" if for_share else ""
    kept = f" AND lock_id IN (SELECT id FROM locks WHERE id = CAST(:l AS uuid) FOR {lock_row})" if lock_row else ""
    sql = _SELECT + " WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u" + kept + locking
    rows = rows_as_dicts(con, sql, l=lock_id, u=uid)
    return Membership(**rows[0]) if rows else None


def last_removed_at(con: Connection, lock_id: str, uid: str) -> dt.datetime | None:
    """When ``uid`` was last removed from the lock, or left it (None: never). A membership whose removal is after a
    caller's ``If-Unmodified-Since`` is another than the one it read: she was removed and joined again since (its
    ``created_at`` is kept at a rejoining where her voice was enrolled before, for the door's precedence)."""
    rows = con.run(
        "SELECT last_removed_at FROM lock_members WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u", l=lock_id, u=uid
    )
    return rows[0][0] if rows else None


def list_for_user(con: Connection, uid: str, lock_ids: list[str] | None = None) -> list[Membership]:
    """The user's memberships (at ``lock_ids`` only, if given), revoked ones too (the caller filters)."""
    sql = _SELECT + " WHERE user_uid = :u AND (CAST(:ls AS uuid[]) IS NULL OR lock_id = ANY(CAST(:ls AS uuid[])))"
    return [Membership(**row) for row in rows_as_dicts(con, sql, u=uid, ls=lock_ids)]


def list_for_lock(con: Connection, lock_id: str) -> list[Membership]:
    sql = _SELECT + " WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL ORDER BY created_at, user_uid"
    return [Membership(**row) for row in rows_as_dicts(con, sql, l=lock_id)]


def list_for_locks(con: Connection, lock_ids: list[str]) -> dict[str, list[Membership]]:
    """The unrevoked memberships of each of ``lock_ids`` (as ``lock_id::text`` spells them; a lock with none is left
    out), in one statement: an operator's listing read them a lock at a time."""
    sql = (
        _SELECT
        + " WHERE lock_id = ANY(CAST(:ls AS uuid[])) AND revoked_at IS NULL ORDER BY lock_id, created_at, user_uid"
    )
    found: dict[str, list[Membership]] = {}
    for row in rows_as_dicts(con, sql, ls=lock_ids):
        found.setdefault(row["lock_id"], []).append(Membership(**row))
    return found


def require(
    con: Connection,
    lock_id: str,
    uid: str,
    now: dt.datetime,
    *,
    at_least: str = "guest",
    operate: bool = False,
    for_update: bool = False,
) -> Membership:
    """The caller's active membership with at least role ``at_least``.

    Not a member, revoked or expired: 404 (whether the lock exists is not revealed). Too weak a role: 403. With
    ``operate``, outside the guest's access window: 403 ``outside_access_window``. Inside a transaction the lock's
    row is held until it ends (``get``'s ``lock_row``: ``KEY SHARE``, or ``UPDATE`` with ``for_update``, the owner's
    changes to the lock); a deletion that came first is waited for and answered 404, as the deleted lock is. Outside
    one (a read) nothing is locked.

    ``for_update`` asks the lock's row ``FOR UPDATE``, which waits for a voice decision under way there (it holds the
    row ``FOR SHARE`` through its forward pass): the caller is judged first without a lock, so only one who may make
    the change ever waits. A removed member's or a guest's refusal to rename the lock came 0.3 s late while the door
    was deciding, and as 503 past the statement timeout: when someone was at the door (attack run 75).
    """
    if for_update:
        _judge(get(con, lock_id, uid), now, at_least, operate)
    lock_row: LockRowMode | None = "UPDATE" if for_update else "KEY SHARE" if in_transaction(con) else None
    return _judge(get(con, lock_id, uid, for_update=for_update, lock_row=lock_row), now, at_least, operate)


def require_own(con: Connection, lock_id: str, uid: str) -> Membership:
    """The caller's own membership of ``lock_id``, to leave it: one active, or ended by its expiry and not removed
    (404 ``lock_not_found`` otherwise, as ``require``), the lock's row held as ``require`` holds it. One ended by its
    expiry still counts towards the account's memberships (``refuse_past_joined``), and its member, answered 404,
    could not leave it: an owner's expiries filled an account's count, and only that owner could empty it (attack
    run 100)."""
    membership = get(con, lock_id, uid, lock_row="KEY SHARE" if in_transaction(con) else None)
    if membership is None or membership.revoked_at is not None:
        raise errors.NotFound("lock not found", code="lock_not_found")
    return membership


def require_unlocked(con: Connection, lock_id: str, uid: str, now: dt.datetime) -> Membership:
    """``require``'s judgement of the caller, read without any lock, the lock's row's too (inside a transaction,
    ``require`` takes it ``KEY SHARE``, and a later ``FOR UPDATE`` of the same row by two such transactions is a
    deadlock: attack run 77)."""
    return _judge(get(con, lock_id, uid), now, "guest", False)


def _judge(membership: Membership | None, now: dt.datetime, at_least: str, operate: bool) -> Membership:
    if membership is None or not membership.active(now):
        raise errors.NotFound("lock not found", code="lock_not_found")
    if RANK[membership.role] < RANK[at_least]:
        raise errors.Forbidden(f"this needs the {at_least} role or higher", code="role_too_low")
    if operate and not membership.in_window(now):
        raise errors.Forbidden("outside your access window", code="outside_access_window")
    return membership


def require_target(con: Connection, lock_id: str, uid: str) -> Membership:
    """The member ``uid`` an owner or admin acts on, locked to change it (404 ``member_not_found`` if they are not
    one, or no longer). The lock's members are held first (``hold_members``): bringing one back counts them."""
    hold_members(con, lock_id)
    target = get(con, lock_id, uid, for_update=True)
    if target is None or target.revoked_at is not None:
        raise errors.NotFound("no such member", code="member_not_found")
    return target


def parse_role(value: Any) -> str:
    """A role a grant may give (400 ``invalid_role`` otherwise)."""
    if value not in GRANTABLE_ROLES:
        raise errors.BadRequest(f"role must be one of {', '.join(GRANTABLE_ROLES)}", code="invalid_role")
    return str(value)


def parse_uid(value: Any) -> str:
    """A user id as a request names one: one an ID token may carry (``id_tokens``' subject checks), 400
    ``invalid_uid`` otherwise (an invitation to ``a/b``, ``..`` or ``__x__`` was sent, 202, and counted towards its
    sender's open invitations, though no account can ever answer it: attack run 58)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise errors.BadRequest("uid must be a user id string of 1 to 128 characters", code="invalid_uid")
    if not inputs.is_text(value) or not inputs.is_document_id(value):
        raise errors.BadRequest(
            "uid must be an account's id: text without NUL, no '/', not '.', '..' or '__name__'",
            code="invalid_uid",
        )
    return value


def check_can_grant(actor: Membership, role: str) -> None:
    """``actor`` may give ``role`` to someone: owners and admins grant, only the owner grants admin."""
    parse_role(role)
    if actor.role not in ("owner", "admin"):
        raise errors.Forbidden("only the owner and admins manage members", code="role_too_low")
    if role == "admin" and actor.role != "owner":
        raise errors.Forbidden("only the owner appoints admins", code="role_too_low")


def check_ends_in_time(actor: Membership, access: dict[str, Any]) -> None:
    """An admin whose own access ends (``expires_at``, the owner's limit on them) grants only access that ends by
    then: 403 ``grant_outlives_granter`` otherwise, naming the time. An admin the owner let in for a week once
    invited their own second account as a member with no end, and kept the door through it (attack run).
    ``access``: ``parse_access``'s values; a guest's ``valid_until`` ends it too."""
    if actor.role != "admin" or actor.expires_at is None:
        return
    ends = [access[name] for name in ("expires_at", "valid_until") if access.get(name) is not None]
    if not ends or min(ends) > actor.expires_at:
        raise errors.Forbidden(
            f"your access to this lock ends at {actor.expires_at.isoformat()}; what you grant must end by then"
            " (access.expires_at)",
            code="grant_outlives_granter",
        )


def mirror_access(con: Connection, lock_id: str, *, write_again: Collection[str] = ()) -> None:
    """Mirror who may read the lock's documents and until when: per member, a document ``locks/{lock}/access/{uid}``
    (expiry, guest window and its zone's offset) that the security rules read and compare with ``request.time``, so
    access ends in Firestore when it ends in the API, not at the next membership change. The access documents are
    readable by nobody: on the lock document (``access``, with ``member_uids``), which every member reads, a guest
    learnt every other member's uid, expiry and window (attack run); those fields are emptied. A member's is written
    when it differs from the one last queued (table ``mirrored_access``), a former member's ended once
    (``mirror.access_ended``), and the lock document written after them; a lock's first mirror since migration 0046
    (nothing recorded, ``mirrored_access_locks``) ends every former member's. ``write_again``: members whose
    documents are written whatever the record says (one joining: a removal the record did not see, an instance of the
    code before it during a deploy, left it saying the same access stood, and the document was never written again:
    attack run 33). A window whose zone's offset will change is refreshed again then (``mirror_access_due``), and so
    is every member's access at its next edge (``next_edge``): an expired member's document is ended, a recurring
    window's rewritten. The rules compare with ``request.time`` for every new read, but a listener already open is
    checked again only when a document they read changes: an expired member's and a guest's past their window's end
    kept receiving the lock's state and feed (attack run 12; the relay's upkeep, every 10 s, now cuts them off as
    removal does). A member whose account is found disabled or deleted has their document ended while it is
    (``mirror_access_soon``: a disabled account's leftover token read the live view for up to an hour, attack run 26;
    a deleted owner's, whose lock keeps them as its owner, for as long as it lived, attack run 52)."""
    # one lock's mirrors one at a time: each reads the members after the one before it committed, so its writes
    # (queued after that one's) are the newest, and a revoked member's access is never set again after its delete
    con.run("SELECT pg_advisory_xact_lock(hashtextextended('mirror_access ' || :l, 0))", l=lock_id)
    now = clock(con)  # the database's, as the rules' ``request.time`` and every instance's decisions go by
    everyone_listed = list_for_lock(con, lock_id)
    current = [m for m in everyone_listed if not m.ended(now)]
    # the members whose accounts stand, and when their sessions were last revoked (Firebase Auth's ``validSince``):
    # the rules refuse a token signed in before it, as the API does (it read the live view for the rest of its hour:
    # attack run 60)
    # and whether a token has shown their address verified: the rules then refuse a token naming no verified address,
    # as the API does (``users.outdated``: the token of whoever made the account with its owner's address before the
    # owner took it over read the owner's locks and their feeds for the rest of its hour: attack run 107)
    standing = {
        uid: (None if since is None else int(since), bool(verified))
        for uid, unusable, since, verified in con.run(
            "SELECT m.user_uid, " + users.unusable_sql("u") + ", floor(extract(epoch FROM u.tokens_valid_since)),"
            " u.address_verified_at IS NOT NULL"
            " FROM lock_members m JOIN users u ON u.uid = m.user_uid WHERE m.lock_id = CAST(:l AS uuid)",
            l=lock_id,
        )
        if not unusable
    }
    access = {
        m.user_uid: {
            **m.rules_access(now),
            "sessions_since_s": standing[m.user_uid][0],
            "address_verified": standing[m.user_uid][1],
        }
        for m in current
        if m.user_uid in standing
    }
    # only what differs from the documents last queued: every member's rewritten and every former member's ended
    # again was N + F + 2 writes a change, F growing with every account ever removed (attack run 32)
    mirrored = dict(con.run("SELECT user_uid, access FROM mirrored_access WHERE lock_id = CAST(:l AS uuid)", l=lock_id))
    changed = {uid: a for uid, a in sorted(access.items()) if uid in write_again or mirrored.get(uid) != a}
    recorded = bool(mirrored) or bool(
        con.run("SELECT 1 FROM mirrored_access_locks WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
    )
    if recorded:
        gone = sorted(set(mirrored) - set(access))
    else:  # the lock's first mirror since 0046 (nothing recorded): every former member's too (attack run 33), once
        everyone = con.run("SELECT user_uid FROM lock_members WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
        gone = sorted({r[0] for r in everyone} - set(access))
        con.run("INSERT INTO mirrored_access_locks VALUES (CAST(:l AS uuid)) ON CONFLICT DO NOTHING", l=lock_id)
    writes: list[mirror.Write] = [(mirror.access_doc(lock_id, uid), "set", a) for uid, a in changed.items()]
    writes += [mirror.access_ended(lock_id, uid, now) for uid in gone]
    # an offer of the lock to a member whose access ended is taken by nobody: it ends with the access (it stood,
    # hidden, until its own 7 days ran out, and the feed never said so: attack run 113's leftover). Whoever's access
    # ended, not only those whose documents end in this pass: one whose account was found disabled before had theirs
    # ended then, and their offer outlived their expiry (attack run 122)
    ended = [m.user_uid for m in everyone_listed if m.ended(now)]
    if ended:
        transfer_offers.end_for_takers(con, lock_id, ended, reason="member_expired")
    # written every time, after the access documents: a listener the rules let in is checked again only when a
    # document it reads changes (and what lock documents held before, which every member read, is emptied)
    writes.append((mirror.lock_doc(lock_id), "replace_fields", {"member_uids": [], "access": {}}))
    mirror.enqueue_many(con, writes)
    if changed:
        con.run(
            "INSERT INTO mirrored_access (lock_id, user_uid, access) SELECT CAST(:l AS uuid), u, CAST(a AS jsonb)"
            " FROM unnest(CAST(:u AS text[]), CAST(:a AS text[])) AS w(u, a)"
            " ON CONFLICT (lock_id, user_uid) DO UPDATE SET access = EXCLUDED.access",
            l=lock_id,
            u=list(changed),
            a=[json.dumps(a) for a in changed.values()],
        )
    if gone:
        con.run(
            "DELETE FROM mirrored_access WHERE lock_id = CAST(:l AS uuid) AND user_uid = ANY(:u)", l=lock_id, u=gone
        )
    edges = [edge for m in current if (edge := m.next_edge(now)) is not None]  # the zones' changes of offset too
    if edges:
        con.run(
            "INSERT INTO mirror_refresh_due (lock_id, due_at) VALUES (CAST(:l AS uuid), :t)"
            " ON CONFLICT (lock_id) DO UPDATE SET due_at = EXCLUDED.due_at",
            l=lock_id,
            t=min(edges),
        )
    else:
        con.run("DELETE FROM mirror_refresh_due WHERE lock_id = CAST(:l AS uuid)", l=lock_id)


def mirror_access_soon(con: Connection, uids: list[str]) -> None:
    """Mirror the access of every lock ``uids`` are members of at the relay's next upkeep (``mirror_access_due``):
    their accounts were found disabled or enabled again, deleted or found again, or their sessions revoked
    (``lockwise.core.accounts.sweep``)."""
    _due_now(con, "user_uid = ANY(:u)", u=uids)


def _due_now(con: Connection, members_where: str, **params: Any) -> None:
    """Make due now the locks with a standing member the SQL ``members_where`` (on ``lock_members``) picks. In the
    locks' order, as a member leaving every lock writes theirs (``locks.leave_every_lock``): in no order, the two
    could each hold a row the other waits for (a review)."""
    con.run(
        "INSERT INTO mirror_refresh_due (lock_id, due_at) SELECT DISTINCT lock_id, now() FROM lock_members"
        f" WHERE {members_where} AND revoked_at IS NULL ORDER BY lock_id"
        " ON CONFLICT (lock_id) DO UPDATE SET due_at = LEAST(mirror_refresh_due.due_at, EXCLUDED.due_at)",
        **params,
    )


#: how long after a release's first mirror for its zone data the second comes (``mirror_for_zone_data``): longer
#: than a deploy replaces the instances of the release before
ZONE_DATA_SECOND_PASS = dt.timedelta(minutes=30)


def mirror_for_zone_data(con: Connection) -> bool:
    """When this release's zone data (``zones.VERSION``) is newer than the one the live view's access was last
    mirrored with (``zone_data_mirrored``; none recorded: every release before zones came from the pinned data alone),
    make every lock with a guest whose window is read in a zone due a mirror, and record this version; whether it
    did. Run by the upkeep, so only code that reads the pinned data does it (a migration's rows were taken by the
    release before during a deploy, a review), and again at every move of the pin; an older release beside a newer
    one during a deploy does not undo it. Done a second time ``ZONE_DATA_SECOND_PASS`` on: instances of the release
    before, still serving during the deploy, may mirror a lock again with their data after the first (attack run
    82)."""
    recorded = con.run(
        "SELECT version, passes, mirrored_at <= now() - make_interval(secs => :s) FROM zone_data_mirrored FOR UPDATE",
        s=ZONE_DATA_SECOND_PASS.total_seconds(),
    )
    version = recorded[0][0] if recorded else None
    if zones.newer(zones.VERSION, version):
        passes = 1
    elif version == zones.VERSION and recorded[0][1] == 1 and recorded[0][2]:
        passes = 2
    else:
        return False
    _due_now(con, "role = 'guest' AND (weekdays IS NOT NULL OR day_start_minute IS NOT NULL)")  # ``recurring``
    con.run(
        "INSERT INTO zone_data_mirrored (version, passes) VALUES (:v, :p)"
        " ON CONFLICT (only_row) DO UPDATE SET version = :v, passes = :p, mirrored_at = now()",
        v=zones.VERSION,
        p=passes,
    )
    logger.info("zone data %s: locks with zoned guests are mirrored again (pass %d)", zones.VERSION, passes)
    return True


def mirror_access_due(db: Database, budget_s: float | None = None) -> bool:
    """Mirror again the members of locks where a member's access reached an edge (an expiry, a guest window's end or
    start, a zone's change of offset; run by the relay's periodic upkeep), ``REFRESH_BATCH`` locks a transaction,
    until none is due or ``budget_s`` has passed (edges fall together: every whole-day guest of a zone at its
    midnight); returns whether locks may be left due (the budget ran out first: the relay asks again at once)."""
    deadline = time.monotonic() + (REFRESH_BUDGET_S if budget_s is None else budget_s)
    busy: set[str] = set()  # passed over in this call (``_taken``): not asked for again until the next
    while True:
        with db.transaction() as con:
            batch = _mirror_access_due(con, busy)
        if batch < REFRESH_BATCH:
            return False
        if time.monotonic() >= deadline:
            return True


def _mirror_access_due(con: Connection, busy: set[str]) -> int:
    """One batch of ``mirror_access_due``: how many locks were due in it, less ``busy`` (a lock busy now is left
    due and added to ``busy``: ``_taken``; one busy lock ended the call while others were due, a review)."""
    due = [
        r[0]
        for r in con.run(
            "SELECT lock_id::text FROM mirror_refresh_due WHERE due_at <= now()"
            " AND NOT (lock_id = ANY(CAST(:busy AS uuid[]))) ORDER BY due_at LIMIT :n",
            busy=sorted(busy),
            n=REFRESH_BATCH,
        )
    ]
    for lock_id in due:  # each on its own: one that fails every time holds up no other
        if not _taken(con, lock_id):
            busy.add(lock_id)
            continue
        con.run("SAVEPOINT refresh")
        try:
            mirror_access(con, lock_id)
        except Exception:
            con.run("ROLLBACK TO SAVEPOINT refresh")
            logger.exception(
                "a lock's access could not be mirrored; tried again later", extra={"fields": {"lock_id": lock_id}}
            )
            con.run(
                "UPDATE mirror_refresh_due SET due_at = now() + interval '10 minutes' WHERE lock_id = CAST(:l AS uuid)",
                l=lock_id,
            )
        else:
            con.run("RELEASE SAVEPOINT refresh")
    return len(due)


def _taken(con: Connection, lock_id: str) -> bool:
    """Whether this batch may mirror ``lock_id`` now: its mirror's lock, then its due row, in ``mirror_access``'s
    order and never waiting for either. A member change holds the mirror's lock and then writes the due row; the
    batch held every due row first and then waited for each mirror's lock, and PostgreSQL ended the member change as
    a deadlock (a 503, attack run 27). A lock busy (or refreshed meanwhile) is left to the next batch."""
    mirror = con.run("SELECT pg_try_advisory_xact_lock(hashtextextended('mirror_access ' || :l, 0))", l=lock_id)
    return bool(mirror[0][0]) and bool(
        con.run(
            "SELECT 1 FROM mirror_refresh_due WHERE lock_id = CAST(:l AS uuid) AND due_at <= now()"
            " FOR UPDATE SKIP LOCKED",
            l=lock_id,
        )
    )


def set_terms(con: Connection, lock_id: str, uid: str, role: str, access: dict[str, Any]) -> None:
    """Give the membership ``role`` on the terms ``access`` (``parse_access``'s keys: its window, zone and expiry)."""
    con.run(
        "UPDATE lock_members SET role = :r, valid_from = :valid_from, valid_until = :valid_until,"
        " weekdays = :weekdays, day_start_minute = :day_start_minute, day_end_minute = :day_end_minute,"
        " timezone = :timezone, expires_at = :expires_at WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
        r=role,
        l=lock_id,
        u=uid,
        **access,
    )


def hold_members(con: Connection, lock_id: str) -> None:
    """Hold who is a member of ``lock_id`` from other changes until this transaction ends (a transaction-scoped
    advisory lock): two invitations accepted side by side each counted the members before the other joined, and
    both passed ``refuse_past_limit``. Taken after the lock's row and before any membership row (``require_target``,
    the sender's in ``invitations.accept``) and before ``mirror_access``'s, so no two paths wait in a circle."""
    con.run("SELECT pg_advisory_xact_lock(hashtextextended('members of ' || :l, 0))", l=lock_id)


def refuse_past_limit(con: Connection, lock_id: str, limit: int, now: dt.datetime, *, invited: int = 0) -> None:
    """409 ``too_many_members`` when ``lock_id`` has ``limit`` active members at ``now`` already, with ``invited``
    more on their way. Each is a voiceprint the door scores at every attempt, and like voices are scored against
    each other (k by k): an owner's thousand accounts at one door cost seconds an attempt (attack run 22). The
    members are held (``hold_members``) until the caller's transaction ends, so what it then adds is counted by the
    next; the caller took that hold already where it locks a membership row after this."""
    hold_members(con, lock_id)
    (active,) = con.run(
        "SELECT count(*) FROM lock_members m WHERE m.lock_id = CAST(:l AS uuid) AND " + active_sql("m"),
        l=lock_id,
        now=now,
    )[0]
    if int(active) + invited >= limit:
        raise errors.Conflict(
            f"a lock may have at most {limit} members, your open invitations to it included", code="too_many_members"
        )


#: the locks of ended memberships a ``too_many_memberships`` refusal names, the longest ended first
ENDED_NAMED = 20


def refuse_past_joined(con: Connection, uid: str, limit: int, now: dt.datetime) -> None:
    """409 ``too_many_memberships`` when ``uid`` is a member of ``limit`` locks they do not own, ended access not
    removed included (a membership ended by its expiry stays theirs, and comes back with a new invitation). Each is
    one their account's deletion leaves, about 20 statements in its one transaction, and joining them cost nothing
    but invitations from accounts of their own (attack run 93). The caller holds the user's row
    (``users.hold_caller``): one account's joins take turns. The refusal names (``details.ended_lock_ids``) up to
    ``ENDED_NAMED`` of the locks whose access ended by its expiry: no listing shows them, and each may be left
    (``require_own``)."""
    if joined_count(con, uid) >= limit:
        ended = con.run(
            "SELECT lock_id::text FROM lock_members WHERE user_uid = :u AND revoked_at IS NULL AND role <> 'owner'"
            " AND expires_at <= :now ORDER BY expires_at, lock_id LIMIT :n",
            u=uid,
            now=now,
            n=ENDED_NAMED,
        )
        raise errors.Conflict(
            f"an account may be a member of at most {limit} locks it does not own, ended access included: leave"
            " one first",
            code="too_many_memberships",
            details={"ended_lock_ids": [row[0] for row in ended]},
        )


def joined_count(con: Connection, uid: str) -> int:
    """How many locks ``uid`` is a member of without owning them, ended access not removed included."""
    (held,) = con.run(
        "SELECT count(*) FROM lock_members WHERE user_uid = :u AND revoked_at IS NULL AND role <> 'owner'", u=uid
    )[0]
    return int(held)


def refuse_giver_past_joined(con: Connection, giver_uid: str, limit: int) -> None:
    """409 ``owner_too_many_memberships`` to a member accepting a lock from ``giver_uid``, who stays on as its admin,
    when the giver is a member of ``limit`` locks they do not own already. Made admins of every lock they handed
    over, the accounts of one person took ``limit`` memberships each past the bound ``refuse_past_joined`` keeps on
    joining (an account handing ``LOCKWISE_LOCKS_PER_OWNER`` locks at a time to accounts of its own, and taking
    them back). The giver is told when they offer (``refuse_past_joined``, naming their ended ones); the taker is
    told only that it is the owner's limit. The giver's row is read, not held (a taker holding it behind the lock's
    row waited for the relay's account check, which holds accounts' rows and then a lock's: attack run 34), so
    acceptances of the giver's locks at the same moment may each pass it once."""
    if joined_count(con, giver_uid) >= limit:
        raise errors.Conflict(
            f"the lock's owner stays on as an admin and is a member of the most locks an account may be ({limit}):"
            " they must leave one first",
            code="owner_too_many_memberships",
        )


def request_body(body: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The body of a member request holding only ``fields``: an access limit beside ``access`` instead of in it is
    400 ``invalid_access`` saying where it goes (ignored, `expires_at` beside `role` granted access that never
    ended), any other field 400 ``unknown_field``."""
    misplaced = sorted(set(ACCESS_FIELDS) & set(body))
    if misplaced:
        raise errors.BadRequest(
            f"{', '.join(misplaced)}: put access limits in the access object", code="invalid_access"
        )
    return inputs.only_fields(body, fields)


def parse_access(role: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validate the ``access`` object of a member request (``request_body``) into column values (400 naming the bad
    field)."""
    raw = body.get("access") or {}
    if not isinstance(raw, dict):
        raise errors.BadRequest("access must be an object", code="invalid_access")
    inputs.only_fields(raw, ACCESS_FIELDS, "access")
    out: dict[str, Any] = dict.fromkeys(ACCESS_FIELDS)
    out["timezone"] = "UTC"
    window_fields = {k for k in raw if k not in ("expires_at",)}
    if window_fields and role != "guest":
        raise errors.BadRequest("only guests have access windows", code="invalid_access")
    for name in ("valid_from", "valid_until", "expires_at"):
        if raw.get(name) is not None:
            out[name] = _parse_time(name, raw[name])
    if raw.get("weekdays") is not None:
        days = raw["weekdays"]
        if not isinstance(days, list) or not days or any(d not in WEEKDAY_NAMES for d in days):
            raise errors.BadRequest(f"weekdays must be a non-empty list of {WEEKDAY_NAMES}", code="invalid_access")
        out["weekdays"] = sum(1 << WEEKDAY_NAMES.index(d) for d in set(days))
    start, end = raw.get("day_start_minute"), raw.get("day_end_minute")
    if (start is None) != (end is None):
        raise errors.BadRequest("day_start_minute and day_end_minute go together", code="invalid_access")
    if start is not None:
        if not (_is_int(start) and _is_int(end) and 0 <= start <= 1439 and 1 <= end <= 1440 and start != end):
            raise errors.BadRequest("day minutes must be integers: start 0-1439, end 1-1440", code="invalid_access")
        out["day_start_minute"], out["day_end_minute"] = start, end
    if raw.get("timezone") is not None:
        tz = raw["timezone"]
        try:
            if not isinstance(tz, str):
                raise ZoneInfoNotFoundError(tz)
            zones.named(tz)
        except ZoneInfoNotFoundError as exc:
            raise errors.BadRequest(f"unknown time zone {tz!r}", code="invalid_access") from exc
        out["timezone"] = tz
    if out["valid_from"] and out["valid_until"] and out["valid_until"] <= out["valid_from"]:
        raise errors.BadRequest("valid_until must be after valid_from", code="invalid_access")
    return out


def ended(access: dict[str, Any], now: dt.datetime) -> str | None:
    """The access field (``expires_at``, ``valid_until``) of ``parse_access``'s values that is already past at
    ``now``, if one is: such terms never let their member in."""
    for name in ("expires_at", "valid_until"):
        moment = access.get(name)
        if moment is not None and moment <= now:
            return name
    return None


def require_future(access: dict[str, Any], now: dt.datetime) -> None:
    """400 ``invalid_access`` for an invitation whose terms have already ended, or end by the time its window opens
    (its invitee would accept, be told they joined, and never get in: the second was sent, 202, attack run 119). A
    member's terms changed to end so are a pause, and taken."""
    name = ended(access, now)
    if name is not None:
        raise errors.BadRequest(f"access {name} is in the past: nobody could use it", code="invalid_access")
    opens, ends = access.get("valid_from"), access.get("expires_at")
    if opens is not None and ends is not None and ends <= opens:
        raise errors.BadRequest("access expires_at is not after valid_from: nobody could use it", code="invalid_access")
    if not lets_in(access, now):
        raise errors.BadRequest(
            "the access window never opens before the access ends: nobody could use it", code="invalid_access"
        )


#: how far ahead a guest's window is searched for a moment it lets her in: every weekday twice, and a day the clocks
#: change once at most; terms that last longer than this let her in on some day
WINDOW_SEARCHED = dt.timedelta(days=15)


def lets_in(access: dict[str, Any], now: dt.datetime) -> bool:
    """Whether the terms ``access`` (``parse_access``'s) let their member in at some moment from ``now`` on, before
    they end: a guest's window on Mondays between a Tuesday and a Wednesday, or its hours outside the one day it
    spans, never does (attack run 119: sent, 202, a guest who could never come in)."""
    ends = [t for t in (access.get("valid_until"), access.get("expires_at")) if t is not None]
    start = max(now, access.get("valid_from") or now)
    if not ends or min(ends) - start > WINDOW_SEARCHED:
        return True
    terms = {name: access.get(name) for name in ACCESS_FIELDS if name != "timezone"}
    guest = Membership("", "", "guest", timezone=access.get("timezone") or "UTC", **terms)
    moment: dt.datetime | None = start
    while moment is not None and moment < min(ends):  # what she may do changes only at an edge
        if guest.in_window(moment):
            return True
        moment = guest.next_edge(moment)
    return False


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_time(name: str, value: Any) -> dt.datetime:
    return inputs.parse_time(value, name, code="invalid_access")
