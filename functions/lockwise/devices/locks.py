"""Locks: create, list, read, rename, transfer and delete, and changes to their memberships (joining is
``lockwise.devices.invitations``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from lockwise.core import accounts, audit, errors, mirror, pages, shown_text, users
from lockwise.core.auth import User
from lockwise.core.db import Connection, rows_as_dicts
from lockwise.devices import (
    commands,
    door_decisions,
    invitations,
    lock_auth,
    members,
    provisioning,
    transfer_offers,
)

MAX_NAME = 100


def parse_name(value: Any) -> str:
    """A lock's name as its members and invitees read it: the rule for text others read (``shown_text``: NFC,
    no control, invisible or private-use character, no flood of marks, something visible), 400 ``invalid_name``.
    U+202E turned a name around for them (attack run); one of joiners alone, a Hangul filler or a mark looked empty,
    and a hundred accents on a letter stacked over the lines around it (attack run 118)."""
    return shown_text.parse(value, "name", most=MAX_NAME, code="invalid_name")


@dataclasses.dataclass(frozen=True)
class Update:
    """A ``PATCH`` of a lock as sent, read before its transaction (``parse_update``): the ``changes`` to make, and a
    name the rule for text others read refused with ``refusal``, which stands unless it is the lock's name exactly as
    stored (``changes_to_make``)."""

    changes: dict[str, Any]
    name_sent: Any = None
    refusal: errors.BadRequest | None = None


def parse_update(body: dict[str, Any]) -> Update:
    """400 ``invalid_update`` when ``body`` names neither ``name`` nor ``voice_threshold``; ``invalid_threshold`` for a
    threshold out of [0, 1]. A refused name is kept to be decided against the stored one (``changes_to_make``)."""
    changes: dict[str, Any] = {}
    refusal: errors.BadRequest | None = None
    if "name" in body:
        try:
            changes["name"] = parse_name(body["name"])
        except errors.BadRequest as refused:
            refusal = refused
    if "voice_threshold" in body:
        changes["voice_threshold"] = parse_threshold(body["voice_threshold"])
    if not changes and refusal is None:
        raise errors.BadRequest("give name and/or voice_threshold", code="invalid_update")
    return Update(changes, body.get("name"), refusal)


def changes_to_make(con: Connection, lock_id: str, update: Update) -> dict[str, Any]:
    """``update``'s changes, none for the stored name alone sent back; its name's refusal unless that name is the
    lock's exactly as stored: one written before the rule for text others read (attack run 118), which
    ``parse_name`` refuses now, sent back unchanged beside another change. It was 400 ``invalid_name``, and the owner
    could change nothing else until they renamed the lock (attack run 122)."""
    if update.refusal is not None:
        rows = con.run("SELECT name FROM locks WHERE id = CAST(:l AS uuid)", l=lock_id)
        if not (rows and isinstance(update.name_sent, str) and rows[0][0] == update.name_sent):
            raise update.refusal
    return update.changes


def parse_threshold(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise errors.BadRequest("voice_threshold must be a number in [0, 1] or null", code="invalid_threshold")
    # stored as float4: a value it cannot hold (5e-324) would fail there; -0.0 was kept and shown as "-0.0" (run 119)
    return round(float(value), 4) + 0.0


def create(con: Connection, owner: User, name: str, supports_open: bool, max_owned: int) -> str:
    """A new lock owned by ``owner`` (``create_once`` without a key)."""
    return create_once(con, owner, name, supports_open, max_owned, None)[0]


def create_once(
    con: Connection, owner: User, name: str, supports_open: bool, max_owned: int, key: str | None
) -> tuple[str, bool]:
    """A new lock owned by ``owner`` (the caller: ``users.hold_caller``, so not a session from before the account
    left every lock), who may own at most ``max_owned`` (``refuse_past_owned``), and True; with an idempotency
    ``key`` the caller used before for the same lock (``_made_with``), that lock and False."""
    users.hold_caller(con, owner)  # the caller's row: their creates take turns, so a key is looked up after the last
    owner_uid = owner.uid
    if key is not None and (made := _made_with(con, owner_uid, key, name, supports_open)) is not None:
        return made, False
    refuse_past_owned(con, owner_uid, max_owned)
    lock_id = str(
        con.run(
            "INSERT INTO locks (name, owner_uid, supports_open) VALUES (:n, :o, :s) RETURNING id::text",
            n=name,
            o=owner_uid,
            s=supports_open,
        )[0][0]
    )
    con.run(
        "INSERT INTO lock_members (lock_id, user_uid, role) VALUES (CAST(:l AS uuid), :u, 'owner')",
        l=lock_id,
        u=owner_uid,
    )
    con.run("INSERT INTO lock_state (lock_id) VALUES (CAST(:l AS uuid))", l=lock_id)
    # not its name: the owner's free text (a person's name, an address), and the audit log is kept 400 days, past the
    # lock's deletion and its owner's account's (attack run 53); the lock's row has it while the lock stands
    audit.record(con, audit.user_actor(owner_uid), "lock.create", "ok", lock_id=lock_id)
    mirror.enqueue(
        con,
        mirror.lock_doc(lock_id),
        "set",
        {"name": name, "state": "unknown", "online": False, "supports_open": supports_open},
    )
    members.mirror_access(con, lock_id)
    mirror.activity(con, lock_id, "lock_created", actor_uid=owner_uid)
    if key is not None:
        con.run(
            "INSERT INTO lock_creation_keys (created_by, idempotency_key, lock_id, name, supports_open)"
            " VALUES (:u, :k, CAST(:l AS uuid), :n, :s)",
            u=owner_uid,
            k=key,
            l=lock_id,
            n=name,
            s=supports_open,
        )
    return lock_id, True


def _made_with(con: Connection, uid: str, key: str, name: str, supports_open: bool) -> str | None:
    """The lock ``uid`` made with idempotency ``key`` (kept while the lock exists), or None. The key made another
    lock (another name or ``supports_open``), or the lock is no longer theirs (given away since): 409
    ``idempotency_key_reused``."""
    rows = con.run(
        "SELECT k.lock_id::text, k.name, k.supports_open, l.owner_uid FROM lock_creation_keys k"
        " JOIN locks l ON l.id = k.lock_id WHERE k.created_by = :u AND k.idempotency_key = :k"
        " FOR KEY SHARE OF l",  # not deleted under the new code: a deletion under way is waited for, then not found
        u=uid,
        k=key,
    )
    if not rows:
        return None
    lock_id, made_name, made_open, owner_uid = rows[0]
    if (made_name, made_open) != (name, supports_open):
        raise errors.Conflict(
            "this idempotency key made a lock of another name or kind; use a new key for a new lock",
            code="idempotency_key_reused",
        )
    if owner_uid != uid:
        raise errors.Conflict("the lock this idempotency key made is no longer yours", code="idempotency_key_reused")
    return str(lock_id)


_VIEW = (
    "SELECT l.id::text AS id, l.name, l.owner_uid, l.supports_open, l.voice_threshold, l.created_at,"
    " s.state, s.battery_pct, s.online, s.firmware, s.last_seen,"
    " EXISTS (SELECT 1 FROM lock_credentials c WHERE c.lock_id = l.id AND c.revoked_at IS NULL) AS provisioned"
    " FROM locks l LEFT JOIN lock_state s ON s.lock_id = l.id"
)


def _present(row: dict[str, Any], role: str, in_window: bool = True) -> dict[str, Any]:
    """The lock as a member sees it; its live state only inside their access window (guests), as in Firestore; its
    voice threshold to its owner only, who alone may change it (how strict a door is is nobody else's to know); its
    owner's uid to those who manage its members, who list them (attack run 112: every member and guest was shown it,
    where the live view names nobody on the lock's document and names people in the feed only to those it is about;
    a guest let in by a co-host learnt the host's account, the same at each of the host's locks)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "role": role,
        **({"owner_uid": row["owner_uid"]} if role in ("owner", "admin") else {}),
        "supports_open": row["supports_open"],
        **({"voice_threshold": row["voice_threshold"]} if role == "owner" else {}),
        "provisioned": row["provisioned"],
        "created_at": row["created_at"].isoformat(),
        "state": {
            "state": row["state"] or "unknown",
            "battery_pct": row["battery_pct"],
            "online": bool(row["online"]),
            "firmware": row["firmware"],
            "last_seen": row["last_seen"].isoformat() if row["last_seen"] else None,
        }
        if in_window
        else None,
    }


def view(con: Connection, lock_id: str, role: str, in_window: bool = True) -> dict[str, Any]:
    rows = rows_as_dicts(con, _VIEW + " WHERE l.id = CAST(:l AS uuid)", l=lock_id)
    if not rows:
        raise errors.NotFound("lock not found", code="lock_not_found")
    return _present(rows[0], role, in_window)


def list_for_user(
    con: Connection, uid: str, now: dt.datetime, page: pages.Page
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the locks ``uid`` is an active member of (``Membership.active``: the API's one rule), oldest first,
    as they see each, and the next page's token (None: the last page). An account is a member of every lock whose
    invitation it accepted, without limit: the whole list was read and answered at once (attack run 54)."""
    found = con.run(
        "SELECT l.id::text, l.created_at FROM lock_members m JOIN locks l ON l.id = m.lock_id WHERE m.user_uid = :u"
        f" AND {members.active_sql('m')}" + pages.keyset_sql("l.created_at", "l.id"),
        u=uid,
        now=now,
        **pages.bind(page),
    )
    ids = [row[0] for row in found[: page.limit]]
    if not ids:
        return [], None
    mine = {m.lock_id: m for m in members.list_for_user(con, uid, ids)}
    rows = rows_as_dicts(con, _VIEW + " WHERE l.id = ANY(CAST(:ids AS uuid[])) ORDER BY l.created_at, l.id", ids=ids)
    # a lock deleted between the statements is left out
    listed = [_present(r, mine[r["id"]].role, mine[r["id"]].in_window(now)) for r in rows if r["id"] in mine]
    return listed, pages.next_token(found, page, lambda row: (row[1], row[0]))


def update(con: Connection, lock_id: str, uid: str, changes: dict[str, Any]) -> None:
    if "name" in changes:
        con.run(
            "UPDATE locks SET name = :n, updated_at = now() WHERE id = CAST(:l AS uuid)", n=changes["name"], l=lock_id
        )
        mirror.enqueue(con, mirror.lock_doc(lock_id), "merge", {"name": changes["name"]})
    if "voice_threshold" in changes:
        con.run(
            "UPDATE locks SET voice_threshold = :t, updated_at = now() WHERE id = CAST(:l AS uuid)",
            t=changes["voice_threshold"],
            l=lock_id,
        )
    # what changed, and the threshold's value (an operator's setting); a new name is the owner's free text, not kept
    details = {**changes, "name": True} if "name" in changes else changes
    audit.record(con, audit.user_actor(uid), "lock.update", "ok", lock_id=lock_id, details=details)


def refuse_a_gone_member(con: Connection, uid: str) -> None:
    """409 ``member_account_deleted`` when the account of ``uid``, not the caller, is gone. Read, not held: the
    caller (an owner's offer) holds the lock's row for update, and holding the member's row too waited behind the
    relay's account check, which holds accounts' rows and then a lock's (a deadlock: attack run 34). An offer made
    as the account goes is taken by nobody (a deleted account's tokens take nothing: ``users.hold_caller``)."""
    if users.read(con, uid).gone:
        raise errors.Conflict("this member's account has been deleted", code="member_account_deleted")


def refuse_past_owned(con: Connection, uid: str, max_owned: int) -> None:
    """409 ``too_many_locks`` when ``uid`` owns ``max_owned`` locks already (an attack run made 307 in 8 s with one
    account). The caller holds the user's row first (``users.hold_caller``), so locks made or handed over in
    parallel are counted one at a time."""
    (owned,) = con.run("SELECT count(*) FROM locks WHERE owner_uid = :o", o=uid)[0]
    if int(owned) >= max_owned:
        raise errors.Conflict(f"an account may own at most {max_owned} locks", code="too_many_locks")


def transfer(
    con: Connection,
    lock_id: str,
    from_uid: str,
    to: User,
    max_owned: int,
    now: dt.datetime,
) -> None:
    """Make ``to``, a member active at ``now``, the owner (if they may own one more); the previous owner becomes an
    admin and the codes they issued to pair the lock stop working. The new owner is the caller (they accepted the
    offer): an account found disabled, or a revoked session, takes nothing (``users.hold_caller``: the instance's
    memory of the account let a disabled one take a lock for a minute, attack run 27)."""
    to_uid = to.uid
    if to_uid == from_uid:
        raise errors.BadRequest("you already own this lock", code="already_owner")
    target = members.get(con, lock_id, to_uid, for_update=True)
    if target is None or not target.active(now):
        raise errors.NotFound("the new owner must be a current member of the lock", code="member_not_found")
    users.hold_caller(con, to)
    hand_over(con, lock_id, from_uid, to_uid, max_owned)


def hand_over(
    con: Connection,
    lock_id: str,
    from_uid: str,
    to_uid: str,
    max_owned: int | None,
    *,
    operator_uid: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> None:
    """Make the member ``to_uid`` (the caller holds their membership and account rows) the owner, if they may own one
    more (``max_owned``; None: done again after a restore, ``lockwise.devices.restored``, as it was once allowed):
    the previous owner becomes an admin and the codes they issued to pair the lock stop working. Done by the
    previous owner, by an operator (``operator_uid``: ``lockwise.devices.ownerless``), or by ``actor`` (the system,
    for ``reason``: the feed then names nobody as having handed it over)."""
    if max_owned is not None:
        refuse_past_owned(con, to_uid, max_owned)
    con.run(
        "UPDATE lock_members SET role = 'admin' WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
        l=lock_id,
        u=from_uid,
    )
    con.run(
        "UPDATE lock_members SET role = 'owner', valid_from = NULL, valid_until = NULL, weekdays = NULL,"
        " day_start_minute = NULL, day_end_minute = NULL, expires_at = NULL"
        " WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
        l=lock_id,
        u=to_uid,
    )
    con.run("UPDATE locks SET owner_uid = :u, updated_at = now() WHERE id = CAST(:l AS uuid)", u=to_uid, l=lock_id)
    provisioning.close_codes(con, lock_id)  # the old owner's codes pair nothing now (redemption checks it too)
    invitations.close_sent_by(con, lock_id, from_uid, admins_only=True)  # an admin appoints none: not if it comes back
    told: dict[str, Any] = {"actor_uid": from_uid, **({} if operator_uid is None else {"by_operator": True})}
    if actor is not None:  # not the previous owner's doing: a restore handing a lock back named its current owner as
        # having given it away, and one done again named the giver a second time (attack run 99)
        told = {"from_uid": from_uid, **({} if reason is None else {"reason": reason})}
    actor = actor or (audit.user_actor(from_uid) if operator_uid is None else audit.operator_actor(operator_uid))
    audit.record(con, actor, "lock.transfer", "ok", lock_id=lock_id, target=to_uid, details={"from": from_uid})
    mirror.activity(con, lock_id, "ownership_transferred", target_uid=to_uid, **told)
    members.mirror_access(con, lock_id)  # the new owner's window and expiry are gone in the rules' data too


def delete(con: Connection, lock_id: str, uid: str, *, actor: str | None = None) -> None:
    """Delete the lock with its credentials, members, attempts and commands (the audit log keeps its record, by
    ``uid``, its owner, or by ``actor``: an operator, ``lockwise.devices.ownerless``)."""
    con.run("DELETE FROM locks WHERE id = CAST(:l AS uuid)", l=lock_id)
    con.run("DELETE FROM mirrored_access WHERE lock_id = CAST(:l AS uuid)", l=lock_id)  # its documents go below
    con.run("DELETE FROM mirrored_access_locks WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
    audit.record(con, actor or audit.user_actor(uid), "lock.delete", "ok", lock_id=lock_id)
    delete_mirrored(con, lock_id)


def delete_mirrored(con: Connection, lock_id: str) -> None:
    """Delete what the live view has of the lock: the lock document first, while its members may still read it
    (their live views see it gone, not refused); then their access (at most the lock's members, current and former),
    then the feed: a busy lock's feed takes many passes, and deleted after it, the access documents let its former
    members read the rest meanwhile (attack run 46)."""
    mirror.enqueue(con, mirror.lock_doc(lock_id), "delete")
    mirror.enqueue(con, mirror.lock_collection(lock_id, "access"), "delete_collection")
    mirror.enqueue(con, mirror.lock_collection(lock_id, mirror.FEED), "delete_collection")


def lock_config(con: Connection, signer: lock_auth.Signer) -> dict[str, Any]:
    """What an authenticated lock learns about itself: its name, capabilities and the broker identity of the device
    that asked, plus whether its certificate needs renewing (``certificate_expires_at`` is None for a lock paired
    with a broker password: it must renew now, ``POST /devices/lock/certificate``). A device replaced since its
    signature was checked learns nothing (401; the new device's identity and topics, attack run 50)."""
    lock_id = signer.lock_id
    found = con.run(
        "SELECT l.name, l.supports_open, c.mqtt_username, c.cert_not_after FROM locks l"
        f" JOIN lock_credentials c ON c.lock_id = l.id AND {lock_auth.live_sql('c')} WHERE l.id = CAST(:l AS uuid)",
        l=lock_id,
        c=signer.credential_id,
    )
    if not found:  # deleted (or paired again) since its signature was checked
        raise lock_auth.deleted_lock()
    name, supports_open, identity, not_after = found[0]
    return {
        "lock_id": lock_id,
        "name": name,
        "supports_open": supports_open,
        "mqtt_identity": identity,
        "certificate_expires_at": not_after.isoformat() if not_after else None,
    }


# --------------------------------------------------------------------------------------------------- members


def update_member(
    con: Connection,
    lock_id: str,
    actor: members.Membership,
    target: members.Membership,
    role: str,
    access: dict[str, Any],
    now: dt.datetime,
    *,
    members_per_lock: int,
) -> members.Membership:
    """Give ``target`` ``role`` on the terms ``access`` (``members.parse_access``'s values); returns their
    membership as it now stands. One brought back from its expiry counts towards the lock's members
    (``members_per_lock``); it keeps its start (which of two like voices goes first at the door goes by it:
    restarting it let an admin who paused a member, enrolled her recordings and lifted the pause take her voice:
    attack run 23). An expiry in the past is stored as when the access did end: now, or when it had ended already
    (a pause dated 2001 made a member who came back by invitation look gone since then, and her voiceprint newer than
    her leaving: she started again behind an admin's copy enrolled meanwhile, a review of ``invitations.accept``).
    The terms the membership has already (an update sent again, its answer lost) change nothing: its unsent
    commands stay, and the feed and the app's view are not told of a change."""
    _check_can_manage(actor, target)
    members.check_can_grant(actor, role)
    members.check_ends_in_time(actor, access)
    pause = access["expires_at"] is not None and access["expires_at"] < now
    if pause and target.expires_at is not None and target.expires_at <= now:  # it had ended already
        access, pause = {**access, "expires_at": target.expires_at}, False
    unchanged = role == target.role and all(getattr(target, name) == value for name, value in access.items())
    audit.record(
        con,
        audit.user_actor(actor.user_uid),
        "member.update",
        "ok",
        lock_id=lock_id,
        target=target.user_uid,
        # the terms given, not the role alone: an admin widening a guest's window to every day was logged as
        # "member.update, guest", as narrowing it was (attack run 99)
        details={
            "role": role,
            "access": members.public_terms(role, access),
            **({"unchanged": True} if unchanged else {}),
        },
    )
    if unchanged:
        return target
    door_decisions.wait_for(con, lock_id)  # one deciding on the access it had opens the door before this answer
    if pause:  # ended now by the database's clock, the one commands are made and withdrawn by (by this instance's,
        # one running ahead stored an end still to come there, and an unlock made meanwhile on another instance was
        # delivered: attack run 70), read once the waits are over and the membership's row is held (an unlock made
        # during them came before the end: attack run 71)
        access = {**access, "expires_at": members.now_held(con, lock_id, target.user_uid)}
    if not target.active(now) and (access["expires_at"] is None or access["expires_at"] > now):  # one more member
        members.refuse_past_limit(con, lock_id, members_per_lock, now)
    members.set_terms(con, lock_id, target.user_uid, role, access)
    if role not in ("owner", "admin") or pause or not target.active(now):  # the right to invite lost, or lost before
        invitations.close_sent_by(con, lock_id, target.user_uid)  # (their end passed): not brought back with it
    transfer_offers.end_for_taker(con, lock_id, target.user_uid, reason="member_changed")  # made to them as they were
    if members.RANK[role] < members.RANK[target.role] or any(v is not None for v in access.values()):
        commands.withdraw_unsent(con, lock_id, target.user_uid)  # sent under the access they had
    mirror.activity(con, lock_id, "member_updated", actor_uid=actor.user_uid, target_uid=target.user_uid, role=role)
    members.mirror_access(con, lock_id)
    return dataclasses.replace(target, role=role, **access)


def revoke_member(
    con: Connection,
    lock_id: str,
    actor: members.Membership,
    target: members.Membership,
    now: dt.datetime,
    *,
    by: str | None = None,
    reason: str = "account_deleted",
) -> None:
    """End ``target``'s membership at ``now`` (the clock invitations are sent on: one sent before it stands no more).
    ``by``: who the audit log names instead of ``actor`` (the system, ending a deleted account's memberships or
    ending one again after a restore, ``reason`` in the feed, which then names nobody as having removed them)."""
    if target.role == "owner":
        raise errors.Forbidden("the owner cannot be removed; transfer or delete the lock", code="cannot_remove_owner")
    if actor.user_uid != target.user_uid:  # leaving a lock yourself is always allowed
        _check_can_manage(actor, target)
    door_decisions.wait_for(con, lock_id)  # one deciding on their voice opens the door before this answer
    con.run(
        "UPDATE lock_members SET revoked_at = :now, last_removed_at = :now"
        " WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
        l=lock_id,
        u=target.user_uid,
        now=now,
    )
    invitations.close_for_member(con, lock_id, target.user_uid)
    invitations.close_sent_by(con, lock_id, target.user_uid)  # not brought back if they are let in again
    transfer_offers.end_for_taker(con, lock_id, target.user_uid)
    commands.withdraw_unsent(con, lock_id, target.user_uid)  # an unlock they sent is not delivered after this
    audit.record(
        con, by or audit.user_actor(actor.user_uid), "member.revoke", "ok", lock_id=lock_id, target=target.user_uid
    )
    if by is None:
        mirror.activity(con, lock_id, "member_removed", actor_uid=actor.user_uid, target_uid=target.user_uid)
    else:
        mirror.activity(con, lock_id, "member_removed", target_uid=target.user_uid, reason=reason)
    members.mirror_access(con, lock_id)


def leave_every_lock(
    con: Connection,
    uid: str,
    now: dt.datetime,
    *,
    account_gone: bool = False,
    caller: User | None = None,
) -> int | None:
    """What an account's deletion asks of the devices domain: leave every lock ``uid`` is a member of (as each removal
    does: invitations to them closed, the live view's access ended), close the invitations sent to their uid, and
    forget their address. Refused (409 ``owns_locks``, naming them) while they own a lock: its owner transfers or
    deletes it first, or it would be left with nobody able to manage it. ``account_gone``: the account was deleted
    outside the app (``lockwise.core.accounts``): nobody is there to answer, so the locks it owns keep it as their
    owner (their voice is no longer scored anywhere) and the rest is done; None when the account was found again
    meanwhile (nothing is done). ``caller``: the account's own token asking, judged on its row as held
    (``users.Held.refuse``): a revoked session is refused (401 ``token_revoked``; a stolen session revoked a minute
    before made its account leave every lock while the instance remembered the account), and so is a token from
    before the address was verified (401 ``token_outdated``); a session from before an earlier leaving is not: its
    retry is a 204 that changes nothing.
    Returns how many locks were left."""
    # every path's order: the locks' rows, then the user's, then memberships and invitations (an acceptance holds
    # the user's row and waits for its invitation; this closed the invitation, then waited for the user's row)
    held_locks = con.run(
        "SELECT id::text FROM locks WHERE id IN (SELECT lock_id FROM lock_members WHERE user_uid = :u"
        " AND revoked_at IS NULL) ORDER BY id FOR KEY SHARE",
        u=uid,
    )
    # the voice decisions under way at each of them, before any row is written: a removal at one lock holding their
    # commands' rows while it waited for a decision at the next could close a cycle with the relay's batch acking one
    # of those commands while that decision waited for the lockout row the batch held (a review)
    for (lock_id,) in held_locks:
        door_decisions.wait_for(con, lock_id)
    # the user's row before the locks they own are counted: a lock being made for them (``create`` holds the row) is
    # counted once made, not missed and left owned by an account that has just left everything
    held = users.hold(con, uid)
    if not account_gone:
        held.refuse(caller, left_since=False)  # the account's own request
        if caller is not None and held.left_before(caller):
            # its session's leaving sent again (its answer lost): done already. Done again, it left the locks joined
            # since in a later session and moved the leaving past that session's sign-in (attack run 108)
            return 0
    gone = held.gone
    if account_gone and not gone:  # found again meanwhile (restored): left as it is
        return None
    owned = [r[0] for r in con.run("SELECT id::text FROM locks WHERE owner_uid = :u ORDER BY id", u=uid)]
    if owned and not account_gone:
        raise _owns_locks(owned)
    # first: its removals close invitations by uid only, not ones sent to its address since, which belong to whoever
    # holds it now (the same person, signed up again)
    users.mark_left(con, uid, now)
    invitations.forget_address_of(con, uid)
    transfer_offers.end_from(con, uid)  # a lock it keeps (gone) is offered to nobody by it
    left = 0
    for lock_id in sorted({m.lock_id for m in members.list_for_user(con, uid) if m.revoked_at is None}):
        # the lock's row first, then the membership (every path's order); a transfer to them committed meanwhile
        # is seen here
        me = members.get(con, lock_id, uid, for_update=True, lock_row="KEY SHARE")
        if me is None or me.revoked_at is not None:
            continue
        if me.role == "owner":
            if account_gone:
                continue
            raise _owns_locks([lock_id])
        revoke_member(con, lock_id, me, me, now, by=accounts.AUDIT_ACTOR if account_gone else None)
        left += 1
    invitations.close_all_for(con, uid, now)
    audit.record(
        con,
        accounts.AUDIT_ACTOR if account_gone else audit.user_actor(uid),
        "user.leave_every_lock",
        "ok",
        target=uid,
        details={"locks_left": left, "locks_kept_owned": len(owned), "account_gone": account_gone},
    )
    return left


def _owns_locks(lock_ids: list[str]) -> errors.Conflict:
    return errors.Conflict(
        "you own locks: transfer or delete each first", code="owns_locks", details={"locks": lock_ids}
    )


def _check_can_manage(actor: members.Membership, target: members.Membership) -> None:
    if actor.role not in ("owner", "admin"):
        raise errors.Forbidden("only the owner and admins manage members", code="role_too_low")
    if target.role == "owner":
        raise errors.Forbidden("the owner's membership cannot be changed", code="cannot_change_owner")
    if target.role == "admin" and actor.role != "owner":
        raise errors.Forbidden("only the owner manages admins", code="role_too_low")
