"""Accounts deleted or disabled outside the app: asked of Firebase Auth, the oldest checked first, by the relay's
periodic flush.

The app deletes an account through the back-end first (``DELETE /embed/enrollment``, ``DELETE /devices/me``). One
deleted another way (the Firebase console, the Admin SDK, an operator's script) was never seen: ID tokens are checked
offline, so its memberships stayed and its voice still opened doors. Each flush now looks up to
``LOCKWISE_ACCOUNT_CHECK_BATCH`` users whose last check is older than ``LOCKWISE_ACCOUNT_RECHECK_S`` in Firebase
Auth (one ``accounts:lookup`` call) and marks the ones it does not find ``account_gone_at``: the devices domain then
ends what they hold (``lockwise.devices.locks.leave_every_lock``) and no lock scores their voice again
(``lockwise.voice.voiceprints``). A disabled account is marked ``account_disabled``: its voice is not scored and
its requests are refused while it is, its memberships stay. When its sessions were last revoked (``validSince``:
``revokeRefreshTokens``, a password changed) is kept too: a token signed in before it is refused. Every user is
looked up again each period, gone ones too: one made again with its uid (an account deleted by mistake, restored)
is gone no more. A lookup that fails marks nobody: only an answer that is a lookup's (its ``kind``) is taken as
telling which are gone.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from lockwise.core import audit, errors, google_api, inputs, mirror, quotas, users
from lockwise.core.auth import User
from lockwise.core.db import Connection, Database
from lockwise.core.google_api import Authorize

PRODUCTION_HOST = "identitytoolkit.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: accounts one ``accounts:lookup`` call may name (the Admin SDK's ``get_users`` limit)
LOOKUP_MAX = 100
TIMEOUT_S = 5.0
#: what every ``accounts:lookup`` answer says it is
LOOKUP_KIND = "identitytoolkit#GetAccountInfoResponse"
#: who the audit log names for what the sweep finds
AUDIT_ACTOR = "system:accounts"


class DirectoryError(Exception):
    """Firebase Auth did not answer which accounts exist (unreachable, refused, or an answer that is not one)."""


@dataclass(frozen=True)
class Account:
    """What Firebase Auth holds of an account that exists."""

    disabled: bool = False
    valid_since: int | None = None  # sessions signed in before it (epoch seconds) are revoked


class Directory(Protocol):
    def lookup(self, uids: Sequence[str]) -> dict[str, Account]:
        """The accounts of ``uids`` (at most ``LOOKUP_MAX``) that exist; ``DirectoryError`` when that cannot be
        told."""
        ...

    def verified_email(self, uid: str) -> str | None:
        """The address ``uid``'s account has now, verified (``inputs.email_key``'s form), or None (none, not
        verified, no such account, or the account is disabled); ``DirectoryError`` when that cannot be told."""
        ...


@dataclass(frozen=True)
class Claimed:
    """What Firebase Auth holds now of an account's custom claims, and when its sessions were last revoked."""

    claims: dict[str, object]
    valid_since: int | None = None  # sessions signed in before it (epoch seconds) are revoked (``revoked_since``)


class Claims(Protocol):
    def custom_claims(self, uid: str) -> Claimed:
        """The custom claims ``uid``'s account has now (none: no such account, or it is disabled), with its
        sessions' revocation; ``DirectoryError`` when that cannot be told."""
        ...


class IdentityToolkit:
    """Firebase Auth's REST API (``accounts:lookup``), production's or the Auth emulator's."""

    def __init__(
        self, project_id: str, host: str, *, authorize: Authorize, tls: ssl.SSLContext | None, prefix: str = ""
    ) -> None:
        self._target = f"{prefix}/v1/projects/{urllib.parse.quote(project_id, safe='')}/accounts:lookup"
        self._api = google_api.GoogleApi("Firebase Auth", host, authorize=authorize, tls=tls, timeout_s=TIMEOUT_S)

    def lookup(self, uids: Sequence[str]) -> dict[str, Account]:
        asked = set(uids)
        return {
            uid: Account(user.get("disabled") is True, revoked_since(user.get("validSince"), user.get("createdAt")))
            for uid, user in self._users(uids).items()
            if uid in asked
        }

    def verified_email(self, uid: str) -> str | None:
        user = self._users([uid]).get(uid)
        if user is None or user.get("emailVerified") is not True or user.get("disabled") is True:
            return None
        return inputs.email_key(user.get("email"))

    def custom_claims(self, uid: str) -> Claimed:
        user = self._users([uid]).get(uid)
        if user is None or user.get("disabled") is True:
            return Claimed({})
        since = revoked_since(user.get("validSince"), user.get("createdAt"))
        raw = user.get("customAttributes")  # a JSON object as a string, absent when none were set
        if raw is None:
            return Claimed({}, since)
        try:
            claims = json.loads(raw) if isinstance(raw, str) else None
        except (ValueError, RecursionError):  # (nested past the parser's depth: attack run 77)
            claims = None
        if not isinstance(claims, dict):
            raise DirectoryError("Firebase Auth answered custom claims that are not a JSON object")
        return Claimed(claims, since)

    def _users(self, uids: Sequence[str]) -> dict[str, dict[str, object]]:
        """The accounts ``accounts:lookup`` finds, by uid."""
        if not 0 < len(uids) <= LOOKUP_MAX:
            raise ValueError(f"look up 1 to {LOOKUP_MAX} accounts at a time, not {len(uids)}")
        try:
            status, data = self._api.call("POST", self._target, {"localId": list(uids)})
        except google_api.Unavailable as exc:
            raise DirectoryError(str(exc)) from exc
        if status != 200:
            raise DirectoryError(f"Firebase Auth answered {status}: {data[:200].decode(errors='replace')}")
        try:
            found = json.loads(data)
            if found.get("kind") != LOOKUP_KIND:  # a proxy's or another API's 200 is not "none of them exist"
                raise ValueError(found.get("kind"))
            return {str(user["localId"]): dict(user) for user in found.get("users", [])}
        except (ValueError, AttributeError, KeyError, TypeError, RecursionError) as exc:  # (nested: attack run 92)
            raise DirectoryError("Firebase Auth answered with a body that is not a lookup's") from exc


def _or_none(seconds: int | None) -> int:
    """``seconds``, or -1 for none (an array of PostgreSQL's holds no Python None as pg8000 sends it)."""
    return -1 if seconds is None else seconds


#: how long after an account's creation (``createdAt``) a ``validSince`` is still its creation's (``revoked_since``)
CREATION_CLOCK_MS = 10


def revoked_since(valid_since: object, created_at: object) -> int | None:
    """When the account's sessions were last revoked: its ``validSince`` (epoch seconds), or None when it has none or
    the one it has is its creation's. Firebase Auth sets ``validSince`` when an account is made with a password, and
    the Auth emulator reads the clock for it a moment after the sign-in time of the sign-up's own session: when a
    second turned between the two, that session was signed in "before" its account's ``validSince``, and once the
    relay's flush read it the session was refused (401 ``token_revoked``, and the live view's rules refused it: a
    full run, once). The creation's is the second of ``createdAt`` (milliseconds), or the next one when it began at
    most ``CREATION_CLOCK_MS`` after it; a revocation even two seconds after the creation counts (a first window of
    the whole next second let one made a second after the sign-up through, as nothing: attack run 87), and so does
    one long before or after a ``createdAt`` set by an import or the Admin API. Left: one in the two seconds after
    the creation of an account made in the last ``CREATION_CLOCK_MS`` of its second (1 %) reads as its creation's,
    as ``validSince`` is in whole seconds."""
    since, created = _digits(valid_since, 11), _digits(created_at, 14)
    if since is not None and created is not None and created - 1000 < since * 1000 <= created + CREATION_CLOCK_MS:
        return None
    return since


def _digits(value: object, most: int) -> int | None:
    """A decimal string of at most ``most`` digits as the API answers numbers, or None (none, or not one)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= most:
        return int(value)
    return None


def with_current_address(user: User, directory: Callable[[], Directory]) -> User:
    """``user`` with the address their token names only while Firebase Auth still has it, verified, for their
    account. ID tokens are checked offline and keep the address they were issued with for up to an hour after the
    account moved to another: a token of the old holder accepted an invitation sent to the address after its new
    holder had verified it, and the new holder's accept was then 404 (attack run 12). One ``accounts:lookup`` call;
    503 ``accounts_unavailable`` when Firebase Auth cannot tell."""
    if users.stored_email(user) is None:
        return user
    try:
        current = directory().verified_email(user.uid)  # made here: no credentials is a DirectoryError too
    except DirectoryError as exc:
        raise errors.Unavailable(
            "your address could not be confirmed with Firebase Auth; try again", code="accounts_unavailable"
        ) from exc
    return user if current == user.email else replace(user, email=None, email_verified=False)


def directory_for(project_id: str, auth_emulator_host: str | None) -> IdentityToolkit:
    """Production's Firebase Auth with Application Default Credentials (``DirectoryError`` without any), or the
    emulator at ``auth_emulator_host``."""
    if auth_emulator_host:
        return IdentityToolkit(
            project_id,
            auth_emulator_host,
            authorize=google_api.emulator_owner,
            tls=None,
            prefix="/identitytoolkit.googleapis.com",
        )
    tls = ssl.create_default_context()
    try:
        authorize = google_api.default_credentials(tls, scope=SCOPE, host=PRODUCTION_HOST)
    except Exception as exc:  # noqa: BLE001 - google-auth finds no credentials in its own types
        raise DirectoryError(f"no credentials for Firebase Auth: {type(exc).__name__}") from exc
    return IdentityToolkit(project_id, PRODUCTION_HOST, authorize=authorize, tls=tls)


@dataclass(frozen=True)
class Sweep:
    gone: list[str]  # found deleted by this sweep
    back: list[str]  # found again after being marked gone (an account made again with its uid)
    disabled: list[str] = field(default_factory=list)  # found disabled, or enabled again, by this sweep
    checked: int = 0  # users looked up and marked
    #: users looked up whose rows other requests held: not marked, still due (a flush's next lookup passes them over)
    held: list[str] = field(default_factory=list)
    looked_up: int = 0  # users looked up (the batch, when that many were due)


#: one account check at a time across instances (``sweep``): an advisory lock held by a transaction of its own
SWEEP_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('lockwise account sweep', 0))"


def sweep(
    db: Database,
    directory: Directory,
    *,
    batch: int,
    recheck_s: int,
    standing_changed: Callable[[Connection, list[str]], None] | None = None,
    passing_over: Collection[str] = (),
) -> Sweep:
    """Check up to ``batch`` (at least 1) users due a check (never checked, or last checked ``recheck_s`` ago, gone
    ones too); mark the ones Firebase Auth does not know gone, and whether the others are disabled; a gone one found
    again is gone no more. ``standing_changed`` is called with the users found disabled or enabled again, deleted or
    found again, or whose sessions were revoked since, in the transaction that marks them (the devices side ends or
    gives back their live view: ``gone_accounts``). ``DirectoryError`` when it does not answer (nothing is
    marked). ``passing_over``: users not to look up this time (an earlier lookup of the flush found their rows held).

    One at a time across instances, from the lookup to what it marks (the relay's replicas flush side by side): two
    ran at once, and the one whose lookup was older wrote last, undoing a disable, a revocation or a deletion the
    other had just found, until the next check an hour later (attack run 61: 5 of 40 rounds). One that finds another
    under way checks nobody (the next flush does). The lock is held by a transaction of its own on a connection
    outside the pool (the sweep's own statements take pooled ones, and a pool of one would wait for itself), let go
    as it closes, or by the server's idle-in-transaction limit (60 s) when its holder vanished without closing it: a
    session's lock on an idle connection was held until the server's TCP keepalive gave up, ~2 h without a check
    anywhere (attack run 65). A check that outlived its lock so writes nothing over a newer one's
    (``account_checked_at``)."""
    guard = db.connect()
    try:
        guard.run("START TRANSACTION")
        if not guard.run(SWEEP_LOCK)[0][0]:
            return Sweep([], [])
        return _sweep(
            db,
            directory,
            batch=batch,
            recheck_s=recheck_s,
            standing_changed=standing_changed,
            passing_over=passing_over,
        )
    finally:
        with contextlib.suppress(Exception):  # a connection lost meanwhile let its lock go with it
            guard.close()


def _sweep(
    db: Database,
    directory: Directory,
    *,
    batch: int,
    recheck_s: int,
    standing_changed: Callable[[Connection, list[str]], None] | None,
    passing_over: Collection[str],
) -> Sweep:
    with db.connection() as con:
        # checked as of before the lookup: a session begun while it ran asks for a check again (``users.standing``),
        # and the lookup's answer may be from before its revocation (a review)
        (asked_at,) = con.run("SELECT now()")[0]
        due = _due(con, min(batch, LOOKUP_MAX), recheck_s, list(passing_over))
    if not due:
        return Sweep([], [])
    # outside any transaction (a slow answer holds no row); a uid that cannot be one document id was recorded
    # before such tokens were refused: it signs in no more and stays gone (migration 0032), whatever Auth holds
    found = {uid: account for uid, account in directory.lookup(due).items() if inputs.is_document_id(uid)}
    with db.transaction() as con:
        # the rows nobody else holds (a user's first request writing theirs is not waited for: checked next time)
        rows = con.run(
            "SELECT uid, account_gone_at IS NOT NULL, account_disabled, floor(extract(epoch FROM tokens_valid_since)),"
            " address_verified_at IS NOT NULL FROM users"
            " WHERE uid = ANY(:u) AND (account_checked_at IS NULL OR account_checked_at <= :asked)"
            " ORDER BY uid FOR NO KEY UPDATE SKIP LOCKED",
            u=due,
            asked=asked_at,
        )
        held = {str(row[0]): bool(row[1]) for row in rows}
        verified = {str(row[0]) for row in rows if row[4]}
        flipped = sorted(
            str(row[0]) for row in rows if str(row[0]) in found and found[str(row[0])].disabled != bool(row[2])
        )
        kept = [uid for uid in held if uid in found]
        # sessions revoked since the last check (a password changed, "sign out everywhere"): the live view's rules
        # read the time too (``members.mirror_access``; attack run 60). Only ever later: Firebase's ``validSince``
        # never moves back, and an account's ``createdAt`` moved by an import or the Admin API made a recorded
        # revocation read as its creation's and lifted it (attack run 87)
        recorded_since = {str(row[0]): None if row[3] is None else int(row[3]) for row in rows}
        since = {uid: _latest(found[uid].valid_since, recorded_since[uid]) for uid in kept}
        revoked = sorted(uid for uid in kept if since[uid] != recorded_since[uid])
        con.run(
            "UPDATE users SET account_checked_at = :asked, account_disabled = f.disabled, account_gone_at = NULL,"
            " account_ended_at = NULL, tokens_valid_since = to_timestamp(NULLIF(f.valid_since, -1)),"
            " account_disabled_at = CASE WHEN f.disabled THEN coalesce(users.account_disabled_at, now()) END"
            " FROM unnest(CAST(:u AS text[]), CAST(:d AS boolean[]), CAST(:v AS double precision[]))"
            " AS f(uid, disabled, valid_since) WHERE users.uid = f.uid",
            u=kept,
            asked=asked_at,
            d=[found[uid].disabled for uid in kept],
            v=[float(_or_none(since[uid])) for uid in kept],
        )
        con.run(
            "UPDATE users SET account_checked_at = :asked, account_gone_at = coalesce(account_gone_at, now())"
            " WHERE uid = ANY(:g)",
            g=[uid for uid in held if uid not in found],
            asked=asked_at,  # as the found ones: a newer check's start is after it (attack run 66)
        )
        gone = sorted(uid for uid, was_gone in held.items() if uid not in found and not was_gone)
        back = sorted(uid for uid, was_gone in held.items() if uid in found and was_gone)
        for uid in gone:
            audit.record(con, AUDIT_ACTOR, "user.account_gone", "ok", target=uid)
        for uid in back:
            audit.record(con, AUDIT_ACTOR, "user.account_back", "ok", target=uid)
        for uid in flipped:
            details = {"disabled": found[uid].disabled}
            audit.record(con, AUDIT_ACTOR, "user.account_disabled", "ok", target=uid, details=details)
        changed = sorted({*flipped, *gone, *back, *revoked})
        mirror.enqueue_many(
            con,
            [
                mirror.standing(uid, ended=True, sessions_since_s=None, address_verified=uid in verified)
                if uid not in found
                else mirror.standing(
                    uid, ended=found[uid].disabled, sessions_since_s=since[uid], address_verified=uid in verified
                )
                for uid in changed
            ],
        )
        if changed and standing_changed is not None:
            standing_changed(con, changed)
    return Sweep(gone, back, flipped, len(held), sorted(set(due) - held.keys()), len(due))


def _latest(*seconds: int | None) -> int | None:
    """The latest of ``seconds`` that are not None (None: none is)."""
    return max((s for s in seconds if s is not None), default=None)


def _due(con: Connection, most: int, recheck_s: int, passing_over: list[str]) -> list[str]:
    """Up to ``most`` users due a check: about half of them (when there are that many; an odd batch's last place
    goes to either half at random) the ones whose last check is oldest, the rest, in random order, ones never checked
    or asked to be checked soon (``users.standing``). Those had gone first, all of them: anyone signing up accounts,
    or signing in again, as fast as the relay's flushes checked them kept every recheck from coming, and an account
    deleted or disabled in Firebase Auth opened doors for good (attack run 35: a deleted account's recheck never came
    in 5 flushes beside 3 new accounts each). In random order, nobody's can be kept last (a review)."""
    overdue = [
        str(row[0])
        for row in con.run(
            # or checked before the database was restored (``lockwise.devices.restored``: a check since the restore
            # point was taken back with it)
            "SELECT uid FROM users WHERE account_checked_at <= greatest(now() - make_interval(secs => :r),"
            " (SELECT max(fenced_at) FROM database_restores)) AND uid <> ALL(:p) ORDER BY account_checked_at LIMIT :n",
            r=recheck_s,
            n=most,
            p=passing_over,
        )
    ]
    fresh = [
        str(row[0])
        for row in con.run(
            "SELECT uid FROM users WHERE account_checked_at IS NULL AND uid <> ALL(:p) ORDER BY random() LIMIT :n",
            n=most,
            p=passing_over,
        )
    ]
    half = most // 2 + (most % 2 if secrets.randbelow(2) else 0)
    rechecked = min(len(overdue), max(half, most - len(fresh)))
    return overdue[:rechecked] + fresh[: most - rechecked]


def to_end(con: Connection, limit: int) -> list[str]:
    """Users found gone whose clean-up has not been done (``ended``), the longest waiting first: one whose clean-up
    failed goes to the back (``tried``)."""
    rows = con.run(
        "SELECT uid FROM users WHERE account_gone_at IS NOT NULL AND account_ended_at IS NULL"
        " ORDER BY account_end_tried_at NULLS FIRST, account_gone_at LIMIT :n",
        n=limit,
    )
    return [str(row[0]) for row in rows]


def ended(con: Connection, uid: str) -> None:
    """``uid``'s clean-up is done (in its transaction): a flush takes it up no more."""
    con.run("UPDATE users SET account_ended_at = now() WHERE uid = :u AND account_gone_at IS NOT NULL", u=uid)


def tried(con: Connection, uid: str) -> None:
    """``uid``'s clean-up failed: the others are taken up before it again (one failing every time, taken first by
    every flush, kept the rest from ever being ended: an attack run's deleted member stayed for good). Its own
    column: the sweep's recheck of the account (``account_checked_at``) keeps its schedule."""
    con.run("UPDATE users SET account_end_tried_at = now() WHERE uid = :u", u=uid)


#: how many times a minute one user's listings of invitations may ask Firebase Auth for their address, per instance
#: (every listing of a verified address asks, since attack run 86: the web console lists after each change)
LISTED_LOOKUPS_PER_MINUTE = 12
#: users an instance counts those for, at most (then it starts over)
LISTED_USERS_MAX = 10_000


#: how long a listing's later pages take its first page's confirmation (``PacedAddresses``)
LISTING_CONFIRMED_S = 30.0


class PacedAddresses:
    """``with_current_address`` for a listing of invitations, at most ``per_minute`` times a user a minute on this
    instance; past it 429 ``invitations_listed_too_often``. Each listing asked Firebase Auth again, without limit,
    and an account invited by address (its own second account's, say) could spend the project's
    ``accounts:lookup`` quota that other users' acceptances and the relay's account check need (attack run 26).
    Not remembered for a new listing: it would show invitations sent to an address its account has just given up.
    A listing's later pages (``continuing``) take what its first page found for ``LISTING_CONFIRMED_S``, counting
    nothing: each page asked and counted, and seven pages of invitations (anyone may invite any address) were a 429,
    the web console's whole view with it (attack run 63). Every listing of a token naming a verified address asks,
    whatever was sent to it (``invitations.for_user``, attack run 86). A user's finding goes once no later page can
    take it, as others list: kept until ``LISTED_USERS_MAX`` users had listed, each held the token's whole claims for
    the instance's life (attack run 114: ~2 MB for 1,000 users, ~20 MB at the cap)."""

    def __init__(self, directory: Callable[[], Directory], per_minute: int = LISTED_LOOKUPS_PER_MINUTE) -> None:
        self._directory = directory
        self._asked = quotas.InstancePace(
            per_minute,
            message="invitations are listed too often; try again shortly",
            code="invitations_listed_too_often",
            keys=LISTED_USERS_MAX,
        )
        self._found: dict[tuple[str, str | None], tuple[float, User]] = {}
        self._lock = threading.Lock()

    def __call__(self, user: User, *, continuing: bool = False) -> User:
        now = time.monotonic()
        key = (user.uid, user.email)
        with self._lock:
            found = self._found.get(key)
            if continuing and found is not None and now - found[0] < LISTING_CONFIRMED_S:
                return found[1]
        self._asked.take(user.uid)
        current = with_current_address(user, self._directory)
        with self._lock:
            # what a listing's later pages can no longer take goes, the oldest first
            quotas.keep_newest(
                self._found,
                key,
                (now, current),
                now=now,
                max_age_s=LISTING_CONFIRMED_S,
                cap=LISTED_USERS_MAX,
                at=lambda found: found[0],
            )
        return current

    @property
    def remembered(self) -> tuple[int, int]:
        """How many users' listings are kept now: their first pages' findings, and their paces."""
        with self._lock:
            found = len(self._found)
        return found, self._asked.remembered
