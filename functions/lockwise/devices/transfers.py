"""Handing a lock to another member: the owner offers, the member accepts (or declines), as invitations are.

A transfer made at once (before this module) needed nobody's consent: an owner could invite someone, then hand them
the lock, its device still the giver's, and every attempt at it was charged to the new owner's budgets of voice
attempts, their own front door answering 429; the lock also counted towards their locks, blocked the deletion of
their account (409 ``owns_locks``) and dropped the window they had joined as a guest with (attack run 20). An offer
changes nothing until the member it names accepts it, within ``OFFER_TTL``; one lock has one offer at a time (a new
one replaces it). Accepting re-checks everything the offer checked, at that moment: the giver still owns the lock,
the taker is still an active member and may own one more; and it is taken only by the membership it was made to,
unchanged (its row as it was, kept in the offer: not one removed or expired and invited back, demoted, or given
other terms since). The taker leaving the lock, the giver's account leaving everything and the lock being paired
again end the offer (``transfer_offers``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from lockwise.core import audit, errors, mirror, users
from lockwise.core.auth import User
from lockwise.core.db import Connection
from lockwise.devices import locks, members, transfer_offers

#: how long an offer stands
OFFER_TTL = dt.timedelta(days=7)


#: the member an offer names, as they are now, is the membership it was made to (its row then, kept in the offer):
#: not one demoted, given other terms, or removed or expired and invited back since
_TO_THE_MEMBER_AS_MADE = (
    "o.taker_row = (SELECT row_to_json(m)::text FROM lock_members m WHERE m.lock_id = o.lock_id"
    " AND m.user_uid = o.to_uid)"
)
#: an offer whose giver's account or session fell since (``users.vouches_sql``) stands for nobody
_GIVER_STANDS = users.vouches_sql("o.from_uid", "o.issuer_signed_in_at")


def _none_for_you() -> errors.NotFound:
    return errors.NotFound("no transfer of this lock stands for you", code="transfer_not_found")


def offer(
    con: Connection,
    lock_id: str,
    giver: User,
    to_uid: str,
    now: dt.datetime,
    *,
    memberships_per_user: int,
    budget: Callable[[], None],
) -> dict[str, Any]:
    """Offer the lock to ``to_uid``, an active member (the caller, its owner, holds the lock's row): 400
    ``already_owner``, 404 ``member_not_found``, 409 ``member_account_deleted``, and 409 ``too_many_memberships``
    when the giver, who stays on as an admin, is a member of ``memberships_per_user`` locks already. Whether they
    may own one more lock is theirs to learn when they accept (the owner is not told how many locks a member owns:
    attack run 21).
    Replaces an earlier offer of the lock (its end in the feed); the same offer standing (by the giver, to the member
    as they are now) is answered as it stands: an offer sent again after its answer was lost replaced itself, its 7
    days begun again and its end and a new offer in the member's feed (attack run 39). It falls with the giver's
    account and session (``users.vouches_sql``), as their pairing codes and invitations do. ``budget`` takes the
    change from the giver's budget (``changes.take``) once the offer is known to be new: the same offer sent again
    was 429 ``change_limit`` once they had made their minute's changes (attack run 108)."""
    from_uid = giver.uid
    if to_uid == from_uid:
        raise errors.BadRequest("you already own this lock", code="already_owner")
    target = members.get(con, lock_id, to_uid)
    if target is None or not target.active(now):
        raise errors.NotFound("the new owner must be a current member of the lock", code="member_not_found")
    locks.refuse_a_gone_member(con, to_uid)
    members.refuse_past_joined(con, from_uid, memberships_per_user, now)
    standing = con.run(
        "SELECT o.offered_at, o.expires_at FROM lock_transfer_offers o WHERE o.lock_id = CAST(:l AS uuid)"
        " AND o.from_uid = :f AND o.to_uid = :t AND o.expires_at > :n AND "
        + _TO_THE_MEMBER_AS_MADE
        + " AND "
        + _GIVER_STANDS,
        l=lock_id,
        f=from_uid,
        t=to_uid,
        n=now,
    )
    if standing:
        return _present(lock_id, from_uid, to_uid, standing[0][0], standing[0][1])
    budget()
    transfer_offers.end_for_lock(con, lock_id, reason="replaced")
    expires = now + OFFER_TTL
    con.run(
        "INSERT INTO lock_transfer_offers (lock_id, from_uid, to_uid, offered_at, expires_at, taker_row,"
        " issuer_signed_in_at) SELECT CAST(:l AS uuid), :f, :t, :n, :e, row_to_json(m)::text, :session"
        " FROM lock_members m WHERE m.lock_id = CAST(:l AS uuid) AND m.user_uid = :t",
        l=lock_id,
        f=from_uid,
        t=to_uid,
        n=now,
        e=expires,
        session=users.signed_in_at(giver),
    )
    audit.record(con, audit.user_actor(from_uid), "lock.transfer_offer", "ok", lock_id=lock_id, target=to_uid)
    mirror.activity(con, lock_id, "ownership_offered", actor_uid=from_uid, target_uid=to_uid)
    return _present(lock_id, from_uid, to_uid, now, expires)


def taker(con: Connection, lock_id: str, uid: str, now: dt.datetime) -> members.Membership:
    """The membership of ``uid``, who accepts an offer of the lock, held for the change (the lock's row ``FOR
    UPDATE``), once an offer to them is seen standing without any lock (404 ``transfer_not_found`` otherwise; the
    owner, accepting again, has none). Asked first, the lock's row waited for a voice decision holding it, and a
    guest with no offer learnt from the wait, and from a 503 past the statement timeout, when someone was at the
    door (attack run 76). The offer is read before the membership: an acceptance of it that commits between the two
    shows as the caller's ownership (read the other way round, a second tap was a 404; attack run 77)."""
    offered = con.run(
        "SELECT 1 FROM lock_transfer_offers WHERE lock_id = CAST(:l AS uuid) AND to_uid = :u AND expires_at > :n",
        l=lock_id,
        u=uid,
        n=now,
    )
    if not offered and members.require_unlocked(con, lock_id, uid, now).role != "owner":
        raise _none_for_you()
    return members.require(con, lock_id, uid, now, for_update=True)


def accept(
    con: Connection,
    lock_id: str,
    taker: User,
    membership: members.Membership,
    max_owned: int,
    now: dt.datetime,
    *,
    memberships_per_user: int,
) -> None:
    """Take the offer made to ``taker`` (the caller, an active member of the lock, whose ``membership`` row the
    caller holds) and make them the owner; 404 ``transfer_not_found`` when none stands: never made, withdrawn,
    declined, expired, or made by someone who no longer owns the lock; 409 ``owner_too_many_memberships`` when the
    giver, who stays on as an admin, is a member of ``memberships_per_user`` locks already (the offer stands). The
    owner already: nothing changes (an acceptance sent again after its answer was lost, or twice at once, was a 404
    while it had been made: attack run 39)."""
    if membership.role == "owner":
        return
    rows = con.run(
        "DELETE FROM lock_transfer_offers o WHERE o.lock_id = CAST(:l AS uuid) AND o.to_uid = :u AND o.expires_at > :n"
        " RETURNING o.from_uid, " + _TO_THE_MEMBER_AS_MADE + " AND " + _GIVER_STANDS,
        l=lock_id,
        u=taker.uid,
        n=now,
    )
    if not rows or not rows[0][1]:  # none, made to the membership as it was before a change, or by a hand gone
        raise _none_for_you()
    from_uid = rows[0][0]
    giver = members.get(con, lock_id, from_uid, for_update=True)
    if giver is None or giver.role != "owner" or not giver.active(now):
        raise _none_for_you()
    members.refuse_giver_past_joined(con, from_uid, memberships_per_user)
    locks.transfer(con, lock_id, from_uid, taker, max_owned, now)


def withdraw(con: Connection, lock_id: str, uid: str, now: dt.datetime) -> None:
    """The owner withdraws the lock's offer, or the member it names declines it (404 ``transfer_not_found``, also
    for a lapsed one: the refusal rolls its deletion back, and the relay's upkeep prunes it with the other lapsed
    offers, ``lockwise.core.retention``)."""
    rows = con.run(
        "DELETE FROM lock_transfer_offers WHERE lock_id = CAST(:l AS uuid) AND (from_uid = :u OR to_uid = :u)"
        " RETURNING from_uid, to_uid, expires_at",
        l=lock_id,
        u=uid,
    )
    if not rows or rows[0][2] <= now:
        raise _none_for_you()
    from_uid, to_uid, _ = rows[0]
    outcome = "withdrawn" if uid == from_uid else "declined"
    audit.record(con, audit.user_actor(uid), f"lock.transfer_{outcome}", "ok", lock_id=lock_id, target=to_uid)
    mirror.activity(con, lock_id, f"ownership_offer_{outcome}", actor_uid=uid, target_uid=to_uid)


def standing(con: Connection, lock_id: str, uid: str, now: dt.datetime) -> dict[str, Any]:
    """The lock's offer, to the member who made it or the one it names (404 ``transfer_not_found``), while it may be
    taken: by the membership it was made to, unchanged and active (one whose access ended, or given other terms by
    an invitation, was shown to both as standing while its acceptance was 404: attack run 113)."""
    rows = con.run(
        "SELECT from_uid, to_uid, offered_at, expires_at FROM lock_transfer_offers o"
        " WHERE lock_id = CAST(:l AS uuid) AND (from_uid = :u OR to_uid = :u) AND expires_at > :now AND "
        + _GIVER_STANDS
        + " AND "
        + _TO_THE_MEMBER_AS_MADE
        + " AND EXISTS (SELECT 1 FROM lock_members m WHERE m.lock_id = o.lock_id AND m.user_uid = o.to_uid AND "
        + members.active_sql("m")
        + ")",
        l=lock_id,
        u=uid,
        now=now,
    )
    if not rows:
        raise _none_for_you()
    return _present(lock_id, *rows[0])


def _present(
    lock_id: str, from_uid: str, to_uid: str, offered_at: dt.datetime, expires_at: dt.datetime
) -> dict[str, Any]:
    return {
        "transfer": {
            "lock_id": lock_id,
            "from_uid": from_uid,
            "to_uid": to_uid,
            "offered_at": offered_at.isoformat(),
            "expires_at": expires_at.isoformat(),
        }
    }
