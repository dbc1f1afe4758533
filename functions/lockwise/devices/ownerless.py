"""Locks whose owner's account is gone: found deleted or disabled in Firebase Auth (``lockwise.core.accounts``).

Nobody can manage such a lock: pairing it again, transferring it and deleting it are its owner's, and a deleted
account's lock keeps it as its owner (nobody is there to hand it over: ``locks.leave_every_lock``). Its household
asks LockWise's support; an operator (an account with the ``lockwise_operator`` custom claim, set with the Admin
SDK) lists such locks, hands one to a member of it, or deletes one (``/devices/operator/...``). A lock whose owner's
account stands is its owner's alone: an operator's hand cannot take it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from lockwise.core import accounts, audit, auth, errors, users
from lockwise.core.auth import User
from lockwise.core.db import Connection
from lockwise.devices import locks, members, transfer_offers

#: the custom claim (``admin.auth().setCustomUserClaims(uid, {lockwise_operator: true})``) that makes an operator
OPERATOR_CLAIM = auth.OPERATOR_CLAIM
#: locks one listing shows, the longest ownerless first
LISTED = 100


def require_operator(user: User, directory: Callable[[], accounts.Claims], now: dt.datetime) -> None:
    """403 ``not_an_operator`` unless ``user`` is one of LockWise's operators: their token says so, and Firebase Auth
    still does (one ``accounts:lookup`` call, asked only for a token that says so; 503 ``accounts_unavailable`` when it
    cannot tell). A claim taken away stays in the ID tokens issued before for up to an hour, and a former operator
    handed and deleted other people's locks for that hour (the note of stop 65). A session signed in before the
    account's sessions were revoked is 401 ``token_revoked`` from the same answer: the database learns of the
    revocation at the account's next check, up to an hour on, and a stolen operator's token signed out everywhere
    listed ownerless locks, deleted one and fenced every lock's requests until then (attack run 88).

    A session made from a custom token (one minted for the operator's uid carried the account's claim, which Firebase
    Auth confirmed) is refused before, as every app route refuses it (``id_tokens``, attack run 121). One signed in
    to more than ``users.RECENT_SIGN_IN`` before ``now`` is 401 ``recent_sign_in_required``: a token refreshed
    from a sign-in of months ago acted as a fresh one; a refresh token never expires unless revoked (attack run 121)."""
    if user.claims.get(OPERATOR_CLAIM) is not True:
        raise errors.Forbidden("this is for LockWise's operators", code="not_an_operator")
    users.require_recent_sign_in(user, now, "an operator's request")
    try:
        current = directory().custom_claims(user.uid)  # made here: no credentials is a DirectoryError too
    except accounts.DirectoryError as exc:
        raise errors.Unavailable(
            "your operator's claim could not be confirmed with Firebase Auth; try again", code="accounts_unavailable"
        ) from exc
    if current.claims.get(OPERATOR_CLAIM) is not True:
        raise errors.Forbidden("this account is no longer one of LockWise's operators", code="not_an_operator")
    if current.valid_since is not None and users.signed_in_at(user) < dt.datetime.fromtimestamp(
        current.valid_since, dt.UTC
    ):
        raise users.token_revoked()


def listed(con: Connection, now: dt.datetime) -> list[dict[str, Any]]:
    """The locks whose owner's account is found deleted or disabled, with their active members (whom one may be
    handed to)."""
    rows = con.run(
        "SELECT l.id::text, l.name, l.owner_uid, u.account_gone_at IS NOT NULL FROM locks l"
        " JOIN users u ON u.uid = l.owner_uid WHERE "
        + users.unusable_sql("u")
        + " ORDER BY coalesce(u.account_gone_at, u.account_disabled_at), l.created_at LIMIT :n",
        n=LISTED,
    )
    memberships = members.list_for_locks(con, [str(row[0]) for row in rows])
    found = []
    for lock_id, name, owner_uid, gone in rows:
        others = [m for m in memberships.get(lock_id, []) if m.active(now) and m.user_uid != owner_uid]
        found.append(
            {
                "id": lock_id,
                "name": name,
                "owner_uid": owner_uid,
                "owner_account": "deleted" if gone else "disabled",
                "members": [{"uid": m.user_uid, "role": m.role} for m in others],
            }
        )
    return found


def _owner_of(con: Connection, lock_id: str, row_lock: str | None) -> str:
    """The owner of ``lock_id``, its row held as ``row_lock`` says (``NO KEY UPDATE``, ``UPDATE``, or not at all);
    404 ``lock_not_found``."""
    held = f" FOR {row_lock}" if row_lock else ""
    rows = con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)" + held, l=lock_id)
    if not rows:
        raise errors.NotFound("lock not found", code="lock_not_found")
    return str(rows[0][0])


def _judged(owner: users.Held) -> bool:
    """Whether the owner's account, as held, was found deleted (else disabled); 409 ``owner_present`` while it
    stands. Judged from the row held until the transaction ends: read, the relay's account check finding the owner
    enabled again (or restored with their uid) could commit before the hand-over did, and a standing owner was made
    an admin (attack run 49)."""
    if owner.stands:
        raise errors.Conflict(
            "the lock's owner's account stands: the lock is theirs to hand over", code="owner_present"
        )
    return owner.gone


def hand_over(con: Connection, lock_id: str, to_uid: str, operator_uid: str, max_owned: int, now: dt.datetime) -> None:
    """Make ``to_uid``, an active member of the lock whose account stands, its owner (if they may own one more):
    its owner's account is gone. A disabled owner becomes an admin, as a transfer makes them (they are let back in
    if their account is enabled again); a deleted one's clean-up is done again at the next flush, which now finds
    them owning nothing: they leave the lock as they left every other. Their offers end."""
    # the lock's row NO KEY UPDATE, as changing its owner needs: the relay's account check, holding users' rows,
    # queues a refresh of the lock (a foreign key's KEY SHARE) without waiting for it (held FOR UPDATE, the two
    # waited for each other: attack run 49)
    owner_uid = _owner_of(con, lock_id, "NO KEY UPDATE")
    owner = users.hold(con, owner_uid)
    if owner_uid == to_uid:  # handed over already (a hand-over sent again after its answer was lost), unless the
        # owner named is the one whose account is gone: answered as done, the lock was left ownerless (attack run 58)
        if not owner.stands:
            raise errors.Conflict("this member's account has been deleted or disabled", code="member_account_unusable")
        return
    gone = _judged(owner)
    # the taker's account row before their membership's, as leaving every lock takes them (the other way round, the
    # two waited for each other: a review)
    account = users.hold(con, to_uid)
    taker = members.get(con, lock_id, to_uid, for_update=True)
    if taker is None or not taker.active(now):
        raise errors.NotFound("the new owner must be a current member of the lock", code="member_not_found")
    if not account.stands:
        raise errors.Conflict("this member's account has been deleted or disabled", code="member_account_unusable")
    transfer_offers.end_for_lock(con, lock_id, reason="handed_over")
    locks.hand_over(con, lock_id, owner_uid, to_uid, max_owned, operator_uid=operator_uid)
    if gone:
        con.run("UPDATE users SET account_ended_at = NULL WHERE uid = :u", u=owner_uid)


def delete(con: Connection, lock_id: str, operator_uid: str) -> None:
    """Delete the lock, as its owner would: its owner's account is gone. The lock's row first (``FOR UPDATE``, as a
    deletion needs, and as every path takes it before a user's: a deleted owner's clean-up holds it ``KEY SHARE``,
    then their row), then the owner's row if no one holds it: the relay's account check holds users' rows and then
    queues a refresh of their locks (a foreign key's ``KEY SHARE``), and waiting for it here would close a circle
    (a review): 409 ``owner_being_checked``, try again."""
    owner_uid = _owner_of(con, lock_id, "UPDATE")
    owner = users.hold_if_free(con, owner_uid)
    if owner is None:
        raise errors.Conflict("the owner's account is being checked; try again in a moment", code="owner_being_checked")
    _judged(owner)
    locks.delete(con, lock_id, owner_uid, actor=audit.operator_actor(operator_uid))
