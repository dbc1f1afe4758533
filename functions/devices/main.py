"""HTTP entry point of the devices function: locks, members, commands and lock state.

Three kinds of caller: the app (Firebase ID token), a lock (its pairing code, then requests signed with its own
key) and the relay (service token). Handlers only parse the request, call the domain and shape the response;
``lockwise.core.http.Api`` maps errors to HTTP in one place.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import flask
import functions_framework

import lockwise.core.loading
from lockwise.core import accounts, audit, auth, errors, health, inputs, pages, preconditions, users
from lockwise.core.db import Connection
from lockwise.core.http import Api, Ctx, JsonBody, Result, parse_json_object
from lockwise.core.runtime import get_runtime
from lockwise.core.shared_reads import SharedRead
from lockwise.devices import (
    changes,
    command_signing,
    commands,
    idempotency,
    invitations,
    lock_auth,
    lock_certs,
    lock_events,
    lockout,
    locks,
    members,
    ownerless,
    provisioning,
    restored,
    topics,
    transfers,
    upkeep,
)

rt = get_runtime("devices")


def app_user(ctx: Ctx) -> auth.User:
    """The signed-in app user, their token checked once a request (first, by the router: ``api``'s caller)."""
    return ctx.once("app_user", lambda: rt.app_user(ctx.bearer_token()))


def app_caller(ctx: Ctx) -> auth.User:
    """Who may call an app route: a signed-in app user, and while a restored database is brought back
    (``restored``) only to read, but for the operators' routes."""
    user = app_user(ctx)
    if ctx.request.method != "GET" and not ctx.request.path.startswith("/devices/operator/"):
        restored.refuse_changes(rt.db, rt.settings.restore_pending)
    return user


api = Api("devices", caller=app_caller)  # every route is an app user's but those naming another caller
crls = lock_certs.CrlCache()  # the revocation list, signed again when the revocations change


def _revocations_version() -> tuple[int, int]:
    with rt.db.connection() as con:
        return provisioning.revocations_version(con)


#: which revocations stand, read once at a time however many ask: the list is public, and each request read every
#: listed revocation (a scan anyone could run as often as they sent requests)
revocations = SharedRead(_revocations_version)


def server_public_key() -> str:
    return command_signing.public_key_b64(command_signing.private_key(rt.settings.signing_key()))


@functools.cache
def lock_ca() -> lock_certs.LockCa:
    return lock_certs.LockCa.from_pem(rt.settings.lock_ca_pem())


def certificate_issuing() -> lock_certs.Issuing:
    """The deployment's lock CA, its certificates' lifetime and how many a credential may be issued a day."""
    return lock_certs.Issuing(lock_ca(), rt.settings.lock_cert_ttl_s, rt.settings.lock_renewals_per_day)


def lock_param(value: str) -> str:
    """A path lock id in its canonical form (any case); anything else is simply an unknown lock (``uuid.UUID``
    also took ``urn:uuid:``, braces and no hyphens: one lock had many paths)."""
    canonical = inputs.canonical_uuid(value)
    if canonical is None:
        raise errors.NotFound("lock not found", code="lock_not_found")
    return canonical


@contextmanager
def with_denials_audited(uid: str, lock_id: str, action: str) -> Iterator[None]:
    """A Forbidden raised inside is recorded in the audit log, in a transaction of its own (the first few a minute
    one by one, every one counted: ``audit.record_denied``)."""
    try:
        yield
    except errors.Forbidden as exc:
        with rt.db.transaction() as con:
            audit.record_denied(con, audit.user_actor(uid), action, lock_id, {"code": exc.code})
        raise


def take_change(con: Connection, lock_id: str, user: auth.User, *, lock_held_for_update: bool = False) -> None:
    """One of ``user``'s changes at ``lock_id``, on the deployment's budget (``changes.take``), counted one at a time:
    their account's row held first (``users.hold_caller``), or, by an owner's write that holds the lock's row for
    update (``lock_held_for_update``), already one at a time at this lock (``users.refuse_caller``). Either way a
    revoked session or an account found disabled or deleted changes nothing, not even while this instance still
    remembers the account."""
    change_budget(con, lock_id, user, lock_held_for_update=lock_held_for_update)()


def change_budget(
    con: Connection, lock_id: str, user: auth.User, *, lock_held_for_update: bool = False
) -> Callable[[], None]:
    """The caller held as for ``take_change``; what it returns takes the change, for a handler that first tells a
    change sent again (answered as made, not counted again: a retry was 429 ``change_limit`` once the caller had
    made their minute's changes, attack run 108) from a new one."""
    if lock_held_for_update:
        users.refuse_caller(con, user)
    else:
        users.hold_caller(con, user)
    settings = rt.settings
    per_minute, per_day = settings.lock_changes_per_minute, settings.lock_changes_per_day
    everywhere, everywhere_day = settings.lock_changes_per_account_minute, settings.lock_changes_per_account_day
    return functools.partial(changes.take, con, lock_id, user.uid, per_minute, per_day, everywhere, everywhere_day)


# ------------------------------------------------------------------------------------------------------ health


@api.route("GET", "/devices/health", query=None, body=True, caller=None)  # a checker's: anything goes
def get_health(ctx: Ctx) -> tuple[JsonBody, int]:
    report = rt.health.check(rt.probes(), "devices", rt.settings.release)
    return health.shown(report, detailed=ctx.is_service(rt.settings.service_token))


@api.route("GET", "/devices/me")
def get_me(ctx: Ctx) -> JsonBody:
    user = app_user(ctx)
    return {"uid": user.uid, "email": user.email}


@api.route("DELETE", "/devices/me")
def leave_everything(ctx: Ctx) -> Result:
    """The devices side of deleting an account: the app calls it (and ``DELETE /embed/enrollment``) before it deletes
    the Firebase account; 409 ``owns_locks`` while the user owns a lock."""
    user, now = app_user(ctx), rt.now()
    # as Firebase Auth asks before it deletes the account: a refresh token taken from her phone took her off every
    # lock she was a member of, for their admins to invite her again
    users.require_recent_sign_in(user, now, "leaving every lock")
    with rt.db.transaction() as con:
        locks.leave_every_lock(con, user.uid, now, caller=user)
    rt.flush_mirror()
    return flask.Response(status=204)


# ------------------------------------------------------------------------------------------------------- locks


@api.route("POST", "/devices/locks")
def create_lock(ctx: Ctx) -> Result:
    user = app_user(ctx)
    body = ctx.json(("name", "supports_open", "idempotency_key"))
    key = idempotency.from_request(ctx.request.headers.get("Idempotency-Key"), body.get("idempotency_key"))
    name = locks.parse_name(body.get("name"))
    supports_open = body.get("supports_open", False)
    if not isinstance(supports_open, bool):
        raise errors.BadRequest("supports_open must be true or false", code="invalid_supports_open")
    with rt.db.transaction() as con:
        lock_id, created = locks.create_once(con, user, name, supports_open, rt.settings.locks_per_owner, key)
        view = locks.view(con, lock_id, "owner")
        # a retry's lock paired since needs no code: one would re-pair it (attack run 40: a stale retry's did); nor is
        # it given one past the day's codes: its first answer's was counted, and a 429 said the lock was not made (the
        # app forgot the key, and the next try made a second lock: attack run 108)
        coded = created or (
            not view["provisioned"] and provisioning.codes_left(con, user, rt.settings.pairings_per_day)
        )
        issued = issue_code(con, lock_id, user) if coded else None
    rt.flush_mirror()
    code = {"code": issued[0], "expires_at": issued[1].isoformat()} if issued else None
    return {"lock": view, "provisioning": code}, 201 if created else 200


@api.route("GET", "/devices/locks", query=None)  # its page: pages.requested
def list_locks(ctx: Ctx) -> JsonBody:
    user = app_user(ctx)
    page = pages.requested(ctx.query(("limit", "page_token")))
    with rt.db.connection() as con:
        users.refuse_caller(con, user, left_since=False)  # as committed now: see list_members
        listed, next_page = locks.list_for_user(con, user.uid, rt.now(), page)
    return {"locks": listed, "next_page_token": next_page}


@api.route("GET", "/devices/locks/<lock_id>")
def get_lock(ctx: Ctx, lock_id: str) -> JsonBody:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with rt.db.connection() as con:
        users.refuse_caller(con, user, left_since=False)  # as committed now: see list_members
        now = rt.now()
        membership = members.require(con, lock_id, user.uid, now)
        return locks.view(con, lock_id, membership.role, membership.in_window(now))


@api.route("PATCH", "/devices/locks/<lock_id>")
def update_lock(ctx: Ctx, lock_id: str) -> JsonBody:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    update = locks.parse_update(ctx.json(("name", "voice_threshold")))
    with with_denials_audited(user.uid, lock_id, "lock.update"), rt.db.transaction() as con:
        members.require(con, lock_id, user.uid, rt.now(), at_least="owner", for_update=True)
        changes = locks.changes_to_make(con, lock_id, update)
        if changes:  # (the stored name alone, sent back: nothing to change)
            take_change(con, lock_id, user, lock_held_for_update=True)
            locks.update(con, lock_id, user.uid, changes)
        view = locks.view(con, lock_id, "owner")
    rt.flush_mirror()
    return view


@api.route("DELETE", "/devices/locks/<lock_id>")
def delete_lock(ctx: Ctx, lock_id: str) -> Result:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with with_denials_audited(user.uid, lock_id, "lock.delete"), rt.db.transaction() as con:
        now = rt.now()
        members.require(con, lock_id, user.uid, now, at_least="owner", for_update=True)
        users.require_recent_sign_in(user, now, "deleting a lock")
        users.refuse_caller(con, user)  # the lock's row held for update: see take_change
        locks.delete(con, lock_id, user.uid)
    rt.flush_mirror()
    return flask.Response(status=204)


@api.route("POST", "/devices/locks/<lock_id>/transfer")
def offer_transfer(ctx: Ctx, lock_id: str) -> Result:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    to_uid = members.parse_uid(ctx.json(("uid",)).get("uid"))
    with with_denials_audited(user.uid, lock_id, "lock.transfer_offer"), rt.db.transaction() as con:
        now = rt.now()
        members.require(con, lock_id, user.uid, now, at_least="owner", for_update=True)
        users.require_recent_sign_in(user, now, "offering a lock to someone")
        budget = change_budget(con, lock_id, user, lock_held_for_update=True)
        offered = transfers.offer(
            con, lock_id, user, to_uid, now, memberships_per_user=rt.settings.memberships_per_user, budget=budget
        )
    rt.flush_mirror()
    return offered, 202


@api.route("GET", "/devices/locks/<lock_id>/transfer")
def get_transfer(ctx: Ctx, lock_id: str) -> JsonBody:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with rt.db.connection() as con:
        users.refuse_caller(con, user, left_since=False)  # as committed now: see list_members
        now = rt.now()
        members.require(con, lock_id, user.uid, now)
        return transfers.standing(con, lock_id, user.uid, now)


@api.route("POST", "/devices/locks/<lock_id>/transfer/accept", body=False)
def accept_transfer(ctx: Ctx, lock_id: str) -> JsonBody:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with rt.db.transaction() as con:
        now = rt.now()
        taker = transfers.taker(con, lock_id, user.uid, now)
        transfers.accept(
            con,
            lock_id,
            user,
            taker,
            rt.settings.locks_per_owner,
            now,
            memberships_per_user=rt.settings.memberships_per_user,
        )
        view = locks.view(con, lock_id, "owner")
    rt.flush_mirror()
    return view


@api.route("DELETE", "/devices/locks/<lock_id>/transfer")
def withdraw_transfer(ctx: Ctx, lock_id: str) -> flask.Response:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with rt.db.transaction() as con:
        now = rt.now()
        members.require(con, lock_id, user.uid, now)
        users.refuse_caller(con, user)  # an ending: not budgeted, nothing counted
        transfers.withdraw(con, lock_id, user.uid, now)
    rt.flush_mirror()
    return flask.Response(status=204)


@api.route("POST", "/devices/locks/<lock_id>/provisioning", body=False)
def new_provisioning_code(ctx: Ctx, lock_id: str) -> Result:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with rt.db.transaction() as con:
        now = rt.now()
        members.require(con, lock_id, user.uid, now, at_least="owner")
        users.require_recent_sign_in(user, now, "pairing a lock again")  # the code re-pairs whatever redeems it
        code, expires = issue_code(con, lock_id, user)
    return {"code": code, "expires_at": expires.isoformat()}, 201


# ----------------------------------------------------------------------------------------------------- members


@api.route("GET", "/devices/locks/<lock_id>/members")
def list_members(ctx: Ctx, lock_id: str) -> JsonBody:
    user, lock_id, now = app_user(ctx), lock_param(lock_id), rt.now()
    with rt.db.connection() as con:
        # everyone's access and address: not on a minute-old picture (attack run 81); a member who has left every lock
        # is a member of none (404, from ``members.require``)
        users.refuse_caller(con, user, left_since=False)
        members.require(con, lock_id, user.uid, now, at_least="admin")
        listed = [m.public() for m in members.list_for_lock(con, lock_id) if m.active(now)]
        # each by the address Firebase Auth vouched for as theirs, beside the uid: those who manage the members
        # invite by address, and a listing by uid alone left them guessing whom a removal would remove
        known = users.addresses(con, [m["uid"] for m in listed])
        waiting, more = invitations.open_for_lock(con, lock_id, now, pages.first())
    return {
        "members": [{**m, "email": known.get(m["uid"])} for m in listed],
        "invitations": waiting,  # the first page: the rest from ``GET .../invitations``
        "invitations_next_page_token": more,
    }


@api.route("GET", "/devices/locks/<lock_id>/invitations", query=None)  # its page: pages.requested
def list_lock_invitations(ctx: Ctx, lock_id: str) -> JsonBody:
    user, lock_id, now = app_user(ctx), lock_param(lock_id), rt.now()
    page = pages.requested(ctx.query(("limit", "page_token")))
    with rt.db.connection() as con:
        users.refuse_caller(con, user, left_since=False)  # as the members' listing
        members.require(con, lock_id, user.uid, now, at_least="admin")
        waiting, more = invitations.open_for_lock(con, lock_id, now, page)
    return {"invitations": waiting, "next_page_token": more}


@api.route("POST", "/devices/locks/<lock_id>/members")
def add_member(ctx: Ctx, lock_id: str) -> Result:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    body = members.request_body(ctx.json(None), ("role", "uid", "email", "access", "idempotency_key"))
    key = idempotency.from_request(ctx.request.headers.get("Idempotency-Key"), body.get("idempotency_key"))
    role = members.parse_role(body.get("role"))
    access = members.parse_access(role, body)
    members.require_future(access, rt.now())
    invitee = invitations.parse_invitee(body)
    with with_denials_audited(user.uid, lock_id, "member.invite"), rt.db.transaction() as con:
        now = rt.now()
        actor = members.require(con, lock_id, user.uid, now, at_least="admin")
        budget = change_budget(con, lock_id, user)
        invitation = invitations.invite(
            con,
            lock_id,
            actor,
            invitee,
            role,
            access,
            rt.settings.invitation_ttl_s,
            now,
            members_per_lock=rt.settings.members_per_lock,
            signed_in=users.signed_in_at(user),
            budget=budget,
            key=key,
        )
    return {"invitation": invitation}, 202


@api.route("DELETE", "/devices/locks/<lock_id>/invitations/<invitation_id>")
def withdraw_invitation(ctx: Ctx, lock_id: str, invitation_id: str) -> Result:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with with_denials_audited(user.uid, lock_id, "member.withdraw_invitation"), rt.db.transaction() as con:
        now = rt.now()
        actor = members.require(con, lock_id, user.uid, now, at_least="admin")
        users.refuse_caller(con, user)  # an ending: not budgeted, nothing counted
        invitations.withdraw(con, lock_id, invitation_id, actor, now)
    return flask.Response(status=204)


@api.route("GET", "/devices/invitations", query=None)  # its page: pages.requested
def my_invitations(ctx: Ctx) -> JsonBody:
    user = app_user(ctx)
    page = pages.requested(ctx.query(("limit", "page_token")))
    # a listing's later pages take its first page's confirmation of the address a moment (``PacedAddresses``)
    confirm = functools.partial(listed_address, continuing=page.after is not None)
    return invitations.for_user(rt.db, user, rt.now(), confirm, page).public()


@api.route("POST", "/devices/invitations/<invitation_id>/accept", body=False)
def accept_invitation(ctx: Ctx, invitation_id: str) -> Result:
    user = invitations.answering_as(rt.db, invitation_id, app_user(ctx), current_address)
    with rt.db.transaction() as con:
        joined, first = invitations.accept(
            con,
            invitation_id,
            user,
            rt.now(),
            members_per_lock=rt.settings.members_per_lock,
            memberships_per_user=rt.settings.memberships_per_user,
        )
    rt.flush_mirror()
    return {"lock_id": joined.lock_id, "member": joined.public()}, 201 if first else 200


@api.route("POST", "/devices/invitations/<invitation_id>/decline", body=False)
def decline_invitation(ctx: Ctx, invitation_id: str) -> Result:
    user = invitations.answering_as(rt.db, invitation_id, app_user(ctx), current_address)
    with rt.db.transaction() as con:
        invitations.decline(con, invitation_id, user, rt.now())
    return flask.Response(status=204)


@api.route("PATCH", "/devices/locks/<lock_id>/members/<uid>")
def update_member(ctx: Ctx, lock_id: str, uid: str) -> JsonBody:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    body = members.request_body(ctx.json(None), ("role", "access"))
    role = members.parse_role(body.get("role"))
    access = members.parse_access(role, body)
    now = rt.now()
    with with_denials_audited(user.uid, lock_id, "member.update"), rt.db.transaction() as con:
        actor = members.require(con, lock_id, user.uid, now, at_least="admin")
        take_change(con, lock_id, user)
        target = members.require_target(con, lock_id, uid)
        updated = locks.update_member(
            con, lock_id, actor, target, role, access, now, members_per_lock=rt.settings.members_per_lock
        )
    rt.flush_mirror()
    return {"member": updated.public()}


@api.route("DELETE", "/devices/locks/<lock_id>/members/<uid>")
def remove_member(ctx: Ctx, lock_id: str, uid: str) -> Result:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    since = ctx.unmodified_since()
    with with_denials_audited(user.uid, lock_id, "member.revoke"), rt.db.transaction() as con:
        now = rt.now()
        # leaving is anyone's, also a membership ended by its expiry (it counts towards their memberships: attack
        # run 100); removing another is an admin's, judged before the target is looked up (a guest learnt who was a
        # member from 403 against 404: attack run 75)
        if uid == user.uid:
            actor = members.require_own(con, lock_id, user.uid)
            # as leaving every lock (DELETE /devices/me): a taken refresh token left her locks one by one (run 128)
            users.require_recent_sign_in(user, now, "leaving a lock")
        else:
            actor = members.require(con, lock_id, user.uid, now, at_least="admin")
        users.refuse_caller(con, user)  # a removal is never held to the budget: a member is let out at once
        target = members.require_target(con, lock_id, uid)
        # a removal sent again once she was removed and had joined again removes her no more (attack run 108)
        preconditions.refuse_if_changed(
            members.last_removed_at(con, lock_id, uid), since, "the membership", "member_changed"
        )
        locks.revoke_member(con, lock_id, actor, target, now)
    rt.flush_mirror()
    return flask.Response(status=204)


@api.route("DELETE", "/devices/locks/<lock_id>/voice-lockout")
def reset_voice_lockout(ctx: Ctx, lock_id: str) -> Result:
    """An owner or admin ends a voice lockout at their lock."""
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with with_denials_audited(user.uid, lock_id, "voice.reset_lockout"), rt.db.transaction() as con:
        members.require(con, lock_id, user.uid, rt.now(), at_least="admin")
        take_change(con, lock_id, user)
        lockout.clear(con, lock_id)
        audit.record(con, audit.user_actor(user.uid), "voice.reset_lockout", "ok", lock_id=lock_id)
    return flask.Response(status=204)


# ---------------------------------------------------------------------------------------------------- commands


@api.route("POST", "/devices/locks/<lock_id>/commands")
def create_command(ctx: Ctx, lock_id: str) -> Result:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    body = ctx.json(("action", "idempotency_key"))
    key = idempotency.from_request(ctx.request.headers.get("Idempotency-Key"), body.get("idempotency_key"))
    audited_action = f"command.{body['action']}" if body.get("action") in commands.ACTIONS else "command.invalid"
    with with_denials_audited(user.uid, lock_id, audited_action), rt.db.transaction() as con:
        # a retry's command was made in the window: judged again (``from_app`` answers it), one sent again once the
        # window had ended, its answer lost, was 403 while the unlock was made, perhaps carried out (attack run 108)
        retry = key is not None and commands.made_with_key(con, lock_id, user.uid, key)
        members.require(con, lock_id, user.uid, rt.now(), operate=not retry)
        issued = commands.from_app(
            con,
            lock_id=lock_id,
            issuer=user,
            action=body.get("action"),
            signing_key_b64=rt.settings.signing_key(),
            ttl_s=rt.settings.command_ttl_s,
            idempotency_key=key,
            budget=commands.AppBudget(
                rt.settings.app_commands_per_minute,
                rt.settings.app_commands_per_account_minute,
                rt.settings.lock_commands_per_minute,
            ),
        )
    rt.flush_mirror()
    return {"command": issued.command}, 202 if issued.created else 200


@api.route("GET", "/devices/locks/<lock_id>/commands/<command_id>")
def get_command(ctx: Ctx, lock_id: str, command_id: str) -> JsonBody:
    user, lock_id = app_user(ctx), lock_param(lock_id)
    with rt.db.connection() as con:
        users.refuse_caller(con, user, left_since=False)  # as committed now: see list_members
        now = rt.now()
        membership = members.require(con, lock_id, user.uid, now)
        return {"command": commands.present(commands.seen_by(con, lock_id, command_id, user.uid, membership.role), now)}


# ------------------------------------------------------------------------------------------------ lock-facing


@api.route("POST", "/devices/provision", query=None, caller=None)  # a lock's
def redeem_provisioning_code(ctx: Ctx) -> Result:
    # fields it does not name are let be, as in every body a lock sends but its audio: a lock's firmware may be newer
    # than this function, and a refused renewal would leave it offline once its certificate expires
    credentials = provisioning.pair(
        rt.db,
        ctx.client_network,
        ctx.json(None),
        certificate_issuing(),
        rt.settings.pairing_failures_per_hour,
    )
    rt.flush_mirror()
    return credentials.public(
        rt.settings.mqtt_public_host, rt.settings.mqtt_public_port, server_public_key(), rt.settings.command_ttl_s
    ), 201


@api.route("GET", "/devices/lock/config", query=None, body=True, caller=None)  # a lock's, signed
def lock_config(ctx: Ctx) -> JsonBody:
    body = ctx.body()
    signer = lock_auth.signed_by(rt.db, ctx.request.headers, "GET", ctx.target, body, rt.settings)
    with rt.db.transaction() as con:
        config = locks.lock_config(con, signer)
    return {
        **config,
        "server_public_key": server_public_key(),
        "command_ttl_s": rt.settings.command_ttl_s,
        "topics": provisioning.lock_topics(config["mqtt_identity"]),
    }


@api.route("GET", "/devices/lock-ca/crl", query=None, body=True, caller=None)  # a broker host's
def lock_ca_crl(ctx: Ctx) -> flask.Response:
    """The lock CA's revocation list (public, as CRLs are): what the broker reloads every minute; signed again only
    when the revocations change (``lock_certs.CrlCache``), and asked which they are once at a time
    (``revocations``: the callers asking while one read runs share the next, begun after each asked)."""

    def signed() -> str:  # at the time its entries were read, on the database's clock (``revoked_certificates``)
        with rt.db.connection() as con:
            return lock_certs.crl(lock_ca(), *provisioning.revoked_certificates(con))

    pem = crls.get(revocations.get(), rt.now(), signed)
    return flask.Response(pem, mimetype="application/pkix-crl", headers={"Cache-Control": "max-age=30"})


@api.route("POST", "/devices/lock/certificate", query=None, caller=None)  # a lock's
def renew_lock_certificate(ctx: Ctx) -> Result:
    """A lock renews its broker certificate (before expiry; a lock paired with a broker password gets its first)."""
    body = ctx.body(16_384)
    signer = lock_auth.signed_by(rt.db, ctx.request.headers, "POST", ctx.target, body, rt.settings)
    with rt.db.transaction() as con:
        certificate = provisioning.renew(
            con,
            signer,
            parse_json_object(body, None).get("csr"),  # other fields let be: see redeem_provisioning_code
            certificate_issuing(),
        )
    return {"client_id": certificate.identity, **certificate.public()}, 201


# ------------------------------------------------------------------------------------------------ relay-facing


def require_relay(ctx: Ctx) -> None:
    if not rt.settings.relay_routes:  # the public deployment does not serve the relay's endpoints at all
        raise errors.NotFound(f"no route for {ctx.request.path}", code="no_route")
    auth.check_service_token(ctx.service_token(), rt.settings.service_token)


@api.route("POST", "/devices/relay/events", query=None, caller=None)
def relay_events(ctx: Ctx) -> JsonBody:
    require_relay(ctx)
    # fields it does not name are let be: the relay splits a refused batch down to single events and drops them, so
    # a relay deployed ahead of this function with a new field would lose every event it forwards; for the same
    # reason each event's text (a NUL byte a lock sent) is judged with the event, not for the batch
    # nor is the batch held to a count of values: each lock's payload is a string in it, counted and judged alone
    events = ctx.json(None, topics.MAX_BATCH_BYTES, check_strings=False, most_values=None).get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= topics.MAX_EVENTS_PER_BATCH:
        most = topics.MAX_EVENTS_PER_BATCH
        raise errors.BadRequest(f"events must be a list of 1 to {most} items", code="invalid_events")
    with rt.db.transaction() as con:
        outcomes = lock_events.apply_batch(con, events, rt.now(), lock_events.FeedBudget.of(rt.settings))
    if not rt.settings.restore_pending:  # (a restored database's queue waits for its run: ``relay_flush``)
        rt.flush_mirror_soon()  # the relay's next batch need not wait for Firestore: the rows are queued, not lost
    return {"results": [o.as_dict() for o in outcomes]}


@api.route("POST", "/devices/relay/flush", query=None, caller=None)
def relay_flush(ctx: Ctx) -> JsonBody:
    """The relay's periodic upkeep and mirror flush; 503 ``restore_in_progress`` while a restored database is brought
    back (``restored.refuse_changes``): its queue, as restored, wrote the live view as it was at the restore point
    (a member removed since could read the lock again) until the run's last step wrote it again (attack run 89)."""
    require_relay(ctx)
    restored.refuse_changes(rt.db, rt.settings.restore_pending)
    raw = ctx.body(topics.MAX_PAYLOAD_BYTES)  # optional: a relay from before its fields sends none
    broker = upkeep.broker_seen(parse_json_object(raw, None) if raw else {}, rt.now())
    try:  # the first failure answers
        access_due = upkeep.every_step(rt.db, accounts_directory, rt.settings, rt.now, broker)
    finally:
        written = rt.flush_mirror(force=True)  # what the steps that ran queued
    return {"written": written, "pending": rt.mirror.pending(), "access_due": access_due}


# --------------------------------------------------------------------------------------------------- operators


# an operator's account and session are checked as they stand now, in the request's own transaction: the instance's
# memory of the account let a disabled operator act for a minute (a review; attack run 27 for app users)


@api.route("GET", "/devices/operator/ownerless-locks")
def list_ownerless_locks(ctx: Ctx) -> JsonBody:
    user = app_user(ctx)
    ownerless.require_operator(user, accounts_directory, rt.now())
    with rt.db.connection() as con:
        users.refuse_caller(con, user)
        return {"locks": ownerless.listed(con, rt.now())}


@api.route("POST", "/devices/operator/locks/<lock_id>/owner")
def hand_over_ownerless_lock(ctx: Ctx, lock_id: str) -> JsonBody:
    user = app_user(ctx)
    ownerless.require_operator(user, accounts_directory, rt.now())
    lock_id = lock_param(lock_id)
    to_uid = members.parse_uid(ctx.json(("uid",)).get("uid"))
    with rt.db.transaction() as con:
        users.refuse_caller(con, user)
        ownerless.hand_over(con, lock_id, to_uid, user.uid, rt.settings.locks_per_owner, rt.now())
        view = locks.view(con, lock_id, "owner")
    rt.flush_mirror()
    return view


@api.route("DELETE", "/devices/operator/locks/<lock_id>")
def delete_ownerless_lock(ctx: Ctx, lock_id: str) -> flask.Response:
    user = app_user(ctx)
    ownerless.require_operator(user, accounts_directory, rt.now())
    lock_id = lock_param(lock_id)
    with rt.db.transaction() as con:
        users.refuse_caller(con, user)
        ownerless.delete(con, lock_id, user.uid)
    rt.flush_mirror()
    return flask.Response(status=204)


@api.route("POST", "/devices/operator/restored", body=False)
def database_restored(ctx: Ctx) -> JsonBody:
    """The database was restored to an earlier point: do again what the restore took back (``restored.do_again``; call
    again while it says ``more``)."""
    user = app_user(ctx)
    ownerless.require_operator(user, accounts_directory, rt.now())
    with rt.db.connection() as con:
        users.refuse_caller(con, user)
    report = restored.do_again(rt.db, rt.mirror.client(), audit.operator_actor(user.uid))
    rt.flush_mirror()
    return report.public()


def issue_code(con: Connection, lock_id: str, user: auth.User) -> tuple[str, dt.datetime]:
    """A pairing code for ``lock_id``, issued to ``user`` on the deployment's terms."""
    settings = rt.settings
    return provisioning.issue(con, lock_id, user, settings.provisioning_ttl_s, settings.pairings_per_day)


def current_address(user: auth.User) -> auth.User:
    return accounts.with_current_address(user, accounts_directory)


@functools.cache
def accounts_directory() -> accounts.IdentityToolkit:
    """Firebase Auth, asked which users' accounts still exist (made on the first flush, not at a cold start)."""
    return accounts.directory_for(rt.settings.project_id, rt.settings.auth_emulator_host)


listed_address = accounts.PacedAddresses(accounts_directory)


@functions_framework.http
def devices(request: flask.Request) -> flask.Response:
    return api(request)


lockwise.core.loading.loaded()  # last: what loaded above is kept out of every later collection
