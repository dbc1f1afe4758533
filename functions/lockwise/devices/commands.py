"""The commands outbox: one row per lock/unlock/open, signed by the server, delivered by the relay.

A command carries a random nonce and a short expiry; the payload the lock receives is signed at creation
(``command_signing``), so the relay holds no key. A retried POST with the same idempotency key returns the same
command, never a second unlock. An expired command is never delivered (the relay checks ``expires_at`` when it
claims rows) and reads back as ``expired``.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from lockwise.core import audit, db, errors, inputs, mirror, users
from lockwise.core.auth import User
from lockwise.core.db import Connection, rows_as_dicts
from lockwise.devices import command_outcomes, command_signing, members
from lockwise.devices.members import Membership

ACTIONS = ("lock", "unlock", "open")

IssuerKind = Literal["user", "voice"]


@dataclass(frozen=True)
class Issued:
    """A command as :func:`create` left it."""

    command: dict[str, Any]  # the API view (``present``)
    created: bool  # False: an idempotent retry, answered with the command its key made first
    payload: str  # the signed message the lock checks (a voice unlock's grant)


def parse_action(value: Any, supports_open: bool) -> str:
    if value not in ACTIONS:
        raise errors.BadRequest(f"action must be one of {', '.join(ACTIONS)}", code="invalid_action")
    if value == "open" and not supports_open:
        raise errors.BadRequest("this lock cannot unlatch (open)", code="action_not_supported")
    return str(value)


def withdraw_unsent(con: Connection, lock_id: str, uid: str) -> None:
    """``uid``'s commands to ``lock_id`` made until now are withdrawn: their issuer was removed, or their access
    changed. Not yet sent: failed here, or by the relay's next round when one is claimed by it now (passed over, not
    waited for: the relay holds its claims through a publish, past the statement limit, and the removal was a 503);
    already sent: never sent again (``mqtt_relay.outbox.deliver_due`` reads ``commands_withdrawn_before``), its ack
    still taken (the lock may have acted on it)."""
    con.run(  # on the clock commands' created_at is read from (each instance's own: a slow instance's withdrawal
        # left out an unlock made before it on another, and the relay sent it again: attack run 69)
        "UPDATE lock_members SET commands_withdrawn_before = :at WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
        l=lock_id,
        u=uid,
        at=members.now_held(con, lock_id, uid),
    )
    con.run(
        "UPDATE commands SET status = 'failed', last_error = :withdrawn"
        " WHERE id IN (SELECT id FROM commands WHERE lock_id = CAST(:l AS uuid) AND issuer_uid = :u"
        " AND status = 'pending' FOR UPDATE SKIP LOCKED)",
        l=lock_id,
        u=uid,
        withdrawn=command_outcomes.WITHDRAWN,
    )


@dataclass(frozen=True)
class AppBudget:
    """Commands one member's app may send in any minute: to one lock, and to all their locks together; and what one
    lock's members other than its owner may send it together (``members_at_lock``)."""

    per_lock: int
    per_account: int
    members_at_lock: int

    @property
    def at_lock(self) -> int:
        """The app's commands one lock is sent in any minute at most: its members' and its owner's own."""
        return self.members_at_lock + self.per_lock


def _limit_app_commands(con: Connection, lock_id: str, uid: str, budget: AppBudget) -> None:
    """At most ``budget.per_lock`` commands from one member's app to one lock in any minute, and
    ``budget.per_account`` to all their locks (then 429 ``command_limit``), decided one request at a time per member
    (the caller holds their user row): each is signed, queued, published and re-sent until acknowledged or expired,
    kept 30 days with an audit row and a feed entry; unlimited, one account's loop filled the broker's queue for an
    offline lock (attack run); per lock only, an account's 50 locks took 1,500 a minute, 2.16M audit rows a day kept
    for good (attack run 54). Per member, so a guest's loop does not take the owner's commands away."""
    mine, everywhere = con.run(
        "SELECT count(*) FILTER (WHERE lock_id = CAST(:l AS uuid)), count(*) FROM commands WHERE issuer_uid = :u"
        " AND created_at > now() - interval '1 minute' AND issuer_kind = 'user'",
        l=lock_id,
        u=uid,
    )[0]
    if mine >= budget.per_lock or everywhere >= budget.per_account:
        sent = f"this lock {budget.per_lock}" if mine >= budget.per_lock else f"your locks {budget.per_account}"
        raise errors.RateLimited(
            f"you sent {sent} commands in the last minute; try again shortly",
            retry_after_s=60,
            code="command_limit",
        )
    _limit_lock_commands(con, lock_id, uid, budget)


def _limit_lock_commands(con: Connection, lock_id: str, uid: str, budget: AppBudget) -> None:
    """At most ``budget.members_at_lock`` app commands to one lock in any minute from its members other than its
    owner, together, and ``budget.at_lock`` from everyone (the owner's own budget kept for the owner: a guest's loop
    takes nothing from the owner), decided one request at a time per lock. Each is a nonce the lock keeps in its
    flash until the command expires, and an ack and a state report it publishes: per member only, a lock's 100
    members sent it 3,000 a minute, past what FIRMWARE.md has a lock keep and the broker's allowance for what it
    publishes (attack run 117). Of the members' budget, admins keep a quarter from members and guests, and members a
    quarter from guests (``_ROLE_SHARES``; by each issuer's role as it stands, a removed member's their last, one
    with no membership row left, its account deleted, a guest's): one budget for all, a guest's loop and a member's
    (30 each) took the lock from its admins and other members for as long as they kept at it (attack run 122). The
    refusal names no count: the owner's and other members' comings and goings are for its admins alone
    (``infra/firestore.rules``), and it told a guest how many the owner had sent."""
    con.run("SELECT pg_advisory_xact_lock(hashtextextended('app commands to ' || :l, 0))", l=lock_id)
    counted = con.run(
        "SELECT count(c.id) FILTER (WHERE c.issuer_uid <> l.owner_uid AND coalesce(m.role, 'guest') = 'guest'),"
        " count(c.id) FILTER (WHERE c.issuer_uid <> l.owner_uid AND coalesce(m.role, 'guest') IN ('guest', 'member')),"
        " count(c.id) FILTER (WHERE c.issuer_uid <> l.owner_uid), count(c.id), min(l.owner_uid),"
        " (SELECT me.role FROM lock_members me WHERE me.lock_id = l.id AND me.user_uid = :u) FROM locks l"
        " LEFT JOIN commands c ON c.lock_id = l.id AND c.created_at > now() - interval '1 minute'"
        " AND c.issuer_kind = 'user' LEFT JOIN lock_members m ON m.lock_id = l.id AND m.user_uid = c.issuer_uid"
        " WHERE l.id = CAST(:l AS uuid) GROUP BY l.id",
        l=lock_id,
        u=uid,
    )
    if not counted:  # no lock: its deletion waits for the caller's membership, held (``from_app``)
        return
    guests, below_admins, members_sent, everyone, owner, role = counted[0]
    spent = everyone >= budget.at_lock
    if uid != owner:
        shares = _ROLE_SHARES.get(str(role), _ROLE_SHARES["guest"])
        spent = spent or any(
            sent >= budget.members_at_lock - budget.members_at_lock * kept // 4
            for sent, kept in zip((guests, below_admins, members_sent), shares, strict=True)
            if kept is not None
        )
    if spent:
        raise errors.RateLimited(
            "this lock's members sent it all the commands it takes in a minute; try again shortly",
            retry_after_s=60,
            code="command_limit",
        )


#: for a member of each role, the quarters of the members' budget kept from the commands counted with theirs: those
#: of guests (half kept for members and admins), of members and guests (a quarter kept for admins), of all the
#: members (none kept); None where theirs are not counted
_ROLE_SHARES: dict[str, tuple[int | None, int | None, int | None]] = {
    "guest": (2, 1, 0),
    "member": (None, 1, 0),
    "admin": (None, None, 0),
}


def from_app(
    con: Connection,
    *,
    lock_id: str,
    issuer: User,
    action: Any,
    signing_key_b64: str,
    ttl_s: int,
    idempotency_key: str | None,
    budget: AppBudget,
) -> Issued:
    """A command the member ``issuer`` (their right to operate the lock already checked once: ``members.require``)
    sent from the app: the action must be one this lock supports and the lock must hold a live credential (paired), else
    400 / 409. Their requests are taken one at a time (``users.hold_caller``: a revoked session is refused), before
    the retry's lookup (a retry meets its first request's command). Their window is judged again once their row is
    held, with the clock the command is made by (``lifetime``): judged when the request came, a wait for that row
    let a command made after a guest's window ended go out (attack run 42). And on their membership as it stands
    then, kept from changing until the command is made (``FOR SHARE``): judged on the one read before the wait, an
    unlock tapped as the owner narrowed the guest's window (or demoted, or ended, her access) on another instance was
    made after the narrowing had withdrawn her unsent commands, and delivered (attack run 61: 12 of 148 races). Rows
    in this order: the lock's, the account's, the membership's (a transfer takes the membership before the account,
    after the lock's row for update, which this path's key share waits for first)."""
    rows = con.run(
        "SELECT supports_open, (SELECT c.id::text FROM lock_credentials c"
        " WHERE c.lock_id = l.id AND c.revoked_at IS NULL) FROM locks l WHERE l.id = CAST(:l AS uuid)",
        l=lock_id,
    )
    supports_open, device = (bool(rows[0][0]), rows[0][1]) if rows else (False, None)
    checked = parse_action(action, supports_open)
    if device is None:
        raise errors.Conflict("the lock has not been provisioned yet", code="lock_not_provisioned")
    users.hold_caller(con, issuer)
    standing = members.get(con, lock_id, issuer.uid, for_share=True)
    # after that wait (made before a change it waited for, it was withdrawn by it), on the database's clock: the
    # order of a lock's commands is their times' (the relay's, an ack's, the lock's ``issued_at``), and each instance's
    # own clock let an unlock made on a fast one outrank a lock made after it on another (attack run 69)
    at = db.clock(con)
    if standing is None or not standing.active(at):
        raise errors.NotFound("lock not found", code="lock_not_found")
    # a retry is answered with its key's command before the window is judged: made in it, and sent again once it had
    # ended (its answer lost), it was 403 ``outside_access_window``, a denial in the log, while the unlock had been
    # made and perhaps carried out (attack run 108); its access ended since, the member is answered 404 as above
    if idempotency_key is not None and (made := _by_idempotency_key(con, lock_id, issuer.uid, idempotency_key)):
        return _retried(made, checked, at)
    expires = lifetime(standing, at, ttl_s)
    if expires is None:
        raise errors.Forbidden("outside your access window", code="outside_access_window")
    return create(
        con,
        lock_id=lock_id,
        made_for=str(device),
        action=checked,
        issuer_kind="user",
        issuer_uid=issuer.uid,
        issuer_signed_in_at=users.signed_in_at(issuer),
        signing_key_b64=signing_key_b64,
        at=at,
        expires=expires,
        idempotency_key=idempotency_key,
        budget=budget,
    )


def lifetime(membership: Membership, at: dt.datetime, ttl_s: int) -> dt.datetime | None:
    """When a command the member of ``membership`` issues at ``at`` expires: ``ttl_s`` after it (whole seconds, as
    signed), or sooner, when their permission to operate the lock ends (``Membership.allowed_until``: a guest's
    window, an expiry), so that neither the relay nor the lock acts on it after that (attack run 41). None when they
    may not operate the lock at ``at``, or not for the command's first whole second."""
    if not membership.may_operate(at):
        return None
    expires = at.replace(microsecond=0) + dt.timedelta(seconds=ttl_s)
    ends = membership.allowed_until(at, expires)
    if ends is not None:
        expires = min(expires, ends.replace(microsecond=0))
    return expires if expires > at else None


_COLUMNS = (
    "id::text AS id, lock_id::text AS lock_id, action, issuer_kind, issuer_uid, status, created_at, expires_at,"
    " sent_at, acked_at, send_count, last_error, idempotency_key"
)
_WITH_PAYLOAD = _COLUMNS + ", payload"


def create(
    con: Connection,
    *,
    lock_id: str,
    made_for: str,
    action: str,
    issuer_kind: IssuerKind,
    issuer_uid: str | None,
    signing_key_b64: str,
    at: dt.datetime,
    expires: dt.datetime,
    issuer_signed_in_at: dt.datetime | None = None,
    idempotency_key: str | None = None,
    attempt_id: str | None = None,
    budget: AppBudget | None = None,
) -> Issued:
    """Insert and sign a command for the lock's device ``made_for`` (its credential: the relay sends it to that
    device only, ``commands.made_for``), made ``at`` (the row keeps the moment, the signature its whole second) that
    expires at ``expires`` (``lifetime``), its row read back by the insert itself. With ``budget`` (the app's
    commands, ``from_app``, which holds the issuer's row first), a new command counts against the issuer's minute's
    budgets (a retry is answered, not counted)."""
    if idempotency_key is not None:
        existing = _by_idempotency_key(con, lock_id, issuer_uid, idempotency_key)
        if existing is not None:
            return _retried(existing, action, at)
    if budget is not None and issuer_uid is not None:
        _limit_app_commands(con, lock_id, issuer_uid, budget)
    # the row keeps the exact moment (which of two commands of one second is the newer: ``mqtt_relay.outbox`` re-sends
    # none once a newer one exists); the signed times are whole seconds
    created, now = at, at.replace(microsecond=0)
    command_id = str(uuid.uuid4())  # random (os.urandom), as gen_random_uuid() is: known before the row, to sign
    nonce = secrets.token_urlsafe(18)
    payload = command_signing.sign(
        command_signing.Command(
            id=command_id,
            lock=lock_id,
            action=action,
            nonce=nonce,
            issued_at=int(now.timestamp()),
            expires_at=int(expires.timestamp()),
        ),
        command_signing.private_key(signing_key_b64),
    )
    inserted = rows_as_dicts(
        con,
        "INSERT INTO commands (id, lock_id, action, issuer_kind, issuer_uid, attempt_id, idempotency_key, nonce,"
        " created_at, expires_at, payload, made_for, issuer_signed_in_at)"
        " VALUES (CAST(:id AS uuid), CAST(:l AS uuid), :a, :k, :u, CAST(:att AS uuid), :ik, :n, :c, :e, :p,"
        " CAST(:f AS uuid), :si)"
        " ON CONFLICT (lock_id, issuer_uid, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        f" RETURNING {_COLUMNS}",
        id=command_id,
        l=lock_id,
        a=action,
        k=issuer_kind,
        u=issuer_uid,
        att=attempt_id,
        ik=idempotency_key,
        n=nonce,
        c=created,
        e=expires,
        p=payload,
        f=made_for,
        si=issuer_signed_in_at,
    )
    if not inserted:
        if idempotency_key is None:  # the insert's only conflict target is the idempotency key
            raise RuntimeError("a command without an idempotency key was not inserted")
        raced = _by_idempotency_key(con, lock_id, issuer_uid, idempotency_key)  # a concurrent retry won the race
        if raced is None:
            raise errors.Conflict("idempotency key was used for a different action", code="idempotency_key_reused")
        return _retried(raced, action, at)
    actor = audit.user_actor(issuer_uid) if issuer_uid else f"voice:{attempt_id}"
    audit.record(
        con,
        actor,
        f"command.{action}",
        "ok",
        lock_id=lock_id,
        target=command_id,
        details=_audited(issuer_kind, issuer_signed_in_at),
    )
    mirror.activity(
        con, lock_id, "command", at=at, action=action, command_id=command_id, actor_uid=issuer_uid, via=issuer_kind
    )
    return Issued(present(inserted[0], at), True, payload)


def _audited(issuer_kind: IssuerKind, signed_in_at: dt.datetime | None) -> dict[str, Any]:
    """What the audit log keeps of how a command was made, for as long as it keeps the row (400 days; the command is
    gone after 30, and with its lock): an app command's session, by when it signed in (the token's ``auth_time``, as
    the command's row keeps it for the withdrawals, ``users.vouches_sql``). The log named the member only: a review
    after those 30 days, or after the lock was deleted, could not tell the owner's own unlocks from those of her
    session on a phone stolen and signed out since (attack run 99)."""
    return {"issuer": issuer_kind, **({} if signed_in_at is None else {"signed_in_at": signed_in_at.isoformat()})}


def _retried(existing: dict[str, Any], action: str, now: dt.datetime) -> Issued:
    if existing["action"] != action:
        raise errors.Conflict("idempotency key was used for a different action", code="idempotency_key_reused")
    return Issued(present(existing, now), False, str(existing["payload"]))


def _by_idempotency_key(con: Connection, lock_id: str, uid: str | None, key: str) -> dict[str, Any] | None:
    rows = rows_as_dicts(
        con,
        f"SELECT {_WITH_PAYLOAD} FROM commands WHERE lock_id = CAST(:l AS uuid) AND issuer_uid IS NOT DISTINCT FROM :u"
        " AND idempotency_key = :k",
        l=lock_id,
        u=uid,
        k=key,
    )
    return rows[0] if rows else None


def made_with_key(con: Connection, lock_id: str, uid: str, key: str) -> bool:
    """Whether ``uid``'s app made a command to ``lock_id`` with idempotency ``key`` (read without a lock)."""
    return bool(
        con.run(
            "SELECT 1 FROM commands WHERE lock_id = CAST(:l AS uuid) AND issuer_uid = :u AND idempotency_key = :k",
            l=lock_id,
            u=uid,
            k=key,
        )
    )


def get(con: Connection, command_id: str) -> dict[str, Any] | None:
    rows = rows_as_dicts(con, f"SELECT {_COLUMNS} FROM commands WHERE id = CAST(:i AS uuid)", i=command_id)
    return rows[0] if rows else None


def seen_by(con: Connection, lock_id: str, command_id: str, uid: str, role: str) -> dict[str, Any]:
    """The command ``command_id`` of ``lock_id`` as a member (``uid`` with ``role``) may read it: their own, or any
    for the owner and admins. 404 ``command_not_found`` otherwise, as for an id that is no canonical UUID: a member
    learns nothing of others' commands, not even that they exist."""
    canonical = inputs.canonical_uuid(command_id)
    row = get(con, canonical) if canonical else None
    if row is None or row["lock_id"] != lock_id or (row["issuer_uid"] != uid and role not in ("owner", "admin")):
        raise errors.NotFound("command not found", code="command_not_found")
    return row


def present(row: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The API view of a command; a pending or sent command past its expiry at ``now`` (the runtime's clock, the
    database's) reads as ``expired``."""
    status = row["status"]
    if status in ("pending", "sent") and row["expires_at"] <= now:
        status = "expired"
    return {
        "id": row["id"],
        "lock_id": row["lock_id"],
        "action": row["action"],
        "status": status,
        "issuer": {"kind": row["issuer_kind"], "uid": row["issuer_uid"]},
        "created_at": row["created_at"].isoformat(),
        "expires_at": row["expires_at"].isoformat(),
        "sent_at": row["sent_at"].isoformat() if row["sent_at"] else None,
        "acked_at": row["acked_at"].isoformat() if row["acked_at"] else None,
        "error": row["last_error"],
    }
