"""Voice brute-force lockout per lock, as NIST SP 800-63B asks for biometric verification.

After ``after`` consecutive rejected voice attempts at a lock, voice unlock is refused for ``base_s`` seconds; each
further rejection (once the lockout has passed) doubles the wait. An accepted voice, an owner's reset or a
successful app unlock clears it. Refused attempts (during a lockout) do not count as failures.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lockwise.core import errors
from lockwise.core.db import Connection

DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)
BURST = dt.timedelta(seconds=10)  # the window of an owner's burst: a sixth of their minute's budget


@dataclass(frozen=True)
class Hold:
    """The lock's lockout row, held (locked) for this attempt's transaction."""

    wait_s: int  # seconds until voice unlock is allowed again (0: allowed)
    counting: bool  # failures are counted or a lockout stands: an accepted voice has something to clear


#: the app unlocks acknowledged while a decision held the row (``clear_unless_busy``), taken by whoever counts next
_TAKE_CLEARS = "WITH cleared AS (DELETE FROM voice_lockout_clears WHERE lock_id = CAST(:l AS uuid) RETURNING 1) "
_CLEARED = "EXISTS (SELECT 1 FROM cleared)"


def hold(con: Connection, lock_id: str, now: dt.datetime) -> Hold:
    """Lock ``lock_id``'s lockout row for this attempt and read it: one statement makes the row if it has none, or
    locks the one it has (an upsert's update locks the row as ``FOR UPDATE`` does) and returns it, cleared first if
    an app unlock was acknowledged while an earlier decision held it."""
    rows = con.run(
        _TAKE_CLEARS + "INSERT INTO voice_lockouts (lock_id) VALUES (CAST(:l AS uuid)) ON CONFLICT (lock_id) DO UPDATE"
        f" SET consecutive_failures = CASE WHEN {_CLEARED} THEN 0 ELSE voice_lockouts.consecutive_failures END,"
        f" locked_until = CASE WHEN {_CLEARED} THEN NULL ELSE voice_lockouts.locked_until END"
        " RETURNING locked_until, consecutive_failures",
        l=lock_id,
    )
    until, failures = rows[0][0], int(rows[0][1])
    wait = 0 if until is None or until <= now else errors.seconds_until(until, now)
    return Hold(wait, failures > 0 or until is not None)


def record_failure(con: Connection, lock_id: str, now: dt.datetime, *, after: int, base_s: int) -> int:
    """Count a rejected attempt; return the lockout in seconds it starts (0 if none). If the app opened the door
    while this attempt held the row (an unlock acknowledged meanwhile, which could not clear it without waiting:
    ``clear_unless_busy``) the lockout is cleared instead, as that acknowledgement would have done; one whose batch
    commits after this decision is taken by the lock's next attempt (``hold``)."""
    failures = int(
        con.run(
            _TAKE_CLEARS + f"UPDATE voice_lockouts SET consecutive_failures = CASE WHEN {_CLEARED} THEN 0"
            f" ELSE consecutive_failures + 1 END, locked_until = CASE WHEN {_CLEARED} THEN NULL ELSE locked_until END,"
            " updated_at = now() WHERE lock_id = CAST(:l AS uuid) RETURNING consecutive_failures",
            l=lock_id,
        )[0][0]
    )
    if failures < after:
        return 0
    seconds = int(base_s * 2 ** min(failures - after, 16))
    con.run(
        "UPDATE voice_lockouts SET locked_until = :u WHERE lock_id = CAST(:l AS uuid)",
        u=now + dt.timedelta(seconds=seconds),
        l=lock_id,
    )
    return seconds


@dataclass(frozen=True)
class Budgets:
    """What the lock's recent attempts leave it: seconds until the next one may be scored (0: now)."""

    daily_wait_s: int  # under its daily ceiling of scored rejections again
    rate_wait_s: int  # under the budgets of attempts that reach the model, the lock's and its owner's (0: now)
    slot: bool  # one of the owner's places in the model is held for this attempt (until its transaction ends)


def budgets(
    con: Connection,
    lock_id: str,
    now: dt.datetime,
    *,
    daily_rejections: int,
    per_minute: int,
    per_owner_minute: int,
    per_owner_at_once: int = 1,
) -> Budgets:
    """The lock's budgets, read in one statement from what the attempts log holds (no reset touches it).

    The lockout above slows guessing; an owner's reset ends it, so on its own it would buy an owner with a lock
    unlimited guesses at a member's voiceprint. The daily ceiling: at most ``daily_rejections`` rejected, scored
    attempts (below the threshold, ambiguous, or just under it and asked again: the most telling answer to someone
    tuning a recording) per lock in any 24 hours; past it only the app opens the door until the oldest of them is a
    day old.

    Neither counts an accepted attempt, and each costs a forward pass: an account with its own voice enrolled at its
    own locks posted distinct recordings of it from eight of them, every one accepted, and another account's door
    answered 5.9 times slower (attack run 11). So at most ``per_minute`` attempts that reach the model, accepted or
    not, per lock, and ``per_owner_minute`` over all the locks of the lock's owner, in any minute; the owner's also
    a sixth of it in any 10 s, so that their locks side by side do not spend a minute's in one burst (measured: the
    same eight locks, with a minute's budget only, still made that door 3.3 times slower for its first seconds).
    Those count attempts decided and committed; the owner's attempts side by side (each lock's are one at a time)
    would all read the same count and all run the model (a review: four locks at once, four passes, against a burst
    budget of one), so each also takes one of ``per_owner_at_once`` places (transaction-scoped advisory locks, seen
    by every instance at once), and one that finds none taken is refused like the budgets."""
    scored_at = (
        "FROM verification_attempts WHERE created_at > :minute AND outcome IN ('accepted', 'rejected')"
        " AND reason <> 'no_candidates'"
    )
    (day, day_oldest, mine, mine_oldest, owned, owned_oldest, burst, burst_oldest, slot), *_ = con.run(
        "WITH owner AS (SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid))"
        " SELECT d.n, d.oldest, m.mine, m.mine_oldest, m.owned, m.owned_oldest, m.burst, m.burst_oldest,"
        " (SELECT k FROM generate_series(0, :places - 1) k WHERE pg_try_advisory_xact_lock(hashtextextended("
        "'voice_owner ' || (SELECT owner_uid FROM owner), k)) LIMIT 1)"
        " FROM (SELECT count(*) AS n,"
        " min(created_at) AS oldest FROM verification_attempts WHERE lock_id = CAST(:l AS uuid)"
        " AND outcome = 'rejected' AND reason IN ('below_threshold', 'ambiguous', 'say_again')"
        " AND created_at > :day) d,"
        " (SELECT count(*) FILTER (WHERE lock_id = CAST(:l AS uuid)) AS mine,"
        " min(created_at) FILTER (WHERE lock_id = CAST(:l AS uuid)) AS mine_oldest, count(*) AS owned,"
        " min(created_at) AS owned_oldest, count(*) FILTER (WHERE created_at > :burst) AS burst,"
        f" min(created_at) FILTER (WHERE created_at > :burst) AS burst_oldest {scored_at}"
        " AND lock_id IN (SELECT id FROM locks WHERE owner_uid = (SELECT owner_uid FROM owner))) m",
        l=lock_id,
        day=now - DAY,
        minute=now - MINUTE,
        burst=now - BURST,
        places=per_owner_at_once,
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


_CLEAR = "UPDATE voice_lockouts SET consecutive_failures = 0, locked_until = NULL, updated_at = now() WHERE lock_id = "


def clear_unless_busy(con: Connection, lock_id: str) -> None:
    """``clear``, unless a voice decision at the lock holds the row (for its forward pass, up to 20 s): then, at
    once, a marker that decision or the lock's next attempt takes as it counts (``record_failure``, ``hold``). For
    the relay's batches, which carry every lock's events: one lock's ack waiting for its own voice attempt held the
    whole batch past the statement limit (a 503 for every lock in it: attack run)."""
    free = "(SELECT lock_id FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid) FOR UPDATE SKIP LOCKED)"
    if con.run(_CLEAR + free + " RETURNING 1", l=lock_id):
        return
    # held (a lock with no row has nothing to clear; a plain read of the row does not wait for its holder)
    con.run(
        "INSERT INTO voice_lockout_clears (lock_id)"
        " SELECT lock_id FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid)",
        l=lock_id,
    )


def clear(con: Connection, lock_id: str) -> None:
    con.run(_CLEAR + "CAST(:l AS uuid)", l=lock_id)
