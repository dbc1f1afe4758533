"""The lock a door's voice decision holds, named once for the voice side, which takes it, and for the changes that
end someone's right to open the door, which wait for it.

A decision at a lock holds a transaction-scoped advisory lock from its first statement to its commit (a second
attempt at the same lock meanwhile is answered at once, 429 ``voice_attempt_in_progress``). A removal, or a change of a
member's role, window or expiry, waits for it before it commits: the decision read the member's access before its
forward pass, without a row lock, so one that was under way when the owner's removal was answered opened the door
after it (a review of verify: the grant goes back in verify's answer, and the removal's withdrawal of unsent
commands ran before the decision's command existed). Now the decision comes first: the door opens before the
removal is answered, and the removal withdraws the command it made if the relay has not sent it.
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
