"""The changes that give someone a door need a sign-in of the last hour (``users.require_recent_sign_in``).

A refresh token never expires unless revoked: one taken from the owner's phone or laptop keeps minting ID tokens
whose ``auth_time`` stays at the sign-in of months ago. Such a session enrolled its holder's voice in the owner's
account (every door of hers then opened to him, as her), offered her lock to a member he controls, re-paired it or
deleted it (attack run 121's leftover: run 121 asked it of operators alone)."""

from __future__ import annotations

import time
from typing import Any

from tests.devices_world import World, bearer, sign_in
from tests.integration.test_devices_flows import emulator_token
from tests.integration.test_gone_accounts import admin_call


def _code(resp: Any) -> tuple[int, str | None]:
    body = resp.get_json() or {}
    return resp.status_code, (body.get("error") or {}).get("code")


def test_a_session_signed_in_to_long_ago_gives_no_door_away_until_its_user_signs_in_again(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    devices, embed, lock = clients["devices"], clients["embed"], world.lock_id
    owner = world.uid("owner")
    # the account's sessions valid since long before (Firebase sets validSince at its making): the old sign-in is
    # one the account still takes, refreshed hourly since
    long_ago = int(time.time()) - 30 * 24 * 3600
    admin_call(stack_env, "accounts:update", {"localId": owner, "validSince": str(long_ago - 60)})
    old = bearer(emulator_token(owner, signed_in_age_s=int(time.time()) - long_ago))
    assert devices.get(f"/devices/locks/{lock}", headers=old).status_code == 200  # reading: as before
    refused = {
        "offer": devices.post(f"/devices/locks/{lock}/transfer", json={"uid": world.uid("admin")}, headers=old),
        "pair again": devices.post(f"/devices/locks/{lock}/provisioning", headers=old),
        "delete": devices.delete(f"/devices/locks/{lock}", headers=old),
        "enroll": embed.put("/embed/enrollment", json={"samples": []}, headers=old),  # refused before its body
    }
    for what, resp in refused.items():
        assert _code(resp) == (401, "recent_sign_in_required"), (what, resp.get_json())
        assert "sign in again" in resp.get_json()["error"]["message"]
    with_an_hour = bearer(emulator_token(owner, signed_in_age_s=3000))  # 50 minutes ago: taken
    assert devices.post(f"/devices/locks/{lock}/provisioning", headers=with_an_hour).status_code == 201
    # signed in again (the app's reauthentication): a fresh session does each
    fresh = bearer(sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["owner"]["email"]))
    offered = devices.post(f"/devices/locks/{lock}/transfer", json={"uid": world.uid("admin")}, headers=fresh)
    assert offered.status_code == 202, offered.get_json()
    assert devices.delete(f"/devices/locks/{lock}", headers=fresh).status_code == 204


def test_a_session_signed_in_to_long_ago_cannot_shut_its_user_out_either(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """What Firebase Auth asks a recent sign-in for before it deletes an account: leaving every lock and deleting
    voice data. From a taken refresh token each shut the member out: off every lock, for its admins to invite her
    again, and her voice gone until she enrolled again. Refused, nothing is changed."""
    devices, embed, lock = clients["devices"], clients["embed"], world.lock_id
    member = world.uid("member")
    long_ago = int(time.time()) - 30 * 24 * 3600
    admin_call(stack_env, "accounts:update", {"localId": member, "validSince": str(long_ago - 60)})
    old = bearer(emulator_token(member, signed_in_age_s=int(time.time()) - long_ago))
    refused = {
        "leave every lock": devices.delete("/devices/me", headers=old),
        "delete voice data": embed.delete("/embed/enrollment", headers=old),
    }
    for what, resp in refused.items():
        assert _code(resp) == (401, "recent_sign_in_required"), (what, resp.get_json())
    fresh = bearer(sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["member"]["email"]))
    assert devices.get(f"/devices/locks/{lock}", headers=fresh).status_code == 200  # still a member
    assert embed.delete("/embed/enrollment", headers=fresh).status_code == 204
    assert devices.delete("/devices/me", headers=fresh).status_code == 204
    assert devices.get(f"/devices/locks/{lock}", headers=fresh).status_code == 404


def test_a_session_signed_in_to_long_ago_cannot_leave_her_locks_one_by_one_either(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 128, on 22a17af: ``DELETE /devices/me`` needed a recent sign-in, but leaving one lock (``DELETE
    .../members/{her own uid}``, anyone's) did not, so a taken refresh token listed her locks and left each, as the
    leaving of every lock did (204 each, her admins to invite her again). Refused now, nothing changed; another's
    removal by an admin stays as it was."""
    devices, lock = clients["devices"], world.lock_id
    member = world.uid("member")
    long_ago = int(time.time()) - 30 * 24 * 3600
    admin_call(stack_env, "accounts:update", {"localId": member, "validSince": str(long_ago - 60)})
    old = bearer(emulator_token(member, signed_in_age_s=int(time.time()) - long_ago))
    listed = devices.get("/devices/locks", headers=old)
    assert listed.status_code == 200 and lock in [each["id"] for each in listed.get_json()["locks"]]
    left = devices.delete(f"/devices/locks/{lock}/members/{member}", headers=old)
    assert _code(left) == (401, "recent_sign_in_required"), left.get_json()
    assert devices.get(f"/devices/locks/{lock}", headers=old).status_code == 200  # still a member
    fresh = bearer(sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["member"]["email"]))
    assert devices.delete(f"/devices/locks/{lock}/members/{member}", headers=fresh).status_code == 204
    assert devices.get(f"/devices/locks/{lock}", headers=fresh).status_code == 404
    removed = devices.delete(f"/devices/locks/{lock}/members/{world.uid('guest_in')}", headers=world.headers("owner"))
    assert removed.status_code == 204, removed.get_json()
