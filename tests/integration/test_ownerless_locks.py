"""Locks whose owner's account is gone (deleted or disabled): nobody could pair them again, transfer or delete them
(attack run 47: the README said an operator transfers or deletes one, and nothing let them). Operators (the
``lockwise_operator`` custom claim) list them, hand one to a member, or delete one; a lock whose owner's account
stands is not theirs to touch."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lockwise.core.runtime import get_runtime
from tests.devices_world import World, bearer, build_world, sign_in
from tests.integration.test_gone_accounts import admin_call, delete_account, error_code, flush, recheck_now


@pytest.fixture
def clients(stack_env: dict[str, str], make_client: Any) -> dict[str, Any]:
    return {"devices": make_client("devices")}


@pytest.fixture
def world(clients: dict[str, Any], sign_up: Any) -> World:
    return build_world(clients["devices"], sign_up)


@pytest.fixture
def operator(stack_env: dict[str, str], sign_up: Any, clients: dict[str, Any]) -> dict[str, str]:
    """The headers of an operator: an account given the custom claim with the Admin SDK, signed in again since."""
    account = sign_up()
    assert clients["devices"].get("/devices/me", headers=bearer(account)).status_code == 200
    claims = json.dumps({"lockwise_operator": True})
    admin_call(stack_env, "accounts:update", {"localId": account["localId"], "customAttributes": claims})
    return bearer(sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], account["email"]))


def paths(world: World) -> tuple[str, str, str]:
    base = f"/devices/operator/locks/{world.lock_id}"
    return "/devices/operator/ownerless-locks", f"{base}/owner", base


def test_only_an_operator_and_only_a_lock_whose_owner_is_gone(
    clients: dict[str, Any], world: World, operator: dict[str, str]
) -> None:
    devices = clients["devices"]
    listing, owner_path, lock_path = paths(world)
    for role in ("owner", "admin", "stranger"):  # no operator, not even the lock's own owner
        headers = world.headers(role)
        assert error_code(devices.get(listing, headers=headers)) == (403, "not_an_operator"), role
        handed = devices.post(owner_path, json={"uid": world.uid("admin")}, headers=headers)
        assert error_code(handed) == (403, "not_an_operator"), role
        assert error_code(devices.delete(lock_path, headers=headers)) == (403, "not_an_operator"), role
    assert devices.get(listing, headers=operator).get_json() == {"locks": []}
    handed = devices.post(owner_path, json={"uid": world.uid("admin")}, headers=operator)
    assert error_code(handed) == (409, "owner_present")
    assert error_code(devices.delete(lock_path, headers=operator)) == (409, "owner_present")
    view = devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("owner")).get_json()
    assert view["role"] == "owner"


def test_a_deleted_owners_lock_is_handed_to_a_member_who_then_manages_it(
    clients: dict[str, Any], world: World, operator: dict[str, str], stack_env: dict[str, str]
) -> None:
    devices, owner = clients["devices"], world.uid("owner")
    listing, owner_path, _ = paths(world)
    delete_account(stack_env, owner)
    flush(clients, stack_env)
    (found,) = devices.get(listing, headers=operator).get_json()["locks"]
    assert (found["id"], found["owner_uid"], found["owner_account"]) == (world.lock_id, owner, "deleted")
    roles = {m["uid"]: m["role"] for m in found["members"]}
    assert roles[world.uid("admin")] == "admin" and owner not in roles and world.uid("revoked") not in roles
    assert error_code(devices.post(owner_path, json={"uid": world.uid("stranger")}, headers=operator)) == (
        404,
        "member_not_found",
    )
    handed = devices.post(owner_path, json={"uid": world.uid("admin")}, headers=operator)
    assert handed.status_code == 200 and handed.get_json()["role"] == "owner", handed.get_json()
    issued = devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=world.headers("admin"))
    assert issued.status_code == 201, issued.get_json()  # the new owner pairs it again
    flush(clients, stack_env)  # the deleted account's clean-up, done again: it owns nothing now
    listed = devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("admin")).get_json()
    assert owner not in {m["uid"] for m in listed["members"]}
    assert devices.get(listing, headers=operator).get_json() == {"locks": []}
    with get_runtime("devices").db.connection() as con:
        actors = con.run(
            "SELECT actor FROM audit_log WHERE lock_id = CAST(:l AS uuid) AND action = 'lock.transfer'", l=world.lock_id
        )
    assert [a for (a,) in actors] == [f"operator:{operator_uid(operator, devices)}"]


def test_a_disabled_owners_lock_is_handed_over_or_deleted_and_the_owner_kept_as_an_admin(
    clients: dict[str, Any], world: World, operator: dict[str, str], stack_env: dict[str, str]
) -> None:
    devices, owner = clients["devices"], world.uid("owner")
    _, owner_path, lock_path = paths(world)
    admin_call(stack_env, "accounts:update", {"localId": world.uid("member"), "disableUser": True})
    admin_call(stack_env, "accounts:update", {"localId": owner, "disableUser": True})
    recheck_now(owner, world.uid("member"))
    flush(clients, stack_env)
    handed = devices.post(owner_path, json={"uid": world.uid("member")}, headers=operator)
    assert error_code(handed) == (409, "member_account_unusable")
    handed = devices.post(owner_path, json={"uid": world.uid("guest_in")}, headers=operator)
    assert handed.status_code == 200, handed.get_json()
    listed = devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("guest_in")).get_json()
    assert {m["uid"]: m["role"] for m in listed["members"]}[owner] == "admin"  # back in if enabled again
    assert error_code(devices.delete(lock_path, headers=operator)) == (409, "owner_present")  # the guest owns it now
    admin_call(stack_env, "accounts:update", {"localId": world.uid("guest_in"), "disableUser": True})
    recheck_now(world.uid("guest_in"))
    flush(clients, stack_env)
    assert devices.delete(lock_path, headers=operator).status_code == 204
    assert error_code(devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("admin"))) == (
        404,
        "lock_not_found",
    )


def operator_uid(headers: dict[str, str], devices: Any) -> str:
    return str(devices.get("/devices/me", headers=headers).get_json()["uid"])
