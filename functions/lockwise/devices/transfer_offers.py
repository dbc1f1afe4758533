"""What ends a lock's standing transfer offer besides its own flow (``lockwise.devices.transfers``): the member it
names leaving the lock, and the lock being paired again. Kept apart from ``transfers``, which builds on ``locks``,
so that ``locks`` and ``provisioning`` can end offers without importing it back.

An offer names a member and a device as they were when it was made (a review found both outliving it): removed and
invited again, even as a guest, the member could still take the lock on the old offer; re-paired by the giver, the
lock came with a device chosen after the offer.
"""

from __future__ import annotations

from lockwise.core.db import Connection


def end_for_taker(con: Connection, lock_id: str, uid: str) -> None:
    """``uid``'s membership of the lock ended: an offer naming them ends with it."""
    con.run("DELETE FROM lock_transfer_offers WHERE lock_id = CAST(:l AS uuid) AND to_uid = :u", l=lock_id, u=uid)


def end_for_lock(con: Connection, lock_id: str) -> None:
    """The lock was paired again: its offer, made for the device it had, ends."""
    con.run("DELETE FROM lock_transfer_offers WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
