"""Locks whose owner's account is gone (deleted or disabled): nobody could pair them again, transfer or delete them
(attack run 47: the README said an operator transfers or deletes one, and nothing let them). Operators (the
``lockwise_operator`` custom claim) list them, hand one to a member, or delete one; a lock whose owner's account
stands is not theirs to touch."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from lockwise.core.db import Database, PreparingConnection
from lockwise.core.runtime import get_runtime
from lockwise.devices import door_decisions, locks
from tests.devices_world import World, bearer, build_world, custom_token_sign_in, sign_in
from tests.integration.test_gone_accounts import (
    admin_call,
    delete_account,
    error_code,
    flush,
    recheck_now,
    revoke_sessions,
)


@pytest.fixture
def clients(stack_env: dict[str, str], make_client: Any) -> dict[str, Any]:
    return {"devices": make_client("devices")}


@pytest.fixture
def world(clients: dict[str, Any], sign_up: Any) -> World:
    return build_world(clients["devices"], sign_up)


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
    # the disabled owner themself: answered 200 as a hand-over done already, the lock left ownerless (attack run 58)
    handed = devices.post(owner_path, json={"uid": owner}, headers=operator)
    assert error_code(handed) == (409, "member_account_unusable")
    handed = devices.post(owner_path, json={"uid": world.uid("guest_in")}, headers=operator)
    assert handed.status_code == 200, handed.get_json()
    again = devices.post(owner_path, json={"uid": world.uid("guest_in")}, headers=operator)  # its answer lost
    assert again.status_code == 200, again.get_json()
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


def test_the_listing_reads_every_locks_members_in_one_statement(
    clients: dict[str, Any], operator: dict[str, str], stack_env: dict[str, str], sign_up: Any, monkeypatch: Any
) -> None:
    """Two locks whose owners' accounts are deleted, each listed with its own members; their members read in one
    statement whatever the number of locks (a statement a lock before: up to 100 round trips in one listing)."""
    devices = clients["devices"]
    worlds = [build_world(devices, sign_up) for _ in range(2)]
    for world in worlds:
        delete_account(stack_env, world.uid("owner"))
    flush(clients, stack_env)
    read: list[str] = []
    run = PreparingConnection.run

    def counted(self: PreparingConnection, sql: str, *args: Any, **params: Any) -> Any:
        read.append(sql)
        return run(self, sql, *args, **params)

    monkeypatch.setattr(PreparingConnection, "run", counted)
    listed = devices.get("/devices/operator/ownerless-locks", headers=operator).get_json()["locks"]
    monkeypatch.undo()
    assert sorted(found["id"] for found in listed) == sorted(world.lock_id for world in worlds)
    for found in listed:
        (world,) = [w for w in worlds if w.lock_id == found["id"]]
        roles = {m["uid"]: m["role"] for m in found["members"]}
        assert roles[world.uid("admin")] == "admin" and world.uid("owner") not in roles
        assert world.uid("revoked") not in roles and world.uid("stranger") not in roles
        others = {w.uid("admin") for w in worlds if w is not world}
        assert not others & set(roles), "another lock's member listed"
    assert len([sql for sql in read if "FROM lock_members" in sql]) == 1, read


def operator_uid(headers: dict[str, str], devices: Any) -> str:
    return str(devices.get("/devices/me", headers=headers).get_json()["uid"])


def _blocked_on_lock(query_like: str) -> bool:
    with get_runtime("devices").db.connection() as con:
        rows = con.run(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE :q", q=query_like
        )
    return int(rows[0][0]) > 0


def until_blocked(query_like: str, timeout_s: float = 10) -> bool:
    """Whether a statement like ``query_like`` waits on a lock within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not _blocked_on_lock(query_like) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _blocked_on_lock(query_like)


def test_an_operator_cannot_take_a_lock_whose_owner_was_enabled_again_during_the_hand_over(
    clients: dict[str, Any], world: World, operator: dict[str, str], stack_env: dict[str, str]
) -> None:
    """Attack run 49: the owner's account was read, not held: the relay's account check marking it enabled again
    (or restored with its uid) committed while the hand-over waited, and a standing owner was made an admin. The
    hand-over is held here on the taker's membership row while the owner's account is marked enabled again, as
    ``accounts.sweep`` marks it; held now, the marking waits for the hand-over (or the hand-over finds it)."""
    devices, owner, taker = clients["devices"], world.uid("owner"), world.uid("admin")
    admin_call(stack_env, "accounts:update", {"localId": owner, "disableUser": True})
    recheck_now(owner)
    flush(clients, stack_env)
    db = get_runtime("devices").db
    holding, release, done = threading.Event(), threading.Event(), threading.Event()

    def hold_membership() -> None:  # a concurrent change of the admin's membership, in flight
        with db.transaction() as con:
            con.run(
                "SELECT 1 FROM lock_members WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u FOR UPDATE",
                l=world.lock_id,
                u=taker,
            )
            holding.set()
            release.wait(30)

    answer: dict[str, Any] = {}

    def hand() -> None:
        resp = devices.post(f"/devices/operator/locks/{world.lock_id}/owner", json={"uid": taker}, headers=operator)
        answer["status"], answer["body"] = resp.status_code, resp.get_json()
        done.set()

    holder = threading.Thread(target=hold_membership)
    holder.start()
    assert holding.wait(10)
    handing = threading.Thread(target=hand)
    handing.start()
    assert until_blocked("%lock_members%FOR UPDATE%"), "the hand-over is under way, past its check of the owner"
    # the sweep finds the owner's account enabled again (what accounts.sweep writes), while the hand-over waits
    enabled_again = False
    try:
        with db.transaction() as con:
            con.run("SET LOCAL lock_timeout = '2s'")
            con.run("UPDATE users SET account_disabled = false, account_disabled_at = NULL WHERE uid = :u", u=owner)
        enabled_again = True
    except Exception:  # noqa: BLE001 - a fixed hand-over holds the owner's row: the sweep waits for it
        enabled_again = False
    release.set()
    holder.join(10)
    assert done.wait(20)
    handing.join(5)
    with db.connection() as con:
        ((lock_owner,),) = con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)", l=world.lock_id)
        ((disabled,),) = con.run("SELECT account_disabled FROM users WHERE uid = :u", u=owner)
    if enabled_again:
        # the owner's account stood before the hand-over committed: the lock is still theirs
        assert (answer["status"], answer["body"]["error"]["code"]) == (409, "owner_present"), answer
        assert lock_owner == owner and not disabled
    else:  # the marking waited for the hand-over, which held the owner's row: handed over while they were disabled
        assert answer["status"] == 200 and lock_owner == taker and disabled, answer


def test_an_operators_hand_over_and_the_relays_account_check_do_not_deadlock(
    clients: dict[str, Any], world: World, operator: dict[str, str], stack_env: dict[str, str]
) -> None:
    """Attack run 49: ``accounts.sweep`` holds a batch of users' rows, then queues a refresh of the locks of an
    account it found enabled again (``mirror_refresh_due``, whose foreign key takes the lock's row ``FOR KEY
    SHARE``); the hand-over held the lock's row ``FOR UPDATE`` and then waited for a users row the sweep held: a
    deadlock (the operator's 503). It holds the lock's row ``FOR NO KEY UPDATE`` now. The sweep is played here
    statement for statement, on its own transaction."""
    from lockwise.devices import members

    devices, owner, taker = clients["devices"], world.uid("owner"), world.uid("admin")
    admin_call(stack_env, "accounts:update", {"localId": owner, "disableUser": True})
    recheck_now(owner)
    flush(clients, stack_env)
    db = get_runtime("devices").db
    with db.transaction() as con:
        con.run("DELETE FROM mirror_refresh_due WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    holding, go_on = threading.Event(), threading.Event()
    sweep: dict[str, Any] = {}
    answer: dict[str, Any] = {}

    def relay_sweep() -> None:
        try:
            with db.transaction() as con:
                con.run(  # the batch's rows, as accounts.sweep holds them
                    "SELECT uid FROM users WHERE uid = ANY(:u) ORDER BY uid FOR NO KEY UPDATE SKIP LOCKED",
                    u=sorted([owner, taker]),
                )
                holding.set()
                go_on.wait(30)
                con.run("UPDATE users SET account_disabled = false, account_disabled_at = NULL WHERE uid = :u", u=owner)
                members.mirror_access_soon(con, [owner])  # accounts.sweep's standing_changed
            sweep["ok"] = True
        except Exception as exc:  # noqa: BLE001
            sweep["error"] = repr(exc)

    def hand() -> None:
        resp = devices.post(f"/devices/operator/locks/{world.lock_id}/owner", json={"uid": taker}, headers=operator)
        answer["status"], answer["body"] = resp.status_code, resp.get_json()

    relay = threading.Thread(target=relay_sweep)
    relay.start()
    assert holding.wait(10)
    handing = threading.Thread(target=hand)
    handing.start()
    assert until_blocked("%FROM users WHERE uid%FOR NO KEY UPDATE%"), "the hand-over waits for the taker's row"
    go_on.set()
    relay.join(30)
    handing.join(30)
    assert "error" not in sweep, sweep
    assert answer.get("status") in (200, 409), answer


def test_an_operator_disabled_since_acts_no_more(
    clients: dict[str, Any],
    world: World,
    operator: dict[str, str],
) -> None:
    """A review: the operator endpoints checked only the token's claim, and the instance's memory of the account
    (``RECORDED_USER_TTL_S``) let a disabled operator act for a minute (attack run 27's for app users). They read
    the caller's account row now (``users.refuse_caller``)."""
    devices, db = clients["devices"], get_runtime("devices").db
    with db.transaction() as con:  # the owner found disabled, as accounts.sweep marks it
        con.run(
            "UPDATE users SET account_disabled = true, account_disabled_at = now() WHERE uid = :u", u=world.uid("owner")
        )
    listing, _, lock_path = paths(world)
    assert devices.get(listing, headers=operator).status_code == 200  # this instance remembers the operator now
    with db.transaction() as con:  # the operator's own account found disabled
        con.run(
            "UPDATE users SET account_disabled = true, account_disabled_at = now() WHERE uid = :u",
            u=operator_uid(operator, devices),
        )
    assert error_code(devices.delete(lock_path, headers=operator)) == (401, "account_disabled")


@dataclasses.dataclass
class Race:
    """What ``leaving_against`` saw."""

    blocked: bool  # the request waited on a lock while the leaving was paused
    leaving_error: str | None
    status: int | None


def leaving_against(
    relay_db: Database,
    monkeypatch: pytest.MonkeyPatch,
    pause_at: tuple[Any, str],
    leaving: tuple[str, bool],
    request: Callable[[], Any],
    waits_on: str,
) -> Race:
    """``locks.leave_every_lock`` of ``leaving`` (uid, account gone) on the relay's connection, paused inside at
    ``pause_at`` (a module and the name of a function it calls there, after it holds its first rows), while
    ``request`` (an operator's) runs; whether the request waited on a lock its statement ``waits_on`` (a LIKE
    pattern) names before the leaving went on."""
    module, name = pause_at
    holding, go_on = threading.Event(), threading.Event()
    real = getattr(module, name)

    def paused(*args: Any) -> None:
        holding.set()
        go_on.wait(30)
        real(*args)

    monkeypatch.setattr(module, name, paused)
    seen: dict[str, Any] = {}

    def leave() -> None:
        uid, gone = leaving
        try:
            with relay_db.transaction() as con:
                locks.leave_every_lock(con, uid, dt.datetime.now(dt.UTC), account_gone=gone)
        except Exception as exc:  # noqa: BLE001 - reported, as the relay's flush would log it
            seen["error"] = repr(exc)

    def call() -> None:
        seen["status"] = request().status_code

    leaver = threading.Thread(target=leave)
    leaver.start()
    assert holding.wait(10)
    caller = threading.Thread(target=call)
    caller.start()
    blocked = until_blocked(waits_on)
    go_on.set()
    leaver.join(30)
    caller.join(30)
    return Race(blocked, seen.get("error"), seen.get("status"))


def test_an_operators_deletion_and_a_deleted_owners_clean_up_do_not_deadlock(
    clients: dict[str, Any],
    world: World,
    operator: dict[str, str],
    relay_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: the deletion held the owner's users row, then the lock's row ``FOR UPDATE``; the relay's clean-up of
    a deleted account (``gone_accounts.end`` -> ``locks.leave_every_lock``) holds its locks ``FOR KEY SHARE``, then
    the user's row: a deadlock (the operator's 503). The lock's row comes first now. Played with the real
    ``leave_every_lock``, paused between the two (at ``door_decisions.wait_for``, which it calls there)."""
    owner = world.uid("owner")
    with get_runtime("devices").db.transaction() as con:  # found deleted, its clean-up not yet done
        con.run("UPDATE users SET account_gone_at = now(), account_ended_at = NULL WHERE uid = :u", u=owner)
    race = leaving_against(
        relay_db,
        monkeypatch,
        (door_decisions, "wait_for"),
        (owner, True),
        lambda: clients["devices"].delete(paths(world)[2], headers=operator),
        "%owner_uid FROM locks%FOR UPDATE%",
    )
    assert race.blocked, "the deletion waits for the lock's row"
    assert race.leaving_error is None and race.status in (204, 409), race


def test_an_operators_hand_over_and_the_takers_leaving_every_lock_do_not_deadlock(
    clients: dict[str, Any],
    world: World,
    operator: dict[str, str],
    relay_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: the hand-over locked the taker's membership ``FOR UPDATE`` and then their users row; every other
    path (``leave_every_lock``, as ``DELETE /devices/me`` or the relay's clean-up of a deleted account runs it) holds
    the users row first and then the membership: a deadlock. The users row comes first now. Played with the real
    ``leave_every_lock`` of the taker, paused between the two (at ``transfer_offers.end_from``)."""
    from lockwise.devices import transfer_offers

    owner, taker = world.uid("owner"), world.uid("admin")
    with get_runtime("devices").db.transaction() as con:  # the owner found disabled: an ownerless lock
        con.run("UPDATE users SET account_disabled = true, account_disabled_at = now() WHERE uid = :u", u=owner)
    race = leaving_against(
        relay_db,
        monkeypatch,
        (transfer_offers, "end_from"),
        (taker, False),
        lambda: clients["devices"].post(paths(world)[1], json={"uid": taker}, headers=operator),
        "%FROM users WHERE uid = %FOR NO KEY UPDATE%",
    )
    assert race.blocked, "the hand-over waits for the taker's users row"
    assert race.leaving_error is None and race.status in (200, 404, 409), race


def test_an_operator_whose_claim_is_taken_away_acts_no_more_with_the_tokens_from_before(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], sign_up: Any
) -> None:
    """The note of stop 65: a claim taken away stays in the ID tokens issued before for up to an hour, and the former
    operator listed, handed over and deleted other people's locks for that hour. Firebase Auth is asked as well."""
    devices = clients["devices"]
    account = sign_up()
    assert devices.get("/devices/me", headers=bearer(account)).status_code == 200
    host = stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    admin_call(
        stack_env, "accounts:update", {"localId": account["localId"], "customAttributes": '{"lockwise_operator": true}'}
    )
    before = bearer(sign_in(host, account["email"]))
    listing, owner_path, lock_path = paths(world)
    assert devices.get(listing, headers=before).status_code == 200
    admin_call(stack_env, "accounts:update", {"localId": account["localId"], "customAttributes": "{}"})
    assert error_code(devices.get(listing, headers=before)) == (403, "not_an_operator")
    delete_account(stack_env, world.uid("owner"))
    flush(clients, stack_env)
    handed = devices.post(owner_path, json={"uid": world.uid("admin")}, headers=before)
    assert error_code(handed) == (403, "not_an_operator")
    assert error_code(devices.delete(lock_path, headers=before)) == (403, "not_an_operator")
    # one whose claim was never there is refused without asking Firebase Auth, as before
    assert error_code(devices.get(listing, headers=world.headers("admin"))) == (403, "not_an_operator")


def test_an_operator_signed_out_everywhere_acts_no_more_with_the_sessions_from_before(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], sign_up: Any
) -> None:
    """Attack run 88: Firebase Auth is asked on every operator request, but only its claim and ``disabled`` were read
    from the answer. A stolen operator's token whose sessions were revoked ("sign out everywhere") listed ownerless
    locks and deleted one until the relay's sweep checked the account again (up to an hour for one it had checked).
    The answer's ``validSince`` refuses it now; the operator signed in again acts."""
    devices = clients["devices"]
    account = sign_up()
    uid, host = account["localId"], stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    assert devices.get("/devices/me", headers=bearer(account)).status_code == 200
    admin_call(stack_env, "accounts:update", {"localId": uid, "customAttributes": '{"lockwise_operator": true}'})
    stolen = bearer(sign_in(host, account["email"]))
    listing, _, lock_path = paths(world)
    assert devices.get(listing, headers=stolen).status_code == 200
    flush(clients, stack_env)  # the sweep checks the account: not due again for an hour
    revoke_sessions(stack_env, uid)
    flush(clients, stack_env)
    with get_runtime("devices").db.transaction() as con:  # the owner found disabled: the lock is ownerless
        con.run(
            "UPDATE users SET account_disabled = true, account_disabled_at = now() WHERE uid = :u", u=world.uid("owner")
        )
    assert error_code(devices.get(listing, headers=stolen)) == (401, "token_revoked")
    assert error_code(devices.delete(lock_path, headers=stolen)) == (401, "token_revoked")
    again = bearer(sign_in(host, account["email"]))
    assert [lock["id"] for lock in devices.get(listing, headers=again).get_json()["locks"]] == [world.lock_id]


def test_an_operators_claim_acts_only_from_a_session_the_operator_signed_in_to(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], sign_up: Any
) -> None:
    """Attack run 121: a session made from a custom token for the operator's uid (minted by whatever holds a key that
    signs for the project's Admin SDK: a support tool's, a CI job's, a leaked service account key) carried the
    account's ``lockwise_operator`` claim, which Firebase Auth confirmed, and listed, handed over and deleted other
    people's locks. A custom token's session is refused at every route now (401 ``custom_token_session``), and the
    claim acts from the operator's own sign-in only (a password or a provider); a custom token's developer claim of
    the same name was never confirmed by Firebase Auth."""
    devices, host = clients["devices"], stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    account = sign_up()
    uid = account["localId"]
    admin_call(stack_env, "accounts:update", {"localId": uid, "customAttributes": '{"lockwise_operator": true}'})
    delete_account(stack_env, world.uid("owner"))
    flush(clients, stack_env)
    listing, owner_path, lock_path = paths(world)
    minted = bearer(custom_token_sign_in(host, uid))
    assert error_code(devices.get(listing, headers=minted)) == (401, "custom_token_session")
    handed = devices.post(owner_path, json={"uid": world.uid("admin")}, headers=minted)
    assert error_code(handed) == (401, "custom_token_session")
    assert error_code(devices.delete(lock_path, headers=minted)) == (401, "custom_token_session")
    # a developer claim of the operator's name, for an account Firebase Auth gives none: refused as before
    stranger = bearer(custom_token_sign_in(host, world.uid("admin"), {"lockwise_operator": True}))
    assert error_code(devices.get(listing, headers=stranger)) == (401, "custom_token_session")
    own = bearer(sign_in(host, account["email"]))
    assert [lock["id"] for lock in devices.get(listing, headers=own).get_json()["locks"]] == [world.lock_id]


def test_an_operators_session_signed_in_to_long_ago_must_sign_in_again(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], sign_up: Any
) -> None:
    """Attack run 121: an ID token refreshed from a sign-in of months ago (its ``auth_time`` far older than its
    ``iat``: a refresh token never expires unless revoked) was an operator's as much as a fresh one, so a refresh
    token taken from an operator's laptop listed, handed over and deleted other people's locks for as long as it went
    unnoticed. An operator's request is from a sign-in of the last ``users.RECENT_SIGN_IN`` now
    (401 ``recent_sign_in_required``); the app user's other routes take the session as before."""
    devices, host = clients["devices"], stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    account = sign_up()
    uid = account["localId"]
    admin_call(stack_env, "accounts:update", {"localId": uid, "customAttributes": '{"lockwise_operator": true}'})
    long_ago = int(time.time()) - 30 * 24 * 3600
    admin_call(stack_env, "accounts:update", {"localId": uid, "validSince": str(long_ago - 60)})
    delete_account(stack_env, world.uid("owner"))
    flush(clients, stack_env)
    listing, owner_path, lock_path = paths(world)
    fresh = sign_in(host, account["email"])
    header, claims, _ = fresh["idToken"].split(".")
    refreshed = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert refreshed["firebase"]["sign_in_provider"] == "password"
    refreshed["auth_time"] = long_ago  # as the hourly refresh of a sign-in of a month ago carries it
    body = base64.urlsafe_b64encode(json.dumps(refreshed).encode()).decode().rstrip("=")
    old = {"Authorization": f"Bearer {header}.{body}."}
    assert devices.get("/devices/me", headers=old).status_code == 200
    assert error_code(devices.get(listing, headers=old)) == (401, "recent_sign_in_required")
    handed = devices.post(owner_path, json={"uid": world.uid("admin")}, headers=old)
    assert error_code(handed) == (401, "recent_sign_in_required")
    assert error_code(devices.delete(lock_path, headers=old)) == (401, "recent_sign_in_required")
    assert [lock["id"] for lock in devices.get(listing, headers=bearer(fresh)).get_json()["locks"]] == [world.lock_id]
