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


@dataclass(frozen=True)
class Hold:
    """The lock's lockout row, held (locked) for this attempt's transaction."""

    wait_s: int  # seconds until voice unlock is allowed again (0: allowed)
    counting: bool  # failures are counted or a lockout stands: an accepted voice has something to clear
    now: dt.datetime  # the database's clock once the row is held: the time the attempt is decided at


#: the app unlocks acknowledged while a decision held the row (``clear_unless_busy``), taken by whoever counts next;
#: each clears the failures counted before its unlock (``counted_before``), not those counted since: a marker written
#: in a relay batch that committed late cleared a lockout begun after the unlock and its acknowledgement (attack run
#: 43)
_TAKE_CLEARS = (
    "WITH cleared AS (DELETE FROM voice_lockout_clears WHERE lock_id = CAST(:l AS uuid)"
    " RETURNING coalesce(counted_before, 'infinity') AS counted_before) "
)
_CLEARED = "EXISTS (SELECT 1 FROM cleared WHERE cleared.counted_before >= voice_lockouts.updated_at)"
#: and this decision's own failure with them: it began (its transaction did) before the unlock was made (one begun
#: after it was forgiven too: attack run 45)
_CLEARED_WITH_MINE = (
    "EXISTS (SELECT 1 FROM cleared WHERE cleared.counted_before >= voice_lockouts.updated_at"
    " AND cleared.counted_before >= now())"
)


def hold(con: Connection, lock_id: str) -> Hold:
    """Lock ``lock_id``'s lockout row for this attempt and read it: one statement makes the row if it has none, or
    locks the one it has (an upsert's update locks the row as ``FOR UPDATE`` does) and returns it, cleared first if
    an app unlock was acknowledged while an earlier decision held it; with the database's clock read once the row
    is held (after any wait for it: a review of attack run 69's fix), the time the lockout's end is judged at."""
    rows = con.run(
        _TAKE_CLEARS + "INSERT INTO voice_lockouts (lock_id) VALUES (CAST(:l AS uuid)) ON CONFLICT (lock_id) DO UPDATE"
        f" SET consecutive_failures = CASE WHEN {_CLEARED} THEN 0 ELSE voice_lockouts.consecutive_failures END,"
        f" locked_until = CASE WHEN {_CLEARED} THEN NULL ELSE voice_lockouts.locked_until END"
        " RETURNING locked_until, consecutive_failures, clock_timestamp()",
        l=lock_id,
    )
    until, failures, now = rows[0][0], int(rows[0][1]), rows[0][2]
    wait = 0 if until is None or until <= now else errors.seconds_until(until, now)
    return Hold(wait, failures > 0 or until is not None, now)


def record_failure(con: Connection, lock_id: str, now: dt.datetime, *, after: int, base_s: int) -> int:
    """Count a rejected attempt; return the lockout in seconds it starts (0 if none). If the app opened the door
    while this attempt held the row (an unlock acknowledged meanwhile, which could not clear it without waiting:
    ``clear_unless_busy``) the lockout is cleared instead, as that acknowledgement would have done, and this failure
    counts only if this attempt began after the unlock was made; a marker whose batch commits after this decision
    is taken by the lock's next attempt (``hold``), which clears the lockout if no failure was counted after the
    unlock was made (as the acknowledgement finding the row free does)."""
    failures = int(
        con.run(
            _TAKE_CLEARS + f"UPDATE voice_lockouts SET consecutive_failures = CASE WHEN {_CLEARED_WITH_MINE} THEN 0"
            f" WHEN {_CLEARED} THEN 1 ELSE consecutive_failures + 1 END,"
            f" locked_until = CASE WHEN {_CLEARED} THEN NULL ELSE locked_until END,"
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


_CLEAR = "UPDATE voice_lockouts SET consecutive_failures = 0, locked_until = NULL, updated_at = now() WHERE lock_id = "


def clear_unless_busy(con: Connection, lock_id: str, *, counted_before: dt.datetime) -> None:
    """``clear``, unless a voice decision at the lock holds the row (for its forward pass, up to 20 s): then, at
    once, a marker that decision or the lock's next attempt takes as it counts (``record_failure``, ``hold``). For
    the relay's batches, which carry every lock's events: one lock's ack waiting for its own voice attempt held the
    whole batch past the statement limit (a 503 for every lock in it: attack run). Only when no failure was counted
    after ``counted_before`` (the app unlock's row written, on the database's clock as a failure's count is: it
    answers the failures before it, not a lockout begun since)."""
    rows = con.run(
        "SELECT updated_at <= :t FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid) FOR UPDATE SKIP LOCKED",
        l=lock_id,
        t=counted_before,
    )
    if rows:  # free, and now held here
        if rows[0][0]:
            clear(con, lock_id)
        return
    # held, or none (nothing to clear; a plain read of the row does not wait for its holder)
    con.run(
        "INSERT INTO voice_lockout_clears (lock_id, counted_before)"
        " SELECT lock_id, :t FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid) AND updated_at <= :t",
        l=lock_id,
        t=counted_before,
    )


def clear(con: Connection, lock_id: str) -> None:
    con.run(_CLEAR + "CAST(:l AS uuid)", l=lock_id)
