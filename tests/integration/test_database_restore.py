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
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from infra.local import services
from lockwise.core.runtime import get_runtime
from lockwise.devices import lock_auth, restored
from simlock.lock import new_tls_key
from tests.conftest import _reset_database
from tests.devices_world import World, bearer, hand_over, pair_again

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
    assert report["journal"]["redone"]["credential_revoked"] == 2 and report["journal"]["left"] == 0, report
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
    outsider = sign_up()
    assert devices.get("/devices/me", headers=bearer(outsider)).status_code == 200
    invited = devices.post(
        f"/devices/locks/{lock}/members",
        json={"uid": outsider["localId"], "role": "member"},
        headers=world.headers("owner"),
    )
    assert invited.status_code == 202
    invitation = invited.get_json()["invitation"]["id"]
    dump = restore_point(postgres, tmp_path / "p.dump")

    member = f"/devices/locks/{lock}/members/{world.uid('member')}"
    assert devices.delete(member, headers=world.headers("owner")).status_code == 204
    assert (
        devices.delete(f"/devices/locks/{lock}/invitations/{invitation}", headers=world.headers("owner")).status_code
        == 204
    )
    assert hand_over(devices, lock, world.accounts["owner"], world.accounts["admin"]).status_code == 200

    restore(postgres, dump)
    assert unlock(devices, lock, world.headers("member")) == 202  # undone, as attack run 83 found

    report = redo(devices, operator)
    assert report["journal"]["redone"] == {"invitation_closed": 1, "membership_ended": 1, "owner_changed": 1}, report
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
    assert again["journal"]["redone"] == {} and again["journal"]["left"] == 0, again


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


def test_a_hand_over_to_a_member_who_joined_after_the_restore_point_is_left_to_an_operator(
    world: World, postgres: services.Postgres, tmp_path: Path, sign_up: Any, operator: dict[str, str]
) -> None:
    from tests.devices_world import join

    devices, lock = world.devices, world.lock_id
    buyer = sign_up()
    assert devices.get("/devices/me", headers=bearer(buyer)).status_code == 200
    dump = restore_point(postgres, tmp_path / "p.dump")
    join(devices, lock, world.accounts["owner"], buyer, {"role": "member"})
    assert hand_over(devices, lock, world.accounts["owner"], buyer).status_code == 200
    restore(postgres, dump)

    report = redo(devices, operator)
    assert report["hand_over"] == [lock] and "owner_changed" not in report["journal"]["redone"], report


def test_the_live_view_of_a_member_who_joined_after_the_restore_point_is_ended(
    world: World,
    postgres: services.Postgres,
    tmp_path: Path,
    sign_up: Any,
    stack_env: dict[str, str],
    operator: dict[str, str],
) -> None:
    """The mirror ends only the access documents its record names, and the restored record names none written
    after the restore point: a member who joined then kept reading the lock's live view, and an admin made owner
    then (its hand-over to someone who joined then is not done again) the whole feed (attack run 83). A lock made
    after it keeps no documents."""
    from tests.devices_world import create_lock, join
    from tests.integration.test_devices_live_view import ended, rest_get, rest_query

    host, lock, devices = stack_env["FIRESTORE_EMULATOR_HOST"], world.lock_id, world.devices
    runtime = get_runtime("devices")
    joiner = sign_up()
    assert devices.get("/devices/me", headers=bearer(joiner)).status_code == 200
    dump = restore_point(postgres, tmp_path / "p.dump")
    join(devices, lock, world.accounts["owner"], joiner, {"role": "admin"})
    assert hand_over(devices, lock, world.accounts["owner"], joiner).status_code == 200
    later = create_lock(devices, world.accounts["owner"], "Back door")["lock"]["id"]
    runtime.flush_mirror(force=True)
    assert rest_get(host, f"locks/{lock}", joiner["idToken"]) == 200
    assert rest_get(host, f"locks/{later}", world.accounts["owner"]["idToken"]) == 200
    restore(postgres, dump)

    report = redo(devices, operator)
    assert report["access"]["mirrored"] >= 1 and report["access"]["deleted"] == 1, report
    assert report["hand_over"] == [lock]  # given to one the database does not know as a member
    runtime.flush_mirror(force=True)
    from infra.local.firestore_sdk import sdk_client
    from tests.conftest import PROJECT_ID

    store = sdk_client(PROJECT_ID, host)
    assert ended(store.document(f"locks/{lock}/access/{joiner['localId']}").get().to_dict())
    assert rest_get(host, f"locks/{lock}", joiner["idToken"]) == 403
    assert rest_query(host, lock, joiner["idToken"])[0] == 403  # the whole feed was theirs as its owner
    access = store.document(f"locks/{lock}/access/{world.uid('owner')}").get().to_dict()
    assert access and access.get("role") == "owner", access  # what the database says (admin in Firestore before)
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
    with get_runtime("devices").db.connection() as con:
        ((unchecked, users),) = con.run(
            "SELECT count(*) FILTER (WHERE account_checked_at IS NULL), count(*) FROM users"
        )
    assert report["accounts_to_check"] > 0 and unchecked == users


def test_only_an_operator_runs_it(world: World) -> None:
    refused = world.devices.post(RESTORED, headers=world.headers("owner"))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "not_an_operator"
    assert world.devices.post(RESTORED).status_code == 401


def test_two_runs_at_once_do_each_entry_once(
    world: World, postgres: services.Postgres, tmp_path: Path, operator: dict[str, str]
) -> None:
    devices, lock = world.devices, world.lock_id
    dump = restore_point(postgres, tmp_path / "p.dump")
    for role in ("member", "guest_in", "guest_out", "admin"):
        assert (
            devices.delete(
                f"/devices/locks/{lock}/members/{world.uid(role)}", headers=world.headers("owner")
            ).status_code
            == 204
        )
    restore(postgres, dump)
    runtime = get_runtime("devices")
    reports: list[restored.Report] = []
    runs = [
        threading.Thread(target=lambda: reports.append(restored.run(runtime.db, runtime.mirror.client(), runtime.now)))
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
    bodies: list[dict[str, Any]] = [
        {"kind": "membership_ended", "at": "not a time", "lock_id": world.lock_id, "uid": world.uid("member")},
        {"kind": "no_such_kind", "at": "2026-01-01T00:00:00Z", "lock_id": world.lock_id},
        {"kind": "membership_ended", "at": "2026-01-01T00:00:00Z", "uid": world.uid("member")},  # no lock id
        {"kind": "lock_deleted", "at": "2026-01-01T00:00:00Z", "lock_id": world.lock_id},  # no owner
        {"kind": "credential_revoked", "at": "2026-01-01T00:00:00Z", "certificates": [{"serial": "XY'; --"}, 7]},
    ]
    with runtime.db.transaction() as con:
        for i, body in enumerate(bodies):
            mirror.enqueue(con, f"journal/0b0f4a48-59a1-4bb8-9b7e-1f0e3f6a5e1{i}", "set", body)
        mirror.enqueue(con, "journal/not-a-key", "set", {"kind": "lock_deleted", "at": "2026-01-01T00:00:00Z"})
    runtime.flush_mirror(force=True)
    crl = served_crl(world.devices)
    report = restored.run(runtime.db, runtime.mirror.client(), runtime.now)
    assert (report.unreadable, report.redone, report.unchanged) == (5, {}, 1), report.public()
    assert unlock(world.devices, world.lock_id, world.headers("member")) == 202
    assert served_crl(world.devices) == crl


def test_entries_are_read_oldest_first_and_expired_ones_are_not() -> None:
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)

    class Journal:
        def list_documents(self, collection: str, page_size: int, token: str | None) -> Any:
            assert collection == restored.JOURNAL
            pages = {
                None: (
                    [("0b0f4a48-59a1-4bb8-9b7e-1f0e3f6a5e12", {"kind": "lock_deleted", "at": "2026-05-31T00:00:02Z"})],
                    "2",
                ),
                "2": (
                    [
                        (
                            "0b0f4a48-59a1-4bb8-9b7e-1f0e3f6a5e11",
                            {"kind": "lock_deleted", "at": "2026-05-31T00:00:01Z"},
                        ),
                        (
                            "0b0f4a48-59a1-4bb8-9b7e-1f0e3f6a5e13",
                            {
                                "kind": "lock_deleted",
                                "at": "2026-04-01T00:00:00Z",
                                "expires_at": "2026-05-06T00:00:00Z",
                            },
                        ),
                        ("not-a-key", {"kind": "lock_deleted", "at": "2026-05-31T00:00:00Z"}),
                    ],
                    None,
                ),
            }
            return pages[token]

    entries, unreadable = restored._entries(Journal(), now)  # type: ignore[arg-type]
    assert [e.key[-2:] for e in entries] == ["11", "12"] and unreadable == 1
