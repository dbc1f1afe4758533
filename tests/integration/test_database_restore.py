"""PostgreSQL restored to an earlier point (Cloud SQL's point-in-time recovery, a nightly dump) while Firebase Auth,
Firestore, the broker and the locks are not: what the restore took back is done again from the journal Firestore
keeps (migration 0071, ``lockwise.devices.restored``, ``POST /devices/operator/restored``). Attack run 83 found every
revocation of the restored-away hour undone: the replaced device was the lock again, off the revocation list, a
removed member unlocked, a withdrawn invitation let its invitee in, a lock handed on was its former owner's.

The restore is done as an operator's data restore does it: ``pg_dump --data-only`` at the restore point, then every
table emptied and the dump loaded back with its triggers off (``pg_restore --disable-triggers``, sequences included);
the schema stays (the same release before and after). Each change after the restore point reaches Firestore's
journal as it would in seconds: the mirror is flushed before the restore."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from werkzeug.datastructures import Headers

from infra.local import services
from lockwise.core import errors
from lockwise.core.runtime import get_runtime
from lockwise.devices import lock_auth, restored
from simlock.lock import new_tls_key
from tests.conftest import _reset_database
from tests.devices_world import World, bearer, hand_over, invited, pair_again

RESTORED = "/devices/operator/restored"


def _pg_args(pg: services.Postgres) -> list[str]:
    return ["-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres", "-d", pg.database]


def restore_point(pg: services.Postgres, path: Path) -> Path:
    subprocess.run(
        ["pg_dump", *_pg_args(pg), "--data-only", "-Fc", "-T", "schema_migrations", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def restore(pg: services.Postgres, path: Path) -> None:
    """The changes since ``path`` reach Firestore's journal (as they do within seconds), then the database goes back
    to ``path``."""
    get_runtime("devices").flush_mirror(force=True)
    _reset_database(pg)
    subprocess.run(
        ["pg_restore", *_pg_args(pg), "--data-only", "--disable-triggers", str(path)], check=True, capture_output=True
    )


def served_crl(devices: Any) -> set[str]:
    resp = devices.get("/devices/lock-ca/crl")
    assert resp.status_code == 200
    return {format(e.serial_number, "x") for e in x509.load_pem_x509_crl(resp.get_data())}


def cert_serial(pem: str) -> str:
    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")


def signed(devices: Any, key: Any, lock_id: str, method: str, path: str, body: bytes = b"") -> Any:
    headers = lock_auth.sign_headers(key, lock_id, method, path, body, content_type="application/json" if body else "")
    return devices.open(method, path, data=body, headers=headers)


def redo(devices: Any, operator: dict[str, str]) -> dict[str, Any]:
    resp = devices.post(RESTORED, headers=operator)
    assert resp.status_code == 200, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    return body


def unlock(devices: Any, lock_id: str, headers: dict[str, str]) -> int:
    return int(
        devices.post(f"/devices/locks/{lock_id}/commands", json={"action": "unlock"}, headers=headers).status_code
    )


def remove(world: World, *roles: str) -> None:
    """The owner removes the world's members of ``roles``."""
    for role in roles:
        gone = world.devices.delete(
            f"/devices/locks/{world.lock_id}/members/{world.uid(role)}", headers=world.headers("owner")
        )
        assert gone.status_code == 204, gone.get_json()


def test_a_repairing_after_the_restore_point_is_done_again_and_the_replaced_device_is_refused(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    devices, lock = world.devices, world.lock_id
    dump = restore_point(postgres, tmp_path / "p.dump")
    old_serial = cert_serial(world.credentials["mqtt"]["certificate"])
    new_credentials, new_key, _ = pair_again(devices, world)  # the owner replaces a stolen device
    new_serial = cert_serial(new_credentials["mqtt"]["certificate"])
    pair_again(devices, world)  # and the new one too (its certificate unknown to the restored database)
    assert {old_serial, new_serial} <= served_crl(devices)

    restore(postgres, dump)
    assert old_serial not in served_crl(devices)  # what attack run 83 found: the broker would take it again
    assert signed(devices, world.lock_key, lock, "GET", "/devices/lock/config").status_code == 200

    report = redo(devices, operator)
    # (the second device's credential, unknown to the database, had its certificate listed by its issue's entry)
    redone = report["journal"]["redone"]
    assert (redone["credential_revoked"], redone["certificate_issued"], report["more"]) == (1, 2, False), report
    # both certificates listed again, the one issued after the restore point from the journal alone
    assert {old_serial, new_serial} <= served_crl(devices)
    stale = signed(devices, world.lock_key, lock, "GET", "/devices/lock/config")
    assert stale.status_code == 401 and stale.get_json()["error"]["code"] == "unknown_lock"
    renewed = signed(
        devices,
        world.lock_key,
        lock,
        "POST",
        "/devices/lock/certificate",
        json.dumps({"csr": new_tls_key()[1]}).encode(),
    )
    assert renewed.status_code == 401
    assert signed(devices, new_key, lock, "GET", "/devices/lock/config").status_code == 401
    with get_runtime("devices").db.connection() as con:
        assert not con.run(
            "SELECT 1 FROM lock_credentials WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL", l=lock
        )
    # the owner pairs the door again, as after any re-pairing the lock did not take
    _, paired_key, _ = pair_again(devices, world)
    assert signed(devices, paired_key, lock, "GET", "/devices/lock/config").status_code == 200


def test_a_removal_a_withdrawn_invitation_and_a_transfer_after_the_restore_point_are_done_again(
    world: World, postgres: services.Postgres, tmp_path: Path, sign_up: Any, operator: dict[str, str]
) -> None:
    devices, lock = world.devices, world.lock_id
    outsider, invitation = invited(world, sign_up)
    dump = restore_point(postgres, tmp_path / "p.dump")

    remove(world, "member")
    assert (
        devices.delete(f"/devices/locks/{lock}/invitations/{invitation}", headers=world.headers("owner")).status_code
        == 204
    )
    assert hand_over(devices, lock, world.accounts["owner"], world.accounts["admin"]).status_code == 200

    restore(postgres, dump)
    assert unlock(devices, lock, world.headers("member")) == 202  # undone, as attack run 83 found

    report = redo(devices, operator)
    assert report["journal"]["redone"] == {"invitation_closed": 1, "membership_ended": 1, "owner_changed": 1}, report
    assert report["more"] is False
    assert unlock(devices, lock, world.headers("member")) in (403, 404)
    assert devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(outsider)).status_code in (404, 410)
    assert unlock(devices, lock, bearer(outsider)) in (403, 404)
    with get_runtime("devices").db.connection() as con:
        ((owner,),) = con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)", l=lock)
        ((former,),) = con.run(
            "SELECT role FROM lock_members WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
            l=lock,
            u=world.uid("owner"),
        )
    assert (owner, former) == (world.uid("admin"), "admin")
    # done again once: a second run finds nothing to do (the entries it wrote doing them are its own)
    again = redo(devices, operator)
    assert again["journal"]["redone"] == {} and again["more"] is False, again


def test_a_removal_after_the_restore_point_withholds_the_invitations_to_the_members_address_again(
    world: World,
    postgres: services.Postgres,
    tmp_path: Path,
    sign_up: Any,
    stack_env: dict[str, str],
    operator: dict[str, str],
) -> None:
    """A member's removal withholds the invitations sent to their address (migration 0072); the restore took the
    withholding back with the removal, and its redo (``locks.revoke_member`` again) withholds them again, also from
    a new account made with the address since."""
    from tests.integration.test_devices_flows import member_with_address, move_account

    devices, lock = world.devices, world.lock_id
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    member, address = member_with_address(world, sign_up, host, project)
    add = f"/devices/locks/{lock}/members"
    sent = devices.post(add, json={"email": address, "role": "admin"}, headers=world.headers("owner"))
    assert sent.status_code == 202, sent.get_json()
    invitation = sent.get_json()["invitation"]["id"]
    dump = restore_point(postgres, tmp_path / "p.dump")
    assert devices.delete(f"{add}/{member['localId']}", headers=world.headers("owner")).status_code == 204

    restore(postgres, dump)
    listed = devices.get("/devices/invitations", headers=bearer(member)).get_json()["invitations"]
    assert [i["id"] for i in listed] == [invitation]  # undone with the removal

    report = redo(devices, operator)
    assert report["journal"]["redone"] == {"membership_ended": 1}, report
    assert devices.get("/devices/invitations", headers=bearer(member)).get_json()["invitations"] == []
    move_account(host, project, member, f"elsewhere-{secrets.token_hex(4)}@example.com")
    second = move_account(host, project, sign_up(email=address), address)
    assert devices.get("/devices/me", headers=bearer(second)).status_code == 200
    for who in (member, second):
        taken = devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(who))
        assert (taken.status_code, taken.get_json()["error"]["code"]) == (404, "invitation_not_found"), taken.get_json()
    waiting = devices.get(add, headers=world.headers("owner")).get_json()["invitations"]
    assert invitation in [i["id"] for i in waiting]  # still listed to the owner as waiting


def test_a_demotion_and_a_pause_after_the_restore_point_are_done_again(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    """A change of terms is a revocation too: the restore took an admin demoted since back to admin, and a member
    paused since (an expiry in the past) back to unlocking."""
    devices, lock, owner = world.devices, world.lock_id, world.headers("owner")
    members = f"/devices/locks/{lock}/members"
    dump = restore_point(postgres, tmp_path / "p.dump")
    assert devices.patch(f"{members}/{world.uid('admin')}", json={"role": "member"}, headers=owner).status_code == 200
    paused = {"role": "member", "access": {"expires_at": "2001-01-01T00:00:00+00:00"}}
    assert devices.patch(f"{members}/{world.uid('member')}", json=paused, headers=owner).status_code == 200
    assert unlock(devices, lock, world.headers("member")) in (403, 404)
    restore(postgres, dump)
    assert unlock(devices, lock, world.headers("member")) == 202

    report = redo(devices, operator)
    assert report["journal"]["redone"] == {"membership_changed": 2}, report
    assert unlock(devices, lock, world.headers("member")) in (403, 404)
    demoted = devices.patch(
        f"{members}/{world.uid('guest_in')}", json={"role": "admin"}, headers=world.headers("admin")
    )
    assert demoted.status_code == 403, demoted.get_json()  # a member grants nobody anything
    with get_runtime("devices").db.connection() as con:
        ((role,),) = con.run(
            "SELECT role FROM lock_members WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
            l=lock,
            u=world.uid("admin"),
        )
    assert role == "member"
    assert redo(devices, operator)["journal"]["redone"] == {}


def test_a_lock_deleted_after_the_restore_point_is_deleted_again(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    devices, lock = world.devices, world.lock_id
    dump = restore_point(postgres, tmp_path / "p.dump")
    assert devices.delete(f"/devices/locks/{lock}", headers=world.headers("owner")).status_code == 204
    restore(postgres, dump)
    assert devices.get(f"/devices/locks/{lock}", headers=world.headers("member")).status_code == 200

    report = redo(devices, operator)
    assert report["journal"]["redone"]["lock_deleted"] == 1, report
    assert devices.get(f"/devices/locks/{lock}", headers=world.headers("owner")).status_code == 404
    assert signed(devices, world.lock_key, lock, "GET", "/devices/lock/config").status_code == 401
    assert cert_serial(world.credentials["mqtt"]["certificate"]) in served_crl(devices)


def test_a_lock_sold_to_one_who_joined_after_the_restore_point_is_theirs_again_and_not_the_sellers(
    world: World, postgres: services.Postgres, tmp_path: Path, sign_up: Any, operator: dict[str, str]
) -> None:
    """Attack run 84: the buyer's membership was taken back with the restore, so the hand-over was left undone; the
    seller, whom the buyer had removed, owned the lock again and opened the buyer's door. The buyer is made a member
    as they were, then the owner, then the seller's removal is done again."""
    from tests.devices_world import join

    devices, lock = world.devices, world.lock_id
    buyer = sign_up()
    dump = restore_point(postgres, tmp_path / "p.dump")  # before the buyer ever used LockWise
    assert devices.get("/devices/me", headers=bearer(buyer)).status_code == 200
    join(devices, lock, world.accounts["owner"], buyer, {"role": "admin"})
    assert hand_over(devices, lock, world.accounts["owner"], buyer).status_code == 200
    seller = f"/devices/locks/{lock}/members/{world.uid('owner')}"
    assert devices.delete(seller, headers=bearer(buyer)).status_code == 204
    restore(postgres, dump)
    assert unlock(devices, lock, world.headers("owner")) == 202  # the seller's again

    report = redo(devices, operator)  # (the buyer's invitation, made since, is not in the database to close)
    assert report["journal"]["redone"] == {"membership_ended": 1, "owner_changed": 1}, report
    assert unlock(devices, lock, world.headers("owner")) in (403, 404)
    assert unlock(devices, lock, bearer(buyer)) == 202
    with get_runtime("devices").db.connection() as con:
        ((owner,),) = con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)", l=lock)
    assert owner == buyer["localId"]


def test_an_invitation_accepted_after_the_restore_point_is_not_taken_again_by_one_removed_since(
    world: World, postgres: services.Postgres, tmp_path: Path, sign_up: Any, operator: dict[str, str]
) -> None:
    """Attack run 84: accepted after the restore point, then removed, a member found the invitation open again in
    the restored database and took it a second time."""
    devices, lock = world.devices, world.lock_id
    invitee, invitation = invited(world, sign_up)
    dump = restore_point(postgres, tmp_path / "p.dump")
    assert devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(invitee)).status_code == 201
    removal = f"/devices/locks/{lock}/members/{invitee['localId']}"
    assert devices.delete(removal, headers=world.headers("owner")).status_code == 204
    restore(postgres, dump)

    assert redo(devices, operator)["journal"]["redone"] == {"invitation_closed": 1}
    assert devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(invitee)).status_code in (404, 410)
    assert unlock(devices, lock, bearer(invitee)) in (403, 404)


def test_an_account_disabled_after_the_restore_point_is_disabled_at_once(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    """Attack run 84: the restored row said enabled, and the account's voice was scored at the door until the
    sweep came to it (100 accounts a flush, at random). Its standing, which the sweep wrote to Firestore when it
    found it disabled, is taken at once."""
    from lockwise.core import mirror

    runtime, uid, lock = get_runtime("devices"), world.uid("member"), world.lock_id
    dump = restore_point(postgres, tmp_path / "p.dump")
    with runtime.db.transaction() as con:  # what the relay's sweep wrote finding it disabled in Firebase Auth
        con.run("UPDATE users SET account_disabled = true WHERE uid = :u", u=uid)
        mirror.enqueue_many(con, [mirror.standing(uid, ended=True, sessions_since_s=None, address_verified=False)])
    restore(postgres, dump)

    assert redo(world.devices, operator)["standing"] == 1
    with runtime.db.connection() as con:
        ((disabled,),) = con.run("SELECT account_disabled FROM users WHERE uid = :u", u=uid)
    assert disabled is True
    refused = world.devices.post(
        f"/devices/locks/{lock}/commands", json={"action": "unlock"}, headers=world.headers("member")
    )
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "account_disabled"


@pytest.mark.parametrize("paired_again_first", [False, True])
def test_a_certificate_renewed_after_the_restore_point_is_revoked_with_its_credential(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str], paired_again_first: bool
) -> None:
    """Attack run 84: the restored database did not know a certificate renewed since, so the next re-pairing left it
    off the revocation list: valid for its week. Attack run 85: paired again as the service was back, before the
    run came to the renewal's entry, the revocation had listed the certificates the database knew, and the renewed
    one, kept beside a revoked credential, was never listed."""
    devices, lock = world.devices, world.lock_id
    dump = restore_point(postgres, tmp_path / "p.dump")
    body = json.dumps({"csr": new_tls_key()[1]}).encode()
    renewed = signed(devices, world.lock_key, lock, "POST", "/devices/lock/certificate", body)
    assert renewed.status_code == 201, renewed.get_json()
    serial = cert_serial(renewed.get_json()["certificate"])
    restore(postgres, dump)
    if paired_again_first:
        pair_again(devices, world)
    assert redo(devices, operator)["journal"]["redone"] == {"certificate_issued": 1}
    if not paired_again_first:
        pair_again(devices, world)
    assert serial in served_crl(devices)


def test_the_live_view_of_a_member_who_joined_after_the_restore_point_is_ended(
    world: World,
    postgres: services.Postgres,
    tmp_path: Path,
    sign_up: Any,
    stack_env: dict[str, str],
    operator: dict[str, str],
) -> None:
    """The mirror ends only the access documents its record names, and the restored record names none written
    after the restore point: an admin who joined then kept reading the lock's live view, its whole feed too (attack
    run 83; a joining is not journaled: a grant the restore took back is asked for again). A lock made after it
    keeps no documents."""
    from tests.devices_world import create_lock, join
    from tests.integration.test_devices_live_view import ended, rest_get, rest_query

    host, lock, devices = stack_env["FIRESTORE_EMULATOR_HOST"], world.lock_id, world.devices
    runtime = get_runtime("devices")
    joiner = sign_up()
    assert devices.get("/devices/me", headers=bearer(joiner)).status_code == 200
    dump = restore_point(postgres, tmp_path / "p.dump")
    join(devices, lock, world.accounts["owner"], joiner, {"role": "admin"})
    later = create_lock(devices, world.accounts["owner"], "Back door")["lock"]["id"]
    runtime.flush_mirror(force=True)
    assert rest_get(host, f"locks/{lock}", joiner["idToken"]) == 200
    assert rest_get(host, f"locks/{later}", world.accounts["owner"]["idToken"]) == 200
    restore(postgres, dump)

    report = redo(devices, operator)
    assert report["access"]["mirrored"] >= 1 and report["access"]["deleted"] == 1, report
    runtime.flush_mirror(force=True)
    from infra.local.firestore_sdk import sdk_client
    from tests.conftest import PROJECT_ID

    store = sdk_client(PROJECT_ID, host)
    assert ended(store.document(f"locks/{lock}/access/{joiner['localId']}").get().to_dict())
    assert rest_get(host, f"locks/{lock}", joiner["idToken"]) == 403
    assert rest_query(host, lock, joiner["idToken"])[0] == 403  # the whole feed was theirs as its admin
    assert rest_query(host, lock, world.accounts["owner"]["idToken"])[0] == 200
    assert not store.document(f"locks/{later}").get().exists


def test_a_voice_erased_after_the_restore_point_is_erased_again(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    from lockwise.core import erasure

    db, uid = get_runtime("devices").db, world.uid("member")
    with db.transaction() as con:
        con.run(
            "INSERT INTO voiceprints (user_uid, model_id, dim, embedding, sample_count, sample_embeddings)"
            " VALUES (:u, 'm', 192, :e, 1, :e)",
            u=uid,
            e=b"\0" * 768,
        )
    dump = restore_point(postgres, tmp_path / "p.dump")
    with db.transaction() as con:
        # one with nothing to erase writes no entry: a loop of them wrote Firestore once each (attack run 54's kind)
        journaled = con.run("SELECT count(*) FROM journal_entries")
        assert erasure.forget_voice(con, world.uid("guest_in"), "requested") == 0
        assert con.run("SELECT count(*) FROM journal_entries") == journaled
        assert erasure.forget_voice(con, uid, "requested") == 1  # DELETE /embed/enrollment's
    restore(postgres, dump)
    with db.connection() as con:
        assert con.run("SELECT 1 FROM voiceprints WHERE user_uid = :u", u=uid)

    assert redo(devices := world.devices, operator)["journal"]["redone"] == {"voice_erased": 1}
    with db.connection() as con:
        assert not con.run("SELECT 1 FROM voiceprints WHERE user_uid = :u", u=uid)
        ((reason,),) = con.run("SELECT reason FROM voice_erasures WHERE user_uid = :u", u=uid)
    assert reason == "requested"
    assert redo(devices, operator)["journal"]["redone"] == {}


def test_a_signed_lock_request_from_before_the_restore_is_refused_and_every_account_is_checked_again(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    """The restored database lacks the nonces of the requests answered since the restore point: one captured in
    the minute before the cutover was taken a second time (attack run 83). Requests dated before the run are
    refused; fresh ones pass."""
    devices, lock, path = world.devices, world.lock_id, "/devices/lock/config"
    with get_runtime("devices").db.transaction() as con:
        con.run("UPDATE users SET account_checked_at = now()")  # as the relay's sweeps leave them
    dump = restore_point(postgres, tmp_path / "p.dump")
    captured = lock_auth.sign_headers(world.lock_key, lock, "GET", path, b"", now=time.time() - 2)  # in its minute
    assert devices.get(path, headers=captured).status_code == 200
    restore(postgres, dump)

    report = redo(devices, operator)
    again = devices.get(path, headers=captured)
    assert again.status_code == 401 and again.get_json()["error"]["code"] == "stale_request"
    assert signed(devices, world.lock_key, lock, "GET", path).status_code == 200
    from lockwise.core import accounts

    with get_runtime("devices").db.connection() as con:
        ((users,),) = con.run("SELECT count(*) FROM users")
        due = accounts._due(con, 1000, 3600, [])  # checked a moment ago, and due: before the restore was done again
    assert report["accounts_to_check"] == users == len(due) > 0


def test_only_an_operator_runs_it(world: World) -> None:
    refused = world.devices.post(RESTORED, headers=world.headers("owner"))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "not_an_operator"
    assert world.devices.post(RESTORED).status_code == 401


def test_two_runs_at_once_do_each_entry_once(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    lock = world.lock_id
    dump = restore_point(postgres, tmp_path / "p.dump")
    remove(world, "member", "guest_in", "guest_out", "admin")
    restore(postgres, dump)
    runtime = get_runtime("devices")
    reports: list[restored.Report] = []
    runs = [
        threading.Thread(
            target=lambda: reports.append(restored.do_again(runtime.db, runtime.mirror.client(), "operator:t"))
        )
        for _ in range(2)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert sum(r.redone.get("membership_ended", 0) for r in reports) == 4, [r.public() for r in reports]
    with runtime.db.connection() as con:
        ((ended,),) = con.run(
            "SELECT count(*) FROM audit_log WHERE action = 'restore.membership_ended' AND lock_id = CAST(:l AS uuid)",
            l=lock,
        )
    assert ended == 4


def test_an_entry_that_cannot_be_used_is_counted_and_changes_nothing(world: World) -> None:
    """None is written but by migration 0071's ``journal()``; a hand in the Firestore console could write any."""
    from lockwise.core import mirror

    runtime = get_runtime("devices")
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    bodies: list[dict[str, Any]] = [
        {"kind": "membership_ended", "at": "not a time", "lock_id": world.lock_id, "uid": world.uid("member")},
        {"kind": "no_such_kind", "at": now, "lock_id": world.lock_id},
        {"kind": "membership_ended", "at": now, "uid": world.uid("member")},  # no lock id
        {"kind": "lock_deleted", "at": now, "lock_id": world.lock_id},  # no owner
        {"kind": "credential_revoked", "at": now, "certificates": [{"serial": "XY'; --"}, 7]},
    ]
    with runtime.db.transaction() as con:
        for i, body in enumerate(bodies):
            mirror.enqueue(con, f"journal/0b0f4a48-59a1-4bb8-9b7e-1f0e3f6a5e1{i}", "set", body)
        mirror.enqueue(con, "journal/not-a-key", "set", {"kind": "lock_deleted", "at": now})
    runtime.flush_mirror(force=True)
    crl = served_crl(world.devices)
    report = restored.do_again(runtime.db, runtime.mirror.client(), "operator:t")
    assert (report.unreadable, report.redone, report.unchanged) == (5, {}, 1), report.public()
    assert unlock(world.devices, world.lock_id, world.headers("member")) == 202
    assert served_crl(world.devices) == crl


def test_a_run_cut_short_is_taken_up_where_it_stopped(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    """Attack run 84: each call read the whole journal and listed every access document again, from the first,
    so a run cut by its budget (or the platform's timeout) at scale never finished. Each call now takes up where
    the one before stopped, and does one entry at least."""
    devices, lock = world.devices, world.lock_id
    dump = restore_point(postgres, tmp_path / "p.dump")
    remove(world, "member", "guest_in", "guest_out", "admin")
    restore(postgres, dump)
    runtime = get_runtime("devices")
    reports = [restored.do_again(runtime.db, runtime.mirror.client(), "operator:t", budget_s=0)]
    while not reports[-1].done:
        assert len(reports) < 20, [r.public() for r in reports]
        reports.append(restored.do_again(runtime.db, runtime.mirror.client(), "operator:t", budget_s=0))
    assert len(reports) >= 4 and len({r.fenced_at for r in reports}) == 1  # one restore, one fence
    assert sum(r.redone.get("membership_ended", 0) for r in reports) == 4
    assert unlock(devices, lock, world.headers("member")) in (403, 404)
    fresh = restored.do_again(runtime.db, runtime.mirror.client(), "operator:t")  # after a done one: fenced anew
    assert fresh.fenced_at > reports[0].fenced_at and fresh.redone == {} and fresh.done


def test_while_a_restore_is_brought_back_no_change_is_made_and_the_door_waits(
    world: World,
    postgres: services.Postgres,
    tmp_path: Path,
    operator: dict[str, str],
    stack_env: dict[str, str],
) -> None:
    """Attack run 85: served again before the run came to its entries, the restored database took changes that the
    run then could not undo or undid wrongly (a withdrawn invitation accepted, a withdrawn offer taken, a pause
    made now overwritten). Until the run is done, and before it while the deployment says a restore is pending
    (``LOCKWISE_RESTORE_PENDING``), the app reads but changes nothing and the locks' requests wait: 503
    ``restore_in_progress``. The operators' routes go on."""
    devices, lock, owner = world.devices, world.lock_id, world.headers("owner")
    invite = {"uid": world.uid("stranger"), "role": "member"}
    runtime = get_runtime("devices")
    dump = restore_point(postgres, tmp_path / "p.dump")
    remove(world, "member", "guest_in")
    restore(postgres, dump)

    def waiting(resp: Any) -> bool:
        body = resp.get_json()
        return (
            resp.status_code == 503 and body["error"]["code"] == "restore_in_progress" and "Retry-After" in resp.headers
        )

    # the deployment's flag, before any run: changes and the locks' requests wait
    with pytest.raises(errors.Unavailable, match="restored database") as pending:
        restored.refuse_changes(runtime.db, True)
    assert pending.value.code == "restore_in_progress"
    with runtime.db.connection() as con, pytest.raises(errors.Unavailable) as door:
        headers = lock_auth.sign_headers(world.lock_key, lock, "GET", "/devices/lock/config", b"")
        lock_auth.authenticate(
            con, Headers(headers), "GET", "/devices/lock/config", b"", skew_s=60, per_minute=60, restore_pending=True
        )
    assert door.value.code == "restore_in_progress"
    restored.refuse_changes(runtime.db, False)  # nothing open yet
    first = restored.do_again(runtime.db, runtime.mirror.client(), "operator:t", budget_s=0)
    assert not first.done  # the run under way holds them
    assert waiting(devices.post(f"/devices/locks/{lock}/members", json=invite, headers=owner))
    assert waiting(devices.post(f"/devices/locks/{lock}/commands", json={"action": "unlock"}, headers=owner))
    assert waiting(signed(devices, world.lock_key, lock, "GET", "/devices/lock/config"))
    assert devices.get(f"/devices/locks/{lock}", headers=owner).status_code == 200  # reading goes on
    # nor does the relay's flush write the restored queue's live view, as it was at the restore point (attack run
    # 89), before the run's last step writes it again (nor before any run, with the flag: ``refuse_changes``)
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert waiting(devices.post("/devices/relay/flush", headers=service))
    while redo(devices, operator)["more"]:
        pass
    assert devices.post("/devices/relay/flush", headers=service).status_code == 200
    assert devices.post(f"/devices/locks/{lock}/members", json=invite, headers=owner).status_code == 202
    assert signed(devices, world.lock_key, lock, "GET", "/devices/lock/config").status_code == 200


def test_a_change_made_before_the_first_run_hides_no_entry_of_an_older_restore_point(
    world: World, postgres: services.Postgres, tmp_path: Path, stack_env: dict[str, str], operator: dict[str, str]
) -> None:
    """Attack run 85: the journal was read from an hour before the newest key the database kept, so any change made
    after it served again (a lock's renewal, the relay's sweep) moved the start past every entry lost with a restore
    point over an hour back. Time passing is simulated: the kept keys moved 3 h back, the lost entry 2 h."""
    from infra.local.firestore_sdk import sdk_client
    from tests.conftest import PROJECT_ID

    db, devices, lock = get_runtime("devices").db, world.devices, world.lock_id
    with db.connection() as con:
        before = {str(r[0]) for r in con.run("SELECT key::text FROM journal_entries")}
    dump = restore_point(postgres, tmp_path / "p.dump")
    remove(world, "member")
    with db.connection() as con:
        lost = {str(r[0]) for r in con.run("SELECT key::text FROM journal_entries")} - before
    restore(postgres, dump)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    with db.transaction() as con:
        con.run("UPDATE journal_entries SET at = at - interval '3 hours'")
    import pg8000.native

    admin = pg8000.native.Connection(  # past the audit log's append-only triggers, as an operator's session
        "postgres",
        unix_sock=f"{postgres.socket_dir}/.s.PGSQL.{postgres.port}",
        database=postgres.database,
        ssl_context=False,
    )
    try:
        admin.run("SET session_replication_role = replica")
        admin.run("UPDATE audit_log SET at = at - interval '3 hours'")
    finally:
        admin.close()
    store = sdk_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    for key in lost:
        doc = store.document(f"journal/{key}")
        at = dt.datetime.strptime(doc.get().to_dict()["at"], fmt) - dt.timedelta(hours=2)
        doc.update({"at": at.strftime(fmt)})
    body = json.dumps({"csr": new_tls_key()[1]}).encode()  # a lock renews as the service is back
    assert signed(devices, world.lock_key, lock, "POST", "/devices/lock/certificate", body).status_code == 201

    report = redo(devices, operator)
    assert report["journal"]["redone"].get("membership_ended") == 1, report
    assert unlock(devices, lock, world.headers("member")) in (403, 404)


def test_a_database_restored_to_before_any_journal_entry_is_brought_back(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    """Attack run 85: with no key kept (restored to before migration 0071, or 37 quiet days), every run failed on
    its start and fenced nothing."""
    devices = world.devices
    with get_runtime("devices").db.transaction() as con:
        con.run("DELETE FROM journal_entries")
    dump = restore_point(postgres, tmp_path / "p.dump")
    remove(world, "member")
    restore(postgres, dump)
    report = redo(devices, operator)
    assert report["journal"]["redone"] == {"membership_ended": 1} and report["more"] is False, report


def test_changes_made_before_the_first_run_without_the_flag_are_judged_against_the_journal(
    world: World, postgres: services.Postgres, tmp_path: Path, sign_up: Any, operator: dict[str, str]
) -> None:
    """Attack run 85, served as restored without ``LOCKWISE_RESTORE_PENDING``: a withdrawn invitation was accepted,
    a withdrawn transfer offer taken, and a promotion since the restore point was done again over a pause made
    meanwhile. The membership an invitation answered before made is ended, a lock taken on an offer withdrawn before
    goes back, and a member's terms changed again since stand."""
    devices, lock, owner = world.devices, world.lock_id, world.headers("owner")
    outsider, invitation = invited(world, sign_up)
    offered = devices.post(f"/devices/locks/{lock}/transfer", json={"uid": world.uid("admin")}, headers=owner)
    assert offered.status_code == 202, offered.get_json()
    member = f"/devices/locks/{lock}/members/{world.uid('member')}"
    dump = restore_point(postgres, tmp_path / "p.dump")
    assert devices.delete(f"/devices/locks/{lock}/invitations/{invitation}", headers=owner).status_code == 204
    assert devices.delete(f"/devices/locks/{lock}/transfer", headers=owner).status_code in (200, 204)
    assert devices.patch(member, json={"role": "admin"}, headers=owner).status_code == 200
    restore(postgres, dump)
    assert devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(outsider)).status_code == 201
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    paused = devices.patch(member, json={"role": "member", "access": {"expires_at": past}}, headers=owner)
    assert paused.status_code == 200, paused.get_json()
    assert devices.post(f"/devices/locks/{lock}/transfer/accept", headers=world.headers("admin")).status_code == 200

    report = redo(devices, operator)
    assert report["journal"]["redone"] == {"invitation_closed": 1, "offer_closed": 1}, report
    assert unlock(devices, lock, bearer(outsider)) in (403, 404)
    assert unlock(devices, lock, world.headers("member")) in (403, 404)  # the pause stands
    with get_runtime("devices").db.connection() as con:
        ((holder,),) = con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)", l=lock)
    assert holder == world.uid("owner")


def test_a_lock_handed_back_by_the_run_is_not_shown_as_its_owners_doing(
    world: World, postgres: services.Postgres, tmp_path: Path, stack_env: dict[str, str], operator: dict[str, str]
) -> None:
    """Attack run 99: a lock taken on an offer withdrawn after the restore point goes back to its giver, and the feed
    said the one it was taken from had handed it over (``actor_uid``: they had done nothing), as a hand-over done
    again named its giver a second time. The run's entries name nobody as having done them, with ``reason``."""
    from infra.local.firestore_sdk import sdk_client
    from tests.conftest import PROJECT_ID

    devices, lock, owner = world.devices, world.lock_id, world.headers("owner")
    admin = world.uid("admin")
    offered = devices.post(f"/devices/locks/{lock}/transfer", json={"uid": admin}, headers=owner)
    assert offered.status_code == 202, offered.get_json()
    dump = restore_point(postgres, tmp_path / "p.dump")
    assert devices.delete(f"/devices/locks/{lock}/transfer", headers=owner).status_code in (200, 204)
    restore(postgres, dump)
    assert devices.post(f"/devices/locks/{lock}/transfer/accept", headers=world.headers("admin")).status_code == 200

    assert redo(devices, operator)["journal"]["redone"] == {"offer_closed": 1}
    get_runtime("devices").flush_mirror(force=True)
    store = sdk_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    told = [e.to_dict() for e in store.collection(f"locks/{lock}/activity").stream()]
    handed = sorted(
        (
            (e["target_uid"], e.get("actor_uid"), e.get("from_uid"), e.get("reason"))
            for e in told
            if e["kind"] == "ownership_transferred"
        ),
        key=lambda t: t[0] == world.uid("owner"),
    )
    # the admin's acceptance (the owner's giving, as served), then the run's handing back, nobody's doing
    assert handed == [(admin, world.uid("owner"), None, None), (world.uid("owner"), None, admin, "restored")], handed
