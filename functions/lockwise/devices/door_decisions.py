"""The lock a door's voice decision holds, named once for the voice side, which takes it, and for the changes that
end someone's right to open the door, which wait for it.

A decision at a lock holds a transaction-scoped advisory lock from its first statement to its commit (a second
attempt at the same lock meanwhile is answered at once, 429 ``voice_attempt_in_progress``). A removal, or a change
of a member's role, window or expiry, waits for it before it writes anything: the decision read the member's access
before its forward pass, without a row lock, so one under way when the owner's removal was answered committed
after it, and its command escaped the removal's withdrawal of unsent commands (a review of verify). Now the
decision commits first and the removal withdraws its command if the relay has not sent it. What it cannot recall is
the grant the decision answers the lock with, on its way: as with one issued the moment before the removal, a lock
on a slow link may act on it after the removal is answered, within the grant's life.

The wait counts towards the statement limit (``lockwise.core.db.STATEMENT_TIMEOUT_S``, 4 s): a decision held up
longer than that (a forward pass on a throttled instance, up to 20 s) makes the change a 503 the app retries, never
an answer given before the decision.
"""

from __future__ import annotations

from lockwise.core.db import Connection

#: the key (bind ``:l``, the lock's id); a decision takes it with ``pg_try_advisory_xact_lock``
KEY = "hashtextextended('voice_attempt ' || :l, 0)"


def wait_for(con: Connection, lock_id: str) -> None:
    """Wait for a voice decision under way at ``lock_id`` to commit; until this transaction ends, a new one there is
    answered 429 ``voice_attempt_in_progress`` (the lock tries again a second later). A transaction that waits at
    several locks (a member leaving every lock) takes them in the locks' order, as its rows."""
    con.run(f"SELECT pg_advisory_xact_lock({KEY})", l=lock_id)
