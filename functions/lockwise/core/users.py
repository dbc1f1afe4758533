"""App users as PostgreSQL knows them: one row per Firebase uid, made on first authenticated call."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from lockwise.core import audit, erasure, errors, mirror, shown_text
from lockwise.core.auth import User
from lockwise.core.db import Connection

#: who the audit log names for a voice dropped as the account's address is seen verified (it named the user's bare
#: uid, as no other row names anyone)
AUDIT_ACTOR = "system:addresses"


def stored_email(user: User) -> str | None:
    """The address ``upsert`` records for ``user``: theirs (``inputs.email_key``'s form, as the token verifier gives
    it) when it is verified, else None. An unverified address is anyone's to claim: recorded, it took the address
    from its verified holder's row, and closing a leaving member's invitations by their recorded address closed an
    invitation sent to that holder (attack run)."""
    return user.email if user.email is not None and user.email_verified else None


def upsert(con: Connection, user: User) -> None:
    """Record ``user`` (and their current email) so locks and voiceprints can refer to them.

    An email now held by this uid is released from any older account that had it (a Firebase account deleted and
    made again gets a new uid); an unverified address, or one the database would refuse, is stored as NULL. Both
    only for a token issued no earlier than the one that recorded what it replaces (``email_since``): a token keeps
    its address for up to an hour after the account moved to another, and one such, seen by an instance for the
    first time, took the address back from the account that holds it now (and a member's leaving then closed the
    invitations sent to that account)."""
    email = stored_email(user)
    if email is not None and not shown_text.plain_address(email):
        # kept as none: the members' listing and the invitations it sends show it to others, and a verified address
        # with U+202E or a Hangul filler in it read to them as another's (attack run 118); the token still counts
        # as vouching for an address (``outdated``, ``address_verified``)
        email = None
    since = issued_at(user)
    if email is not None:
        # one account at a time takes an address: two first requests of accounts carrying it both found it free
        # and the second's insert met the unique index (an attack run's 500s)
        con.run("SELECT pg_advisory_xact_lock(hashtextextended('user_email ' || :e, 0))", e=email)
        # not by an account found deleted (its tokens live up to an hour): it would take the address from the
        # account made again with it
        con.run(
            "UPDATE users SET email = NULL WHERE lower(email) = lower(:e) AND uid <> :u"
            " AND (email_since IS NULL OR email_since <= :t)"
            " AND NOT EXISTS (SELECT 1 FROM users gone WHERE gone.uid = :u AND gone.account_gone_at IS NOT NULL)",
            e=email,
            u=user.uid,
            t=since,
        )
        if con.run("SELECT 1 FROM users WHERE lower(email) = lower(:e) AND uid <> :u", e=email, u=user.uid):
            email = None  # vouched for by a newer token of another account: this one's address is out of date
    con.run(
        "INSERT INTO users (uid, email, email_since) VALUES (:uid, :email, :t) ON CONFLICT (uid) DO UPDATE"
        " SET email = EXCLUDED.email, email_since = EXCLUDED.email_since"
        " WHERE users.email IS DISTINCT FROM EXCLUDED.email AND users.account_gone_at IS NULL"
        " AND (users.left_at IS NULL OR users.left_at < EXCLUDED.email_since)"
        " AND (users.email_since IS NULL OR users.email_since <= EXCLUDED.email_since)",
        uid=user.uid,
        email=email,
        t=since,
    )
    if stored_email(user) is not None:
        address_verified(con, user.uid)


def address_verified(con: Connection, uid: str) -> None:
    """A token shows ``uid``'s address verified: record when that was first seen (``address_verified_at``) and forget
    the voice a token without a verified address enrolled. Anyone can sign up with anyone's address; when the
    address's owner takes such an account over (a Google sign-in, a password reset) Firebase keeps its uid, and a
    voice enrolled on it in advance opened every door the owner joined (attack run 73: 3 of 3 of the attacker's
    takes accepted as the owner). From then on a token without a verified address does nothing (``outdated``) and
    such a voiceprint is no candidate at any door
    (``lockwise.voice.voiceprints.candidates``): the attacker's older token, valid up to an hour, enrolled again
    after the drop, on instances that never ran this again (a review). The owner enrolls again; what was made with
    a verified address stays."""
    marked = con.run(  # one round trip: an instance's first sight of each verified user runs it
        "WITH first AS (UPDATE users SET address_verified_at = now() WHERE uid = :u AND address_verified_at IS NULL"
        " RETURNING uid, account_gone_at IS NOT NULL OR account_disabled AS ended,"
        " floor(extract(epoch FROM tokens_valid_since)) AS since),"
        # and the locks they are a member of are mirrored again at the relay's next upkeep: each access document
        # says the address was seen verified, and the rules then refuse a token naming none (attack run 107); one
        # written before said nothing, and the maker's token read the lock its membership from before let it in
        " due AS (INSERT INTO mirror_refresh_due (lock_id, due_at) SELECT DISTINCT lock_id, now() FROM lock_members"
        " WHERE user_uid IN (SELECT uid FROM first) AND revoked_at IS NULL ORDER BY lock_id"
        " ON CONFLICT (lock_id) DO UPDATE SET due_at = LEAST(mirror_refresh_due.due_at, EXCLUDED.due_at))"
        " SELECT EXISTS (SELECT 1 FROM voiceprints WHERE user_uid = :u AND address_unverified),"
        " first.uid IS NOT NULL, first.ended, first.since FROM (SELECT 1) AS one LEFT JOIN first ON true",
        u=uid,
    )
    if marked[0][1]:  # the account's standing says so too: the rules then refuse such a token the user's own
        # document, as the access documents refuse it the locks (attack run 107: the maker's token saw
        # ``voice_enrolled`` flip at the owner's takeover)
        since = None if marked[0][3] is None else int(marked[0][3])
        standing = mirror.standing(uid, ended=bool(marked[0][2]), sessions_since_s=since, address_verified=True)
        mirror.enqueue_many(con, [standing])
    if marked[0][0]:
        erasure.forget_voice(con, uid, "address_verified")
        audit.record(con, AUDIT_ACTOR, "voice.dropped_address_verified", "ok", target=uid)


def issued_at(user: User) -> dt.datetime:
    """When ``user``'s ID token was issued (its ``iat``, which the verifier requires); one it cannot be (before the
    epoch, or past what a date holds: an emulator's unsigned token) counts as the oldest, vouching for nothing."""
    return _claimed_time(user.claims.get("iat"))


def _claimed_time(seconds: object) -> dt.datetime:
    """A token's time claim as a date; one that is none (before the epoch, past what a date holds, not a number)
    counts as the oldest."""
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and 0 <= seconds < 2**33:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    return _OLDEST


_OLDEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # what a time claim that is none counts as


def addresses(con: Connection, uids: list[str]) -> dict[str, str]:
    """The address Firebase Auth last vouched for (verified) as each of ``uids``' that has one (``upsert``): none for
    an account without one, or one that left."""
    rows = con.run("SELECT uid, email FROM users WHERE uid = ANY(:u) AND email IS NOT NULL", u=uids)
    return {str(uid): str(email) for uid, email in rows}


def mark_left(con: Connection, uid: str, now: dt.datetime) -> None:
    """Record that ``uid`` left every lock at ``now`` (and forget their address), the devices side of deleting the
    account (``hold_caller``)."""
    con.run("UPDATE users SET email = NULL, left_at = :t WHERE uid = :u", u=uid, t=now)


#: how recent a sign-in a change that gives someone a door must come from (``require_recent_sign_in``)
RECENT_SIGN_IN = dt.timedelta(hours=1)


def require_recent_sign_in(user: User, now: dt.datetime, doing: str) -> None:
    """401 ``recent_sign_in_required`` unless ``user`` signed in within ``RECENT_SIGN_IN`` before ``now`` (the
    token's ``auth_time``: a token refreshed hourly from a sign-in of months ago keeps it). A refresh token never
    expires unless revoked, and one taken from a phone or a laptop enrolled its holder's voice in the owner's account
    (every door of hers then opened to him, as her), offered her locks to a member he controls, or re-paired or
    deleted them, for as long as it went unnoticed (attack run 121, for operators; its leftover, for these). The app
    asks the user to sign in again (Firebase's reauthentication), as Firebase Auth itself does before deleting an
    account."""
    if signed_in_at(user) < now - RECENT_SIGN_IN:
        raise errors.Unauthenticated(
            f"{doing} needs a sign-in of the last hour: sign in again (reauthenticate), not just refresh the token",
            code="recent_sign_in_required",
        )


def signed_in_at(user: User) -> dt.datetime:
    """When ``user`` last signed in (the token's ``auth_time``: a refreshed token keeps it, where its ``iat`` moves
    on every hourly refresh); the token's issue time when it names none, as Firebase's always do."""
    return _claimed_time(user.claims.get("auth_time", user.claims.get("iat")))


#: a sign-in this close after the leaving (by the instance's clock against Google's) still counts as before it
LEFT_LEEWAY_S = 60


@dataclass(frozen=True)
class Standing:
    """What ``lockwise.core.accounts`` found of a user's account (``standing``)."""

    refused: str | None  # a key of ``REFUSED``: the account was found deleted or disabled
    sessions_since: dt.datetime | None  # sessions signed in before it were revoked (Firebase Auth's ``validSince``)
    address_verified: bool = False  # a token has shown the account's address verified (``address_verified``)

    def refusal(self, user: User) -> str | None:
        """Why ``user``'s request is refused (a key of ``REFUSED``), if it is: the account's, or their token's
        session was revoked (signed in before ``sessions_since``, as Firebase's ``checkRevoked`` judges it), or their
        token is from before the account's address was verified (``outdated``)."""
        if self.refused is not None:
            return self.refused
        if self.sessions_since is not None and signed_in_at(user) < self.sessions_since:
            return "token_revoked"
        if outdated(user, address_verified=self.address_verified):
            return "token_outdated"
        return None


def outdated(user: User, *, address_verified: bool) -> bool:
    """Whether ``user``'s token is from before their account's address was seen verified: it names no verified
    address while the account's was. Anyone can sign up with anyone's address; when the address's owner takes such
    an account over (a Google sign-in), Firebase keeps its uid, and the token the one who made it had (valid up to
    an hour) unlocked the owner's doors and erased the owner's voice (attack run 79: only enrollment refused it)."""
    return address_verified and stored_email(user) is None


def standing(con: Connection, user: User) -> Standing:
    """What ``lockwise.core.accounts`` found of ``user``'s account: refused when it was found deleted
    (``account_deleted``) or disabled (``account_disabled``), and when its sessions were last revoked. ID tokens
    are checked offline and live up to an hour after any of these: a disabled admin's phone still unlocked the
    door, invited and removed members (attack run 26).

    A read, but for what makes the account the relay's next flush's first check instead of up to an hour later
    (``recheck_soon``): a token issued after the account was found deleted or disabled (Firebase issues none to
    either: it was restored with its uid, or enabled again), or a session begun since the account's last check (a
    revocation or a password change makes its owner sign in again: the revocation is then read in seconds, not at
    the hourly recheck, attack run 27)."""
    rows = con.run(
        "SELECT extract(epoch FROM account_gone_at), extract(epoch FROM account_disabled_at),"
        " extract(epoch FROM account_checked_at), tokens_valid_since, account_disabled,"
        " address_verified_at IS NOT NULL FROM users WHERE uid = :u",
        u=user.uid,
    )
    if not rows:
        return Standing(None, None)
    gone_at, disabled_at, checked_at = (None if t is None else float(t) for t in rows[0][:3])
    sessions_since, disabled = rows[0][3], bool(rows[0][4])
    refused = "account_deleted" if gone_at is not None else "account_disabled" if disabled else None
    if refused is not None:
        marked, claim = (gone_at if gone_at is not None else disabled_at), user.claims.get("iat")
    else:
        marked, claim = checked_at, signed_in_at(user).timestamp()
    if recheck_soon(claim, marked):
        con.run("UPDATE users SET account_checked_at = NULL WHERE uid = :u", u=user.uid)
    return Standing(refused, sessions_since, bool(rows[0][5]))


def recheck_soon(claim: object, marked: float | None) -> bool:
    """Whether a token's time ``claim`` (seconds) comes after ``marked`` (seconds, or None: nothing to come after).
    No leeway for the clocks apart (Google's and the database's): a recheck is one lookup, and an account enabled
    again within a minute of being found disabled stayed refused until its hourly recheck (attack run 27)."""
    return isinstance(claim, int | float) and not isinstance(claim, bool) and marked is not None and claim > marked


def account_deleted() -> errors.Unauthenticated:
    """The answer to a request of an account found deleted (its ID tokens live up to an hour after)."""
    return errors.Unauthenticated("this account has been deleted", code="account_deleted")


def account_disabled() -> errors.Unauthenticated:
    """The answer to a request of an account found disabled (its ID tokens live up to an hour after)."""
    return errors.Unauthenticated("this account has been disabled", code="account_disabled")


def token_revoked() -> errors.Unauthenticated:
    """The answer to a request whose token's session was revoked (signed in before the account's ``validSince``)."""
    return errors.Unauthenticated("this session was signed out; sign in again", code="token_revoked")


def token_outdated() -> errors.Unauthenticated:
    """The answer to a request whose token is from before the account's address was verified (``outdated``)."""
    return errors.Unauthenticated(
        "this account's address was verified after this token was issued: sign in again", code="token_outdated"
    )


#: the answer to each of ``Standing.refusal``'s reasons
REFUSED = {
    "account_deleted": account_deleted,
    "account_disabled": account_disabled,
    "token_revoked": token_revoked,
    "token_outdated": token_outdated,
}


@dataclass(frozen=True)
class Held:
    """An account's row as ``hold`` found it (held until the transaction ends)."""

    gone: bool  # found deleted (``lockwise.core.accounts``)
    disabled: bool  # found disabled
    left_at: dt.datetime | None  # when it last left every lock (``mark_left``)
    sessions_since: dt.datetime | None  # sessions signed in before it were revoked (Firebase Auth's ``validSince``)
    address_verified: bool = False  # a token has shown the account's address verified (``address_verified``)

    @property
    def stands(self) -> bool:
        """Found neither deleted nor disabled."""
        return not (self.gone or self.disabled)

    def refuse(self, user: User | None = None, *, left_since: bool = True) -> None:
        """Refuse the account's own request: 401 ``account_deleted`` / ``account_disabled`` when it was found so, and
        for ``user``'s token (the caller's), 401 ``token_outdated`` when it is from before the address was verified
        (``outdated``), 401 ``token_revoked`` when its session (``signed_in_at``) began before the account's
        sessions were revoked and, with ``left_since``, 409 ``account_left`` when the account left every lock after
        it (``hold_caller``)."""
        if self.gone:
            raise account_deleted()
        if self.disabled:
            raise account_disabled()
        if user is None:
            return
        if outdated(user, address_verified=self.address_verified):
            raise token_outdated()
        signed_in = signed_in_at(user)
        if self.sessions_since is not None and signed_in < self.sessions_since:
            raise token_revoked()
        if left_since and self.left_before(user):
            raise errors.Conflict(
                "this account has left every lock (it is being deleted): sign in again first", code="account_left"
            )

    def left_before(self, user: User) -> bool:
        """Whether the account left every lock after ``user``'s session signed in (within ``LEFT_LEEWAY_S``)."""
        leeway = dt.timedelta(seconds=LEFT_LEEWAY_S)
        return self.left_at is not None and signed_in_at(user) <= self.left_at + leeway


def vouches_sql(uid: str, signed_in: str) -> str:
    """SQL that holds while the account ``uid`` (an SQL expression) is found neither deleted nor disabled, and the
    session that signed in at ``signed_in`` (an SQL expression; NULL: not recorded) was not revoked since: a grant it
    made (a pairing code, an invitation, an ownership offer) stands no longer than the hand that made it. A thief with
    the owner's phone asked for a pairing code, invited their own account and offered the lock to it, and each still
    worked once the account was disabled, deleted or signed out everywhere (attack run 47); enabled again, its
    grants stand again, as its sessions do."""
    return (
        f"NOT EXISTS (SELECT 1 FROM users issuer WHERE issuer.uid = {uid} AND ({unusable_sql('issuer')}"
        f" OR {signed_in} < issuer.tokens_valid_since))"
    )


def unusable_sql(alias: str) -> str:
    """SQL that holds while the account of the ``users`` row ``alias`` is found deleted or disabled (``Held.stands``,
    false)."""
    return f"({alias}.account_gone_at IS NOT NULL OR {alias}.account_disabled)"


def hold(con: Connection, uid: str) -> Held:
    """Hold ``uid``'s row until the transaction ends and say what it holds: what is counted per user (daily quotas,
    locks owned) is then decided one request at a time, so a burst in parallel gets no more than the same requests
    in a row. An account with no row yet holds nothing and is none of ``Held``'s refusals."""
    return _found(con.run(_ACCOUNT + " FOR NO KEY UPDATE", u=uid))


def hold_if_free(con: Connection, uid: str) -> Held | None:
    """``hold``, or None at once when another transaction holds the row (for a caller already holding a lock's row,
    which the holder may be waiting for: waiting here would close a circle)."""
    rows = con.run(_ACCOUNT + " FOR NO KEY UPDATE SKIP LOCKED", u=uid)
    if not rows and con.run("SELECT 1 FROM users WHERE uid = :u", u=uid):
        return None
    return _found(rows)


def read(con: Connection, uid: str) -> Held:
    """``uid``'s row as committed now, not held (``hold``)."""
    return _found(con.run(_ACCOUNT, u=uid))


_ACCOUNT = (
    "SELECT account_gone_at IS NOT NULL, account_disabled, left_at, tokens_valid_since,"
    " address_verified_at IS NOT NULL FROM users WHERE uid = :u"
)


def _found(rows: list[list[Any]]) -> Held:
    if not rows:
        return Held(gone=False, disabled=False, left_at=None, sessions_since=None)
    gone, disabled, left_at, since, verified = rows[0]
    return Held(
        gone=bool(gone), disabled=bool(disabled), left_at=left_at, sessions_since=since, address_verified=bool(verified)
    )


def refuse_caller(con: Connection, user: User, *, left_since: bool = True) -> None:
    """``hold_caller``'s refusals, from the row as committed now, not held: for a request that counts nothing per
    user (a removal, a withdrawal, a decline, an erasure, a private read), or is already taken one at a time by a row
    it holds for update (an owner's write holds the lock's), where holding the account's row too waited behind the
    relay's account check, which holds accounts' rows and then a lock's (a deadlock: attack run 34). What an
    instance remembers of the account (``Runtime.app_user``) is up to a minute old: a revoked session erased its
    owner's voice and declined invitations, a disabled admin read the member list, in that minute (attack run 81).
    ``left_since``: see ``Held.refuse``."""
    read(con, user.uid).refuse(user, left_since=left_since)


def hold_caller(con: Connection, user: User) -> None:
    """Hold the row of ``user``, who is making the request (``hold``), and refuse it as ``Held.refuse`` does for
    their session (``signed_in_at``).

    An account found deleted (``lockwise.core.accounts``) is refused (401 ``account_deleted``): its ID tokens live up
    to an hour after the deletion (they are checked offline), and one used after its clean-up enrolled a voice
    again, or joined a lock, that nothing would ever end; so is one found disabled (401 ``account_disabled``: its
    phone's leftover token still unlocked the door, attack run 26). A session that began before the account's
    sessions were revoked is 401 ``token_revoked`` (the instance's memory of the account let a revoked session's
    unlock through for a minute, attack run 27); one that began before the account left every lock (within
    ``LEFT_LEEWAY_S``, clocks apart) is 409 ``account_left``. A session from before the leaving (the account's
    other phone, as the account is being deleted; a refreshed token of it too, so not the token's issue time)
    would give the account a lock or a membership nobody could end once it is gone. Signed in again since: the
    account was kept."""
    hold(con, user.uid).refuse(user)
