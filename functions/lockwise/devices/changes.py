"""The budget of changes one owner or admin makes at one lock: its settings, its members and invitations, its
transfer offers, its voice lockout. Each change is one row of the append-only audit log, and most rewrite documents
of the lock's live view; unlimited, an owner inviting and withdrawing in a loop made ~400 a second, each an
invitation row and two audit rows, and renaming in a loop rewrote the lock's document past Firestore's
one write a second a document (attack run 32)."""

from __future__ import annotations

from lockwise.core import audit, errors, quotas
from lockwise.core.db import Connection

#: the audit log's actions counted (``audit.record``): what an owner or admin makes or changes at a lock (commands
#: have their own budget, pairing codes their daily quota). Not what ends something: a removal, an invitation's or
#: an offer's withdrawal are never held up (an owner past the budget could not let a member out for a day: attack
#: run 33), and each needs something the budget counted to end
COUNTED = ("lock.update", "lock.transfer_offer", "member.invite", "member.update", "voice.reset_lockout")
#: the rows counted, as SQL: written out, not a parameter, so that the planner reads them through migration 0074's
#: partial index (``audit_log_changes_idx``), never the lock's whole day of audit rows (attack run 93)
COUNTED_SQL = "action IN (" + ", ".join(f"'{action}'" for action in COUNTED) + ") AND outcome = 'ok'"


def take(
    con: Connection,
    lock_id: str,
    uid: str,
    per_minute: int,
    per_day: int,
    per_account_minute: int,
    per_account_day: int,
) -> None:
    """429 ``change_limit`` when ``uid`` made ``per_minute`` changes at ``lock_id`` in the last minute, or
    ``per_day`` in the last 24 hours, or ``per_account_minute`` at all the locks they manage together in the last
    minute (a lock's budget alone let an account with 100 locks make 3,000 changes a minute: attack run 110), or
    ``per_account_day`` there in the last 24 hours (with the minute's alone, an account's day held 172,800 changes,
    each an audit row kept 400 days, a role changed back and forth two Firestore writes and a feed entry kept 90 days:
    attack run 130), with ``Retry-After`` until the oldest of them leaves its window. Counted from the audit log's
    rows (those refused are not there). The caller holds ``uid``'s row, so their changes are counted one at a time (a
    parallel burst from many connections passed the budget twice over: attack run 33)."""
    ((minute, day, minute_oldest, day_oldest, now),) = con.run(
        "SELECT count(*) FILTER (WHERE at > now() - interval '1 minute'), count(*),"
        " min(at) FILTER (WHERE at > now() - interval '1 minute'), min(at), now() FROM audit_log"
        " WHERE lock_id = CAST(:l AS uuid) AND at > now() - interval '1 day' AND actor = :a AND " + COUNTED_SQL,
        l=lock_id,
        a=audit.user_actor(uid),
    )
    if minute >= per_minute:
        until, window = minute_oldest + quotas.MINUTE, f"{per_minute} changes to this lock in the last minute"
    elif day >= per_day:
        until, window = day_oldest + quotas.DAY, f"{per_day} changes to this lock in the last 24 hours"
    else:
        # through migration 0079's partial index: the account's own changes of the day, at most its day's budget
        ((everywhere, everywhere_day, everywhere_oldest, everywhere_day_oldest),) = con.run(
            "SELECT count(*) FILTER (WHERE at > now() - interval '1 minute'), count(*),"
            " min(at) FILTER (WHERE at > now() - interval '1 minute'), min(at) FROM audit_log"
            " WHERE actor = :a AND at > now() - interval '1 day' AND " + COUNTED_SQL,
            a=audit.user_actor(uid),
        )
        if everywhere >= per_account_minute:
            until = everywhere_oldest + quotas.MINUTE
            window = f"{per_account_minute} changes to the locks you manage in the last minute"
        elif everywhere_day >= per_account_day:
            until = everywhere_day_oldest + quotas.DAY
            window = f"{per_account_day} changes to the locks you manage in the last 24 hours"
        else:
            return
    raise errors.RateLimited(
        f"you made {window}; try again later", retry_after_s=errors.seconds_until(until, now), code="change_limit"
    )
