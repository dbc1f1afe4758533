"""Decisions made on an instance's picture of the caller's account (``Runtime.app_user``'s ``RECORDED_USER_TTL_S``:
up to a minute old): what changes or tells the account's own data reads it as committed now (attack run 81). Each
test makes the instance remember the account with a request made before the change, makes the change (and lets the
relay's flush read it where that is the mechanism), then uses that instance."""

from __future__ import annotations

import random
from typing import Any

from lockwise.core.runtime import get_runtime
from tests.devices_world import World, bearer, google_sign_in, sign_in
from tests.integration.test_devices_live_view import rest_get
from tests.integration.test_gone_accounts import admin_call, flush, recheck_now, revoke_sessions
from tests.integration.test_voice import enroll


def code(resp: Any) -> tuple[int, str]:
    body = resp.get_json() or {}
    return resp.status_code, (body.get("error") or {}).get("code", "")


def voiceprints_of(uid: str) -> int:
    with get_runtime("devices").db.connection() as con:
        return int(con.run("SELECT count(*) FROM voiceprints WHERE user_uid = :u", u=uid)[0][0])


def test_a_revoked_session_erases_no_voice_while_the_embed_instance_remembers_the_account(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """A stolen phone's session, signed out everywhere by its owner and found so by the flush, erased the owner's
    voice (204) on an embed instance that had seen the account within the minute: ``DELETE /embed/enrollment`` reads
    only ``token_outdated`` as committed now, not the account's ``validSince`` (nor disabled/deleted)."""
    owner = world.uid("owner")
    assert enroll(clients, world.accounts["owner"]).status_code == 201  # the embed instance remembers the owner
    assert voiceprints_of(owner) == 1
    revoke_sessions(stack_env, owner)  # "sign out everywhere": the thief's session is the one on the phone
    recheck_now(owner)
    flush(clients, stack_env)  # validSince read: every fresh check refuses the stolen token now
    stolen = world.headers("owner")
    unlock = clients["devices"].post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=stolen
    )
    assert code(unlock) == (401, "token_revoked")  # (the devices instance's fresh check: hold_caller)
    assert code(enroll(clients, world.accounts["owner"], gain=0.8)) == (401, "token_revoked")  # embed's, same instance
    erased = clients["embed"].delete("/embed/enrollment", headers=stolen)
    assert code(erased) == (401, "token_revoked"), code(erased)
    assert voiceprints_of(owner) == 1


def test_a_disabled_account_erases_no_voice_while_the_embed_instance_remembers_it(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """The same for an account found disabled (its leftover token): enroll refuses it, the erasure does not."""
    member = world.uid("member")
    assert enroll(clients, world.accounts["member"]).status_code == 201
    admin_call(stack_env, "accounts:update", {"localId": member, "disableUser": True})
    recheck_now(member)
    flush(clients, stack_env)
    assert code(enroll(clients, world.accounts["member"], gain=0.8)) == (401, "account_disabled")
    erased = clients["embed"].delete("/embed/enrollment", headers=world.headers("member"))
    assert code(erased) == (401, "account_disabled"), code(erased)


def test_a_revoked_or_disabled_token_declines_no_invitation_while_the_instance_remembers_the_account(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """``POST /devices/invitations/{id}/decline`` read nothing of the caller's account as committed now: a revoked
    session (and a disabled account's leftover token) declined an invitation (204, ``declined_by`` recorded, the audit
    log's ``member.decline_invitation`` in the account's name) that the same token could not accept (401)."""
    devices, lock = clients["devices"], world.lock_id
    stranger = world.uid("stranger")
    sent = devices.post(
        f"/devices/locks/{lock}/members", json={"uid": stranger, "role": "member"}, headers=world.headers("owner")
    )
    assert sent.status_code == 202, sent.get_json()
    invitation = sent.get_json()["invitation"]["id"]
    listed = devices.get("/devices/invitations", headers=world.headers("stranger"))  # remembered
    assert [i["id"] for i in listed.get_json()["invitations"]] == [invitation]
    revoke_sessions(stack_env, stranger)
    recheck_now(stranger)
    flush(clients, stack_env)
    taken = devices.post(f"/devices/invitations/{invitation}/accept", headers=world.headers("stranger"))
    assert code(taken) == (401, "token_revoked")  # the fresh check, in accept
    declined = devices.post(f"/devices/invitations/{invitation}/decline", headers=world.headers("stranger"))
    assert code(declined) == (401, "token_revoked"), code(declined)
    with get_runtime("devices").db.connection() as con:
        assert con.run("SELECT declined_by FROM invitations WHERE id = CAST(:i AS uuid)", i=invitation) == [[None]]


def test_the_token_of_whoever_made_an_account_declines_nothing_once_its_addresss_owner_took_it_over(
    clients: dict[str, Any], world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run 79's class on the decline: the maker's token (no verified address), on a devices instance that had
    not seen the takeover, declined the invitation the lock's owner sent to the account, now its address's owner's
    (204), though the takeover had been seen on the embed instance."""
    devices = clients["devices"]
    address = f"victim-{random.getrandbits(32):08x}@example.com"
    made_in_advance = sign_up(address)
    uid = made_in_advance["localId"]
    assert devices.get("/devices/invitations", headers=bearer(made_in_advance)).status_code == 200  # remembered here
    sent = devices.post(
        f"/devices/locks/{world.lock_id}/members", json={"uid": uid, "role": "member"}, headers=world.headers("owner")
    )
    assert sent.status_code == 202
    invitation = sent.get_json()["invitation"]["id"]
    victim = google_sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], address)
    assert victim["localId"] == uid
    assert clients["embed"].get("/embed/enrollment", headers=bearer(victim)).status_code == 200  # another instance
    declined = devices.post(f"/devices/invitations/{invitation}/decline", headers=bearer(made_in_advance))
    assert code(declined) == (401, "token_outdated"), code(declined)
    accepted = devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(victim))
    assert accepted.status_code == 201, accepted.get_json()


def test_a_disabled_admin_reads_no_member_list_while_the_instance_remembers_the_account(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Reads took the instance's picture (up to a minute old): a disabled admin, found so by the flush, still read
    the member list and the open invitations (200), the lock, and its commands; writes were refused at once. Every
    private read now takes the account as committed."""
    devices, lock, admin = clients["devices"], world.lock_id, world.uid("admin")
    made = devices.post(f"/devices/locks/{lock}/commands", json={"action": "lock"}, headers=world.headers("admin"))
    assert made.status_code == 202, made.get_json()
    assert devices.get(f"/devices/locks/{lock}", headers=world.headers("admin")).status_code == 200  # remembered
    admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": True})
    recheck_now(admin)
    flush(clients, stack_env)
    invite = {"uid": world.uid("stranger"), "role": "guest"}
    wrote = devices.post(f"/devices/locks/{lock}/members", json=invite, headers=world.headers("admin"))
    assert code(wrote) == (401, "account_disabled")
    listed = devices.get(f"/devices/locks/{lock}/members", headers=world.headers("admin"))
    assert code(listed) == (401, "account_disabled"), listed.get_json()
    for path in (
        "/devices/locks",
        f"/devices/locks/{lock}",
        f"/devices/locks/{lock}/transfer",
        f"/devices/locks/{lock}/commands/{made.get_json()['command']['id']}",
    ):
        read = devices.get(path, headers=world.headers("admin"))
        assert code(read) == (401, "account_disabled"), (path, read.get_json())


def test_a_revoked_session_reads_no_voice_status_while_the_embed_instance_remembers_the_account(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """``GET /embed/enrollment`` (whether and when the owner enrolled, where their voice is set aside) read by a
    session signed out everywhere, the flush having read it, on the embed instance that saw the account."""
    owner = world.uid("owner")
    assert enroll(clients, world.accounts["owner"]).status_code == 201
    revoke_sessions(stack_env, owner)
    recheck_now(owner)
    flush(clients, stack_env)
    read = clients["embed"].get("/embed/enrollment", headers=world.headers("owner"))
    assert code(read) == (401, "token_revoked"), read.get_json()


def test_an_unlock_made_by_a_session_revoked_since_is_not_delivered(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """A command outlived the session that made it: ``members.issuer_gone_sql`` withdrew a pending command of an
    account found disabled or deleted (attack run 36), not one whose session was revoked since, though pairing codes,
    invitations and ownership offers fall with their session (``users.vouches_sql``). The thief taps unlock, the
    owner signs out everywhere, the flush reads it: the unlock still went out (lock offline, back within the TTL).
    It falls with its session now (``commands.issuer_signed_in_at``, migration 0070)."""
    from mqtt_relay import outbox

    member = world.uid("member")
    made = clients["devices"].post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("member")
    )
    assert made.status_code == 202, made.get_json()
    command = made.get_json()["command"]["id"]
    revoke_sessions(stack_env, member)
    recheck_now(member)
    flush(clients, stack_env)
    again = clients["devices"].post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("member")
    )
    assert code(again) == (401, "token_revoked")  # a new one is refused
    sent: list[tuple[str, str, int]] = []

    def publish(messages: list[tuple[str, str, int]]) -> list[bool]:
        sent.extend(messages)
        return [True] * len(messages)

    outbox.deliver_due(get_runtime("devices").db, publish, resend_after_s=5)
    with get_runtime("devices").db.connection() as con:
        status = con.run("SELECT status, last_error FROM commands WHERE id = CAST(:i AS uuid)", i=command)[0]
    assert status[0] == "failed" and not sent, (status, len(sent))


def test_the_live_views_user_document_refuses_a_revoked_session_and_a_disabled_account(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """``users/{uid}`` (the voice enrollment's status) was read by ``request.auth.uid == uid`` alone: the lock's
    documents refuse a revoked session (``sessions_since_s``) and a disabled account (its access ended), this one
    let both read it for the rest of the token's hour. The rules read the account's standing now
    (``mirror.standing``)."""
    host, owner, member = stack_env["FIRESTORE_EMULATOR_HOST"], world.uid("owner"), world.uid("member")
    assert enroll(clients, world.accounts["owner"]).status_code == 201
    assert enroll(clients, world.accounts["member"], speaker="june").status_code == 201
    get_runtime("devices").flush_mirror(force=True)
    get_runtime("embed").flush_mirror(force=True)
    stolen = world.accounts["owner"]["idToken"]
    assert rest_get(host, f"users/{owner}", stolen) == 200
    revoke_sessions(stack_env, owner)
    admin_call(stack_env, "accounts:update", {"localId": member, "disableUser": True})
    recheck_now(owner, member)
    flush(clients, stack_env)
    flush(clients, stack_env)  # the access documents mirrored again
    get_runtime("devices").flush_mirror(force=True)
    assert rest_get(host, f"locks/{world.lock_id}", stolen) == 403  # the lock's document refuses it
    again = sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["owner"]["email"])
    assert rest_get(host, f"users/{owner}", again["idToken"]) == 200
    refused = {
        "revoked session": rest_get(host, f"users/{owner}", stolen),
        "disabled account": rest_get(host, f"users/{member}", world.accounts["member"]["idToken"]),
    }
    assert refused == {"revoked session": 403, "disabled account": 403}, refused


def mirror_all() -> None:
    for name in ("devices", "embed"):
        get_runtime(name).flush_mirror(force=True)


def test_an_account_enabled_again_reads_its_user_document(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """The standing document the rules read for ``users/{uid}`` lets the account back in once it is enabled again
    and signs in (attack run 82)."""
    host, member = stack_env["FIRESTORE_EMULATOR_HOST"], world.uid("member")
    assert enroll(clients, world.accounts["member"], speaker="june").status_code == 201
    mirror_all()
    admin_call(stack_env, "accounts:update", {"localId": member, "disableUser": True})
    recheck_now(member)
    flush(clients, stack_env)
    mirror_all()
    assert rest_get(host, f"users/{member}", world.accounts["member"]["idToken"]) == 403
    admin_call(stack_env, "accounts:update", {"localId": member, "disableUser": False})
    recheck_now(member)
    flush(clients, stack_env)
    mirror_all()
    again = sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["member"]["email"])
    assert rest_get(host, f"users/{member}", again["idToken"]) == 200


def test_the_apps_account_deletion_goes_through(clients: dict[str, Any], world: World) -> None:
    """The app's account deletion (``DELETE /devices/me``, then the voice's status and erasure, then the invitations)
    with one token: the reads as committed now take the account's leaving as no refusal (attack run 82)."""
    headers = world.headers("member")
    assert enroll(clients, world.accounts["member"], speaker="june").status_code == 201
    left = clients["devices"].delete("/devices/me", headers=headers)
    assert left.status_code == 204, left.get_json()
    status = clients["embed"].get("/embed/enrollment", headers=headers)
    assert status.status_code == 200, status.get_json()
    erased = clients["embed"].delete("/embed/enrollment", headers=headers)
    assert erased.status_code == 204, erased.get_json()
    assert clients["devices"].get("/devices/invitations", headers=headers).status_code == 200
