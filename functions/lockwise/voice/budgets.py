"""The budgets of a lock's voice attempts, beside its lockout (``lockwise.devices.lockout``): scored rejections a
day, and passes of the model a minute, the lock's and its owner's, and places in the model at once. Read from the
attempts log, which no reset touches; decided before the model runs, so an attempt over them costs no forward pass.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lockwise.core import errors, quotas
from lockwise.core.db import Connection

DAY, MINUTE = quotas.DAY, quotas.MINUTE
BURST = dt.timedelta(seconds=10)  # the window of an owner's burst: a sixth of their minute's budget


@dataclass(frozen=True)
class Budgets:
    """What the lock's recent attempts leave it: seconds until the next one may be scored (0: now)."""

    daily_wait_s: int  # under its daily ceiling of scored rejections again
    rate_wait_s: int  # under the budgets of attempts that reach the model, the lock's and its owner's (0: now)
    slot: bool  # one of the owner's places in the model is held for this attempt (until its transaction ends)


def at_lock(
    con: Connection,
    lock_id: str,
    now: dt.datetime,
    *,
    daily_rejections: int,
    per_minute: int,
    per_owner_minute: int,
    per_owner_at_once: int,
) -> Budgets:
    """The lock's budgets, read from what the attempts log holds (no reset touches it).

    The lockout (``lockwise.devices.lockout``) slows guessing; an owner's reset ends it, so on its own it would buy
    an owner with a lock unlimited guesses at a member's voiceprint. The daily ceiling: at most ``daily_rejections``
    rejected, scored attempts (below the threshold, ambiguous, or just under it and asked again: the most telling
    answer to someone tuning a recording) per lock in any 24 hours; past it only the app opens the door until the
    oldest of them is a day old.

    Neither counts an accepted attempt, and each costs a forward pass: an account with its own voice enrolled at its
    own locks posted distinct recordings of it from eight of them, every one accepted, and another account's door
    answered 5.9 times slower (attack run 11). So at most ``per_minute`` attempts that reach the model, accepted or
    not, per lock, and ``per_owner_minute`` over all the locks of the lock's owner, in any minute; the owner's also
    a sixth of it in any 10 s, so that their locks side by side do not spend a minute's in one burst (measured: the
    same eight locks, with a minute's budget only, still made that door 3.3 times slower for its first seconds).
    Those count attempts decided and committed; the owner's attempts side by side (each lock's are one at a time)
    would all read the same count and all run the model (a review: four locks at once, four passes, against a burst
    budget of one), so each also takes one of ``per_owner_at_once`` places (transaction-scoped advisory locks, seen
    by every instance at once), and one that finds none taken is refused like the budgets. The place is taken
    first, the counts read after it in a statement of their own: read in the same statement (one snapshot), an
    attempt that committed and left its place between the snapshot and the taking was not counted, and two of an
    owner's locks side by side both ran the model (a full test run, once)."""
    scored_at = (
        "FROM verification_attempts WHERE created_at > :minute AND outcome IN ('accepted', 'rejected')"
        " AND reason NOT IN ('no_candidates', 'unlock_expired')"  # answered without the model
    )
    ((slot,),) = con.run(
        "SELECT (SELECT k FROM generate_series(0, :places - 1) k WHERE pg_try_advisory_xact_lock(hashtextextended("
        "'voice_owner ' || (SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)), k)) LIMIT 1)",
        l=lock_id,
        places=per_owner_at_once,
    )
    # each window's count, and when the attempt was made whose leaving the window brings the count under its budget
    # (``_leaving``)
    mine_where, burst_where = "lock_id = CAST(:l AS uuid)", "created_at > :burst"
    (day, day_oldest, mine, mine_oldest, owned, owned_oldest, burst, burst_oldest), *_ = con.run(
        "WITH owner AS (SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid))"
        " SELECT d.n, d.oldest, m.mine, m.mine_oldest, m.owned, m.owned_oldest, m.burst, m.burst_oldest"
        f" FROM (SELECT count(*) AS n, {_leaving('daily')} AS oldest FROM verification_attempts"
        " WHERE lock_id = CAST(:l AS uuid) AND outcome = 'rejected'"
        " AND reason IN ('below_threshold', 'ambiguous', 'say_again') AND created_at > :day) d,"
        f" (SELECT count(*) FILTER (WHERE {mine_where}) AS mine, {_leaving('pm', mine_where)} AS mine_oldest,"
        f" count(*) AS owned, {_leaving('pom')} AS owned_oldest,"
        f" count(*) FILTER (WHERE {burst_where}) AS burst, {_leaving('pob', burst_where)} AS burst_oldest"
        f" {scored_at} AND lock_id IN (SELECT id FROM locks WHERE owner_uid = (SELECT owner_uid FROM owner))) m",
        l=lock_id,
        day=now - DAY,
        minute=now - MINUTE,
        burst=now - BURST,
        daily=daily_rejections,
        pm=per_minute,
        pom=per_owner_minute,
        pob=max(1, per_owner_minute // 6),
    )
    daily = errors.seconds_until(day_oldest + DAY, now) if int(day) >= daily_rejections and day_oldest else 0
    rate = 0
    for count, oldest, most, window in (
        (mine, mine_oldest, per_minute, MINUTE),
        (owned, owned_oldest, per_owner_minute, MINUTE),
        (burst, burst_oldest, max(1, per_owner_minute // 6), BURST),
    ):
        if int(count) >= most and oldest is not None:
            rate = max(rate, errors.seconds_until(oldest + window, now))
    return Budgets(daily, rate, slot is not None)


def _leaving(most: str, where: str = "") -> str:
    """SQL for when the attempt was made whose leaving its window brings the window's count (its rows ``where``)
    under the budget bound to ``:most``: the (count - most + 1)-th oldest; the oldest while the count is at the
    budget. Past it (the owner's places side by side, a lowered setting) the oldest's time had told the lock to come
    back while the count would still be over (a review)."""
    only = f" FILTER (WHERE {where})" if where else ""
    return f"(array_agg(created_at ORDER BY created_at){only})[GREATEST(count(*){only} - :{most} + 1, 1)]"
