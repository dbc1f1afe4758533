"""Invitations: the only way into a lock. An owner or admin invites a user (by uid) or an address (by email); the
invitee sees the invitation in the app and accepts or declines it. Until they accept, nothing of theirs is used at
that lock: no membership, so no voiceprint is ever scored there (consent before biometrics).

Inviting a uid that does not exist answers exactly as inviting one that does (202): the API does not tell an admin
which uids exist. An email invitation is seen only by a user whose token carries that address *verified*, and
whose account Firebase Auth says still has it (``ConfirmAddress``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockwise.core import audit, errors, inputs, mirror, pages, users
from lockwise.core.auth import User
from lockwise.core.db import Connection, Database, rows_as_dicts
from lockwise.devices import members

# every moment here is the request's ``:now`` (the runtime's clock, on which the handlers judge membership), not the
# database's: an invitation expires, and its sender's standing is judged, on the same clock as everything else
_OPEN = "accepted_at IS NULL AND closed_at IS NULL"
#: whoever sent it may still grant its role (active; the owner for an admin): an invitation falls with its sender's
#: right (an admin once invited their own address, was removed, and accepted their way back in: attack run), and
#: with an admin's end set after it was sent, if it grants access ending later (``members.check_ends_in_time``)
_STANDING = (
    "EXISTS (SELECT 1 FROM lock_members s WHERE s.lock_id = invitations.lock_id AND s.user_uid = invitations.invited_by"
    " AND "
    + members.active_sql("s")
    + " AND (s.role = 'owner' OR (s.role = 'admin' AND invitations.role <> 'admin' AND (s.expires_at IS NULL"
    " OR LEAST(CAST(invitations.access->>'expires_at' AS timestamptz),"
    " CAST(invitations.access->>'valid_until' AS timestamptz)) <= s.expires_at))))"
    " AND " + users.vouches_sql("invitations.invited_by", "invitations.issuer_signed_in_at")
)
_LIVE = _OPEN + " AND expires_at > :now AND " + _STANDING
_ADDRESSED_TO = "(invitee_uid = :u OR (CAST(:verified AS boolean) AND lower(email) = lower(:e)))"
#: sent after the invitee's last removal from the lock (or their leaving it): a removal ends whatever was sent before
#: it, also to an address they no longer held when removed (attack run: a member moved their account to another
#: address, was removed, moved back and accepted an admin invitation to the first address left open), also after
#: they rejoined (``last_removed_at`` outlives the rejoin, which clears ``revoked_at``: a later attack run); and
#: their access expiring ends it as a removal does (attack run 21: an invitation refused as ``already_member`` to a
#: guest was taken once their hour was over, for a membership without end)
_SINCE_REMOVAL = (
    "NOT EXISTS (SELECT 1 FROM lock_members r WHERE r.lock_id = invitations.lock_id AND r.user_uid = :u"
    " AND (r.last_removed_at >= invitations.created_at"
    " OR (r.expires_at >= invitations.created_at AND r.expires_at <= :now)))"
)
#: what is offered to an invitee: standing, to them, not ended by their removal, nor withheld from everyone at a
#: member's removal (``close_for_member``; listed to the lock's admins as waiting all the same)
_FOR_INVITEE = _LIVE + " AND withheld_at IS NULL AND " + _ADDRESSED_TO + " AND " + _SINCE_REMOVAL


@dataclass(frozen=True)
class Invitee:
    """Whom an invitation is for: one account (``uid``) or whoever holds an address, verified (``email``,
    ``inputs.email_key``'s form); exactly one of them."""

    uid: str | None = None
    email: str | None = None

    def __post_init__(self) -> None:
        if (self.uid is None) == (self.email is None):
            raise ValueError("an invitee is a uid or an email, exactly one")

    def public(self) -> dict[str, str]:
        return {"uid": self.uid} if self.uid is not None else {"email": str(self.email)}


def parse_invitee(body: dict[str, Any]) -> Invitee:
    """The invitee an add-member body names (400 ``invalid_invitee`` unless exactly one of ``uid`` and ``email``,
    ``invalid_uid`` / ``invalid_email`` for a bad one)."""
    if ("uid" in body) == ("email" in body):
        raise errors.BadRequest("give exactly one of uid or email", code="invalid_invitee")
    if "uid" in body:
        return Invitee(uid=members.parse_uid(body["uid"]))
    email = inputs.email_key(body["email"], typed=True)
    if email is None:
        raise errors.BadRequest("email is not a valid address", code="invalid_email")
    return Invitee(email=email)


@dataclass(frozen=True)
class _Sending:
    """An invitation as its sender sends it (``terms``: the access as stored, JSON), to tell it from one they sent
    before: its query parameters (``params``)."""

    lock_id: str
    sender: str
    invitee: Invitee
    role: str
    terms: str
    now: dt.datetime
    key: str | None = None  # its idempotency key (``lockwise.core.idempotency``)

    def params(self) -> dict[str, Any]:
        return {
            "k": self.key,
            "l": self.lock_id,
            "me": self.sender,
            "r": self.role,
            "a": self.terms,
            "u": self.invitee.uid,
            "e": self.invitee.email,
            "now": self.now,
        }

    def answer(self, invitation_id: str) -> dict[str, Any]:
        """The add-member answer for ``invitation_id``, as when it was made."""
        return {"id": invitation_id, **self.invitee.public(), "role": self.role}


def invite(
    con: Connection,
    lock_id: str,
    actor: members.Membership,
    invitee: Invitee,
    role: str,
    access: dict[str, Any],
    ttl_s: int,
    now: dt.datetime,
    *,
    members_per_lock: int,
    signed_in: dt.datetime,
    budget: Callable[[], None],
    key: str | None = None,
) -> dict[str, Any]:
    """Invite ``invitee``; returns the invitation as the add-member answer shows it (409 ``too_many_members`` when
    the lock's members and the open invitations ``actor`` sent reach ``members_per_lock``: their own only, or an
    admin's invitations to made-up addresses kept the owner from inviting anyone: attack run 23). ``signed_in``: when
    the sender's session signed in (``users.signed_in_at``): the invitation falls with it (``users.vouches_sql``).
    ``budget`` takes the change from the sender's budget (``changes.take``), once the invitation is known not to be
    one sent before: a retry of one, answered as made, was 429 ``change_limit`` once they had made their minute's
    changes, as if it were another (attack run 108). ``key``: its idempotency key; a retry with it is answered with
    the invitation it made, whatever became of it since (``_sent_with_key``)."""
    members.check_can_grant(actor, role)
    members.check_ends_in_time(actor, access)
    terms = json.dumps(access, default=str)
    sending = _Sending(lock_id, actor.user_uid, invitee, role, terms, now, key)
    if (keyed := _sent_with_key(con, sending)) is not None:
        return keyed
    if (accepted := _accepted_before(con, sending)) is not None:
        return accepted
    if (open_ := _open_to(con, sending)) is not None and open_[1]:
        return _sent_again(con, sending, open_[0])
    budget()
    uid, email = invitee.uid, invitee.email
    if uid is not None:
        current = members.get(con, lock_id, uid)
        if current is not None and current.active(now):
            raise errors.Conflict("already a member of this lock", code="already_member")
    members.hold_members(con, lock_id)  # counted below, with the open invitations this closes or adds
    # an expired invitation, or one whose sender lost the right to send it, no longer stands in the way of a new one
    con.run(
        "UPDATE invitations SET closed_at = :now WHERE lock_id = CAST(:l AS uuid) AND "
        + _OPEN
        + " AND (expires_at <= :now OR NOT "
        + _STANDING
        + ") AND (invitee_uid = :u OR lower(email) = lower(:e))",
        l=lock_id,
        u=uid,
        e=email,
        now=now,
    )
    (invited,) = con.run(
        "SELECT count(*) FROM invitations WHERE lock_id = CAST(:l AS uuid) AND "
        + _OPEN
        + " AND expires_at > :now AND invited_by = :me AND "
        + _STANDING,
        l=lock_id,
        me=actor.user_uid,
        now=now,
    )[0]
    members.refuse_past_limit(con, lock_id, members_per_lock, now, invited=int(invited))
    # an open invitation to them (the unique indexes) stands in the way: nothing inserted, and no error in the
    # database server's log naming the address in its key (a unique violation caught here did: attack run 53)
    inserted = con.run(
        "INSERT INTO invitations (lock_id, email, invitee_uid, role, access, invited_by, created_at,"
        " expires_at, issuer_signed_in_at, held_by, idempotency_key) VALUES (CAST(:l AS uuid), :e, :u, :r,"
        " CAST(:a AS jsonb), :by, :now, CAST(:now AS timestamptz) + make_interval(secs => :ttl), :session,"
        " (SELECT h.uid FROM users h WHERE lower(h.email) = lower(CAST(:e AS text))), :k)"
        " ON CONFLICT DO NOTHING RETURNING id::text",
        k=key,
        l=lock_id,
        e=email,
        u=uid,
        r=role,
        a=terms,
        by=actor.user_uid,
        ttl=ttl_s,
        now=now,
        session=signed_in,
    )
    if not inserted:  # (one sent at the same moment)
        return _sent_before(con, sending)
    invitation_id = str(inserted[0][0])
    audit.record(
        con,
        audit.user_actor(actor.user_uid),
        "member.invite",
        "ok",
        lock_id=lock_id,
        # an address by its invitation: the log is kept 400 days, the address is not (it was kept after the
        # invitation was pruned and its holder's account was deleted: attack run 46)
        target=uid or f"invitation:{invitation_id}",
        details={
            "role": role,
            "access": members.public_terms(role, access),
            "invitation": invitation_id,
            **({} if uid else {"by_address": True}),
        },
    )
    return {"id": invitation_id, **invitee.public(), "role": role}


def _sent_with_key(con: Connection, sending: _Sending) -> dict[str, Any] | None:
    """The invitation its sender sent with this idempotency key at the lock, answered as when it was made, whatever
    became of it since (accepted, declined, withdrawn, expired); None when the key made none (or none was sent).
    The key sending another (another invitee, role or terms) is 409 ``idempotency_key_reused``. Without a key, an
    invitation sent again after its invitee declined it (its answer lost) asked them again (attack run 108's
    leftover): one sent again on purpose still does."""
    if sending.key is None:
        return None
    rows = con.run(
        "SELECT id::text, role = :r AND access = CAST(:a AS jsonb) AND invitee_uid IS NOT DISTINCT FROM"
        " CAST(:u AS text) AND lower(email) IS NOT DISTINCT FROM lower(CAST(:e AS text)) FROM invitations"
        " WHERE lock_id = CAST(:l AS uuid) AND invited_by = :me AND idempotency_key = :k",
        **sending.params(),
    )
    if not rows:
        return None
    if not rows[0][1]:
        raise errors.Conflict(
            "this idempotency key sent another invitation; use a new key for a new invitation",
            code="idempotency_key_reused",
            details={"invitation_id": rows[0][0]},
        )
    return sending.answer(rows[0][0])


def _accepted_before(con: Connection, sending: _Sending) -> dict[str, Any] | None:
    """The same invitation sent again by its sender after its invitee accepted it, answered as when it was made:
    while it would still stand (its 7 days) and the membership it made does (as ``_accepted_by`` judges it), by an
    address only while its acceptor still holds it (else the address's next holder is invited anew). None
    otherwise. Before, such a retry (its answer lost, the invitee accepting at their side meanwhile) was 409
    ``already_member`` by uid, and by address a second invitation, logged and counted as a change, offered to a
    member who could only decline it (attack run 108)."""
    rows = con.run(
        "SELECT i.id::text FROM invitations i JOIN users a ON a.uid = i.accepted_by"
        " JOIN lock_members m ON m.lock_id = i.lock_id AND m.user_uid = i.accepted_by"
        " WHERE i.lock_id = CAST(:l AS uuid) AND i.invited_by = :me"
        " AND i.role = :r AND i.access = CAST(:a AS jsonb) AND i.accepted_at IS NOT NULL AND i.expires_at > :now"
        " AND (i.invitee_uid = :u OR (i.invitee_uid IS NULL AND lower(i.email) = lower(:e)"
        " AND lower(a.email) = lower(:e))) AND "
        + members.active_sql("m")
        + " AND m.invited_by = i.invited_by AND (m.last_removed_at IS NULL OR m.last_removed_at < i.accepted_at)"
        " ORDER BY i.accepted_at DESC LIMIT 1",
        **sending.params(),
    )
    return sending.answer(rows[0][0]) if rows else None


def _sent_before(con: Connection, sending: _Sending) -> dict[str, Any]:
    """The open invitation to the invitee that stood in the way of a new one: the same invitation sent again by its
    sender (its answer lost, or sent twice at once) is answered with it, as when it was made; another (someone
    else's, other terms) is 409 ``already_invited`` naming it (``details.invitation_id``). Before, every one was a
    409 without its id, and a retry looked like a failure (attack run 39)."""
    open_ = _open_to(con, sending)
    if open_ is not None and open_[1]:
        return _sent_again(con, sending, open_[0])
    raise errors.Conflict(
        "there is already an open invitation for them",
        code="already_invited",
        details={"invitation_id": open_[0]} if open_ is not None else None,
    )


def _open_to(con: Connection, sending: _Sending) -> tuple[str, bool] | None:
    """The open invitation to the invitee at the lock (its id, and whether it is this one sent again by its
    sender), or None."""
    rows = con.run(
        "SELECT id::text, invited_by = :me AND role = :r AND access = CAST(:a AS jsonb) FROM invitations"
        " WHERE lock_id = CAST(:l AS uuid) AND " + _OPEN + " AND expires_at > :now"
        " AND (invitee_uid = :u OR lower(email) = lower(:e))",
        **sending.params(),
    )
    return (str(rows[0][0]), bool(rows[0][1])) if rows else None


def _sent_again(con: Connection, sending: _Sending, invitation_id: str) -> dict[str, Any]:
    """An invitation sent again by its sender, answered as when it was made. One withheld at a member's removal
    (``close_for_member``) stands again: it was answered as sent, and stood for nobody (attack run 87)."""
    con.run("UPDATE invitations SET withheld_at = NULL WHERE id = CAST(:i AS uuid)", i=invitation_id)
    return sending.answer(invitation_id)


def open_for_lock(
    con: Connection, lock_id: str, now: dt.datetime, page: pages.Page
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the lock's invitations still waiting for an answer (for its owner and admins), oldest first, and
    the next page's token. Each admin may hold up to ``LOCKWISE_MEMBERS_PER_LOCK`` open invitations of their own
    (attack run 23), so a lock's have no small bound: all were read and answered at once, with its members."""
    rows = rows_as_dicts(
        con,
        "SELECT id::text AS id, invitee_uid, email, role, expires_at, created_at AS listed_at FROM invitations"
        " WHERE lock_id = CAST(:l AS uuid) AND " + _LIVE + pages.keyset_sql("created_at", "id"),
        l=lock_id,
        now=now,
        **pages.bind(page),
    )
    listed = [_public(row) for row in rows[: page.limit]]
    return listed, pages.next_token(rows, page, lambda row: (row["listed_at"], row["id"]))


#: ``user`` with the address their token names only while their account still has it (``accounts``'s
#: ``with_current_address``: one call to Firebase Auth, 503 ``accounts_unavailable`` when it cannot tell)
ConfirmAddress = Callable[[User], User]


@dataclass(frozen=True)
class Received:
    """A page of the invitations waiting for a user's answer (``for_user``)."""

    invitations: list[dict[str, Any]]
    #: those sent to the user's address are left out: Firebase Auth could not confirm it is still theirs just now
    address_unconfirmed: bool = False
    #: the next page's token (``pages``); None on the last page
    next_page_token: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "invitations": self.invitations,
            "address_unconfirmed": self.address_unconfirmed,
            "next_page_token": self.next_page_token,
        }


def for_user(db: Database, user: User, now: dt.datetime, confirm: ConfirmAddress, page: pages.Page) -> Received:
    """A page of the invitations waiting for ``user``'s answer, oldest first, with the lock's name and who invited
    them: their uid, and the address Firebase Auth vouched for as theirs when we last saw it (None: none verified, or
    their account left): a lock's name is its owner's free text, and "Home" from a stranger read as an invitation
    from home. Those sent to the token's address only while the account still has it (``confirm``): a token keeps its
    address for up to an hour after the account moved to another, and listed the invitations sent to it meanwhile.
    ``confirm`` is asked for every listing of a token naming a verified address, whatever was sent to it: asked only
    when the page held one, its pace (a 429 after six listings a minute) and Firebase Auth's round trip told the
    token's former holder whether the address they had given up had invitations waiting (attack run 86). While
    Firebase Auth cannot tell (``confirm``'s 503), those sent to the address are left out and the rest is listed
    (``Received.address_unconfirmed``): the whole listing was a 503, the invitations to the user's uid too. Any admin
    anywhere may invite any address, so one account's invitations have no bound: they were all read and answered at
    once (a page now, as ``GET /devices/locks``). Refused as the account stands now (``users.refuse_caller``: a
    revoked session read them for a minute, attack run 81); once it has left every lock, the session from before
    lists what is left (nothing sent to its uid)."""
    with db.connection() as con:
        users.refuse_caller(con, user, left_since=False)
    by_address, unconfirmed = False, False
    if users.stored_email(user) is not None:
        try:  # no connection held meanwhile: Firebase Auth may take its 5 s
            by_address = confirm(user).email == user.email
        except errors.Unavailable:
            unconfirmed = True
    with db.connection() as con:
        rows, next_page = _page_for(con, user, now, page, by_address=by_address)
    out = []
    for row in rows:
        access = _access(row["access"])
        out.append(
            {
                **_public(row),
                "lock": {"id": row["lock_id"], "name": row["lock_name"]},
                "invited_by": row["invited_by"],
                "invited_by_email": row["invited_by_email"],
                "access": members.Membership(row["lock_id"], user.uid, row["role"], **access).public()["access"],
            }
        )
    return Received(out, unconfirmed, next_page)


def _page_for(
    con: Connection, user: User, now: dt.datetime, page: pages.Page, *, by_address: bool
) -> tuple[list[dict[str, Any]], str | None]:
    """``page`` of the invitations ``for_user`` lists, those to ``user``'s address too when ``by_address``, and the
    next page's token."""
    rows = rows_as_dicts(
        con,
        "SELECT invitations.id::text AS id, invitee_uid, email, invitations.role, access, invitations.expires_at,"
        " invited_by, (SELECT sender.email FROM users sender WHERE sender.uid = invitations.invited_by)"
        " AS invited_by_email, l.id::text AS lock_id, l.name AS lock_name, invitations.created_at AS listed_at"
        " FROM invitations JOIN locks l ON l.id = invitations.lock_id WHERE "
        + _FOR_INVITEE
        + pages.keyset_sql("invitations.created_at", "invitations.id"),
        u=user.uid,
        e=user.email,
        verified=by_address,
        now=now,
        **pages.bind(page),
    )
    return rows[: page.limit], pages.next_token(rows, page, lambda row: (row["listed_at"], row["id"]))


def answering_as(db: Database, invitation_id: str, user: User, confirm: ConfirmAddress) -> User:
    """``user`` as they may answer ``invitation_id``: with the address their account has now (``confirm``: a token
    issued before the account moved accepted an invitation sent to the old address after its new holder had
    verified it: attack run 12) when it is an open invitation sent to the address their token names; else as their
    token says (Firebase Auth is not asked: addressed to their uid, or not to them at all, which is answered 404 as
    before; any made-up id had cost a lookup, unpaced, the project's Auth quota: attack run 35)."""
    address = users.stored_email(user)
    if address is None:
        return user
    with db.connection() as con:
        rows = con.run(
            "SELECT 1 FROM invitations WHERE id = CAST(:i AS uuid) AND " + _OPEN + " AND invitee_uid IS NULL"
            " AND withheld_at IS NULL AND lower(email) = lower(:e)",  # a withheld one answered as a closed one
            i=_invitation_id(invitation_id),
            e=address,
        )
    return confirm(user) if rows else user


#: when a membership that ended (removed, or expired) starts again as its invitation is accepted: where the member
#: comes back with the voiceprint she had before it ended, when it first began, as if she had never left (which of
#: two like voices goes first at the door goes by it, ``lockwise.voice.first_come``: an admin who removed a member,
#: enrolled her recordings while she was nobody's co-member and invited her back took her voice, attack run 24);
#: otherwise now (a voiceprint stored while she was away, someone's recordings perhaps, comes after every voice
#: that came to the lock meanwhile)
_START_AGAIN = (
    "CASE WHEN EXISTS (SELECT 1 FROM voiceprints v WHERE v.user_uid = lock_members.user_uid"
    " AND v.created_at <= LEAST(lock_members.revoked_at, lock_members.expires_at))"
    " THEN lock_members.created_at ELSE :now END"
)


def accept(
    con: Connection,
    invitation_id: str,
    user: User,
    now: dt.datetime,
    *,
    members_per_lock: int,
    memberships_per_user: int,
) -> tuple[members.Membership, bool]:
    """Make the invitee a member on the invitation's terms, and True (404 ``invitation_not_found`` if it is not
    theirs, or no longer stands: see ``_STANDING``; 409 ``too_many_members`` when the lock has ``members_per_lock``,
    ``too_many_memberships`` when the invitee is a member of ``memberships_per_user`` locks already).
    An invitation they accepted already, whose membership stands, is that membership and False: an acceptance sent
    again after its answer was lost, or twice at once, was 404 "no such invitation" while they had joined (attack
    run 39)."""
    try:
        made = _accept(
            con, invitation_id, user, now, members_per_lock=members_per_lock, memberships_per_user=memberships_per_user
        )
        return made, True
    except errors.NotFound:
        joined = _accepted_by(con, invitation_id, user, now)
        if joined is None:
            raise
        return joined, False


def _accepted_by(con: Connection, invitation_id: str, user: User, now: dt.datetime) -> members.Membership | None:
    """The membership ``user`` has through ``invitation_id``, which they accepted (``accepted_by``, whatever address
    they hold now): from its sender, active, not removed since the acceptance (None: not accepted by them, or the
    membership has ended or come through another invitation)."""
    rows = con.run(
        "SELECT i.lock_id::text FROM invitations i JOIN lock_members m ON m.lock_id = i.lock_id AND m.user_uid = :u"
        " WHERE i.id = CAST(:i AS uuid) AND i.accepted_by = :u AND "
        + members.active_sql("m")
        + " AND m.invited_by = i.invited_by AND (m.last_removed_at IS NULL OR m.last_removed_at < i.accepted_at)",
        i=_invitation_id(invitation_id),
        u=user.uid,
        now=now,
    )
    return members.get(con, rows[0][0], user.uid) if rows else None


def _accept(
    con: Connection,
    invitation_id: str,
    user: User,
    now: dt.datetime,
    *,
    members_per_lock: int,
    memberships_per_user: int,
) -> members.Membership:
    seen = _take(con, invitation_id, user, now, lock=False)
    # every path's order: the lock's row (as a deletion of the lock takes it: the membership row first deadlocked
    # with one), the user's (an account found deleted joins nothing), then the sender's membership, kept from
    # changing before the invitation is taken, in the order a removal takes them: a removal committed first is seen
    # here, one after waits for this to commit
    con.run("SELECT 1 FROM locks WHERE id = CAST(:l AS uuid) FOR KEY SHARE", l=seen["lock_id"])
    users.hold_caller(con, user)  # not a session from before the account left
    members.hold_members(con, seen["lock_id"])  # counted below; before the sender's row, as a change to it holds them
    members.get(con, seen["lock_id"], seen["invited_by"], for_share=True, lock_row="KEY SHARE")
    row = _take(con, invitation_id, user, now)
    lock_id = row["lock_id"]
    terms = _access(row["access"])
    if members.ended(terms, now) is not None:  # sent with a future end that has passed since: joining lets nobody in
        raise errors.Conflict(
            "the access this invitation offers has ended; ask an owner or admin for a new one", code="access_ended"
        )
    members.refuse_past_limit(con, lock_id, members_per_lock, now)
    held = members.get(con, lock_id, user.uid)
    if held is None or held.revoked_at is not None:  # one more of theirs (an ended one they hold is counted)
        members.refuse_past_joined(con, user.uid, memberships_per_user, now)
    # one statement decides, so two invitations to one lock accepted at once cannot both answer 201 with a role
    # each while one is stored (attack run): an active membership (also one committed meanwhile: the insert waits
    # for it) is left as it is and the invitation stays open; so is one removed after the invitation was sent (a
    # removal committed while this waited: the condition is judged again on the row it committed)
    joined_now = con.run(
        "INSERT INTO lock_members (lock_id, user_uid, role, invited_by, valid_from, valid_until, weekdays,"
        " day_start_minute, day_end_minute, timezone, expires_at, created_at)"
        " VALUES (CAST(:l AS uuid), :u, :r, :by, :valid_from, :valid_until, :weekdays, :day_start_minute,"
        " :day_end_minute, :timezone, :expires_at, :now)"
        " ON CONFLICT (lock_id, user_uid) DO UPDATE SET role = EXCLUDED.role, invited_by = EXCLUDED.invited_by,"
        " valid_from = EXCLUDED.valid_from, valid_until = EXCLUDED.valid_until, weekdays = EXCLUDED.weekdays,"
        " day_start_minute = EXCLUDED.day_start_minute, day_end_minute = EXCLUDED.day_end_minute,"
        " timezone = EXCLUDED.timezone, expires_at = EXCLUDED.expires_at, revoked_at = NULL, created_at = "
        + _START_AGAIN
        + " WHERE (lock_members.revoked_at IS NOT NULL OR lock_members.expires_at <= :now)"
        " AND (lock_members.last_removed_at IS NULL OR lock_members.last_removed_at < :sent) RETURNING 1",
        l=lock_id,
        u=user.uid,
        r=row["role"],
        by=row["invited_by"],
        now=now,
        sent=row["created_at"],
        **terms,
    )
    if not joined_now:
        raise errors.Conflict(
            "you are already a member of this lock: decline this invitation, or ask an owner or admin to change your"
            " role",
            code="already_member",
        )
    con.run(
        "UPDATE invitations SET accepted_at = :now, accepted_by = :u WHERE id = CAST(:i AS uuid)",
        i=row["id"],
        now=now,
        u=user.uid,
    )
    audit.record(
        con,
        audit.user_actor(user.uid),
        "member.accept_invitation",
        "ok",
        lock_id=lock_id,
        # who let them in, and by which invitation (its ``member.invite`` row's target, for one sent to an address):
        # kept as long as the log, where the invitation is pruned 30 days after it was answered, and the membership's
        # ``invited_by`` is written over by the next invitation they take (attack run 99: a year's review read who
        # joined, and never who had let them in)
        target=f"invitation:{row['id']}",
        details={"role": row["role"], "invited_by": row["invited_by"]},
    )
    mirror.activity(con, lock_id, "member_joined", target_uid=user.uid, role=row["role"], invited_by=row["invited_by"])
    members.mirror_access(con, lock_id, write_again=[user.uid])
    joined = members.get(con, lock_id, user.uid)
    if joined is None:
        raise RuntimeError("membership vanished inside its own transaction")
    return joined


def close_for_member(con: Connection, lock_id: str, uid: str) -> None:
    """End the open invitations to ``lock_id`` for a member removed (or leaving): they do not come back, in whatever
    role, through an invitation left open from before (attack run: a second invitation, refused as ``already_member``
    while they were one, let a removed member back in as an admin). Whoever may invite can invite again. Those sent
    to their uid are closed. Those sent to the address they hold, or held when it was sent (``held_by``: one moved
    to another address before the removal, attack run 87), are withheld (``withheld_at``): answered by nobody,
    a new account made with the address too, and listed to the lock's owner and admins as waiting until they expire
    or are withdrawn. Closed, they told the admins, who are shown members' uids and never their addresses, which of
    the addresses they had invited was the member's (attack run 86: guessed addresses invited, a member left, and
    the one invitation that closed named them)."""
    con.run(
        "UPDATE invitations SET closed_at = now() WHERE lock_id = CAST(:l AS uuid) AND "
        + _OPEN
        + " AND invitee_uid = :u",
        l=lock_id,
        u=uid,
    )
    con.run(
        "UPDATE invitations SET withheld_at = now() WHERE lock_id = CAST(:l AS uuid) AND " + _OPEN + " AND"
        " withheld_at IS NULL AND invitee_uid IS NULL"
        " AND (held_by = :u OR lower(email) = (SELECT lower(email) FROM users WHERE uid = :u))",
        l=lock_id,
        u=uid,
    )


def close_sent_by(con: Connection, lock_id: str, uid: str, *, admins_only: bool = False) -> None:
    """End the open invitations to ``lock_id`` that ``uid`` sent: they lost the right to send them (removed, left,
    paused, demoted below admin; ``admins_only``: an owner handing the lock over, who as an admin appoints no admin).
    An invitation's standing was judged on its sender's membership as it is now (``_STANDING``), so one fell with the
    right and stood again when it came back: an admin removed and made an admin again, the owner a lock was handed
    back to, brought back every invitation they had sent before, which the lock's list had stopped showing (attack
    run 113). As a removal ends what was sent to the member removed (``close_for_member``), so it ends what they
    sent; an account disabled and enabled again keeps its grants (``users.vouches_sql``)."""
    con.run(
        "UPDATE invitations SET closed_at = now() WHERE lock_id = CAST(:l AS uuid) AND invited_by = :u AND "
        + _OPEN
        + (" AND role = 'admin'" if admins_only else ""),
        l=lock_id,
        u=uid,
    )


def forget_address_of(con: Connection, uid: str) -> None:
    """Untie ``uid`` from every address invitation (their account is being deleted, its address forgotten): the one
    held when it was sent (``held_by``) and the one they answered (``accepted_by``, ``declined_by``). Kept, each
    tied the address to the uid for the 30 days an ended invitation is kept (attack run 90). Done before their
    removals, which then withhold none of them: those belong to whoever holds the address now (the same person,
    signed up again), as the removals' closing by uid alone already meant. One statement: none of the three has an
    index (an erasure is rare; each index would weigh on every invitation), so each was a scan of the table."""
    con.run(
        "UPDATE invitations SET held_by = nullif(held_by, :u),"
        " accepted_by = CASE WHEN email IS NULL THEN accepted_by ELSE nullif(accepted_by, :u) END,"
        " declined_by = CASE WHEN email IS NULL THEN declined_by ELSE nullif(declined_by, :u) END"
        " WHERE held_by = :u OR (email IS NOT NULL AND :u IN (accepted_by, declined_by))",
        u=uid,
    )


def close_all_for(con: Connection, uid: str, now: dt.datetime) -> None:
    """Close every open invitation sent to ``uid``, at every lock (their account is being deleted)."""
    con.run("UPDATE invitations SET closed_at = :now WHERE invitee_uid = :u AND " + _OPEN, u=uid, now=now)


def decline(con: Connection, invitation_id: str, user: User, now: dt.datetime) -> None:
    """The invitee turns the invitation down (404 ``invitation_not_found`` if it is not theirs, or no longer
    stands). One they declined already is answered as declined, nothing changed: a decline sent again after its
    answer was lost, or twice at once, was 404 "no such invitation", as for one never theirs."""
    try:
        row = _take(con, invitation_id, user, now)
    except errors.NotFound:
        declined = con.run(
            "SELECT 1 FROM invitations WHERE id = CAST(:i AS uuid) AND declined_by = :u",
            i=_invitation_id(invitation_id),
            u=user.uid,
        )
        if not declined:
            raise
        return
    # the account as committed now: a revoked session declined what its owner was sent (attack run 81); a decline
    # gives nothing back, so one by a session from before the account left every lock stands
    users.refuse_caller(con, user, left_since=False)
    con.run(
        "UPDATE invitations SET closed_at = :now, declined_by = :u WHERE id = CAST(:i AS uuid)",
        i=row["id"],
        u=user.uid,
        now=now,
    )
    audit.record(con, audit.user_actor(user.uid), "member.decline_invitation", "ok", lock_id=row["lock_id"])


def withdraw(con: Connection, lock_id: str, invitation_id: str, actor: members.Membership, now: dt.datetime) -> None:
    """An owner or admin takes back an invitation not yet answered (404 if there is none open by that id; 409
    ``invitation_accepted`` while the membership its acceptance made stands: a 404, which says it is gone, told an
    admin whose withdrawal was sent again, its answer lost, that it was withdrawn while its invitee had joined,
    attack run 108)."""
    found = rows_as_dicts(
        con,
        "SELECT id::text AS id, role FROM invitations WHERE id = CAST(:i AS uuid) AND lock_id = CAST(:l AS uuid)"
        " AND " + _LIVE + " FOR UPDATE",
        i=_invitation_id(invitation_id),
        l=lock_id,
        now=now,
    )
    if not found:
        _refuse_if_accepted(con, lock_id, invitation_id, actor, now)
        raise errors.NotFound("no such invitation", code="invitation_not_found")
    members.check_can_grant(actor, found[0]["role"])
    con.run("UPDATE invitations SET closed_at = :now WHERE id = CAST(:i AS uuid)", i=found[0]["id"], now=now)
    audit.record(  # which one (it named none: attack run 99), as its ``member.invite`` row names it
        con,
        audit.user_actor(actor.user_uid),
        "member.withdraw_invitation",
        "ok",
        lock_id=lock_id,
        target=f"invitation:{found[0]['id']}",
    )


def _refuse_if_accepted(
    con: Connection, lock_id: str, invitation_id: str, actor: members.Membership, now: dt.datetime
) -> None:
    """409 ``invitation_accepted`` when ``invitation_id`` of ``lock_id``, one ``actor`` may withdraw, was accepted and
    the membership it made stands (``_accepted_by``'s judgement)."""
    rows = con.run(
        "SELECT i.role FROM invitations i JOIN lock_members m ON m.lock_id = i.lock_id AND m.user_uid = i.accepted_by"
        " WHERE i.id = CAST(:i AS uuid) AND i.lock_id = CAST(:l AS uuid) AND "
        + members.active_sql("m")
        + " AND m.invited_by = i.invited_by AND (m.last_removed_at IS NULL OR m.last_removed_at < i.accepted_at)",
        i=_invitation_id(invitation_id),
        l=lock_id,
        now=now,
    )
    if rows:
        members.check_can_grant(actor, rows[0][0])
        raise errors.Conflict(
            "this invitation was accepted: its invitee is a member (remove them instead)", code="invitation_accepted"
        )


def _take(con: Connection, invitation_id: str, user: User, now: dt.datetime, *, lock: bool = True) -> dict[str, Any]:
    rows = rows_as_dicts(
        con,
        "SELECT id::text AS id, lock_id::text AS lock_id, role, access, invited_by, created_at FROM invitations"
        " WHERE id = CAST(:i AS uuid) AND " + _FOR_INVITEE + (" FOR UPDATE" if lock else ""),
        i=_invitation_id(invitation_id),
        u=user.uid,
        e=user.email,
        verified=user.email_verified,
        now=now,
    )
    if not rows:
        raise errors.NotFound("no such invitation", code="invitation_not_found")
    return rows[0]


def _invitation_id(value: str) -> str:
    canonical = inputs.canonical_uuid(value)
    if canonical is None:
        raise errors.NotFound("no such invitation", code="invitation_not_found")
    return canonical


def _access(stored: Any) -> dict[str, Any]:
    """The access columns an invitation carries (JSON), as ``lock_members`` values."""
    fields: dict[str, Any] = dict.fromkeys(members.ACCESS_FIELDS)
    fields["timezone"] = "UTC"
    fields.update(stored if isinstance(stored, dict) else json.loads(stored))
    for name in ("valid_from", "valid_until", "expires_at"):
        if isinstance(fields[name], str):
            fields[name] = inputs.parse_time(fields[name], name, code="invalid_access")
    return fields


def _public(row: dict[str, Any]) -> dict[str, Any]:
    invitee = {"uid": row["invitee_uid"]} if row["invitee_uid"] is not None else {"email": row["email"]}
    return {"id": row["id"], **invitee, "role": row["role"], "expires_at": row["expires_at"].isoformat()}
