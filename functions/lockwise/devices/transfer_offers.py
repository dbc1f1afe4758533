"""What ends a lock's standing transfer offer besides its own flow (``lockwise.devices.transfers``): the member it
names leaving the lock, the giver's account leaving everything, the lock being paired again, and a new offer
replacing it. Kept apart from ``transfers``, which builds on ``locks``, so that ``locks`` and ``provisioning`` can
end offers without importing it back. Each end is in the lock's feed (``ownership_offer_ended`` with its
``reason``).

An offer names a member and a device as they were when it was made (a review found both outliving it): removed and
invited again, even as a guest, the member could still take the lock on the old offer; re-paired by the giver, the
lock came with a device chosen after the offer; made by an account deleted since, it was still taken, and left that
account an admin for good (attack run 21).
"""

from __future__ import annotations

from typing import Any

from lockwise.core import mirror
from lockwise.core.db import Connection


def end_for_taker(con: Connection, lock_id: str, uid: str, reason: str = "member_left") -> None:
    """``uid``'s membership of the lock ended, or was changed (``reason="member_changed"``: a role or terms it was not
    offered to, which takes nothing on it): an offer naming them ends with it. Changed and left standing, it was shown
    to the giver and the member as standing while an acceptance was 404 (attack run 113)."""
    _end(con, "lock_id = CAST(:l AS uuid) AND to_uid = :u", reason, l=lock_id, u=uid)


def end_for_takers(con: Connection, lock_id: str, uids: list[str], reason: str) -> None:
    """An offer naming any of ``uids``, whose memberships of the lock ended (``reason="member_expired"``), ends."""
    _end(con, "lock_id = CAST(:l AS uuid) AND to_uid = ANY(CAST(:us AS text[]))", reason, l=lock_id, us=uids)


def end_for_lock(con: Connection, lock_id: str, reason: str = "paired_again") -> None:
    """The lock's offer ends: it was paired again (the offer was made for the device it had), or a new offer
    replaces it (``reason="replaced"``)."""
    _end(con, "lock_id = CAST(:l AS uuid)", reason, l=lock_id)


def end_offered(con: Connection, lock_id: str, offered_at: str, reason: str) -> int:
    """The lock's offer made at ``offered_at`` (RFC 3339), if it stands, ends; how many did (0 or 1)."""
    where = "lock_id = CAST(:l AS uuid) AND offered_at = CAST(:o AS timestamptz)"
    return _end(con, where, reason, l=lock_id, o=offered_at)


def end_from(con: Connection, uid: str) -> None:
    """``uid``'s account leaves everything (deleted, in the app or outside it): the offers it made end."""
    _end(con, "from_uid = :u", "giver_left", u=uid)


def _end(con: Connection, where: str, reason: str, **params: Any) -> int:
    """Delete the offers ``where`` says, each end in its lock's feed (the member it named reads it); how many."""
    ended = con.run(f"DELETE FROM lock_transfer_offers WHERE {where} RETURNING lock_id::text, to_uid", **params)
    for lock_id, to_uid in ended:
        mirror.activity(con, lock_id, "ownership_offer_ended", target_uid=to_uid, reason=reason)
    return len(ended)
