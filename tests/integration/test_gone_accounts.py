"""Accounts deleted outside the app (the Firebase console, the Admin SDK), found by the relay's flush asking the real
Auth emulator: an attack run found such an account still a member everywhere, its voice still opening the door."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from infra.local.firestore_sdk import sdk_client as firestore_client
from lockwise.core import accounts, mirror
from lockwise.core.runtime import get_runtime
from lockwise.devices import members
from simlock.lock import new_tls_key
from tests.conftest import PROJECT_ID
from tests.devices_world import World, bearer, google_sign_in, new_lock_key, sign_in, verify_email
from tests.integration.test_devices_flows import emulator_token
from tests.integration.test_devices_live_view import rest_get
from tests.integration.test_voice import enroll, signed_verify, take
from tests.voices import spoken, wav
from tests.waiting import wait_for


def admin_call(stack_env: dict[str, str], method: str, body: dict[str, Any]) -> dict[str, Any]:
    """One of Firebase Auth's admin calls (``accounts:delete``, ``accounts:update``, ``accounts:lookup``,
    ``accounts``) on the emulator, as the Firebase console or the Admin SDK makes it: nothing of the back-end is
    asked. Its answer."""
    req = urllib.request.Request(
        f"http://{stack_env['FIREBASE_AUTH_EMULATOR_HOST']}/identitytoolkit.googleapis.com/v1/projects/{PROJECT_ID}"
        f"/{method}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer owner"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read() or b"{}")
    return answer


def delete_account(stack_env: dict[str, str], uid: str) -> None:
    admin_call(stack_env, "accounts:delete", {"localId": uid})


def recheck_now(*uids: str) -> None:
    """As if the recheck period had passed for ``uids``."""
    with get_runtime("devices").db.transaction() as con:
        con.run("UPDATE users SET account_checked_at = now() - interval '61 minutes' WHERE uid = ANY(:u)", u=list(uids))


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
    with get_runtime("devices").db.connection() as con:  # its voice data erased, its clean-up recorded as done
        prints = con.run("SELECT count(*) FROM voiceprints WHERE user_uid = :u", u=world.uid("owner"))
        takes = con.run("SELECT count(*) FROM voice_fingerprints WHERE speaker_uid = :u", u=world.uid("owner"))
        scores = con.run(
            "SELECT count(*) FROM verification_attempts WHERE score IS NOT NULL AND matched_uid = :u",
            u=world.uid("owner"),
        )
        done = con.run("SELECT uid FROM users WHERE account_ended_at IS NOT NULL ORDER BY uid")
        why = con.run(
            "SELECT user_uid, reason FROM voice_erasures WHERE user_uid = ANY(:u) ORDER BY user_uid = :o",
            u=[world.uid("member"), world.uid("owner")],
            o=world.uid("owner"),
        )
    assert prints == takes == scores == [[0]]
    # why the owner's voice went; the member, who never enrolled, had none to forget
    assert why == [[world.uid("member"), None], [world.uid("owner"), "account_gone"]]
    assert done == sorted([[world.uid("member")], [world.uid("owner")]])
    # no document of the app's left for them (attack run 46: the erasure made one for the member, who never enrolled)
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    get_runtime("devices").flush_mirror(force=True)
    wait_for(
        lambda: (
            not any(
                client.document(path).get().exists
                for r in ("member", "owner")
                for path in (mirror.user_doc(world.uid(r)), mirror.standing_doc(world.uid(r)))
            )
        ),
        what="the deleted accounts' user and standing documents deleted",
    )
    # their access documents let nothing be read, the owner's too (attack run 52: the lock it keeps owned kept its
    # owner's document as it was, read with a leftover token), and go a day on (their TTL: attack run 51)
    flush(clients, stack_env)
    get_runtime("devices").flush_mirror(force=True)
    for role in ("member", "owner"):
        access = client.document(mirror.access_doc(world.lock_id, world.uid(role))).get().to_dict()
        assert access is not None and access.get("ended") is True and access.get("purge_at"), (role, access)
    listed = clients["devices"].get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("admin"))
    roles = {m["uid"]: m["role"] for m in listed.get_json()["members"]}
    assert world.uid("member") not in roles  # left, as a removal ends a membership
    assert roles[world.uid("owner")] == "owner"  # the lock keeps its owner: nobody is there to hand it over
    with get_runtime("devices").db.connection() as con:
        found = con.run("SELECT actor, target FROM audit_log WHERE action = 'user.account_gone'")
        left = con.run("SELECT actor, target, details FROM audit_log WHERE action = 'user.leave_every_lock'")
        revoked = con.run(
            "SELECT actor, target FROM audit_log WHERE action = 'member.revoke' AND target = :u", u=world.uid("member")
        )
    # the system acted, not the deleted user: the audit log says so
    assert sorted(found) == sorted([["system:accounts", world.uid("member")], ["system:accounts", world.uid("owner")]])
    member_left = {"locks_left": 1, "locks_kept_owned": 0, "account_gone": True}
    owner_left = {"locks_left": 0, "locks_kept_owned": 1, "account_gone": True}
    by_user = {row[1]: (row[0], row[2]) for row in left}
    assert by_user == {
        world.uid("member"): ("system:accounts", member_left),
        world.uid("owner"): ("system:accounts", owner_left),
    }
    assert revoked == [["system:accounts", world.uid("member")]]


def test_a_lookup_that_fails_marks_nobody_and_holds_up_nothing(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firebase Auth out of reach must not read as "every account is gone" (the lookup raises here as it does when
    unreachable: that it does is checked against a closed port below); nothing else of the flush is held up."""
    delete_account(stack_env, world.uid("member"))

    def unreachable(self: accounts.IdentityToolkit, uids: Any) -> dict[str, bool]:
        raise accounts.DirectoryError("Firebase Auth could not be reached: ConnectionRefusedError")

    monkeypatch.setattr(accounts.IdentityToolkit, "lookup", unreachable)
    flush(clients, stack_env)
    assert users_row(world.uid("member"))[:2] == (False, False)
    assert users_row(world.uid("admin"))[:2] == (False, False)
    monkeypatch.undo()
    flush(clients, stack_env)  # once it answers: found
    assert users_row(world.uid("member"))[:2] == (True, True)
    assert users_row(world.uid("admin"))[:2] == (True, False)


def test_the_directory_names_the_accounts_that_exist(stack_env: dict[str, str], sign_up: Any) -> None:
    """The lookup against the real Auth emulator: existing accounts named, a deleted or unknown one not; whether
    each is disabled, and when its sessions were last revoked (as the Admin SDK's ``revokeRefreshTokens`` does)."""
    kept, deleted = sign_up()["localId"], sign_up()["localId"]
    delete_account(stack_env, deleted)
    directory = accounts.directory_for(PROJECT_ID, stack_env["FIREBASE_AUTH_EMULATOR_HOST"])
    found = directory.lookup([kept, deleted, "never-made"])
    assert list(found) == [kept] and found[kept].disabled is False
    assert directory.lookup(["never-made"]) == {}
    time.sleep(1.1)  # validSince is in whole seconds
    revoked_at = int(time.time())
    admin_call(stack_env, "accounts:update", {"localId": kept, "disableUser": True, "validSince": str(revoked_at)})
    now = directory.lookup([kept])[kept]
    assert now.disabled is True and now.valid_since is not None and now.valid_since >= revoked_at
    with pytest.raises(ValueError):
        directory.lookup([])
    closed = accounts.directory_for(PROJECT_ID, "127.0.0.1:9")
    with pytest.raises(accounts.DirectoryError):
        closed.lookup([kept])


def test_an_accounts_own_sign_up_revokes_none_of_its_sessions(
    clients: dict[str, Any], stack_env: dict[str, str], sign_up: Any
) -> None:
    """The Auth emulator sets a new account's ``validSince`` after the sign-in time of the sign-up's own session, from
    a second read of the clock: when a second turned between the two, the flush recorded that the session was signed
    in before its account's sessions were revoked, and the member's live view was refused (a full run, once). A
    ``validSince`` within the second after the account was made revokes nothing (``accounts.revoked_since``): none is
    read for a new account, and every sign-up's session is answered after the flush has checked the accounts."""
    made = [sign_up() for _ in range(12)]
    uids = [account["localId"] for account in made]
    directory = accounts.directory_for(PROJECT_ID, stack_env["FIREBASE_AUTH_EMULATOR_HOST"])
    assert {uid: found.valid_since for uid, found in directory.lookup(uids).items()} == dict.fromkeys(uids)
    devices = clients["devices"]
    assert all(devices.get("/devices/me", headers=bearer(account)).status_code == 200 for account in made)
    flush(clients, stack_env)
    with get_runtime("devices").db.connection() as con:
        recorded = con.run(
            "SELECT uid, account_checked_at IS NOT NULL, tokens_valid_since FROM users WHERE uid = ANY(:u)", u=uids
        )
    assert sorted(recorded) == sorted([uid, True, None] for uid in uids)
    assert all(devices.get("/devices/me", headers=bearer(account)).status_code == 200 for account in made)


def test_a_revocation_a_second_after_the_sign_up_counts_and_a_moved_creation_lifts_none(
    clients: dict[str, Any], stack_env: dict[str, str], sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 87 on ``accounts.revoked_since``: its first window took any ``validSince`` of the second after the
    creation's for the creation's, so a revocation a second after the sign-up left the sign-up's session answered;
    and an account's ``createdAt`` moved (an import, the Admin API) made the next check clear a revocation recorded
    before. Revoked a second after the sign-up, the session is refused; its creation moved ten years on, still."""
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    devices, account = clients["devices"], sign_up()
    uid = account["localId"]
    assert devices.get("/devices/me", headers=bearer(account)).status_code == 200
    directory = accounts.directory_for(PROJECT_ID, stack_env["FIREBASE_AUTH_EMULATOR_HOST"])
    created_ms = int(admin_call(stack_env, "accounts:lookup", {"localId": [uid]})["users"][0]["createdAt"])
    # in the next second but one that is not the creation's, as ``validSince`` is whole seconds
    revoke_at = (created_ms + accounts.CREATION_CLOCK_MS) // 1000 + 1
    time.sleep(max(0.0, revoke_at + 0.05 - time.time()))
    admin_call(stack_env, "accounts:update", {"localId": uid, "validSince": str(int(time.time()))})
    assert (directory.lookup([uid])[uid].valid_since or 0) >= revoke_at  # (a slow call: a later second)
    recheck_now(uid)
    flush(clients, stack_env)
    refused = devices.get("/devices/me", headers=bearer(account))
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (401, "token_revoked")
    later = str(int((time.time() + 10 * 365 * 86400) * 1000))
    admin_call(stack_env, "accounts:update", {"localId": uid, "createdAt": later})
    recheck_now(uid)
    flush(clients, stack_env)
    refused = devices.get("/devices/me", headers=bearer(account))
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (401, "token_revoked")


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


def test_a_disabled_account_opens_no_door_until_it_is_enabled_and_keeps_its_memberships(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """An account an operator disables in the console (an abusive user, a lost phone) signs in no more, but its
    voice opened the door: it is now not scored while disabled; it stays a member, and is scored again once enabled."""
    assert enroll(clients, world.accounts["owner"]).status_code == 201
    owner = world.uid("owner")
    admin_call(stack_env, "accounts:update", {"localId": owner, "disableUser": True})
    flush(clients, stack_env)
    decided = signed_verify(clients, world, wav(spoken("allison", 1, start=5)[0])).get_json()
    assert (decided["decision"], decided["reason"]) == ("rejected", "no_candidates"), decided
    assert users_row(owner)[:2] == (True, False)  # not gone: nothing of theirs is ended
    admin_call(stack_env, "accounts:update", {"localId": owner, "disableUser": False})
    recheck_now(owner)
    flush(clients, stack_env)
    decided = signed_verify(clients, world, wav(spoken("allison", 1, start=6)[0])).get_json()
    assert (decided["decision"], decided["member_uid"]) == ("accepted", owner), decided


def test_a_disabled_accounts_leftover_token_opens_nothing_and_reads_nothing_until_it_is_enabled(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator disables the admin's account (a stolen phone, an abusive user). The phone's ID token (valid up to
    an hour, checked offline) still unlocked the door, invited and removed members, and read the live view once the
    flush had marked the account (attack run 26). Now its command is 401 ``account_disabled`` at once (the user's
    row decides it), every other app request once an instance reads the row again (``RECORDED_USER_TTL_S``), and
    its access document is gone in the same flush: the rules refuse its reads. Enabled again, it is let back in
    with the same token, its memberships as they were."""
    from lockwise.core import runtime

    devices, lock, admin = clients["devices"], world.lock_id, world.uid("admin")
    host, token = stack_env["FIRESTORE_EMULATOR_HOST"], world.accounts["admin"]["idToken"]
    flush(clients, stack_env)
    assert devices.get(f"/devices/locks/{lock}", headers=world.headers("admin")).status_code == 200  # recorded
    assert rest_get(host, f"locks/{lock}", token) == 200
    admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": True})
    recheck_now(admin)
    flush(clients, stack_env)

    def refused(resp: Any) -> bool:
        return bool(resp.status_code == 401 and resp.get_json()["error"]["code"] == "account_disabled")

    unlock = devices.post(f"/devices/locks/{lock}/commands", json={"action": "unlock"}, headers=world.headers("admin"))
    assert refused(unlock), unlock.get_json()  # within the minute the instance remembers the user for
    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    for method, path, body in (
        ("get", f"/devices/locks/{lock}", None),
        ("post", f"/devices/locks/{lock}/members", {"uid": world.uid("stranger"), "role": "member"}),
        ("delete", f"/devices/locks/{lock}/members/{world.uid('member')}", None),
    ):
        answer = getattr(devices, method)(path, json=body, headers=world.headers("admin"))
        assert refused(answer), (path, answer.get_json())
    assert rest_get(host, f"locks/{lock}", token) == 403
    listed = devices.get(f"/devices/locks/{lock}/members", headers=world.headers("owner")).get_json()
    assert {m["uid"] for m in listed["members"]} >= {admin, world.uid("member")} and listed["invitations"] == []
    admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": False})
    recheck_now(admin)
    flush(clients, stack_env)
    assert devices.get(f"/devices/locks/{lock}", headers=world.headers("admin")).status_code == 200
    assert rest_get(host, f"locks/{lock}", token) == 200


def test_a_token_signed_in_before_the_accounts_sessions_were_revoked_is_refused_and_a_new_sign_in_is_not(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator signs a stolen phone out (the Admin SDK's ``revokeRefreshTokens``; a password change does the
    same): Firebase refuses that session's ID tokens only to ``verifyIdToken`` with ``checkRevoked``, and tokens
    are checked offline here, so the phone's token kept working for its hour (attack run 26). Once the relay's
    flush has read the account's ``validSince``, a token signed in before it is 401 ``token_revoked``; the owner's
    new sign-in is answered."""
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    devices, member = clients["devices"], world.uid("member")
    assert devices.get("/devices/locks", headers=world.headers("member")).status_code == 200
    revoke_sessions(stack_env, member)
    recheck_now(member)
    flush(clients, stack_env)
    stolen = devices.get("/devices/locks", headers=world.headers("member"))
    assert stolen.status_code == 401 and stolen.get_json()["error"]["code"] == "token_revoked", stolen.get_json()
    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 60.0)  # what the instance remembers judges each token
    again = sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["member"]["email"])
    assert devices.get("/devices/locks", headers=bearer(again)).status_code == 200
    stolen = devices.get("/devices/locks", headers=world.headers("member"))  # its new token answered: not the old
    assert stolen.status_code == 401 and stolen.get_json()["error"]["code"] == "token_revoked"


def revoke_sessions(stack_env: dict[str, str], uid: str) -> float:
    """Revoke ``uid``'s sessions as the Admin SDK's ``revokeRefreshTokens`` does; when (``validSince`` is in whole
    seconds: the sessions begun in the second before it are the ones it revokes)."""
    time.sleep(1.1)
    admin_call(stack_env, "accounts:update", {"localId": uid, "validSince": str(int(time.time()))})
    return time.time()


def test_a_revoked_session_or_a_disabled_account_takes_nothing_while_an_instance_remembers_the_user(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """What an instance remembers of a user (``RECORDED_USER_TTL_S``) let a revoked session's unlock through (202)
    and a disabled account take the lock offered to it (200) for a minute after the flush had marked them (attack
    run 27). What holds the user's row (commands, enrollment, pairing codes, a transfer's acceptance, and since
    attack run 33 every change an owner or admin makes: a removal, an invitation, a rename, a deletion) reads the
    marks at once."""
    devices, lock, admin, member = clients["devices"], world.lock_id, world.uid("admin"), world.uid("member")
    offered = devices.post(f"/devices/locks/{lock}/transfer", json={"uid": admin}, headers=world.headers("owner"))
    assert offered.status_code == 202, offered.get_json()
    for role in ("admin", "member"):  # remembered by the instance
        assert devices.get(f"/devices/locks/{lock}", headers=world.headers(role)).status_code == 200
    revoke_sessions(stack_env, member)
    admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": True})
    recheck_now(admin, member)
    flush(clients, stack_env)

    def code(resp: Any) -> tuple[int, str]:
        return resp.status_code, (resp.get_json().get("error") or {}).get("code", "")

    unlock = devices.post(f"/devices/locks/{lock}/commands", json={"action": "unlock"}, headers=world.headers("member"))
    assert code(unlock) == (401, "token_revoked")
    taken = devices.post(f"/devices/locks/{lock}/transfer/accept", headers=world.headers("admin"))
    assert code(taken) == (401, "account_disabled")
    guest = world.uid("guest_in")  # before attack run 33's fix: 204 and 202, the instance remembering the admin
    removed = devices.delete(f"/devices/locks/{lock}/members/{guest}", headers=world.headers("admin"))
    assert code(removed) == (401, "account_disabled")
    invite = {"email": "friend@example.com", "role": "guest"}
    assert code(devices.post(f"/devices/locks/{lock}/members", json=invite, headers=world.headers("admin"))) == (
        401,
        "account_disabled",
    )
    assert devices.get(f"/devices/locks/{lock}/members", headers=world.headers("owner")).status_code == 200
    left = devices.delete("/devices/me", headers=world.headers("member"))  # before: 204, she left every lock
    assert code(left) == (401, "token_revoked")
    assert member in {
        m["uid"]
        for m in devices.get(f"/devices/locks/{lock}/members", headers=world.headers("owner")).get_json()["members"]
    }
    with get_runtime("devices").db.connection() as con:
        assert con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)", l=lock) == [[world.uid("owner")]]
        assert con.run("SELECT count(*) FROM commands WHERE lock_id = CAST(:l AS uuid)", l=lock) == [[0]]
    assert code(enroll(clients, world.accounts["member"])) == (401, "token_revoked")


def test_a_revocation_is_read_at_the_next_flush_once_its_owner_signs_in_again(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``validSince`` was read only at the account's hourly check, about as long as the stolen token lives (attack
    run 27). A revocation (or a password change) makes its owner sign in again: a session begun since the
    account's last check makes it the next flush's first, and the stolen token is refused after that flush."""
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    devices, lock, member = clients["devices"], world.lock_id, world.uid("member")
    host, taken = stack_env["FIRESTORE_EMULATOR_HOST"], world.accounts["member"]["idToken"]
    recheck_now(member)
    flush(clients, stack_env)  # the account's periodic check: done now, next due in an hour
    assert rest_get(host, f"locks/{lock}", taken) == 200
    revoke_sessions(stack_env, member)
    again = sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["member"]["email"])
    assert devices.get("/devices/locks", headers=bearer(again)).status_code == 200  # her new sign-in
    assert users_row(member)[0] is False  # due a check at once
    flush(clients, stack_env)
    stolen = devices.post(f"/devices/locks/{lock}/commands", json={"action": "unlock"}, headers=world.headers("member"))
    assert stolen.status_code == 401 and stolen.get_json()["error"]["code"] == "token_revoked"
    assert devices.get("/devices/locks", headers=bearer(again)).status_code == 200

    # and the live view refuses it too: it read the lock's document and feed for the rest of its hour (attack run 60)
    def refused() -> bool:
        flush(clients, stack_env)  # the access documents mirrored again
        return rest_get(host, f"locks/{lock}", taken) == 403

    wait_for(refused, what="the revoked session's token refused by the rules")
    assert rest_get(host, f"locks/{lock}", again["idToken"]) == 200


def test_the_sessions_of_an_account_its_addresss_owner_took_over_are_refused_after_the_owners_first_request(
    clients: dict[str, Any], sign_up: Any, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 79 left open whether the sessions of whoever made an account with someone else's address end
    when the address's owner takes it over (a Google sign-in): a refreshed token would name the address verified,
    and ``users.outdated`` passes those. Firebase ends them: the takeover is a major account change, which expires
    refresh tokens ("Manage User Sessions"), and the Auth emulator sets the account's ``validSince`` at it
    (firebase-tools' ``handleIdpSigninEmailRequired``). The owner's first request is a session begun since the
    account's last check, so the next flush reads that ``validSince``: a token of a session signed in before it,
    its address verified or not, is 401 ``token_revoked``, however recently the account was checked."""
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    devices, host = clients["devices"], stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    address = f"victim-{random.getrandbits(32):08x}@example.com"
    made_at = time.time()
    made_in_advance = sign_up(address)
    uid = made_in_advance["localId"]
    assert devices.get("/devices/locks", headers=bearer(made_in_advance)).status_code == 200
    flush(clients, stack_env)  # the account checked: not due again for an hour
    assert users_row(uid)[0] is True
    time.sleep(1.1)  # validSince is in whole seconds
    victim = google_sign_in(host, address)
    assert victim["localId"] == uid  # the same account, now the address's owner's
    assert devices.get("/devices/locks", headers=bearer(victim)).status_code == 200  # the owner's first request
    assert users_row(uid)[0] is False  # due a check at once
    flush(clients, stack_env)
    # the maker's session refreshed after the takeover (the emulator refreshes what Firebase would refuse): its
    # token names the address verified, and was signed in before the takeover
    refreshed = emulator_token(uid, address, verified=True, signed_in_age_s=int(time.time() - made_at) + 1)
    for token in (refreshed, made_in_advance):
        answer = devices.post("/devices/locks", json={"name": "hall"}, headers=bearer(token))
        assert answer.status_code == 401, answer.get_json()
    answer = devices.get("/devices/locks", headers=bearer(refreshed))
    assert answer.get_json()["error"]["code"] == "token_revoked", answer.get_json()
    assert devices.get("/devices/locks", headers=bearer(victim)).status_code == 200


def test_the_token_of_whoever_made_an_account_leaves_no_lock_once_its_addresss_owner_took_it_over(
    clients: dict[str, Any], sign_up: Any, stack_env: dict[str, str]
) -> None:
    """An instance judges a request by the account's standing as it last read it (up to a minute old), and an
    account's leaving (``DELETE /devices/me``) by its row as held, which did not ask whether the token was from
    before the address was verified: on an instance that had not seen the takeover, the token of whoever made the
    account with someone else's address made the account, now its address's owner's, leave every lock (204; found
    by a review of stop 66's notes)."""
    devices = clients["devices"]
    address = f"victim-{random.getrandbits(32):08x}@example.com"
    made_in_advance = sign_up(address)
    assert devices.get("/devices/locks", headers=bearer(made_in_advance)).status_code == 200  # remembered here
    victim = google_sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], address)
    assert clients["embed"].get("/embed/enrollment", headers=bearer(victim)).status_code == 200  # another instance
    left = devices.delete("/devices/me", headers=bearer(made_in_advance))
    assert left.status_code == 401 and left.get_json()["error"]["code"] == "token_outdated", left.get_json()
    with get_runtime("devices").db.connection() as con:
        assert con.run("SELECT left_at FROM users WHERE uid = :u", u=victim["localId"]) == [[None]]


def test_an_account_enabled_again_soon_after_it_was_found_disabled_is_let_in_at_the_next_flush(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disabled account's fresh token made it the next flush's first check only when issued a minute after the
    account's last check, which every check of a still-disabled account moves on: enabled again soon after (a
    mistake undone), it stayed refused until its hourly recheck (attack run 27). Measured from when it was first
    found disabled now, without the minute."""
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    devices, admin = clients["devices"], world.uid("admin")
    admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": True})
    recheck_now(admin)
    flush(clients, stack_env)  # found disabled now
    time.sleep(1.1)  # a token's iat is in whole seconds
    admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": False})
    fresh = sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["admin"]["email"])
    refused = devices.get("/devices/locks", headers=bearer(fresh))
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "account_disabled"
    assert users_row(admin)[0] is False  # due a check at once
    flush(clients, stack_env)
    assert devices.get("/devices/locks", headers=bearer(fresh)).status_code == 200


def test_an_account_made_again_with_its_uid_is_gone_no_more_and_its_address_keeps_its_invitation(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """An account deleted by mistake and restored with its uid (the Admin SDK's createUser({uid})) was gone for
    ever: it is looked up again and found. And the gone account's clean-up closed the invitations sent since to its
    address, which belong to whoever holds the address now (the same person, signed up again)."""
    host, member = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.uid("member")
    address = world.accounts["member"]["email"]
    verify_email(host, PROJECT_ID, member)
    verified = sign_in(host, address)
    assert clients["devices"].get("/devices/me", headers=bearer(verified)).status_code == 200
    assert users_row(member)[2] == address  # recorded: verified
    delete_account(stack_env, member)
    sent = clients["devices"].post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": address, "role": "member"},
        headers=world.headers("owner"),
    )
    assert sent.status_code == 202  # to the address, for whoever signs up with it
    flush(clients, stack_env)
    assert users_row(member) == (True, True, None)
    listed = (
        clients["devices"].get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("owner")).get_json()
    )
    assert [i["id"] for i in listed["invitations"]] == [sent.get_json()["invitation"]["id"]]
    admin_call(stack_env, "accounts", {"localId": member, "email": address, "password": "correct-horse-9"})
    recheck_now(member)
    flush(clients, stack_env)
    assert users_row(member)[:2] == (True, False)
    with get_runtime("devices").db.connection() as con:
        back = con.run("SELECT actor FROM audit_log WHERE action = 'user.account_back' AND target = :u", u=member)
    assert back == [["system:accounts"]]


def test_a_flush_step_that_fails_holds_up_none_of_the_others(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush's steps each run whatever the one before did (a prune the database refuses for now stopped the
    accounts' check, and with it every later flush's); the answer is still the failure."""
    from lockwise.core import errors, retention

    def busy(con: Any, nonces_kept_s: int) -> dict[str, int]:
        raise errors.Unavailable("the database did not answer in time; try again", code="database_busy")

    monkeypatch.setattr(retention, "prune_expired", busy)
    delete_account(stack_env, world.uid("member"))
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    answered = clients["devices"].post("/devices/relay/flush", headers=service)
    assert answered.status_code == 503 and answered.get_json()["error"]["code"] == "database_busy"
    assert users_row(world.uid("member"))[:2] == (True, True)  # the accounts' check ran after the failed prune


def test_a_deleted_accounts_leftover_token_gets_nothing_back_after_its_clean_up(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Its ID tokens live up to an hour after the deletion (checked offline). Used after its clean-up, one enrolled
    a voice again or joined a lock, and nothing would end those: each is now 401 ``account_deleted``; so are the app's
    commands at a lock it still owns, and a new lock."""
    member, owner, stranger = (world.accounts[role] for role in ("member", "owner", "stranger"))
    for account in (member, owner, stranger):
        delete_account(stack_env, account["localId"])
    flush(clients, stack_env)
    assert all(users_row(account["localId"])[1] for account in (member, owner, stranger))
    invited = clients["devices"].post(  # by an admin, after the clean-up closed what was sent before
        f"/devices/locks/{world.lock_id}/members",
        json={"uid": stranger["localId"], "role": "member"},
        headers=world.headers("admin"),
    )
    assert invited.status_code == 202

    def refused(resp: Any) -> None:
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "account_deleted", resp.get_json()

    refused(enroll(clients, member))
    invitation = invited.get_json()["invitation"]["id"]
    refused(clients["devices"].post(f"/devices/invitations/{invitation}/accept", headers=bearer(stranger)))
    refused(
        clients["devices"].post(
            f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=bearer(owner)
        )
    )
    refused(clients["devices"].post("/devices/locks", json={"name": "Another door"}, headers=bearer(owner)))
    with get_runtime("devices").db.connection() as con:
        voice = con.run("SELECT count(*) FROM voiceprints WHERE user_uid = :u", u=member["localId"])
        joined = con.run(
            "SELECT count(*) FROM lock_members WHERE user_uid = :u AND revoked_at IS NULL", u=stranger["localId"]
        )
    assert voice == joined == [[0]]


def test_a_deleted_owners_leftover_token_manages_nothing_once_its_account_is_found_gone(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted owner's token (valid up to an hour) renamed the lock, invited an account as admin, removed the real
    admin and transferred the lock (attack run). Every app request of an account found gone is now 401
    ``account_deleted``, at most ``RECORDED_USER_TTL_S`` after an instance last read its row (here: at once)."""
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    owner, lock = world.headers("owner"), world.lock_id
    assert clients["devices"].get(f"/devices/locks/{lock}", headers=owner).status_code == 200
    delete_account(stack_env, world.uid("owner"))
    flush(clients, stack_env)
    for method, path, body in (
        ("get", f"/devices/locks/{lock}", None),
        ("patch", f"/devices/locks/{lock}", {"name": "Mine now"}),
        ("post", f"/devices/locks/{lock}/members", {"uid": world.uid("stranger"), "role": "admin"}),
        ("delete", f"/devices/locks/{lock}/members/{world.uid('admin')}", None),
        ("post", f"/devices/locks/{lock}/transfer", {"uid": world.uid("admin")}),
    ):
        answer = getattr(clients["devices"], method)(path, json=body, headers=owner)
        assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "account_deleted", (path, answer)
    listed = clients["devices"].get(f"/devices/locks/{lock}/members", headers=world.headers("admin")).get_json()
    assert {m["uid"]: m["role"] for m in listed["members"]}[world.uid("admin")] == "admin"
    assert listed["invitations"] == []


def test_a_member_recorded_with_an_unusable_uid_holds_up_nothing_at_its_lock(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """A uid recorded before such subjects were refused (``legacy-uid/``): every membership change at its lock was a
    500 (its access document's path was refused), and a deleted account sharing the lock was never ended. Its
    writes are left out now; migration 0032 marks it gone and the flush ends it like any deleted account."""
    legacy = "legacy-uid/"  # its access document's path had an empty part; "org/x/carol" made a deeper document
    with get_runtime("devices").db.transaction() as con:
        con.run("INSERT INTO users (uid) VALUES (:u)", u=legacy)
        con.run(
            "INSERT INTO lock_members (lock_id, user_uid, role) VALUES (CAST(:l AS uuid), :u, 'member')",
            l=world.lock_id,
            u=legacy,
        )
    removed = clients["devices"].delete(
        f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}", headers=world.headers("owner")
    )
    assert removed.status_code == 204
    delete_account(stack_env, world.uid("member"))
    with get_runtime("devices").db.transaction() as con:  # as migration 0032 marks such a row
        con.run("UPDATE users SET account_gone_at = now(), account_checked_at = now() WHERE uid = :u", u=legacy)
    flush(clients, stack_env)
    with get_runtime("devices").db.connection() as con:
        ended = con.run("SELECT uid FROM users WHERE account_ended_at IS NOT NULL ORDER BY uid")
        active = con.run(
            "SELECT user_uid FROM lock_members WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL"
            " AND user_uid = ANY(:u)",
            l=world.lock_id,
            u=[legacy, world.uid("member")],
        )
    assert ended == sorted([[legacy], [world.uid("member")]]) and active == []


def test_a_transfer_to_a_member_whose_account_is_gone_is_a_conflict_not_the_owners_401(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new owner's row is held to count the locks they own: a gone one answered the owner 401 account_deleted
    (a client signs out on that), and any uid probed told whether it was a deleted account's. Now a member's gone
    account is 409 ``member_account_deleted``, and a non-member is 404 before anything of its account is read."""
    delete_account(stack_env, world.uid("admin"))
    flush(clients, stack_env)
    assert users_row(world.uid("admin"))[1]
    with get_runtime("devices").db.transaction() as con:  # as if its clean-up had not run yet: still a member
        con.run(
            "UPDATE lock_members SET revoked_at = NULL WHERE user_uid = :u AND lock_id = CAST(:l AS uuid)",
            u=world.uid("admin"),
            l=world.lock_id,
        )
    path = f"/devices/locks/{world.lock_id}/transfer"
    answer = clients["devices"].post(path, json={"uid": world.uid("admin")}, headers=world.headers("owner"))
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "member_account_deleted"
    stranger = clients["devices"].post(path, json={"uid": "gone-or-never-was"}, headers=world.headers("owner"))
    assert stranger.status_code == 404 and stranger.get_json()["error"]["code"] == "member_not_found"


def test_an_account_restored_with_its_uid_is_checked_first_and_let_in_again(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firebase issues no token to a deleted account, so one issued after the account was found gone says it was
    restored: its next check is the next flush, not up to an hour later; found, its requests are answered again."""
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    host, member = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.uid("member")
    address = world.accounts["member"]["email"]
    delete_account(stack_env, member)
    flush(clients, stack_env)
    with get_runtime("devices").db.transaction() as con:  # found gone a while ago (past the clocks' leeway)
        con.run("UPDATE users SET account_gone_at = now() - interval '5 minutes' WHERE uid = :u", u=member)
    admin_call(stack_env, "accounts", {"localId": member, "email": address, "password": "correct-horse-9"})
    restored = sign_in(host, address)
    answer = clients["devices"].get("/devices/locks", headers=bearer(restored))
    assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "account_deleted"
    assert users_row(member)[0] is False  # due a check at once
    flush(clients, stack_env)
    assert users_row(member)[:2] == (True, False)
    assert clients["devices"].get("/devices/locks", headers=bearer(restored)).status_code == 200


def test_a_failed_clean_up_goes_to_the_back_and_keeps_its_accounts_recheck(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One account's clean-up failing every time was taken first by every flush. It goes to the back now, in a
    column of its own: moving the account's recheck (as a first cut did) kept a restored account from being found."""
    from lockwise.devices import locks

    real = locks.leave_every_lock
    member, guest = world.uid("member"), world.uid("guest_in")

    def failing_for_member(con: Any, uid: str, now: Any, **kwargs: Any) -> Any:
        if uid == member:
            raise RuntimeError("this one's clean-up fails")
        return real(con, uid, now, **kwargs)

    monkeypatch.setattr(locks, "leave_every_lock", failing_for_member)
    delete_account(stack_env, member)
    delete_account(stack_env, guest)
    flush(clients, stack_env)
    with get_runtime("devices").db.connection() as con:
        rows = {
            r[0]: r[1:]
            for r in con.run(
                "SELECT uid, account_ended_at IS NOT NULL, account_end_tried_at IS NOT NULL,"
                # the check's start, when it found the account gone: not moved since (by the clean-up's failure)
                " account_checked_at <= account_gone_at FROM users WHERE uid = ANY(:u)",
                u=[member, guest],
            )
        }
    assert rows[guest][0] is True  # ended beside the failing one
    assert rows[member] == [False, True, True]  # tried, at the back; its recheck still dated from when it was found


def test_an_offer_made_by_an_account_deleted_since_is_taken_by_nobody(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 21: the owner offered the lock to the admin, then their account was deleted outside the app (the
    lock it owns keeps it as its owner); the admin then took the lock on the offer, and the deleted account stayed
    an admin of it for good (its clean-up had run). The account's leaving ends the offers it made."""
    devices, path = clients["devices"], f"/devices/locks/{world.lock_id}/transfer"
    offered = devices.post(path, json={"uid": world.uid("admin")}, headers=world.headers("owner"))
    assert offered.status_code == 202
    delete_account(stack_env, world.uid("owner"))
    flush(clients, stack_env)
    taken = devices.post(f"{path}/accept", headers=world.headers("admin"))
    assert (taken.status_code, taken.get_json()["error"]["code"]) == (404, "transfer_not_found")
    listed = devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("admin")).get_json()
    assert {m["uid"]: m["role"] for m in listed["members"]}[world.uid("owner")] == "owner"  # kept, for an operator


def test_fresh_sessions_of_an_outsider_do_not_keep_a_deleted_accounts_recheck_from_coming(
    stack_env: dict[str, str], make_client: Any, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 35: users never checked, and those whose session began after their last check, went first in each
    flush's batch (``NULLS FIRST``): an outsider making a batch's worth of them a flush (new accounts, or their own
    signing in again) kept every recheck from coming, and an account deleted in Firebase Auth kept its memberships
    and its voice for good. At least half of each batch is now the most overdue rechecks."""
    from lockwise.core.config import get_settings

    batch = 3  # 100 deployed, a flush every 10 s
    monkeypatch.setenv("LOCKWISE_ACCOUNT_CHECK_BATCH", str(batch))
    get_settings.cache_clear()
    get_runtime.cache_clear()
    clients = {"devices": make_client("devices")}
    devices = clients["devices"]
    victim = sign_up()
    assert devices.get("/devices/me", headers=bearer(victim)).status_code == 200
    flush(clients, stack_env)
    assert users_row(victim["localId"])[:2] == (True, False)  # checked, alive
    delete_account(stack_env, victim["localId"])  # deleted in the Firebase console
    recheck_now(victim["localId"])  # its hour has passed: due at the next flush
    for _ in range(2):
        for _ in range(batch):  # the outsider's fresh sessions of the flush period
            outsider = sign_up()
            assert devices.get("/devices/me", headers=bearer(outsider)).status_code == 200
        flush(clients, stack_env)
    assert users_row(victim["localId"])[1] is True, "the deleted account's recheck never came"
    with get_runtime("devices").db.connection() as con:  # and the fresh ones are checked too, as many as fit
        unchecked = con.run("SELECT count(*) FROM users WHERE account_checked_at IS NULL")[0][0]
    assert unchecked <= batch


def test_a_flush_looks_up_batch_after_batch_while_more_accounts_are_due(
    stack_env: dict[str, str], make_client: Any, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 54: one lookup a flush (100 users, every 10 s) checked at most 36,000 accounts an hour: past that
    many users, an account deleted in Firebase Auth kept its memberships and its voice longer than its recheck
    period (a day at a million users). A flush now looks up again while its lookups come back full."""
    from lockwise.core.config import get_settings

    monkeypatch.setenv("LOCKWISE_ACCOUNT_CHECK_BATCH", "2")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    clients = {"devices": make_client("devices")}
    with get_runtime("devices").db.transaction() as con:  # whoever other tests left due: not due now
        con.run("UPDATE users SET account_checked_at = now()")
    accounts = [sign_up() for _ in range(7)]
    for account in accounts:
        assert clients["devices"].get("/devices/me", headers=bearer(account)).status_code == 200
    delete_account(stack_env, accounts[-1]["localId"])
    flush(clients, stack_env)
    assert [users_row(a["localId"])[:2] for a in accounts] == [(True, False)] * 6 + [(True, True)]


def test_a_flush_does_not_look_up_again_the_accounts_whose_rows_another_request_holds(
    stack_env: dict[str, str], make_client: Any, sign_up: Any
) -> None:
    """A lookup whose users' rows were all held by other requests marked nobody, but counted them checked: the flush
    saw a full batch and looked the same users up again, up to 10 times in its 2 s, each a call on the project's
    Auth quota. The flush now passes over the held ones (checked at the next flush) and goes on with the others
    (a review: stopping at the first held row would have cut the flush's lookups to one)."""
    from lockwise.core.config import get_settings
    from lockwise.devices import gone_accounts

    real = accounts.directory_for(PROJECT_ID, stack_env["FIREBASE_AUTH_EMULATOR_HOST"])
    busy, other = sign_up(), sign_up()
    for account in (busy, other):
        assert make_client("devices").get("/devices/me", headers=bearer(account)).status_code == 200
    _only_due(busy["localId"], other["localId"])
    with get_runtime("devices").db.transaction() as con:  # the busy one first in line
        con.run("UPDATE users SET account_checked_at = now() - interval '3 hours' WHERE uid = :u", u=busy["localId"])
    lookups: list[list[str]] = []

    class Counting:
        def lookup(self, uids: Sequence[str]) -> dict[str, accounts.Account]:
            lookups.append(list(uids))
            return real.lookup(uids)

        def verified_email(self, uid: str) -> str | None:
            return real.verified_email(uid)

    settings = dataclasses.replace(get_settings("devices"), account_check_batch=1)
    holder = get_runtime("devices").db.connect()
    try:
        holder.run("START TRANSACTION")  # a request of the busy user's under way
        holder.run("SELECT 1 FROM users WHERE uid = :u FOR UPDATE", u=busy["localId"])
        gone_accounts._sweep(get_runtime("devices").db, Counting, settings)
    finally:
        holder.close()
    # once each: the held one not again and again in the flush's 2 s, the other one after it
    assert lookups == [[busy["localId"]], [other["localId"]]]
    assert not _checked_just_now(busy["localId"]) and _checked_just_now(other["localId"])
    gone_accounts._sweep(get_runtime("devices").db, Counting, settings)  # the next flush
    assert lookups[2:] == [[busy["localId"]]] and _checked_just_now(busy["localId"])


def _checked_just_now(uid: str) -> bool:
    with get_runtime("devices").db.connection() as con:
        sql = "SELECT account_checked_at > now() - interval '1 minute' FROM users WHERE uid = :u"
        return bool(con.run(sql, u=uid)[0][0])


# ------------------------------------------------- what an account gave stands no longer than the hand that gave it


def error_code(resp: Any) -> tuple[int, str]:
    return resp.status_code, ((resp.get_json() or {}).get("error") or {}).get("code", "")


def invite(devices: Any, world: World, sender: str, invitee: str, role: str) -> str:
    resp = devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"uid": world.uid(invitee), "role": role},
        headers=world.headers(sender),
    )
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["invitation"]["id"])


def pair_with(devices: Any, code: str) -> Any:
    """A pairing of a new device (a thief's) with ``code``."""
    _, public = new_lock_key()
    _, csr = new_tls_key()
    return devices.post("/devices/provision", json={"code": code, "public_key": public, "csr": csr})


def live_identity(world: World) -> list[list[Any]]:
    with get_runtime("devices").db.connection() as con:
        return list(
            con.run(
                "SELECT mqtt_username FROM lock_credentials WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL",
                l=world.lock_id,
            )
        )


def test_an_invitation_of_an_admin_whose_account_was_disabled_since_lets_nobody_in_until_it_is_enabled(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 47: a thief with the admin's phone invited their own account; the operator disabled the admin's
    account (the stolen phone), and the thief's account still accepted the invitation and unlocked the door (202).
    An invitation stands no longer than its sender's account: it stands again once the account is enabled."""
    devices, admin = clients["devices"], world.uid("admin")
    invitation = invite(devices, world, "admin", "stranger", "member")
    admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": True})
    recheck_now(admin)
    flush(clients, stack_env)
    assert users_row(admin)[0]
    accept = f"/devices/invitations/{invitation}/accept"
    assert error_code(devices.post(accept, headers=world.headers("stranger"))) == (404, "invitation_not_found")
    pending = devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("owner")).get_json()
    assert invitation not in json.dumps(pending)
    admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": False})
    recheck_now(admin)
    flush(clients, stack_env)
    assert devices.post(accept, headers=world.headers("stranger")).status_code == 201


def test_an_invitation_of_an_owner_whose_account_was_deleted_since_lets_nobody_in(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 47: the owner invited an admin, then their account was deleted outside the app (the lock keeps it
    as its owner, for an operator); the invitee still joined as an admin nobody could remove (only the owner may)."""
    devices = clients["devices"]
    invitation = invite(devices, world, "owner", "stranger", "admin")
    delete_account(stack_env, world.uid("owner"))
    flush(clients, stack_env)
    accepted = devices.post(f"/devices/invitations/{invitation}/accept", headers=world.headers("stranger"))
    assert error_code(accepted) == (404, "invitation_not_found")


@pytest.mark.parametrize("how", ["disabled", "deleted"])
def test_a_pairing_code_of_an_account_disabled_or_deleted_since_pairs_nothing(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], how: str
) -> None:
    """Attack run 47: a thief with the owner's phone asked for a pairing code; the operator then disabled (or
    deleted) the account. The code still paired the thief's device: the door's own credential revoked (its voice
    and app unlocks stopped), the thief's device reporting the door's state, and nobody left to pair it again."""
    devices, owner = clients["devices"], world.uid("owner")
    issued = devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=world.headers("owner"))
    assert issued.status_code == 201, issued.get_json()
    if how == "disabled":
        admin_call(stack_env, "accounts:update", {"localId": owner, "disableUser": True})
        recheck_now(owner)
    else:
        delete_account(stack_env, owner)
    flush(clients, stack_env)
    assert error_code(pair_with(devices, issued.get_json()["code"])) == (401, "invalid_provisioning_code")
    assert live_identity(world) == [[world.credentials["mqtt"]["client_id"]]]


def test_an_offer_of_an_owner_whose_account_was_disabled_since_is_taken_by_nobody(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 47: a thief with the owner's phone offered the lock to an accomplice; the operator disabled the
    owner's account, and the accomplice still took the lock (200), the real owner made an admin they could remove.
    An offer of an account deleted since already ended (``transfer_offers.end_from``)."""
    devices, owner, path = clients["devices"], world.uid("owner"), f"/devices/locks/{world.lock_id}/transfer"
    assert devices.post(path, json={"uid": world.uid("admin")}, headers=world.headers("owner")).status_code == 202
    admin_call(stack_env, "accounts:update", {"localId": owner, "disableUser": True})
    recheck_now(owner)
    flush(clients, stack_env)
    assert error_code(devices.post(f"{path}/accept", headers=world.headers("admin"))) == (404, "transfer_not_found")
    assert error_code(devices.get(path, headers=world.headers("admin"))) == (404, "transfer_not_found")


def test_what_a_session_revoked_since_gave_grants_nothing_and_a_new_session_gives_again(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 47: the remedy for a stolen phone is to revoke the account's sessions (a password change,
    ``revokeRefreshTokens``); what the stolen session gave in the minutes before still worked: its pairing code
    paired the thief's device, its invitation let the thief's account in, its offer gave them the lock. Each now
    carries its session's sign-in time and falls with it; the owner, signed in again, gives anew."""
    devices, owner, path = clients["devices"], world.uid("owner"), f"/devices/locks/{world.lock_id}/transfer"
    issued = devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=world.headers("owner"))
    assert issued.status_code == 201
    invitation = invite(devices, world, "owner", "stranger", "member")
    assert devices.post(path, json={"uid": world.uid("admin")}, headers=world.headers("owner")).status_code == 202
    revoke_sessions(stack_env, owner)
    recheck_now(owner)
    flush(clients, stack_env)
    stolen = devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=world.headers("owner"))
    assert error_code(stolen) == (401, "token_revoked")
    assert error_code(pair_with(devices, issued.get_json()["code"])) == (401, "invalid_provisioning_code")
    accepted = devices.post(f"/devices/invitations/{invitation}/accept", headers=world.headers("stranger"))
    assert error_code(accepted) == (404, "invitation_not_found")
    assert error_code(devices.post(f"{path}/accept", headers=world.headers("admin"))) == (404, "transfer_not_found")
    assert live_identity(world) == [[world.credentials["mqtt"]["client_id"]]]
    again_in = bearer(sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], world.accounts["owner"]["email"]))
    flush(clients, stack_env)
    again = devices.post(path, json={"uid": world.uid("admin")}, headers=again_in)
    assert again.status_code == 202, again.get_json()
    assert devices.post(f"{path}/accept", headers=world.headers("admin")).status_code == 200


def test_a_lock_whose_members_are_all_away_writes_no_former_members_document_again(
    clients: dict[str, Any], world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 51: a lock whose record of its members' access was empty (every member but its owner removed, the
    owner's account disabled) was taken for one never recorded (migration 0046's start), and every mirror of it ended
    every former member's document again: one Firestore had deleted (its TTL) was made again, every ``purge_at``
    moved a day on. The lock's first mirror is recorded (``mirrored_access_locks``): nothing changed, nothing is
    written."""
    devices, lock, owner = clients["devices"], world.lock_id, world.headers("owner")
    for role in ("admin", "member", "guest_in", "guest_out"):
        assert devices.delete(f"/devices/locks/{lock}/members/{world.uid(role)}", headers=owner).status_code == 204
    admin_call(stack_env, "accounts:update", {"localId": world.uid("owner"), "disableUser": True})
    recheck_now(world.uid("owner"))
    flush(clients, stack_env)
    get_runtime("devices").flush_mirror(force=True)
    sdk = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    owners = sdk.document(mirror.access_doc(lock, world.uid("owner"))).get().to_dict()
    assert owners is not None and owners.get("ended") is True  # the disabled owner's, ended
    sdk.document(mirror.access_doc(lock, world.uid("admin"))).delete()  # as Firestore's TTL does a day on
    with get_runtime("devices").db.transaction() as con:  # any later mirror: an edge, a change
        members.mirror_access(con, lock)
        queued = con.run(
            "SELECT doc_path FROM firestore_outbox WHERE doc_path LIKE :p",
            p=f"{mirror.lock_collection(lock, 'access')}/%",
        )
    assert queued == []
    get_runtime("devices").flush_mirror(force=True)
    assert not sdk.document(mirror.access_doc(lock, world.uid("admin"))).get().exists


def test_an_owner_found_deleted_reads_nothing_of_the_lock_it_keeps_until_restored(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 52: a lock keeps the owner whose account was deleted outside the app (nobody is there to hand it
    over), and kept their access document as it was: the deleted owner's leftover token read the live view. Found
    deleted, their document is ended as a disabled account's is; their account restored with its uid, it is written
    again."""
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)
    host, owner, lock = stack_env["FIRESTORE_EMULATOR_HOST"], world.uid("owner"), world.lock_id
    token = world.accounts["owner"]["idToken"]
    assert rest_get(host, f"locks/{lock}", token) == 200
    delete_account(stack_env, owner)
    recheck_now(owner)
    flush(clients, stack_env)
    flush(clients, stack_env)  # the upkeep's mirror of the lock its owner was found gone at
    get_runtime("devices").flush_mirror(force=True)
    assert rest_get(host, f"locks/{lock}", token) == 403  # the leftover token, within its hour
    assert rest_get(host, f"locks/{lock}", world.accounts["admin"]["idToken"]) == 200
    with get_runtime("devices").db.transaction() as con:  # found gone a while ago (past the clocks' leeway)
        con.run("UPDATE users SET account_gone_at = now() - interval '5 minutes' WHERE uid = :u", u=owner)
    address = world.accounts["owner"]["email"]
    admin_call(stack_env, "accounts", {"localId": owner, "email": address, "password": "correct-horse-9"})
    restored = sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], address)
    clients["devices"].get("/devices/locks", headers=bearer(restored))  # asks for its check at once
    flush(clients, stack_env)
    flush(clients, stack_env)
    get_runtime("devices").flush_mirror(force=True)
    assert rest_get(host, f"locks/{lock}", restored["idToken"]) == 200


def _only_due(*uids: str) -> None:
    """Every user checked just now but ``uids``, which are due (as the hourly recheck makes them)."""
    with get_runtime("devices").db.transaction() as con:
        con.run("UPDATE users SET account_checked_at = now()")
        con.run("UPDATE users SET account_checked_at = now() - interval '2 hours' WHERE uid = ANY(:u)", u=list(uids))


def _disabled(uid: str) -> bool:
    with get_runtime("devices").db.connection() as con:
        return bool(con.run("SELECT account_disabled FROM users WHERE uid = :u", u=uid)[0][0])


class _Held:
    """Firebase Auth (the emulator) whose answer reaches the sweep when the test says (a slow network, a paused
    instance); ``seen`` holds what each lookup found of ``uid`` (disabled or not)."""

    def __init__(self, real: accounts.IdentityToolkit, uid: str, *, hold: bool) -> None:
        self.real, self.uid, self.seen = real, uid, list[bool]()
        self.answered, self.go = threading.Event(), threading.Event()
        if not hold:
            self.go.set()

    def lookup(self, uids: Sequence[str]) -> dict[str, accounts.Account]:
        found = self.real.lookup(uids)
        if self.uid in found:
            self.seen.append(found[self.uid].disabled)
        self.answered.set()
        assert self.go.wait(30)
        return found

    def verified_email(self, uid: str) -> str | None:
        return self.real.verified_email(uid)


def _sweep(directory: Any) -> accounts.Sweep:
    """One upkeep's account check, as ``gone_accounts.check`` makes it."""
    return accounts.sweep(
        get_runtime("devices").db, directory, batch=50, recheck_s=3600, standing_changed=members.mirror_access_soon
    )


def test_one_account_check_runs_at_a_time_across_instances(world: World, stack_env: dict[str, str]) -> None:
    """Attack run 61: the relay's two replicas flush side by side, and their account checks ran at once. One whose
    lookup was answered before an operator disabled an account (a stolen phone) wrote after another had found it
    disabled, and enabled it again until the next check an hour later: the phone's token unlocked the door. A check
    that finds another under way checks nobody, and what is written follows the order of the lookups."""
    real = accounts.directory_for(PROJECT_ID, stack_env["FIREBASE_AUTH_EMULATOR_HOST"])
    admin = world.uid("admin")
    _only_due(admin)
    slow = _Held(real, admin, hold=True)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_sweep, slow)
        assert slow.answered.wait(30)  # its lookup found the account enabled; its answer is on its way
        admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": True})
        other = _sweep(_Held(real, admin, hold=False))  # the other replica's check meanwhile
        assert other.checked == 0  # another check is under way: nobody checked twice at once
        slow.go.set()
        assert first.result(30).checked == 1
    assert slow.seen == [False] and not _disabled(admin)  # the only answer written (the disable: the next check's)
    # the lock is a transaction's, bounded by the server's idle-in-transaction limit (a session's, on an idle
    # connection, outlived a vanished holder until TCP keepalive gave up: attack run 65); and a check that outlived
    # it writes nothing over a newer one's
    _only_due(admin)
    slow = _Held(real, admin, hold=True)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_sweep, slow)
        assert slow.answered.wait(30)
        with get_runtime("devices").db.connection() as con:
            holders = con.run(
                "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
                " AND a.query LIKE '%lockwise account sweep%'"
            )
            # a newer check found it enabled again (it saw disabled): its answer stands
            con.run("UPDATE users SET account_disabled = false, account_checked_at = now() WHERE uid = :u", u=admin)
        slow.go.set()
        assert first.result(30).disabled == []
    assert slow.seen == [True] and holders == [["idle in transaction"]] and not _disabled(admin)
    _only_due(admin)
    assert _sweep(_Held(real, admin, hold=False)).disabled == [admin] and _disabled(admin)
    unlock = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("admin")
    )
    assert (unlock.status_code, unlock.get_json()["error"]["code"]) == (401, "account_disabled")

    stale = []
    disabled = True
    for round_ in range(40):  # side by side, the operator acting among them: the newest answer found stands
        _only_due(admin)
        disabled = not disabled
        start = threading.Barrier(3)
        checks = [_Held(real, admin, hold=False), _Held(real, admin, hold=False)]

        def run(directory: _Held, delay: float, start: threading.Barrier = start) -> None:
            start.wait()
            time.sleep(delay)
            _sweep(directory)

        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(run, checks[0], 0.0), pool.submit(run, checks[1], random.uniform(0.0, 0.004))]
            start.wait()
            time.sleep(random.uniform(0.0, 0.006))
            admin_call(stack_env, "accounts:update", {"localId": admin, "disableUser": disabled})
            for d in done:
                d.result(30)
        answers = [seen for check in checks for seen in check.seen]
        if disabled in answers and _disabled(admin) != disabled:
            stale.append((round_, answers))
    assert not stale, f"the older answer kept in rounds {stale}"


@pytest.mark.parametrize("how", ["deleted in the app", "deleted outside it"])
def test_a_deleted_accounts_address_is_tied_to_its_uid_by_no_invitation(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], how: str
) -> None:
    """Attack run 90: the account's address was forgotten, but the invitations to it kept it tied to the uid for the
    30 days an ended one is kept (``accepted_by``) and while an open one stood (``held_by``). Both ties go with the
    address; the open invitation stays for whoever holds the address now, as the removals left it."""
    from tests.devices_world import create_lock

    devices, host = clients["devices"], stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    uid, email = world.uid("member"), world.accounts["member"]["email"]
    verify_email(host, PROJECT_ID, uid)
    member = sign_in(host, email)
    assert devices.get("/devices/me", headers=bearer(member)).status_code == 200
    owner = world.accounts["owner"]
    sent = {}
    for name in ("Back door", "Shed"):
        lock = create_lock(devices, owner, name=name)["lock"]["id"]
        resp = devices.post(
            f"/devices/locks/{lock}/members", json={"email": email, "role": "member"}, headers=bearer(owner)
        )
        assert resp.status_code == 202, resp.get_json()
        sent[name] = resp.get_json()["invitation"]["id"]
    assert devices.post(f"/devices/invitations/{sent['Back door']}/accept", headers=bearer(member)).status_code == 201
    if how == "deleted in the app":
        assert devices.delete("/devices/me", headers=bearer(member)).status_code == 204
    delete_account(stack_env, uid)
    recheck_now(uid)
    flush(clients, stack_env)
    with get_runtime("devices").db.connection() as con:
        tied = con.run(
            "SELECT id::text FROM invitations WHERE email IS NOT NULL"
            " AND (accepted_by = :u OR declined_by = :u OR held_by = :u)",
            u=uid,
        )
        ((forgotten,),) = con.run("SELECT email IS NULL FROM users WHERE uid = :u", u=uid)
        (standing,) = con.run(
            "SELECT closed_at IS NULL AND withheld_at IS NULL FROM invitations WHERE id = CAST(:i AS uuid)",
            i=sent["Shed"],
        )
    assert forgotten and tied == []
    assert standing == [True]  # for whoever holds the address now


def test_a_flush_ends_deleted_accounts_within_its_time_and_the_next_takes_up_the_rest(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 93: a flush ended up to 20 deleted accounts, each leaving every lock in ~22 statements a lock, with
    no time limit: accounts in hundreds of locks held every later step of the relay's upkeep. It stops once its
    time is spent (one account at least a flush), and the next flush takes up the rest."""
    from lockwise.devices import gone_accounts

    monkeypatch.setattr(gone_accounts, "END_S", 0.0)
    uids = [world.uid("member"), world.uid("admin")]
    for uid in uids:
        delete_account(stack_env, uid)

    def ended() -> int:
        with get_runtime("devices").db.connection() as con:
            ((count,),) = con.run(
                "SELECT count(*) FROM users WHERE uid = ANY(:u) AND account_ended_at IS NOT NULL", u=uids
            )
        return int(count)

    flush(clients, stack_env)
    assert ended() == 1
    flush(clients, stack_env)
    assert ended() == 2
