"""The audit log: every command, credential change and membership change, with actor and outcome; append-only, a
row deleted only once over a year old (``lockwise.core.retention.AUDIT_KEPT_DAYS``, migration 0066).

A row an app user's request writes as theirs keeps the session that made it (``details.signed_in_at``, when it
signed in: the token's ``auth_time``), whatever the action: the request's verified token is its ``acting`` session.
Only commands kept it (attack run 99): a review could not tell an owner's own invitations, removals and hand-overs
from those of her session on a phone stolen and signed out since.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
from typing import Any, Literal

from lockwise.core.db import Connection

Outcome = Literal["ok", "denied", "failed"]


def user_actor(uid: str) -> str:
    return f"user:{uid}"


def operator_actor(uid: str) -> str:
    """One of LockWise's operators (``lockwise.devices.ownerless``), by their account."""
    return f"operator:{uid}"


def lock_actor(lock_id: str) -> str:
    return f"lock:{lock_id}"


#: the app session this request acts for (its user's uid, and when it signed in), once its token was verified
#: (``lockwise.core.runtime``); each request runs in a context of its own (``lockwise.core.http``)
_acting: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("lockwise_acting", default=None)


def acting(uid: str, signed_in_at: dt.datetime) -> None:
    """The request acts for ``uid``'s session signed in at ``signed_in_at``: the rows it writes as theirs say so."""
    _acting.set((uid, signed_in_at.isoformat()))


def record(
    con: Connection,
    actor: str,
    action: str,
    outcome: Outcome,
    *,
    lock_id: str | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session = _acting.get()
    if session is not None and actor == user_actor(session[0]):
        details = {"signed_in_at": session[1], **(details or {})}
    con.run(
        "INSERT INTO audit_log (actor, action, outcome, lock_id, target, details)"
        " VALUES (:actor, :action, :outcome, CAST(:lock_id AS uuid), :target, CAST(:details AS jsonb))",
        actor=actor,
        action=action,
        outcome=outcome,
        lock_id=lock_id,
        target=target,
        details=json.dumps(details or {}),
    )


#: refusals of one actor logged one by one in a minute, at all locks and of all actions together; past it they are
#: counted only
DENIALS_LOGGED_PER_MINUTE = 10
#: a lock and an action one actor's refusals in a minute are counted on a row of their own at; past that many, the rest
#: of the minute's, at other locks or of other actions, are counted together on one row (``OTHER_LOCK``, ``OTHERS``)
DENIAL_COUNTS_PER_MINUTE = 10
OTHER_LOCK = "00000000-0000-0000-0000-000000000000"
OTHERS = "others"


def record_denied(con: Connection, actor: str, action: str, lock_id: str, details: dict[str, Any]) -> None:
    """Count a refused request in ``audit_denial_counts`` (per actor, lock, action and minute) and log it as
    ``record`` does while the actor's minute holds fewer than ``DENIALS_LOGGED_PER_MINUTE`` (the last one logged says
    so): a guest outside her window wrote an append-only row per refused request, as fast as she sent them (attack
    run 26). Counted and logged per actor, whatever the lock and action: per lock and action, a guest at 200 locks
    (an account's memberships, its own sybils' locks) refused at each of ten actions wrote 20,000 audit rows and
    2,000 counts a minute, 31M rows a day kept 400 days, from requests answered 403 (attack run 130, denial of
    wallet); now at most 10 and 11. The actor's refusals are counted one at a time (an advisory lock), so a parallel
    burst logs no more."""
    con.run("SELECT pg_advisory_xact_lock(hashtextextended('denials of ' || :a, 0))", a=actor)
    # through migration 0083's index: the actor's rows of the minute, at most DENIAL_COUNTS_PER_MINUTE + 1
    ((refused, rows, own),) = con.run(
        "SELECT coalesce(sum(n), 0), count(*), coalesce(bool_or(lock_id = CAST(:l AS uuid) AND action = :act), false)"
        " FROM audit_denial_counts WHERE actor = :a AND minute = date_trunc('minute', now())",
        a=actor,
        l=lock_id,
        act=action,
    )
    counted_at, counted_as = (lock_id, action) if own or rows < DENIAL_COUNTS_PER_MINUTE else (OTHER_LOCK, OTHERS)
    con.run(
        "INSERT INTO audit_denial_counts (actor, lock_id, action, minute, n)"
        " VALUES (:a, CAST(:l AS uuid), :act, date_trunc('minute', now()), 1)"
        " ON CONFLICT (actor, lock_id, action, minute) DO UPDATE SET n = audit_denial_counts.n + 1",
        a=actor,
        l=counted_at,
        act=counted_as,
    )
    if refused >= DENIALS_LOGGED_PER_MINUTE:
        return
    if refused == DENIALS_LOGGED_PER_MINUTE - 1:
        details = {**details, "further_this_minute": "counted in audit_denial_counts"}
    record(con, actor, action, "denied", lock_id=lock_id, details=details)
