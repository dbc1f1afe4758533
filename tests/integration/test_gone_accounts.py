"""Accounts deleted outside the app (the Firebase console, the Admin SDK), found by the relay's flush asking the real
Auth emulator: an attack run found such an account still a member everywhere, its voice still opening the door."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from lockwise.core import accounts
from lockwise.core.runtime import get_runtime
from tests.conftest import PROJECT_ID
from tests.devices_world import World, build_world
from tests.integration.test_voice import enroll, signed_verify, take
from tests.voices import spoken, wav


@pytest.fixture
def clients(stack_env: dict[str, str], make_client: Any) -> dict[str, Any]:
    return {name: make_client(name) for name in ("devices", "embed", "verify")}


@pytest.fixture
def world(clients: dict[str, Any], sign_up: Any) -> World:
    return build_world(clients["devices"], sign_up)


def delete_account(stack_env: dict[str, str], uid: str) -> None:
    """As the Firebase console or the Admin SDK deletes an account: nothing of the back-end is asked."""
    req = urllib.request.Request(
        f"http://{stack_env['FIREBASE_AUTH_EMULATOR_HOST']}/identitytoolkit.googleapis.com/v1/projects/{PROJECT_ID}"
        "/accounts:delete",
        data=json.dumps({"localId": uid}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer owner"},
    )
    urllib.request.urlopen(req, timeout=10).close()


def flush(clients: dict[str, Any], stack_env: dict[str, str]) -> None:
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert clients["devices"].post("/devices/relay/flush", headers=service).status_code == 200


def users_row(uid: str) -> tuple[bool, bool, str | None]:
    """(checked, gone, email) of a user's row."""
    with get_runtime("devices").db.connection() as con:
        checked, gone, email = con.run(
            "SELECT account_checked_at IS NOT NULL, account_gone_at IS NOT NULL, email FROM users WHERE uid = :u",
            u=uid,
        )[0]
    return bool(checked), bool(gone), email


def test_an_account_deleted_outside_the_app_opens_no_door_and_leaves_the_locks_it_does_not_own(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    assert enroll(clients, world.accounts["owner"]).status_code == 201
    opened = signed_verify(clients, world, wav(take())).get_json()
    assert (opened["decision"], opened["member_uid"]) == ("accepted", world.uid("owner"))
    delete_account(stack_env, world.uid("member"))
    delete_account(stack_env, world.uid("owner"))
    flush(clients, stack_env)

    assert users_row(world.uid("member"))[1:] == (True, None)  # gone, its address forgotten
    assert users_row(world.uid("owner"))[1] is True
    assert users_row(world.uid("admin"))[:2] == (True, False)  # looked up and found: untouched
    # the owner's voice is no longer scored at the lock it still owns (another take: the one heard is a replay now)
    decided = signed_verify(clients, world, wav(spoken("allison", 1, start=6)[0])).get_json()
    assert (decided["decision"], decided["reason"]) == ("rejected", "no_candidates"), decided
    listed = clients["devices"].get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("admin"))
    roles = {m["uid"]: m["role"] for m in listed.get_json()["members"]}
    assert world.uid("member") not in roles  # left, as a removal ends a membership
    assert roles[world.uid("owner")] == "owner"  # the lock keeps its owner: nobody is there to hand it over
    with get_runtime("devices").db.connection() as con:
        found = con.run("SELECT actor, target FROM audit_log WHERE action = 'user.account_gone'")
        left = con.run("SELECT actor, details FROM audit_log WHERE action = 'user.leave_every_lock'")
    assert sorted(found) == sorted([["system:accounts", world.uid("member")], ["system:accounts", world.uid("owner")]])
    assert left == [[f"user:{world.uid('member')}", {"locks_left": 1, "locks_kept_owned": 0, "account_gone": True}]]


def test_a_lookup_that_fails_marks_nobody_and_holds_up_nothing(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firebase Auth out of reach must not read as "every account is gone" (the lookup raises here as it does when
    unreachable: that it does is checked against a closed port below); nothing else of the flush is held up."""
    delete_account(stack_env, world.uid("member"))

    def unreachable(self: accounts.IdentityToolkit, uids: Any) -> set[str]:
        raise accounts.DirectoryError("Firebase Auth could not be reached: ConnectionRefusedError")

    monkeypatch.setattr(accounts.IdentityToolkit, "existing", unreachable)
    flush(clients, stack_env)
    assert users_row(world.uid("member"))[:2] == (False, False)
    assert users_row(world.uid("admin"))[:2] == (False, False)
    monkeypatch.undo()
    flush(clients, stack_env)  # once it answers: found
    assert users_row(world.uid("member"))[:2] == (True, True)
    assert users_row(world.uid("admin"))[:2] == (True, False)


def test_the_directory_names_the_accounts_that_exist(stack_env: dict[str, str], sign_up: Any) -> None:
    """The lookup against the real Auth emulator: existing accounts named, a deleted or unknown one not."""
    kept, deleted = sign_up()["localId"], sign_up()["localId"]
    delete_account(stack_env, deleted)
    directory = accounts.directory_for(PROJECT_ID, stack_env["FIREBASE_AUTH_EMULATOR_HOST"])
    assert directory.existing([kept, deleted, "never-made"]) == {kept}
    assert directory.existing(["never-made"]) == set()
    with pytest.raises(ValueError):
        directory.existing([])
    closed = accounts.directory_for(PROJECT_ID, "127.0.0.1:9")
    with pytest.raises(accounts.DirectoryError):
        closed.existing([kept])


def test_accounts_checked_recently_are_not_asked_again(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Each flush asks about the users due a check only: one found an hour ago is not looked up again until then."""
    flush(clients, stack_env)
    assert all(users_row(world.uid(role))[0] for role in ("owner", "member", "admin"))
    delete_account(stack_env, world.uid("member"))
    flush(clients, stack_env)
    assert users_row(world.uid("member"))[:2] == (True, False)  # not due: within the recheck period
    with get_runtime("devices").db.transaction() as con:
        con.run(
            "UPDATE users SET account_checked_at = now() - interval '61 minutes' WHERE uid = :u", u=world.uid("member")
        )
    flush(clients, stack_env)
    assert users_row(world.uid("member"))[:2] == (True, True)


def test_no_account_is_looked_up_with_the_batch_set_to_none(
    world: World, stack_env: dict[str, str], make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LOCKWISE_ACCOUNT_CHECK_BATCH=0`` (the benchmarks: their members are rows, not accounts): nobody is asked
    about, so nobody is found gone."""
    from lockwise.core.config import get_settings

    monkeypatch.setenv("LOCKWISE_ACCOUNT_CHECK_BATCH", "0")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    delete_account(stack_env, world.uid("member"))
    flush({"devices": make_client("devices")}, stack_env)
    assert users_row(world.uid("member"))[:2] == (False, False)
