"""Pairing with the simulated lock over the real broker, commands (idempotency, expiry, revocation), invitations,
deletion, audit, and bad input: each a 4xx with a code, never a 500."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import secrets
import threading
import time
import types
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from werkzeug.datastructures import Headers

from infra.local.firestore_sdk import sdk_client as firestore_client
from infra.local.services import Broker
from lockwise.core import accounts, audit, errors, inputs, mirror, retention, users, zones
from lockwise.core.config import get_settings
from lockwise.core.db import Database
from lockwise.core.runtime import get_runtime
from lockwise.devices import changes, command_signing, commands, lock_auth, lock_certs, members, provisioning
from simlock.lock import SimulatedLock, new_tls_key
from simlock.lock import pem_of as tls_pem
from tests.conftest import PROJECT_ID
from tests.devices_world import (
    World,
    active_members,
    bearer,
    build_world,
    create_lock,
    every_page,
    hand_over,
    join,
    new_lock_key,
    pair_again,
    provision,
    sign_in,
    verify_email,
)
from tests.integration.test_devices_live_view import wait_until_mirrored
from tests.zone_data import pinned

#: a usable public key (the curve's base point): these cases are about the fields after it
BASE_POINT = "WGZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY="


@pytest.fixture
def devices(make_client: Any) -> Any:
    return make_client("devices")


@pytest.fixture
def world(devices: Any, sign_up: Any) -> World:
    return build_world(devices, sign_up)


def db_rows(sql: str, **params: Any) -> Any:
    with get_runtime("devices").db.connection() as con:
        return con.run(sql, **params)


def test_pairing_flow_with_the_simulated_lock(devices: Any, sign_up: Any, broker: Broker) -> None:
    owner = sign_up()
    created = create_lock(devices, owner)
    lock_id, code = created["lock"]["id"], created["provisioning"]["code"]
    assert created["lock"]["provisioned"] is False
    credentials, key, tls_key = provision(devices, code)
    identity = credentials["mqtt"]["client_id"]
    assert credentials["lock_id"] == lock_id and identity != lock_id  # a broker identity of its own, per pairing
    assert credentials["mqtt"]["port"] == broker.port and credentials["mqtt"]["tls"] is True
    cert = x509.load_pem_x509_certificate(credentials["mqtt"]["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity  # not the CSR's subject
    assert credentials["mqtt"]["topics"]["commands"] == f"lockwise/{identity}/cmd"
    # the code works once
    _, again = new_lock_key()
    resp = devices.post("/devices/provision", json={"code": code, "public_key": again, "csr": new_tls_key()[1]})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_provisioning_code"
    # only public things are stored: no broker password, the certificate's serial
    ((stored_hash, stored_key, serial),) = db_rows(
        "SELECT mqtt_password_hash, signing_public_key, cert_serial FROM lock_credentials"
        " WHERE lock_id = CAST(:l AS uuid)",
        l=lock_id,
    )
    assert stored_hash is None and len(bytes(stored_key)) == 32 and int(serial, 16) == cert.serial_number
    world = World(devices, {"owner": owner}, lock_id, credentials, key, tls_key)
    lock = SimulatedLock(world.lock_config(broker))
    # it connects with its certificate; no relay runs here, so the broker holds its reports, and a graceful goodbye
    # would wait for an acknowledgement that never comes
    lock.start()
    lock.stop(graceful=False)
    assert devices.get(f"/devices/locks/{lock_id}", headers=bearer(owner)).get_json()["provisioned"] is True

    # re-provisioning: a new identity; the old one is revoked
    code2 = devices.post(f"/devices/locks/{lock_id}/provisioning", headers=bearer(owner)).get_json()["code"]
    credentials2, key2, tls_key2 = provision(devices, code2)
    assert credentials2["mqtt"]["client_id"] != identity
    new = SimulatedLock(World(devices, {}, lock_id, credentials2, key2, tls_key2).lock_config(broker))
    new.start()
    new.stop(graceful=False)
    assert db_rows(
        "SELECT count(*) FROM lock_credentials WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL", l=lock_id
    ) == [[1]]


def paired_once(devices: Any, owner: dict[str, Any]) -> tuple[str, dict[str, Any], Any, Any, Any]:
    """A lock of ``owner``'s made and paired with its code: its id, the pairing's body (to send again), the lock's
    signing key and TLS key, and the pairing's answer."""
    created = create_lock(devices, owner)
    lock_id, code = created["lock"]["id"], created["provisioning"]["code"]
    key, public = new_lock_key()
    tls_key, csr = new_tls_key()
    body = {"code": code, "public_key": public, "csr": csr}
    first = devices.post("/devices/provision", json=body)
    assert first.status_code == 201
    return lock_id, body, key, tls_key, first


def test_a_pairing_sent_again_after_its_answer_was_lost_gets_its_credentials_and_nobody_else_does(
    devices: Any, sign_up: Any, broker: Broker
) -> None:
    """A lock whose pairing answer was lost (its Wi-Fi dropped, or a 503) sends the same code, key and CSR again:
    before, 401 ``invalid_provisioning_code``, and it could not pair until the owner issued a new code while the app
    showed it paired (attack run 37). Now the same lock gets the credential its pairing made (same lock, same
    identity) with a new certificate for its TLS key; the same code with another signing key or another TLS key
    stays 401, nothing is revoked, and the certificates count with the renewals (past them, 429 until the code
    ends, not the renewals' day)."""
    owner = sign_up()
    lock_id, body, key, tls_key, first = paired_once(devices, owner)
    again = devices.post("/devices/provision", json=body)
    assert again.status_code == 201, again.get_json()
    credentials = again.get_json()
    assert credentials["lock_id"] == lock_id
    assert credentials["mqtt"]["client_id"] == first.get_json()["mqtt"]["client_id"]
    certificate = x509.load_pem_x509_certificate(credentials["mqtt"]["certificate"].encode())
    assert certificate.public_key() == tls_key.public_key()
    lock = SimulatedLock(World(devices, {}, lock_id, credentials, key, tls_pem(tls_key)).lock_config(broker))
    lock.start()  # the repeated answer's certificate connects
    lock.stop(graceful=False)
    _, other_public = new_lock_key()
    for wrong in ({**body, "public_key": other_public}, {**body, "csr": new_tls_key()[1]}):
        resp = devices.post("/devices/provision", json=wrong)
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_provisioning_code"
    assert db_rows(
        "SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*) FROM lock_credentials"
        " WHERE lock_id = CAST(:l AS uuid)",
        l=lock_id,
    ) == [[1, 1]]
    for _ in range(4):  # 6 certificates a day with the first two
        assert devices.post("/devices/provision", json=body).status_code == 201
    limited = devices.post("/devices/provision", json=body)  # not the renewals' day: the code ends sooner
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "pairing_retry_limit"
    assert 1 <= int(limited.headers["Retry-After"]) <= 600
    # paired again with a new code: the old code's pairing is gone for good
    code2 = devices.post(f"/devices/locks/{lock_id}/provisioning", headers=bearer(owner)).get_json()["code"]
    provision(devices, code2)
    resp = devices.post("/devices/provision", json=body)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_provisioning_code"


def test_a_pairing_sent_again_after_its_lock_changed_hands_still_gets_its_credentials(
    devices: Any, sign_up: Any
) -> None:
    """Attack run 108's leftover: a lock whose pairing answer was lost sent it again within the code's 10 minutes,
    after its owner had handed the lock over: 401 ``invalid_provisioning_code``, as for a code nobody may use, although
    its credential was live and paired. A code's issuer must still own the lock for the code to pair it; the pairing
    it made, sent again by the lock that made it, is answered as a renewal would be, whoever owns the lock now."""
    owner, taker = sign_up(), sign_up()
    lock_id, body, _, tls_key, first = paired_once(devices, owner)
    join(devices, lock_id, owner, taker, {"role": "member"})
    assert hand_over(devices, lock_id, owner, taker).status_code == 200
    again = devices.post("/devices/provision", json=body)  # its answer lost, sent again
    assert again.status_code == 201, again.get_json()
    assert again.get_json()["mqtt"]["client_id"] == first.get_json()["mqtt"]["client_id"]
    certificate = x509.load_pem_x509_certificate(again.get_json()["mqtt"]["certificate"].encode())
    assert certificate.public_key() == tls_key.public_key()
    # the code pairs nothing else: another device with it is refused, as before
    _, other_public = new_lock_key()
    resp = devices.post("/devices/provision", json={**body, "public_key": other_public})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_provisioning_code"


def test_a_bad_csr_is_refused_and_uses_no_code(devices: Any, sign_up: Any) -> None:
    created = create_lock(devices, sign_up())
    code = created["provisioning"]["code"]
    _, public = new_lock_key()
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    # a curve, a key type and a signature algorithm the library does not know: the first two were 500s, before any
    # code was looked up (attack run 58)
    der = x509.load_pem_x509_csr(new_tls_key()[1].encode()).public_bytes(serialization.Encoding.DER)
    unknown = [
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(der.replace(bytes.fromhex(known), bytes.fromhex(odd))).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
        for known, odd in (
            ("06082a8648ce3d030107", "06082a8648ce3d030104"),  # P-256 -> prime239v1
            ("06072a8648ce3d0201", "06072a8648ce3d0209"),  # id-ecPublicKey -> an unassigned arc
            ("06082a8648ce3d040302", "06082a8648ce3d040309"),  # ecdsa-with-SHA256 -> an unassigned arc
        )
    ]
    for csr in (None, "not a csr", rsa_csr, "x" * 5000, *unknown):
        resp = devices.post("/devices/provision", json={"code": code, "public_key": public, "csr": csr})
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_csr", csr
    assert (
        devices.post(
            "/devices/provision", json={"code": code, "public_key": public, "csr": new_tls_key()[1]}
        ).status_code
        == 201
    )


def test_a_signing_key_pairs_one_lock_at_a_time(devices: Any, sign_up: Any) -> None:
    """The lock header is not under the signature, so two locks sharing a key could replay each other's requests:
    a key another lock holds is refused (409, the code left unused), and the same lock may pair again with it."""
    owner = sign_up()
    first, second = create_lock(devices, owner), create_lock(devices, owner, name="Back door")
    _, public = new_lock_key()

    def pair(code: str) -> Any:
        return devices.post("/devices/provision", json={"code": code, "public_key": public, "csr": new_tls_key()[1]})

    assert pair(first["provisioning"]["code"]).status_code == 201
    taken = pair(second["provisioning"]["code"])
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "public_key_in_use"
    assert pair(second["provisioning"]["code"]).status_code == 409  # the code is still unused: refused again
    again = devices.post(f"/devices/locks/{first['lock']['id']}/provisioning", headers=bearer(owner))
    assert pair(again.get_json()["code"]).status_code == 201  # re-pairing the lock that holds it


def test_another_locks_signing_key_counts_as_a_wrong_code(
    make_client: Any, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 86: a valid pairing code with a signing key another lock holds is 409 ``public_key_in_use``, the
    code left unused, and the attempt was given back: whoever held one code could ask about any number of known
    public keys whether each was some lock's live key (a former device's, still paired). A lock makes its own key
    and never meets it: it counts against the address as a wrong code does, and past the limit is 429."""
    from lockwise.core.config import get_settings

    monkeypatch.setenv("LOCKWISE_PAIRING_FAILURES_PER_HOUR", "3")
    monkeypatch.setenv("LOCKWISE_TRUSTED_PROXY_HOPS", "1")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    devices = make_client("devices")
    owner = sign_up()
    first, second = create_lock(devices, owner), create_lock(devices, owner, name="Back door")
    _, public = new_lock_key()

    def pair(code: str, address: str, key: str = public) -> Any:
        body = {"code": code, "public_key": key, "csr": new_tls_key()[1]}
        return devices.post("/devices/provision", json=body, headers={"X-Forwarded-For": address})

    assert pair(first["provisioning"]["code"], "192.0.2.10").status_code == 201
    refused = [pair(second["provisioning"]["code"], "203.0.113.9").get_json()["error"]["code"] for _ in range(4)]
    assert refused == ["public_key_in_use"] * 3 + ["too_many_pairing_attempts"]
    # under the limit the code stayed unused; the probe past it spent the code (attack run 100's review): its owner
    # issues another, and its lock pairs with a key of its own, from another address
    assert pair(second["provisioning"]["code"], "198.51.100.3", new_lock_key()[1]).status_code == 401
    again = devices.post(f"/devices/locks/{second['lock']['id']}/provisioning", headers=bearer(owner))
    assert pair(again.get_json()["code"], "198.51.100.3", new_lock_key()[1]).status_code == 201


def test_a_guests_window_is_judged_by_the_pinned_zone_data_not_the_hosts(world: World, sign_up: Any) -> None:
    """Attack run 80: ``zoneinfo`` read the host's database first (Debian's 2025b here), where the pinned tzdata
    (2026.6) has moved America/Vancouver an hour: a guest was let in an hour after her window by the newer rules, and
    kept out for its first hour. Her window is the 40 minutes around the pinned data's local time now: she is let
    in, and not with the same window an hour later (on a host whose own data agrees, both hold too)."""
    zone = "America/Vancouver"
    local = dt.datetime.now(dt.UTC).astimezone(pinned(zone))
    minute = local.hour * 60 + local.minute

    def window(start: int) -> dict[str, Any]:
        start, end = start % 1440, (start + 40) % 1440
        return {"timezone": zone, "day_start_minute": start, "day_end_minute": end or 1440}

    for start, allowed in ((minute - 20, True), (minute + 40, False)):
        guest = sign_up()
        join(world.devices, world.lock_id, world.accounts["owner"], guest, {"role": "guest", "access": window(start)})
        unlock = world.devices.post(
            f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=bearer(guest)
        )
        assert unlock.status_code == (202 if allowed else 403), (start, minute, unlock.get_json())


def test_a_guest_whose_zone_this_release_lacks_is_kept_out_and_holds_up_nothing_at_her_lock(world: World) -> None:
    """A zone stored by a release whose data had it and read by one whose does not (attack run 80, the row written
    here as such a release left it): every removal at the lock was a 500 (the live view's access is written for every
    member), and so was every voice decision at the door. The guest is kept out now, and the rest goes on."""
    with get_runtime("devices").db.transaction() as con:
        con.run(
            "UPDATE lock_members SET timezone = 'America/Not_In_This_Tzdata', weekdays = 127, day_start_minute = 0,"
            " day_end_minute = 1440 WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
            l=world.lock_id,
            u=world.uid("guest_in"),
        )
    removed = world.devices.delete(
        f"/devices/locks/{world.lock_id}/members/{world.uid('member')}", headers=world.headers("owner")
    )
    assert removed.status_code == 204, removed.get_json()
    kept_out = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("guest_in")
    )
    assert kept_out.status_code == 403, kept_out.get_json()
    owner = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("owner")
    )
    assert owner.status_code == 202, owner.get_json()


def test_the_upkeep_of_a_release_with_newer_zone_data_mirrors_zoned_guests_again_once(world: World) -> None:
    """The live view's access documents of guests whose windows are read in a zone were written with the host's zone
    data (attack run 80), and a pin moved on moves windows too: the upkeep of a release whose zone data is newer
    than the one recorded makes every lock with such a guest due a mirror, once (a migration's rows were taken by
    the release before, during a deploy: a review), and again half an hour on. A release with older data beside it
    does not undo it."""
    zoned = world.uid("guest_in")  # weekdays: a window read in her zone
    db_rows(
        "UPDATE lock_members SET weekdays = 127 WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
        l=world.lock_id,
        u=zoned,
    )

    def due() -> bool:
        return bool(db_rows("SELECT 1 FROM mirror_refresh_due WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id))

    def upkeep() -> bool:
        with get_runtime("devices").db.transaction() as con:
            return members.mirror_for_zone_data(con)

    # (recorded version, its passes, minutes since, whether the upkeep acts): a newer release's data acts at once;
    # the same data a second time once the release before is gone (its instances may have mirrored after the first:
    # attack run 82), never a third; older data never
    cases = [("2000.1", 2, 0, True), (zones.VERSION, 1, 5, False), (zones.VERSION, 1, 31, True)]
    cases += [(zones.VERSION, 2, 60, False), ("9999.1", 1, 60, False)]
    for recorded, passes, minutes, acts in cases:
        db_rows("DELETE FROM zone_data_mirrored")
        db_rows(
            "INSERT INTO zone_data_mirrored (version, passes, mirrored_at)"
            " VALUES (:v, :p, now() - make_interval(mins => :m))",
            v=recorded,
            p=passes,
            m=minutes,
        )
        db_rows("DELETE FROM mirror_refresh_due WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
        assert upkeep() is acts and due() is acts, (recorded, passes, minutes)
        (version,) = db_rows("SELECT version FROM zone_data_mirrored")[0]
        assert version == (zones.VERSION if acts else recorded)
    db_rows("DELETE FROM zone_data_mirrored")  # none recorded: the first release that reads the pinned data alone
    assert upkeep() is True and due() is True
    assert upkeep() is False  # once, and again only half an hour on


def an_hour_ahead() -> types.ModuleType:
    """The ``datetime`` module as an instance whose own clock runs an hour ahead sees it."""

    class Ahead(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Ahead:
            moment = dt.datetime.now(tz) + dt.timedelta(hours=1)
            return cls.combine(moment.date(), moment.timetz())

    module = types.ModuleType("datetime")
    module.__dict__.update(vars(dt))
    module.datetime = Ahead  # type: ignore[attr-defined]
    return module


def test_an_instance_whose_clock_runs_ahead_dates_certificates_commands_and_the_feed_by_the_databases(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock's certificate, when it should renew it, a command's status and the feed's entries were dated by the
    instance's own clock (left by stop 66: none decides access). An instance an hour ahead signed certificates
    starting 55 minutes in the broker's future (past ``lock_certs.BACKDATE``): the lock could not connect for that
    time. They go by the database's clock now, as every decision does."""
    for module in (provisioning, mirror, commands):
        monkeypatch.setattr(module, "dt", an_hour_ahead())
    body = json.dumps({"csr": new_tls_key()[1]}).encode()
    headers = lock_auth.sign_headers(
        world.lock_key, world.lock_id, "POST", "/devices/lock/certificate", body, content_type="application/json"
    )
    renewed = world.devices.post("/devices/lock/certificate", data=body, headers=headers)
    assert renewed.status_code == 201, renewed.get_json()
    (database_now,) = db_rows("SELECT clock_timestamp()")[0]
    certificate = x509.load_pem_x509_certificate(renewed.get_json()["certificate"].encode())
    assert certificate.not_valid_before_utc <= database_now - lock_certs.BACKDATE + dt.timedelta(seconds=30)
    halfway = database_now + (certificate.not_valid_after_utc - database_now) / 2
    renew_after = dt.datetime.fromisoformat(renewed.get_json()["renew_after"])
    assert abs(renew_after - halfway) < dt.timedelta(seconds=30), (renew_after, halfway)
    unlock = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("owner")
    )
    assert unlock.status_code == 202 and unlock.get_json()["command"]["status"] == "pending", unlock.get_json()
    command_id = unlock.get_json()["command"]["id"]
    seen = world.devices.get(f"/devices/locks/{world.lock_id}/commands/{command_id}", headers=world.headers("owner"))
    assert seen.get_json()["command"]["status"] == "pending", seen.get_json()
    get_runtime("devices").flush_mirror(force=True)
    wait_until_mirrored(world.lock_id)
    sdk = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    entries = [e.to_dict() for e in sdk.collection(mirror.lock_collection(world.lock_id, mirror.FEED)).stream()]
    (listed,) = [e for e in entries if e.get("command_id") == command_id]
    at = dt.datetime.fromisoformat(listed["at"].replace("Z", "+00:00"))
    assert abs(at - database_now) < dt.timedelta(seconds=30), (at, database_now)


def test_a_lock_renews_its_certificate_a_few_times_a_day_and_no_more(world: World) -> None:
    """Attack run: renewals were not limited, and each signs a certificate and keeps its row for 7 days. The
    pairing's certificate counts: at most LOCKWISE_LOCK_RENEWALS_PER_DAY issued to a credential in any 24 hours."""
    per_day = get_settings("devices").lock_renewals_per_day

    def renew() -> Any:  # with a field this server does not know: a lock's firmware may be newer
        body = json.dumps({"csr": new_tls_key()[1], "firmware": "9.9"}).encode()
        headers = lock_auth.sign_headers(
            world.lock_key, world.lock_id, "POST", "/devices/lock/certificate", body, content_type="application/json"
        )
        return world.devices.post("/devices/lock/certificate", data=body, headers=headers)

    for _ in range(per_day - 1):
        assert renew().status_code == 201
    refused = renew()
    assert refused.status_code == 429, refused.get_json()
    assert refused.get_json()["error"]["code"] == "renewal_limit"
    assert 86_000 < int(refused.headers["Retry-After"]) <= 86_400
    (issued,) = db_rows(
        "SELECT count(*) FROM lock_certificates c JOIN lock_credentials l ON l.id = c.credential_id"
        " WHERE l.lock_id = CAST(:l AS uuid)",
        l=world.lock_id,
    )
    assert issued == [per_day]  # the refused one signed nothing and kept nothing
    # a day after the pairing's certificate, one more
    db_rows(
        "UPDATE lock_certificates SET issued_at = issued_at - interval '1 day' WHERE issued_at ="
        " (SELECT min(issued_at) FROM lock_certificates c JOIN lock_credentials l ON l.id = c.credential_id"
        " WHERE l.lock_id = CAST(:l AS uuid))",
        l=world.lock_id,
    )
    assert renew().status_code == 201
    assert renew().status_code == 429


def test_an_invitation_falls_with_the_right_of_who_sent_it(world: World, sign_up: Any) -> None:
    """Attack run: an admin invited their own address (or a friend), was removed, demoted or expired, and the
    invitation still let them in. An invitation stands only while its sender may grant its role."""
    devices, lock = world.devices, world.lock_id

    def invite(by: str, invitee: dict[str, Any], role: str = "member") -> str:
        resp = devices.post(
            f"/devices/locks/{lock}/members", json={"uid": invitee["localId"], "role": role}, headers=world.headers(by)
        )
        assert resp.status_code == 202, resp.get_json()
        return str(resp.get_json()["invitation"]["id"])

    def accept(invitation: str, invitee: dict[str, Any]) -> Any:
        return devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(invitee))

    friends = [sign_up() for _ in range(3)]
    for friend in friends:
        assert devices.get("/devices/me", headers=bearer(friend)).status_code == 200
    # removed: what they sent falls at once
    removed = invite("admin", friends[0])
    assert (
        devices.delete(
            f"/devices/locks/{lock}/members/{world.uid('admin')}", headers=world.headers("owner")
        ).status_code
        == 204
    )
    refused = accept(removed, friends[0])
    assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "invitation_not_found"
    assert devices.get(f"/devices/locks/{lock}", headers=bearer(friends[0])).status_code == 404
    # demoted (the old admin invited back as a member by the owner, who then demotes a new admin)
    join(devices, lock, world.accounts["owner"], world.accounts["admin"], {"role": "admin"})
    demoted = invite("admin", friends[1])
    resp = devices.patch(
        f"/devices/locks/{lock}/members/{world.uid('admin')}", json={"role": "member"}, headers=world.headers("owner")
    )
    assert resp.status_code == 200, resp.get_json()
    assert accept(demoted, friends[1]).status_code == 404
    # expired (no change went through the API: the accept itself checks)
    resp = devices.patch(
        f"/devices/locks/{lock}/members/{world.uid('admin')}", json={"role": "admin"}, headers=world.headers("owner")
    )
    assert resp.status_code == 200, resp.get_json()
    expired = invite("admin", friends[2])
    db_rows(
        "UPDATE lock_members SET expires_at = now() - interval '1 second' WHERE lock_id = CAST(:l AS uuid)"
        " AND user_uid = :u",
        l=lock,
        u=world.uid("admin"),
    )
    listed = devices.get("/devices/invitations", headers=bearer(friends[2])).get_json()["invitations"]
    assert expired not in [i["id"] for i in listed]  # not offered
    assert accept(expired, friends[2]).status_code == 404
    # an owner's invitation stands as ever
    assert accept(invite("owner", friends[2]), friends[2]).status_code == 201


def test_pairing_codes_and_owned_locks_are_bounded(world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack run: an owner re-pairing in a loop put 1,630 entries in the public revocation list in 20 s (each
    pairing, and each deletion of a paired lock, revokes a credential), and one account made 307 locks in 8 s. The
    codes are counted per account, so deleting the lock and making it again gets none more (review)."""
    settings = get_settings("devices")
    owner = world.headers("owner")
    # the lock's pairing at creation was one of the day's codes
    for _ in range(settings.pairings_per_day - 1):
        assert world.devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=owner).status_code == 201
    refused = world.devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=owner)
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "pairing_limit"
    assert 86_000 < int(refused.headers["Retry-After"]) <= 86_400
    assert world.devices.delete(f"/devices/locks/{world.lock_id}", headers=owner).status_code == 204
    again = world.devices.post("/devices/locks", json={"name": "Front door again"}, headers=owner)
    assert again.status_code == 429 and again.get_json()["error"]["code"] == "pairing_limit"
    # locks one account owns
    monkeypatch.setattr(get_runtime("devices"), "settings", dataclasses.replace(settings, locks_per_owner=3))
    someone = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(someone)).status_code == 200
    for i in range(3):
        create_lock(world.devices, someone, name=f"Door {i}")
    too_many = world.devices.post("/devices/locks", json={"name": "One more"}, headers=bearer(someone))
    assert too_many.status_code == 409 and too_many.get_json()["error"]["code"] == "too_many_locks"


def test_a_lock_has_so_many_members_with_the_inviters_open_invitations(
    world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each member is a voiceprint the door scores at every attempt, and like voices are scored against each other:
    an owner's thousand accounts at one door cost seconds an attempt (attack run 22). A lock has at most
    ``LOCKWISE_MEMBERS_PER_LOCK`` members: inviting past it counts the inviter's own open invitations (an admin's
    filled the owner's share: attack run 23), accepting and bringing a member back from its expiry count the
    members; each is 409 ``too_many_members``. The world has 5 active
    members (the removed one is not counted)."""
    runtime = get_runtime("devices")
    settings = runtime.settings
    owner = world.headers("owner")
    members = f"/devices/locks/{world.lock_id}/members"

    def capped(limit: int) -> None:
        monkeypatch.setattr(runtime, "settings", dataclasses.replace(settings, members_per_lock=limit))

    def invite(account: dict[str, Any]) -> Any:
        return world.devices.post(members, json={"uid": account["localId"], "role": "member"}, headers=owner)

    def code(resp: Any) -> tuple[int, str]:
        return resp.status_code, resp.get_json()["error"]["code"]

    late, later = sign_up(), sign_up()
    for account in (late, later):
        assert world.devices.get("/devices/me", headers=bearer(account)).status_code == 200
    capped(7)
    sent = [invite(world.accounts["stranger"]), invite(late)]
    assert [r.status_code for r in sent] == [202, 202]
    assert code(invite(later)) == (409, "too_many_members")  # 5 members and the owner's 2 invitations
    # each inviter's own: an admin's invitations (to made-up addresses, say) never kept the owner from inviting
    by_admin = world.devices.post(
        members, json={"uid": later["localId"], "role": "member"}, headers=world.headers("admin")
    )
    assert by_admin.status_code == 202, by_admin.get_json()
    capped(6)  # lowered with both invitations open: the first accepted fills the lock
    accepted = world.devices.post(
        f"/devices/invitations/{sent[0].get_json()['invitation']['id']}/accept", headers=world.headers("stranger")
    )
    assert accepted.status_code == 201, accepted.get_json()
    full = world.devices.post(
        f"/devices/invitations/{sent[1].get_json()['invitation']['id']}/accept", headers=bearer(late)
    )
    assert code(full) == (409, "too_many_members")
    guest = f"{members}/{world.uid('guest_out')}"
    ended = {"role": "guest", "access": {"expires_at": "2001-01-01T00:00:00+00:00"}}
    assert world.devices.patch(guest, json=ended, headers=owner).status_code == 200  # 5 active
    joined = world.devices.post(
        f"/devices/invitations/{sent[1].get_json()['invitation']['id']}/accept", headers=bearer(late)
    )
    assert joined.status_code == 201, joined.get_json()  # 6 again
    assert code(world.devices.patch(guest, json={"role": "guest"}, headers=owner)) == (409, "too_many_members")
    assert active_members(world.lock_id) == 6


def _invited(world: World, lock_id: str, account: dict[str, Any], access: dict[str, Any] | None = None) -> str:
    """The id of an invitation the world's owner sends ``account`` to ``lock_id``: as a guest on ``access``, else a
    member."""
    body: dict[str, Any] = {"uid": account["localId"], "role": "guest" if access else "member"}
    if access:
        body["access"] = access
    sent = world.devices.post(f"/devices/locks/{lock_id}/members", json=body, headers=world.headers("owner"))
    assert sent.status_code == 202, sent.get_json()
    return str(sent.get_json()["invitation"]["id"])


def test_an_account_is_a_member_of_so_many_locks_it_does_not_own(
    world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 93: an account joined locks without bound (invitations from accounts of its own), and its deletion
    leaves each in one transaction, about 20 statements a lock. ``LOCKWISE_MEMBERSHIPS_PER_USER`` bounds the locks
    one is a member of without owning them, ended access not removed included (409 ``too_many_memberships`` on
    accepting, nothing joined, the invitation still open); locks they own are not counted, and a lock left makes
    room."""
    runtime = get_runtime("devices")
    monkeypatch.setattr(runtime, "settings", dataclasses.replace(runtime.settings, memberships_per_user=2))
    joiner = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(joiner)).status_code == 200
    create_lock(world.devices, joiner, name="Their own")  # not counted
    owner = world.headers("owner")
    doors = [world.lock_id] + [
        create_lock(world.devices, world.accounts["owner"], name=f"D{i}")["lock"]["id"] for i in range(2)
    ]

    def invite(lock_id: str, access: dict[str, Any] | None = None) -> str:
        return _invited(world, lock_id, joiner, access)

    def accept(invitation_id: str) -> Any:
        return world.devices.post(f"/devices/invitations/{invitation_id}/accept", headers=bearer(joiner))

    ends_soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
    assert accept(invite(doors[0])).status_code == 201
    assert accept(invite(doors[1], {"expires_at": ends_soon})).status_code == 201
    third = invite(doors[2])
    time.sleep(2.5)  # the guest's access has ended: still theirs, still counted
    refused = accept(third)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "too_many_memberships"
    joined = {
        lock_id
        for (lock_id,) in db_rows(
            "SELECT lock_id::text FROM lock_members WHERE user_uid = :u AND revoked_at IS NULL", u=joiner["localId"]
        )
    }
    assert doors[2] not in joined
    assert accept(third).status_code == 409  # the invitation stands
    left = world.devices.delete(f"/devices/locks/{doors[1]}/members/{joiner['localId']}", headers=owner)
    assert left.status_code == 204, left.get_json()
    assert accept(third).status_code == 201


def test_a_member_leaves_a_membership_ended_by_its_expiry_that_holds_their_place(
    world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 100: a membership ended by its expiry (a host's guest whose stay is over) counts towards the
    account's ``LOCKWISE_MEMBERSHIPS_PER_USER``, and its member, answered 404 as for a lock never theirs, could not
    leave it, nor see it listed: only the owner who set the expiry could make room, and the 409 said "leave one
    first". They leave it themselves now, the 409 naming it; a membership removed is not theirs to leave again."""
    runtime = get_runtime("devices")
    monkeypatch.setattr(runtime, "settings", dataclasses.replace(runtime.settings, memberships_per_user=1))
    guest = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(guest)).status_code == 200
    stay, home = world.lock_id, create_lock(world.devices, world.accounts["owner"], name="Home")["lock"]["id"]

    def invite(lock_id: str, access: dict[str, Any] | None = None) -> str:
        return _invited(world, lock_id, guest, access)

    def accept(invitation_id: str) -> Any:
        return world.devices.post(f"/devices/invitations/{invitation_id}/accept", headers=bearer(guest))

    ends_soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
    assert accept(invite(stay, {"expires_at": ends_soon})).status_code == 201
    wanted = invite(home)
    time.sleep(2.5)  # the stay is over
    refused = accept(wanted)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "too_many_memberships"
    assert refused.get_json()["error"]["details"]["ended_lock_ids"] == [stay]
    leave = f"/devices/locks/{stay}/members/{guest['localId']}"
    left = world.devices.delete(leave, headers=bearer(guest))
    assert left.status_code == 204, left.get_json()
    again = world.devices.delete(leave, headers=bearer(guest))
    assert (again.status_code, again.get_json()["error"]["code"]) == (404, "lock_not_found")
    assert accept(wanted).status_code == 201


def test_an_owner_handing_locks_over_stays_their_admin_within_the_membership_limit(
    world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner handing a lock over stays on as its admin, a membership of a lock they do not own; made at once by
    every acceptance, it passed ``LOCKWISE_MEMBERSHIPS_PER_USER`` unchecked: one account handing its locks to
    accounts of its own, and taking them back, was a member of any number of locks. Offering at the limit is 409
    ``too_many_memberships`` to the giver; accepting an offer made before the giver reached it is 409
    ``owner_too_many_memberships`` to the taker, naming none of the giver's locks, and the offer stands."""
    runtime = get_runtime("devices")
    monkeypatch.setattr(runtime, "settings", dataclasses.replace(runtime.settings, memberships_per_user=3))
    giver, taker = sign_up(), sign_up()
    for account in (giver, taker):
        assert world.devices.get("/devices/me", headers=bearer(account)).status_code == 200
    others = [world.lock_id, create_lock(world.devices, world.accounts["owner"], name="Other")["lock"]["id"]]
    for lock_id in others:  # the giver is a member of two locks
        invited = _invited(world, lock_id, giver)
        assert world.devices.post(f"/devices/invitations/{invited}/accept", headers=bearer(giver)).status_code == 201
    doors = [create_lock(world.devices, giver, name=f"Door {i}")["lock"]["id"] for i in range(3)]
    for lock_id in doors:
        sent = world.devices.post(
            f"/devices/locks/{lock_id}/members", json={"uid": taker["localId"], "role": "member"}, headers=bearer(giver)
        )
        assert sent.status_code == 202, sent.get_json()
        joined = world.devices.post(
            f"/devices/invitations/{sent.get_json()['invitation']['id']}/accept", headers=bearer(taker)
        )
        assert joined.status_code == 201, joined.get_json()

    def offer(lock_id: str) -> Any:
        return world.devices.post(
            f"/devices/locks/{lock_id}/transfer", json={"uid": taker["localId"]}, headers=bearer(giver)
        )

    def accept(lock_id: str) -> Any:
        return world.devices.post(f"/devices/locks/{lock_id}/transfer/accept", headers=bearer(taker))

    assert (offer(doors[0]).status_code, offer(doors[1]).status_code) == (202, 202)
    assert accept(doors[0]).status_code == 200  # the giver is an admin of a third lock they do not own: the limit
    refused = accept(doors[1])
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["error"]["code"] == "owner_too_many_memberships"
    assert "details" not in refused.get_json()["error"]
    owners = "SELECT id::text, owner_uid FROM locks WHERE id = ANY(CAST(:l AS uuid[]))"
    assert dict(db_rows(owners, l=doors)) == {
        doors[0]: taker["localId"],
        doors[1]: giver["localId"],
        doors[2]: giver["localId"],
    }
    assert world.devices.get(f"/devices/locks/{doors[1]}/transfer", headers=bearer(taker)).status_code == 200
    late = offer(doors[2])
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "too_many_memberships", late.get_json()
    left = world.devices.delete(f"/devices/locks/{doors[0]}/members/{giver['localId']}", headers=bearer(giver))
    assert left.status_code == 204, left.get_json()
    assert accept(doors[1]).status_code == 200


def test_a_lock_makes_so_many_signed_requests_a_minute(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack run: a lock (or its stolen key) sent 150 signed verify requests a second, each an attempt row and a
    feed entry. Every signed request counts, whatever its answer; past the minute's limit nothing is recorded."""
    rt = get_runtime("devices")
    monkeypatch.setattr(rt, "settings", dataclasses.replace(rt.settings, lock_requests_per_minute=10))

    def config() -> Any:
        headers = lock_auth.sign_headers(world.lock_key, world.lock_id, "GET", "/devices/lock/config", b"")
        return world.devices.get("/devices/lock/config", headers=headers)

    assert [config().status_code for _ in range(10)] == [200] * 10
    refused = config()
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "lock_rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 66  # into the next minute, its share of this one: 6 s
    (seen,) = db_rows("SELECT count(*) FROM lock_request_nonces WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    assert seen[0] == 10  # the refused request's nonce is not kept
    db_rows(  # a minute later (two clock minutes back: out of the sliding window)
        "UPDATE lock_request_counts SET minute = minute - interval '2 minutes' WHERE lock_id = CAST(:l AS uuid)",
        l=world.lock_id,
    )
    assert config().status_code == 200
    # a parallel burst gets no more (the count is raised atomically with the nonce: review)
    db_rows("DELETE FROM lock_request_counts WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(lambda _: config().status_code, range(16)))
    assert statuses == [200] * 10 + [429] * 6


def test_a_locks_signed_requests_are_counted_over_the_last_60_s_not_the_clock_minute(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 41: counted per clock minute, a lock's limit passed twice over within seconds: a full minute's
    requests in its last seconds, as many again in the next one's first. The previous clock minute's requests now
    count in the share of it still within the last 60 s."""
    rt = get_runtime("devices")
    monkeypatch.setattr(rt, "settings", dataclasses.replace(rt.settings, lock_requests_per_minute=10))

    def config() -> Any:
        headers = lock_auth.sign_headers(world.lock_key, world.lock_id, "GET", "/devices/lock/config", b"")
        return world.devices.get("/devices/lock/config", headers=headers)

    while (elapsed := float(db_rows("SELECT EXTRACT(EPOCH FROM now() - date_trunc('minute', now()))")[0][0])) > 50:
        time.sleep(60 - elapsed + 0.2)  # early in a clock minute: the previous one still mostly within 60 s
    db_rows(  # the previous clock minute full, a thousand times over
        "INSERT INTO lock_request_counts (lock_id, minute, n)"
        " VALUES (CAST(:l AS uuid), date_trunc('minute', now()) - interval '1 minute', 10000)",
        l=world.lock_id,
    )
    refused = config()
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "lock_rate_limited"
    assert 5 <= int(refused.headers["Retry-After"]) <= 60  # when the previous minute's share has left room
    db_rows(  # only one request's worth of the previous minute still within the window: room for the rest
        "UPDATE lock_request_counts SET n = 1 WHERE lock_id = CAST(:l AS uuid)"
        " AND minute = date_trunc('minute', now()) - interval '1 minute'",
        l=world.lock_id,
    )
    assert [config().status_code for _ in range(9)] == [200] * 9
    assert config().status_code == 429  # 9 now and (a share of) 1 before: the 10th waits for that share to leave


def test_replays_of_one_signed_request_take_nothing_from_the_locks_minute(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 20: the minute's count was raised before the nonce was checked, so whoever held one signed request
    of a lock (for the skew window) could replay it to fill the lock's minute, and the lock's own next request was
    429. A replay is refused and counts nothing; a fresh request counts once."""
    rt = get_runtime("devices")
    monkeypatch.setattr(rt, "settings", dataclasses.replace(rt.settings, lock_requests_per_minute=5))

    def config(headers: dict[str, str] | None = None) -> Any:
        headers = headers or lock_auth.sign_headers(world.lock_key, world.lock_id, "GET", "/devices/lock/config", b"")
        return world.devices.get("/devices/lock/config", headers=headers)

    captured = lock_auth.sign_headers(world.lock_key, world.lock_id, "GET", "/devices/lock/config", b"")
    assert config(captured).status_code == 200
    replays = [config(captured) for _ in range(20)]
    assert {(r.status_code, r.get_json()["error"]["code"]) for r in replays} == {(401, "replayed_request")}
    ((counted,),) = db_rows("SELECT sum(n) FROM lock_request_counts WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    assert counted == 1
    assert [config().status_code for _ in range(4)] == [200] * 4  # the lock's own requests still fit its minute
    assert config().status_code == 429


def test_the_relays_flush_deletes_old_request_nonces_and_counts_and_no_request_does(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One signed request in 50 deleted every lock's old nonces and counts, all at once, on its own path."""
    kept_s = lock_auth.nonces_kept_s(get_runtime("devices").settings)

    def config() -> Any:
        headers = lock_auth.sign_headers(world.lock_key, world.lock_id, "GET", "/devices/lock/config", b"")
        return world.devices.get("/devices/lock/config", headers=headers)

    def kept() -> tuple[int, int, int]:
        """(nonces, of them past twice the skew, counts of minutes over two minutes back) of the lock"""
        ((nonces, stale_nonces, stale_counts),) = db_rows(
            "SELECT (SELECT count(*) FROM lock_request_nonces WHERE lock_id = CAST(:l AS uuid)),"
            " (SELECT count(*) FROM lock_request_nonces WHERE lock_id = CAST(:l AS uuid)"
            "  AND seen_at < now() - make_interval(secs => :s)),"
            " (SELECT count(*) FROM lock_request_counts WHERE lock_id = CAST(:l AS uuid)"
            "  AND minute < now() - interval '2 minutes')",
            l=world.lock_id,
            s=kept_s,
        )
        return nonces, stale_nonces, stale_counts

    assert config().status_code == 200
    db_rows(  # every nonce seen just over twice the skew ago, every count three minutes back
        "UPDATE lock_request_nonces SET seen_at = now() - make_interval(secs => :s) WHERE lock_id = CAST(:l AS uuid)",
        s=kept_s + 5,
        l=world.lock_id,
    )
    db_rows(
        "UPDATE lock_request_counts SET minute = minute - interval '3 minutes' WHERE lock_id = CAST(:l AS uuid)",
        l=world.lock_id,
    )
    nonces, stale, stale_counts = kept()
    assert stale == nonces >= 1 and stale_counts >= 1
    for _ in range(60):  # one in 50 of these used to delete the old ones
        assert config().status_code == 200
    assert kept() == (nonces + 60, stale, stale_counts)
    db_rows(  # all but the last 5 aged too, and a flush's batch made small: its prune repeats while batches are full
        "UPDATE lock_request_nonces SET seen_at = now() - make_interval(secs => :s) WHERE lock_id = CAST(:l AS uuid)"
        " AND nonce NOT IN (SELECT nonce FROM lock_request_nonces WHERE lock_id = CAST(:l AS uuid)"
        " ORDER BY seen_at DESC LIMIT 5)",
        s=kept_s + 5,
        l=world.lock_id,
    )
    monkeypatch.setattr(retention, "PRUNE_BATCH", 7)
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=token).status_code == 200
    assert kept() == (5, 0, 0)  # the nonces inside the window stay


def test_a_request_nonce_outlives_its_timestamps_window_on_instances_whose_clocks_differ(world: World) -> None:
    """Attack run 69: the timestamp is judged on the instance's clock, the nonce pruned on the database's after twice
    the skew. A request an instance 2 s ahead took at the window's first second was still inside the window of an
    instance on the database's clock when the flush pruned its nonce: that one took the replay."""
    runtime = get_runtime("devices")
    skew, ahead = runtime.settings.lock_request_skew_s, 2.0
    signed_at = time.time()
    captured = lock_auth.sign_headers(world.lock_key, world.lock_id, "GET", "/devices/lock/config", b"", now=signed_at)

    def taken(instance_clock: float) -> str:
        try:
            with runtime.db.connection() as con:
                lock_auth.authenticate(
                    con,
                    Headers(captured),
                    "GET",
                    "/devices/lock/config",
                    b"",
                    skew_s=skew,
                    per_minute=1000,
                    now=instance_clock,
                )
        except errors.Unauthenticated as exc:
            return exc.code
        return "taken"

    assert taken(int(signed_at) - skew + 0.5) == "taken"  # by an instance 2 s ahead, the window's first second
    # 2 x skew + 1.5 s later (real time, the database's), the flush runs; then the replay reaches an instance on the
    # database's clock, at the last second of the window by it
    db_rows(
        "UPDATE lock_request_nonces SET seen_at = seen_at - make_interval(secs => :s) WHERE lock_id = CAST(:l AS uuid)",
        s=2 * skew + ahead - 0.5,
        l=world.lock_id,
    )
    with runtime.db.transaction() as con:
        retention.prune_expired(con, nonces_kept_s=lock_auth.nonces_kept_s(runtime.settings))
    assert taken(int(signed_at) + skew) == "replayed_request"


def test_refused_attempts_listed_in_no_feed_are_kept_days_not_months(world: World) -> None:
    """Attack run 130 (denial of wallet): a refused attempt past its lock's or owner's budget of listed refusals is in
    no feed, and was kept 90 days all the same: an account's 100 locks, made and paired for free, each posting junk at
    its 120 signed requests a minute, kept 17M rows a day, 1.5 billion. The relay's flush deletes those after
    ``UNLISTED_REFUSALS_KEPT_DAYS`` (through migration 0084's partial index), and nothing listed or decided."""
    from lockwise.core import migrate

    (index,) = [
        m for m in migrate.load() if m.concurrent_index and m.concurrent_index.index == "verification_attempts_unlisted"
    ]
    assert "WHERE NOT refusal_listed" in index.sql
    runtime = get_runtime("devices")
    kept_days = 2  # retention.UNLISTED_REFUSALS_KEPT_DAYS
    rows = {
        listed: [
            row[0]
            for row in db_rows(
                "INSERT INTO verification_attempts (lock_id, outcome, reason, refusal_listed, created_at)"
                " SELECT CAST(:l AS uuid), 'invalid', 'bad_audio', CAST(:listed AS boolean),"
                " now() - make_interval(days => :d) FROM generate_series(1, 2) RETURNING id::text",
                l=world.lock_id,
                listed=None if listed == "decided" else listed == "listed",
                d=kept_days + 1 if listed != "recent" else kept_days - 1,
            )
        ]
        for listed in ("unlisted", "listed", "decided", "recent")  # a recent one unlisted too
    }
    with runtime.db.transaction() as con:
        retention.prune_expired(con, nonces_kept_s=lock_auth.nonces_kept_s(runtime.settings))
    kept = db_rows("SELECT id::text FROM verification_attempts WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    left = {str(row[0]) for row in kept}
    assert not left & set(rows["unlisted"])
    assert set(rows["listed"] + rows["decided"] + rows["recent"]) <= left
    assert retention.UNLISTED_REFUSALS_KEPT_DAYS == kept_days
    with runtime.db.transaction() as con:  # the prune reads through the index
        con.run("SET LOCAL enable_seqscan = off")
        ((plan,),) = con.run(
            "EXPLAIN (FORMAT JSON) SELECT ctid FROM verification_attempts WHERE NOT refusal_listed"
            " AND created_at <= now() - make_interval(days => 2) LIMIT 10"
        )
    assert "verification_attempts_unlisted" in json.dumps(plan)


def test_the_relays_flush_deletes_commands_attempts_and_invitations_kept_past_their_time(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 32: commands, voice attempts and ended invitations were kept as long as their lock (a member may
    add 43,200 commands a day at one lock, a lock 172,800 attempts, an owner an invitation a request by inviting and
    withdrawing). The relay's flush now deletes those kept past ``retention``'s days, and nothing younger, still
    open, or an attempt a kept command names; and the wrong pairing codes' counts past a day."""
    lock, owner = world.lock_id, world.headers("owner")
    issued = [
        world.devices.post(f"/devices/locks/{lock}/commands", json={"action": "lock"}, headers=owner).get_json()
        for _ in range(3)
    ]
    old_command, kept_command, named_command = (c["command"]["id"] for c in issued)
    attempts = [
        row[0]
        for row in db_rows(
            "INSERT INTO verification_attempts (lock_id, outcome, reason, created_at) SELECT CAST(:l AS uuid),"
            " 'invalid', 'bad_audio', now() - make_interval(days => :d) FROM generate_series(1, 3) RETURNING id::text",
            l=lock,
            d=retention.ATTEMPTS_KEPT_DAYS + 1,
        )
    ]
    db_rows(  # one of them named by a command kept (as a voice command names its attempt)
        "UPDATE commands SET attempt_id = CAST(:a AS uuid) WHERE id = CAST(:c AS uuid)", a=attempts[0], c=named_command
    )
    db_rows(  # one whose fingerprint a replay memory longer than the attempts' keeping still holds
        "INSERT INTO voice_fingerprints (lock_id, attempt_id, landmarks, expires_at)"
        " VALUES (CAST(:l AS uuid), CAST(:a AS uuid), '\\x0000000000000000', now() + interval '1 day')",
        l=lock,
        a=attempts[1],
    )
    db_rows(
        "UPDATE commands SET created_at = now() - make_interval(days => :d, mins => 1),"
        " expires_at = now() - make_interval(days => :d) WHERE id = CAST(:c AS uuid)",
        d=retention.COMMANDS_KEPT_DAYS + 1,
        c=old_command,
    )
    invited = [
        world.devices.post(
            f"/devices/locks/{lock}/members", json={"email": f"guest{i}@example.com", "role": "guest"}, headers=owner
        ).get_json()["invitation"]["id"]
        for i in range(2)
    ]
    assert world.devices.delete(f"/devices/locks/{lock}/invitations/{invited[0]}", headers=owner).status_code == 204
    db_rows(  # both sent long ago; the first withdrawn long ago, the second still open
        "UPDATE invitations SET created_at = now() - interval '400 days', closed_at = CASE WHEN closed_at IS NULL"
        " THEN NULL ELSE now() - make_interval(days => :d) END WHERE id = ANY(CAST(:i AS uuid[]))",
        d=retention.INVITATIONS_KEPT_DAYS + 1,
        i=invited,
    )
    db_rows(  # a wrong pairing code's count of two days ago (one request in 50 deleted them, paying for all)
        "INSERT INTO pairing_failures (source, hour, failures) VALUES ('198.51.100.200',"
        " date_trunc('hour', now()) - interval '2 days', 1), ('198.51.100.201', date_trunc('hour', now()), 1)"
    )
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=token).status_code == 200
    counts = db_rows("SELECT source FROM pairing_failures WHERE source LIKE '198.51.100.20%'")
    assert [row[0] for row in counts] == ["198.51.100.201"]
    db_rows(  # and the attempts that replaced those counts (attack run 45), one row each
        "INSERT INTO pairing_attempts (source, at) VALUES ('198.51.100.210', now() - interval '25 hours'),"
        " ('198.51.100.211', now() - interval '23 hours')"
    )
    assert world.devices.post("/devices/relay/flush", headers=token).status_code == 200
    pairing = db_rows("SELECT source FROM pairing_attempts WHERE source LIKE '198.51.100.21%'")
    assert [row[0] for row in pairing] == ["198.51.100.211"]
    db_rows(  # revoked certificates: one two days past its end (kept for ever before: attack run 46), one still valid
        "INSERT INTO revoked_lock_certificates (serial, not_after) VALUES ('ab46', now() - interval '2 days'),"
        " ('cd46', now() + interval '2 days')"
    )
    assert world.devices.post("/devices/relay/flush", headers=token).status_code == 200
    revoked = db_rows("SELECT serial FROM revoked_lock_certificates WHERE serial IN ('ab46', 'cd46')")
    assert [row[0] for row in revoked] == ["cd46"]
    # a decided clip's identity: kept while a clip sent again may be answered with it, then cleared (it was kept
    # with the attempt, 90 days: attack run 46)
    clips = db_rows(
        "INSERT INTO verification_attempts (lock_id, outcome, reason, clip_sha256, created_at)"
        " VALUES (CAST(:l AS uuid), 'rejected', 'below_threshold', :h, now() - interval '16 minutes'),"
        " (CAST(:l AS uuid), 'rejected', 'below_threshold', :h, now() - interval '14 minutes') RETURNING id::text",
        l=world.lock_id,
        h=b"\x01" * 32,
    )
    assert world.devices.post("/devices/relay/flush", headers=token).status_code == 200
    kept = db_rows(
        "SELECT id::text, clip_sha256 IS NOT NULL FROM verification_attempts WHERE id = ANY(CAST(:i AS uuid[]))"
        " ORDER BY created_at",
        i=[row[0] for row in clips],
    )
    assert [k[1] for k in kept] == [False, True]

    def present(table: str, ids: list[str]) -> list[str]:
        rows = db_rows(f"SELECT id::text FROM {table} WHERE id = ANY(CAST(:i AS uuid[])) ORDER BY id", i=ids)
        return sorted(row[0] for row in rows)

    assert present("commands", [old_command, kept_command, named_command]) == sorted([kept_command, named_command])
    assert present("verification_attempts", attempts) == sorted(attempts[:2])
    assert present("invitations", invited) == [invited[1]]
    gone = world.devices.get(f"/devices/locks/{lock}/commands/{old_command}", headers=owner)
    assert gone.status_code == 404 and gone.get_json()["error"]["code"]


def test_the_relays_flush_deletes_pairing_codes_past_their_end(world: World, stack_env: dict[str, str]) -> None:
    """Attack run 102: a pairing code's row was kept as long as its lock, used, replaced or expired (an owner may be
    given 50 a day: 18,250 rows a year at one lock, none ever read again). The relay's flush now deletes a code once
    it has ended, and a code still valid pairs as before."""
    lock, owner = world.lock_id, world.headers("owner")
    for _ in range(3):  # each closes the one before it
        assert world.devices.post(f"/devices/locks/{lock}/provisioning", headers=owner).status_code == 201
    db_rows(  # all of them long over (and the one the lock was paired with)
        "UPDATE provisioning_codes SET created_at = now() - interval '3 days', expires_at = now() - interval '2 days'"
        " WHERE lock_id = CAST(:l AS uuid)",
        l=lock,
    )
    fresh = world.devices.post(f"/devices/locks/{lock}/provisioning", headers=owner)
    assert fresh.status_code == 201
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=token).status_code == 200
    kept = db_rows("SELECT expires_at > now() FROM provisioning_codes WHERE lock_id = CAST(:l AS uuid)", l=lock)
    assert [row[0] for row in kept] == [True]
    provision(world.devices, fresh.get_json()["code"])  # the valid one still pairs


def test_a_lock_paired_again_keeps_only_the_revoked_credentials_its_requests_are_checked_against(
    world: World,
) -> None:
    """Attack run 102: each pairing revoked the lock's credential and kept its row as long as the lock (an owner
    re-pairing 50 times a day added 18,250 rows a year), and every signed request of the lock read and sorted them
    all for its ``lock_auth.KEYS_KEPT`` newest. A pairing now deletes the lock's revoked credentials past those: one
    that proves it held a recent key still learns it must pair again, and every certificate of the deleted ones
    stays on the revocation list until it expires."""

    def live_serial() -> str:
        rows = db_rows(
            "SELECT cert_serial FROM lock_credentials WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL",
            l=world.lock_id,
        )
        return str(rows[0][0])

    serials = [live_serial()]
    for _ in range(lock_auth.KEYS_KEPT + 2):
        pair_again(world.devices, world)
        serials.append(live_serial())
    rows = db_rows(
        "SELECT cert_serial, revoked_at IS NULL FROM lock_credentials WHERE lock_id = CAST(:l AS uuid)"
        " ORDER BY revoked_at IS NULL DESC, revoked_at DESC",
        l=world.lock_id,
    )
    assert [tuple(row) for row in rows] == [(serials[-1], True)] + [
        (serial, False) for serial in reversed(serials[-lock_auth.KEYS_KEPT : -1])
    ]
    listed = {row[0] for row in db_rows("SELECT serial FROM revoked_lock_certificates")}
    assert set(serials[:-1]) <= listed and serials[-1] not in listed


def test_requests_for_the_revocation_list_at_once_share_one_read_of_the_revocations(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list is public, and each request read every listed revocation (its version: their count and a digest of
    their serials), a scan anyone could have the database run as often as they sent requests. Requests at once share
    one read, begun after each asked: sixteen made at most three, each answered with the list."""
    reads = 0
    counted = threading.Lock()
    plain = provisioning.revocations_version

    def slow_version(con: Any) -> tuple[int, int]:
        nonlocal reads
        with counted:
            reads += 1
        time.sleep(0.5)  # a long list's scan
        return plain(con)

    monkeypatch.setattr(provisioning, "revocations_version", slow_version)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: world.devices.get("/devices/lock-ca/crl"), range(16)))
    assert {resp.status_code for resp in answers} == {200}
    assert len({resp.get_data() for resp in answers}) == 1
    assert 1 <= reads <= 3, reads


def test_the_served_revocation_list_names_a_revocation_that_commits_late(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list is signed again when the revocations change, judged by their count and latest ``revoked_at``: a
    revocation whose transaction began earlier (a re-pairing waiting on a voice decision) committing as another entry
    expired changed neither, and the list served left it out for up to an hour (attack run 57)."""

    def listed() -> set[str]:
        resp = world.devices.get("/devices/lock-ca/crl")
        assert resp.status_code == 200
        crl = x509.load_pem_x509_crl(resp.get_data())
        return {format(entry.serial_number, "x") for entry in crl}

    tag = secrets.token_hex(3)
    first, expiring, late = f"a57{tag}1", f"a57{tag}2", f"a57{tag}3"
    db_rows(  # the latest revocation of all, and one before it
        "INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after) VALUES"
        " (:a, now() - interval '1 minute', now() + interval '1 day'),"
        " (:b, now() + interval '1 minute', now() + interval '1 day')",
        a=first,
        b=expiring,
    )
    assert {first, expiring} <= listed()
    db_rows(  # one ends its listing (a day past its end) as another commits, revoked at the same time as the latest
        "WITH gone AS (UPDATE revoked_lock_certificates SET not_after = now() - interval '1 day 1 second'"
        " WHERE serial = :b RETURNING revoked_at)"
        " INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)"
        " SELECT :c, revoked_at, now() + interval '1 day' FROM gone",
        b=expiring,
        c=late,
    )
    now_listed = listed()
    assert late in now_listed and expiring not in now_listed and first in now_listed
    # one expired a moment ago stays listed a day: a broker whose clock runs behind the database's still takes it as
    # valid, and it was left out at once (attack run 80)
    db_rows("UPDATE revoked_lock_certificates SET not_after = now() - interval '1 minute' WHERE serial = :a", a=first)
    db_rows(  # and the list signed again since
        "INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)"
        " VALUES (:s, now(), now() + interval '1 day')",
        s=f"a57{tag}5",
    )
    assert {first, f"a57{tag}5"} <= listed()
    # numbered by when its entries were read on the database's clock, not by the signing instance's own (an instance
    # an hour behind numbered a list of newer entries below an older one's, which the broker host kept: a review)
    runtime = get_runtime("devices")
    monkeypatch.setattr(runtime, "clock", lambda: dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    db_rows(
        "INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)"
        " VALUES (:s, now(), now() + interval '1 day')",
        s=f"a57{tag}4",
    )
    (database_now,) = db_rows("SELECT now()")[0]
    crl = x509.load_pem_x509_crl(world.devices.get("/devices/lock-ca/crl").get_data())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert abs(number / 1000 - database_now.timestamp()) < 60, (number, database_now)
    assert crl.last_update_utc > database_now - lock_certs.BACKDATE - dt.timedelta(minutes=1)


def test_the_relays_flush_deletes_audit_rows_kept_past_their_time(world: World, stack_env: dict[str, str]) -> None:
    """The audit log was kept for good (attack run 54): a row for every command and membership change, naming an
    account and a lock, those of deleted accounts and locks too. The relay's flush now deletes the rows older than
    ``retention.AUDIT_KEPT_DAYS``, and none younger."""
    actor = f"user:audit-kept-{secrets.token_hex(4)}"
    first = -secrets.randbelow(2**40) - 10  # the log's oldest rows come first by id, as written in time order
    db_rows(
        "INSERT INTO audit_log (id, actor, action, outcome, at) VALUES"
        " (:i, :a, 'lock.update', 'ok', now() - make_interval(days => :d + 1)),"
        " (:i + 1, :a, 'lock.create', 'ok', now() - make_interval(days => :d - 1)),"
        " (DEFAULT, :a, 'lock.update', 'ok', now())",
        i=first,
        a=actor,
        d=retention.AUDIT_KEPT_DAYS,
    )
    # the counts of refused requests a row points to beyond its first few (``audit.record_denied``) are kept as
    # long as the row: they were deleted at 90 days, and a year's review found rows whose counts were gone
    db_rows(
        "INSERT INTO audit_denial_counts (actor, lock_id, action, minute, n) VALUES"
        " (:a, CAST(:l AS uuid), 'lock.update', date_trunc('minute', now()) - make_interval(days => :d + 1), 7),"
        " (:a, CAST(:l AS uuid), 'lock.update', date_trunc('minute', now()) - make_interval(days => :d - 1), 5)",
        a=actor,
        l=world.lock_id,
        d=retention.AUDIT_KEPT_DAYS,
    )
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=token).status_code == 200
    kept = db_rows("SELECT action, at > now() - interval '1 day' FROM audit_log WHERE actor = :a ORDER BY at", a=actor)
    assert [tuple(row) for row in kept] == [("lock.create", False), ("lock.update", True)]
    counts = db_rows("SELECT n FROM audit_denial_counts WHERE actor = :a", a=actor)
    assert [row[0] for row in counts] == [5]


def test_an_owner_or_admin_changing_a_lock_in_a_loop_is_held_to_a_budget_of_their_own(world: World) -> None:
    """Attack run 32: inviting and withdrawing in a loop (~400 a second: an invitation row and two audit rows kept
    for good each), offering and withdrawing the lock, renaming it and resetting its lockout had no limit. Changes
    at a lock are budgeted per owner or admin (``LOCKWISE_LOCK_CHANGES_PER_MINUTE``, ``..._PER_DAY``): past them
    429 ``change_limit`` with Retry-After, and nothing written; another admin's changes and the owner's commands
    are not held up, nor what ends something (a withdrawal, a removal)."""
    settings = get_settings("devices")
    lock, owner = world.lock_id, world.headers("owner")
    answers = []
    for i in range(settings.lock_changes_per_minute):  # invite and withdraw in a loop until refused (invites count)
        sent = world.devices.post(
            f"/devices/locks/{lock}/members", json={"email": f"loop{i}@example.com", "role": "guest"}, headers=owner
        )
        answers.append(sent.status_code)
        if sent.status_code != 202:
            break
        invitation = sent.get_json()["invitation"]["id"]
        answers.append(
            world.devices.delete(f"/devices/locks/{lock}/invitations/{invitation}", headers=owner).status_code
        )
        if answers[-1] != 204:
            break
    assert answers[-1] == 429 and set(answers[:-1]) == {202, 204}
    (counted,) = db_rows(  # the world's invitations by the owner count too
        "SELECT count(*) FROM audit_log WHERE lock_id = CAST(:l AS uuid) AND actor = :a AND action = ANY(:c)"
        " AND at > now() - interval '1 minute'",
        l=lock,
        a=f"user:{world.uid('owner')}",
        c=list(changes.COUNTED),
    )[0]
    assert counted == settings.lock_changes_per_minute
    invitations_before = db_rows("SELECT count(*) FROM invitations WHERE lock_id = CAST(:l AS uuid)", l=lock)
    for refused in (
        world.devices.post(
            f"/devices/locks/{lock}/members", json={"email": "one@example.com", "role": "guest"}, headers=owner
        ),
        world.devices.patch(f"/devices/locks/{lock}", json={"name": "Renamed"}, headers=owner),
        world.devices.delete(f"/devices/locks/{lock}/voice-lockout", headers=owner),
    ):
        assert (refused.status_code, refused.get_json()["error"]["code"]) == (429, "change_limit")
        assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert db_rows("SELECT count(*) FROM invitations WHERE lock_id = CAST(:l AS uuid)", l=lock) == invitations_before
    # what ends something is never held to the budget (attack run 33: past it, an owner could not let a member out)
    removed = world.devices.delete(f"/devices/locks/{lock}/members/{world.uid('guest_in')}", headers=owner)
    assert removed.status_code == 204, removed.get_json()
    assert world.devices.get(f"/devices/locks/{lock}", headers=owner).get_json()["name"] != "Renamed"
    admin = world.headers("admin")
    assert (
        world.devices.patch(
            f"/devices/locks/{lock}/members/{world.uid('member')}", json={"role": "member"}, headers=admin
        ).status_code
        == 200
    )
    assert (
        world.devices.post(f"/devices/locks/{lock}/commands", json={"action": "lock"}, headers=owner).status_code == 202
    )
    db_rows(  # the admin's day, all but one change used, an hour ago
        "INSERT INTO audit_log (actor, action, outcome, lock_id, at) SELECT :a, 'lock.update', 'ok',"
        " CAST(:l AS uuid), now() - interval '1 hour' FROM generate_series(1, :n)",
        a=f"user:{world.uid('admin')}",
        l=lock,
        n=settings.lock_changes_per_day - 2,
    )
    resp = world.devices.patch(
        f"/devices/locks/{lock}/members/{world.uid('member')}", json={"role": "member"}, headers=admin
    )
    assert resp.status_code == 200
    resp = world.devices.patch(
        f"/devices/locks/{lock}/members/{world.uid('member')}", json={"role": "member"}, headers=admin
    )
    assert (resp.status_code, resp.get_json()["error"]["code"]) == (429, "change_limit")
    assert 22 * 3600 < int(resp.headers["Retry-After"]) <= 23 * 3600 + 1  # the oldest leaves the day in 23 h


def test_a_change_sent_again_past_the_budget_is_answered_as_made(world: World) -> None:
    """Attack run 108's leftover: the budget was taken before a change sent again (its answer lost) was told from a
    new one, so once the caller had made their minute's changes the retry of an invitation or an ownership offer
    was 429 ``change_limit``, as if it were another. Answered as made, it is not counted again; a new one is."""
    settings = get_settings("devices")
    lock, owner = world.lock_id, world.headers("owner")
    invite = {"email": "again@example.com", "role": "guest"}
    sent = world.devices.post(f"/devices/locks/{lock}/members", json=invite, headers=owner)
    offer = {"uid": world.uid("member")}
    offered = world.devices.post(f"/devices/locks/{lock}/transfer", json=offer, headers=owner)
    assert (sent.status_code, offered.status_code) == (202, 202)
    db_rows(  # the owner's minute of changes made
        "INSERT INTO audit_log (actor, action, outcome, lock_id, at) SELECT :a, 'lock.update', 'ok',"
        " CAST(:l AS uuid), now() FROM generate_series(1, :n)",
        a=f"user:{world.uid('owner')}",
        l=lock,
        n=settings.lock_changes_per_minute,
    )
    again = world.devices.post(f"/devices/locks/{lock}/members", json=invite, headers=owner)
    assert (again.status_code, again.get_json()) == (202, sent.get_json())
    offered_again = world.devices.post(f"/devices/locks/{lock}/transfer", json=offer, headers=owner)
    assert (offered_again.status_code, offered_again.get_json()) == (202, offered.get_json())
    other = world.devices.post(
        f"/devices/locks/{lock}/members", json={"email": "other@example.com", "role": "guest"}, headers=owner
    )
    assert (other.status_code, other.get_json()["error"]["code"]) == (429, "change_limit")
    other_terms = world.devices.post(f"/devices/locks/{lock}/members", json={**invite, "role": "member"}, headers=owner)
    assert (other_terms.status_code, other_terms.get_json()["error"]["code"]) == (429, "change_limit")


def test_commands_are_signed_for_the_lock(world: World) -> None:
    resp = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("owner")
    )
    assert resp.status_code == 202
    command = resp.get_json()["command"]
    assert command["status"] == "pending" and command["action"] == "unlock"
    (payload,) = db_rows("SELECT payload FROM commands WHERE id = CAST(:i AS uuid)", i=command["id"])[0]
    checked = command_signing.verify(payload, world.credentials["server_public_key"])
    assert (checked.id, checked.lock, checked.action) == (command["id"], world.lock_id, "unlock")
    tampered = json.loads(payload)
    tampered["cmd"] = tampered["cmd"].replace('"unlock"', '"lock"')
    with pytest.raises(command_signing.BadCommand, match="bad_signature"):
        command_signing.verify(json.dumps(tampered), world.credentials["server_public_key"])


def test_idempotent_retries_return_the_same_command(world: World) -> None:
    path = f"/devices/locks/{world.lock_id}/commands"
    headers = {**world.headers("member"), "Idempotency-Key": "tap-42"}
    first = world.devices.post(path, json={"action": "unlock"}, headers=headers)
    second = world.devices.post(path, json={"action": "unlock"}, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.get_json()["command"]["id"] == second.get_json()["command"]["id"]
    assert db_rows("SELECT count(*) FROM commands WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id) == [[1]]
    clash = world.devices.post(path, json={"action": "lock"}, headers=headers)
    assert clash.status_code == 409 and clash.get_json()["error"]["code"] == "idempotency_key_reused"
    # the same key from another user is another command
    other = world.devices.post(
        path, json={"action": "unlock"}, headers={**world.headers("admin"), "Idempotency-Key": "tap-42"}
    )
    assert other.status_code == 202 and other.get_json()["command"]["id"] != first.get_json()["command"]["id"]
    # the key in the body is the header's; both and different is no guess at which (the header won silently)
    same = world.devices.post(path, json={"action": "unlock", "idempotency_key": "tap-42"}, headers=headers)
    assert same.status_code == 200 and same.get_json()["command"]["id"] == first.get_json()["command"]["id"]
    both = world.devices.post(path, json={"action": "unlock", "idempotency_key": "tap-43"}, headers=headers)
    assert both.status_code == 400 and both.get_json()["error"]["code"] == "conflicting_idempotency_keys"
    assert db_rows("SELECT count(*) FROM commands WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id) == [[2]]


def test_a_lock_created_again_with_its_idempotency_key_is_the_lock_it_made(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """A create whose answer was lost (the phone changed networks, or a 503 whose COMMIT was made) was made again by
    the app's retry: the owner found two locks of one name, one never paired (attack run 37). With an idempotency
    key, the retry is answered 200 with the lock the key made and a new code, the earlier one ended; sent twice at
    once, one lock too. The key made one lock: for another name it is 409, and a lock given away answers no more."""
    someone = sign_up()
    headers = {**bearer(someone), "Idempotency-Key": "new-shed-1"}
    assert world.devices.get("/devices/me", headers=headers).status_code == 200

    def owned() -> int:
        return int(db_rows("SELECT count(*) FROM locks WHERE owner_uid = :u", u=someone["localId"])[0][0])

    first = world.devices.post("/devices/locks", json={"name": "Shed"}, headers=headers)
    again = world.devices.post("/devices/locks", json={"name": "Shed", "supports_open": False}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200), (first.get_json(), again.get_json())
    lock_id = first.get_json()["lock"]["id"]
    assert again.get_json()["lock"]["id"] == lock_id and owned() == 1
    assert again.get_json()["provisioning"]["code"] != first.get_json()["provisioning"]["code"]
    stale = world.devices.post(
        "/devices/provision", json={"code": first.get_json()["provisioning"]["code"], "public_key": BASE_POINT}
    )
    assert stale.status_code in (400, 401) and owned() == 1  # the first answer's code ended by the retry's
    provision(world.devices, again.get_json()["provisioning"]["code"])
    # the body's key is the header's
    body_key = world.devices.post(
        "/devices/locks", json={"name": "Shed", "idempotency_key": "new-shed-1"}, headers=bearer(someone)
    )
    assert body_key.status_code == 200 and body_key.get_json()["lock"]["id"] == lock_id
    # paired since: no code (one would re-pair the lock: attack run 40), none counted
    issued = "SELECT count(*) FROM pairing_issues WHERE user_uid = :u"
    codes = db_rows(issued, u=someone["localId"])
    assert body_key.get_json()["provisioning"] is None and body_key.get_json()["lock"]["provisioned"]
    assert (
        world.devices.post("/devices/locks", json={"name": "Shed"}, headers=headers).get_json()["provisioning"] is None
    )
    assert db_rows(issued, u=someone["localId"]) == codes
    # one key, one lock
    other = world.devices.post("/devices/locks", json={"name": "Garage"}, headers=headers)
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    kind = world.devices.post("/devices/locks", json={"name": "Shed", "supports_open": True}, headers=headers)
    assert kind.status_code == 409 and kind.get_json()["error"]["code"] == "idempotency_key_reused"
    assert owned() == 1
    # sent twice at once, both wait for the caller's row: one lock, two answers naming it
    twice = {**bearer(someone), "Idempotency-Key": "new-gate-1"}
    holder = Database(stack_env["DATABASE_URL"], pool_size=1)
    try:
        with ThreadPoolExecutor(2) as pool:
            with holder.transaction() as con:
                con.run("SELECT 1 FROM users WHERE uid = :u FOR UPDATE", u=someone["localId"])
                sent = [
                    pool.submit(world.devices.post, "/devices/locks", json={"name": "Gate"}, headers=twice)
                    for _ in range(2)
                ]
                time.sleep(0.5)
            answers = sorted((r.status_code, r.get_json()["lock"]["id"]) for r in (f.result(30) for f in sent))
    finally:
        holder.close()
    assert [code for code, _ in answers] == [200, 201] and answers[0][1] == answers[1][1], answers
    assert owned() == 2
    # without a key, a create is a new lock
    assert world.devices.post("/devices/locks", json={"name": "Shed"}, headers=bearer(someone)).status_code == 201
    assert owned() == 3
    # the lock given away: its key answers no more for it (nor makes another)
    taker = world.accounts["member"]
    join(world.devices, lock_id, someone, taker, {"role": "member"})
    assert hand_over(world.devices, lock_id, someone, taker).status_code == 200
    gone = world.devices.post("/devices/locks", json={"name": "Shed"}, headers=headers)
    assert gone.status_code == 409 and gone.get_json()["error"]["code"] == "idempotency_key_reused"
    assert owned() == 2


def test_a_lock_created_again_past_the_days_pairing_codes_is_answered_with_the_lock(world: World, sign_up: Any) -> None:
    """Attack run 108: a keyed create whose answer was lost, sent again once the day's pairing codes were spent (its
    own the last), was 429 ``pairing_limit``: the app said the lock was not made, forgot the key (a 4xx), and the
    owner's next try made a second lock of the name. Now the retry is 200 with the lock the key made, not paired and
    no code (``provisioning: null``, nothing counted); the code is asked for later."""
    settings = get_settings("devices")
    someone = sign_up()
    headers = {**bearer(someone), "Idempotency-Key": "last-code-shed"}
    assert world.devices.get("/devices/me", headers=headers).status_code == 200
    issued = "SELECT count(*) FROM pairing_issues WHERE user_uid = :u"
    with get_runtime("devices").db.transaction() as con:  # the day's codes but one given already
        for _ in range(settings.pairings_per_day - 1):
            con.run("INSERT INTO pairing_issues (user_uid) VALUES (:u)", u=someone["localId"])
    first = world.devices.post("/devices/locks", json={"name": "Shed"}, headers=headers)
    assert first.status_code == 201 and first.get_json()["provisioning"] is not None, first.get_json()
    assert db_rows(issued, u=someone["localId"]) == [[settings.pairings_per_day]]
    again = world.devices.post("/devices/locks", json={"name": "Shed"}, headers=headers)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["lock"]["id"] == first.get_json()["lock"]["id"]
    assert again.get_json()["provisioning"] is None and not again.get_json()["lock"]["provisioned"]
    assert db_rows(issued, u=someone["localId"]) == [[settings.pairings_per_day]]
    # the first answer's code still pairs it: the retry ended nothing
    provision(world.devices, first.get_json()["provisioning"]["code"])
    assert db_rows("SELECT count(*) FROM locks WHERE owner_uid = :u", u=someone["localId"]) == [[1]]
    # a new lock is refused as before
    other = world.devices.post("/devices/locks", json={"name": "Barn"}, headers=bearer(someone))
    assert other.status_code == 429 and other.get_json()["error"]["code"] == "pairing_limit"


def test_an_acceptance_sent_again_is_answered_with_what_it_made(world: World, sign_up: Any) -> None:
    """Attack run 39: an invitation's acceptance, or a lock's transfer, sent again after its answer was lost (or
    twice at once) was 404 ("no such invitation", "no transfer stands for you") while the first had made the caller
    a member, or the owner. Now the invitation they accepted answers 200 with the membership it made while that
    stands, and the owner's acceptance of a transfer 200 with the lock; a membership ended since is 404 as before."""
    invitee = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    invited = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"uid": invitee["localId"], "role": "guest", "access": {"weekdays": ["mon"]}},
        headers=world.headers("admin"),
    )
    accept = f"/devices/invitations/{invited.get_json()['invitation']['id']}/accept"
    first = world.devices.post(accept, headers=bearer(invitee))
    again = world.devices.post(accept, headers=bearer(invitee))
    assert (first.status_code, again.status_code) == (201, 200), again.get_json()
    assert again.get_json() == first.get_json()
    assert active_members(world.lock_id) == 6
    # nobody else takes it for theirs
    stranger = world.devices.post(accept, headers=world.headers("member"))
    assert stranger.status_code == 404 and stranger.get_json()["error"]["code"] == "invitation_not_found"
    # removed since: the invitation made nothing that stands
    removed = world.devices.delete(
        f"/devices/locks/{world.lock_id}/members/{invitee['localId']}", headers=world.headers("owner")
    )
    assert removed.status_code == 204
    late = world.devices.post(accept, headers=bearer(invitee))
    assert late.status_code == 404 and late.get_json()["error"]["code"] == "invitation_not_found"
    assert active_members(world.lock_id) == 5

    member = world.accounts["member"]
    # an offer sent again (its answer lost) is the offer standing: its 7 days, one offer in the log and the feed
    offers = f"/devices/locks/{world.lock_id}/transfer"
    offered = world.devices.post(offers, json={"uid": member["localId"]}, headers=world.headers("owner"))
    offered_again = world.devices.post(offers, json={"uid": member["localId"]}, headers=world.headers("owner"))
    assert (offered.status_code, offered_again.status_code) == (202, 202)
    assert offered_again.get_json() == offered.get_json()
    logged = "SELECT count(*) FROM audit_log WHERE lock_id = CAST(:l AS uuid) AND action = 'lock.transfer_offer'"
    assert db_rows(logged, l=world.lock_id) == [[1]]
    took = hand_over(world.devices, world.lock_id, world.accounts["owner"], member)
    took_again = world.devices.post(f"/devices/locks/{world.lock_id}/transfer/accept", headers=bearer(member))
    assert (took.status_code, took_again.status_code) == (200, 200), took_again.get_json()
    assert took_again.get_json()["role"] == "owner" and took_again.get_json()["id"] == world.lock_id
    assert db_rows("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)", l=world.lock_id) == [[member["localId"]]]
    giver = world.devices.post(f"/devices/locks/{world.lock_id}/transfer/accept", headers=world.headers("owner"))
    assert giver.status_code == 404 and giver.get_json()["error"]["code"] == "transfer_not_found"


def test_an_invitation_sent_again_after_it_was_accepted_is_answered_with_it(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run 108: an invitation whose answer was lost, sent again by its sender after the invitee had accepted
    it (in person, the phone's retry a moment behind), was 409 ``already_member`` by uid, a failure shown for what
    had worked; by address a second invitation, a second ``member.invite`` in the log and the change budget, one
    more of the sender's open invitations for 7 days, offered to a member who could only decline it. Now the same
    invitation, accepted and its membership standing, is answered with it (202), nothing made again; other terms
    are a new request as before."""
    members_path = f"/devices/locks/{world.lock_id}/members"
    logged = "SELECT count(*) FROM audit_log WHERE lock_id = CAST(:l AS uuid) AND action = 'member.invite'"
    by_uid = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(by_uid)).status_code == 200
    grant = {"uid": by_uid["localId"], "role": "guest", "access": {"weekdays": ["mon"]}}
    sent = world.devices.post(members_path, json=grant, headers=world.headers("admin"))
    assert sent.status_code == 202, sent.get_json()
    accept = f"/devices/invitations/{sent.get_json()['invitation']['id']}/accept"
    assert world.devices.post(accept, headers=bearer(by_uid)).status_code == 201
    before = db_rows(logged, l=world.lock_id)
    again = world.devices.post(members_path, json=grant, headers=world.headers("admin"))
    assert again.status_code == 202 and again.get_json() == sent.get_json(), again.get_json()
    # another sender, or other terms, is no retry of it: a member already
    owners = world.devices.post(members_path, json=grant, headers=world.headers("owner"))
    assert owners.status_code == 409 and owners.get_json()["error"]["code"] == "already_member"
    other = world.devices.post(
        members_path, json={**grant, "access": {"weekdays": ["tue"]}}, headers=world.headers("admin")
    )
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "already_member"
    assert db_rows(logged, l=world.lock_id) == before

    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    friend = sign_up(email="again-friend@example.com")
    verify_email(host, project, friend["localId"])
    friend = sign_in(host, "again-friend@example.com")
    by_address = {"email": "again-friend@example.com", "role": "member"}
    mailed = world.devices.post(members_path, json=by_address, headers=world.headers("admin"))
    assert mailed.status_code == 202, mailed.get_json()
    taken = world.devices.post(
        f"/devices/invitations/{mailed.get_json()['invitation']['id']}/accept", headers=bearer(friend)
    )
    assert taken.status_code == 201, taken.get_json()
    before = db_rows(logged, l=world.lock_id)
    mailed_again = world.devices.post(members_path, json=by_address, headers=world.headers("admin"))
    assert mailed_again.status_code == 202 and mailed_again.get_json() == mailed.get_json()
    assert db_rows(logged, l=world.lock_id) == before
    assert db_rows(
        "SELECT count(*) FROM invitations WHERE lock_id = CAST(:l AS uuid) AND email = :e",
        l=world.lock_id,
        e="again-friend@example.com",
    ) == [[1]]
    assert world.devices.get("/devices/invitations", headers=bearer(friend)).get_json()["invitations"] == []
    # removed since: the invitation made nothing that stands, and sending it is inviting them anew
    removed = world.devices.delete(f"{members_path}/{friend['localId']}", headers=world.headers("admin"))
    assert removed.status_code == 204
    anew = world.devices.post(members_path, json=by_address, headers=world.headers("admin"))
    assert anew.status_code == 202 and anew.get_json()["invitation"]["id"] != mailed.get_json()["invitation"]["id"]


def test_an_invitation_withdrawn_after_it_was_accepted_is_not_answered_as_gone(world: World, sign_up: Any) -> None:
    """Attack run 108: an invitation's withdrawal whose answer was lost, sent again after the invitee had accepted it
    (the first never reached the database), was 404 ``invitation_not_found``, which the contract reads as "gone":
    the admin was told the invitation was withdrawn while its invitee had joined. It is 409 ``invitation_accepted``
    while the membership it made stands (the member is removed, not the invitation); a withdrawn one is 404 as
    before."""
    joiner = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(joiner)).status_code == 200
    members_path = f"/devices/locks/{world.lock_id}/members"
    sent = world.devices.post(
        members_path, json={"uid": joiner["localId"], "role": "member"}, headers=world.headers("admin")
    )
    invitation = sent.get_json()["invitation"]["id"]
    assert world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(joiner)).status_code == 201
    withdraw = f"/devices/locks/{world.lock_id}/invitations/{invitation}"
    late = world.devices.delete(withdraw, headers=world.headers("admin"))
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "invitation_accepted", late.get_json()
    # removed since: nothing it made stands, nothing to withdraw
    assert (
        world.devices.delete(f"{members_path}/{joiner['localId']}", headers=world.headers("admin")).status_code == 204
    )
    gone = world.devices.delete(withdraw, headers=world.headers("admin"))
    assert gone.status_code == 404 and gone.get_json()["error"]["code"] == "invitation_not_found"
    # a withdrawn one sent again is gone, as before
    again = world.devices.post(
        members_path, json={"uid": joiner["localId"], "role": "member"}, headers=world.headers("admin")
    )
    withdraw = f"/devices/locks/{world.lock_id}/invitations/{again.get_json()['invitation']['id']}"
    assert world.devices.delete(withdraw, headers=world.headers("admin")).status_code == 204
    twice = world.devices.delete(withdraw, headers=world.headers("admin"))
    assert twice.status_code == 404 and twice.get_json()["error"]["code"] == "invitation_not_found"


def test_a_guests_command_sent_again_after_her_window_ended_is_answered_with_it(world: World) -> None:
    """Attack run 108: a guest's unlock made in her window's last seconds, its answer lost, sent again with its
    idempotency key once the window had ended was 403 ``outside_access_window``, logged as a denial: the app said
    the door was refused while the unlock had been made (and perhaps carried out). The key's command is answered as
    made (200), whatever the window says now; a new command is refused as before, and a removed guest's retry is 404."""
    path = f"/devices/locks/{world.lock_id}/commands"
    headers = {**world.headers("guest_in"), "Idempotency-Key": "last-seconds-1"}
    first = world.devices.post(path, json={"action": "unlock"}, headers=headers)
    assert first.status_code == 202, first.get_json()
    with get_runtime("devices").db.transaction() as con:  # her window ends (its last day, as if it had passed)
        con.run(
            "UPDATE lock_members SET valid_until = now() - interval '1 second'"
            " WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
            l=world.lock_id,
            u=world.uid("guest_in"),
        )
    denied = "SELECT count(*) FROM audit_log WHERE lock_id = CAST(:l AS uuid) AND outcome = 'denied' AND actor = :a"
    before = db_rows(denied, l=world.lock_id, a=audit.user_actor(world.uid("guest_in")))
    again = world.devices.post(path, json={"action": "unlock"}, headers=headers)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["command"]["id"] == first.get_json()["command"]["id"]
    assert db_rows(denied, l=world.lock_id, a=audit.user_actor(world.uid("guest_in"))) == before
    other = world.devices.post(path, json={"action": "unlock"}, headers={**headers, "Idempotency-Key": "late-1"})
    assert other.status_code == 403 and other.get_json()["error"]["code"] == "outside_access_window"
    reused = world.devices.post(path, json={"action": "lock"}, headers=headers)
    assert reused.status_code == 409 and reused.get_json()["error"]["code"] == "idempotency_key_reused"
    assert db_rows("SELECT count(*) FROM commands WHERE idempotency_key = 'last-seconds-1'") == [[1]]
    removed = world.devices.delete(
        f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}", headers=world.headers("owner")
    )
    assert removed.status_code == 204
    gone = world.devices.post(path, json={"action": "unlock"}, headers=headers)
    assert gone.status_code == 404 and gone.get_json()["error"]["code"] == "lock_not_found"


def test_expired_command_reads_as_expired(world: World) -> None:
    command = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("owner")
    ).get_json()["command"]
    with get_runtime("devices").db.transaction() as con:
        con.run(
            "UPDATE commands SET created_at = now() - interval '2 min', expires_at = now() - interval '1 min'"
            " WHERE id = CAST(:i AS uuid)",
            i=command["id"],
        )
    got = world.devices.get(f"/devices/locks/{world.lock_id}/commands/{command['id']}", headers=world.headers("owner"))
    assert got.get_json()["command"]["status"] == "expired"


def test_revocation_takes_effect_on_the_next_command(world: World) -> None:
    path = f"/devices/locks/{world.lock_id}/commands"
    assert world.devices.post(path, json={"action": "unlock"}, headers=world.headers("member")).status_code == 202
    assert (
        world.devices.delete(
            f"/devices/locks/{world.lock_id}/members/{world.uid('member')}", headers=world.headers("admin")
        ).status_code
        == 204
    )
    assert world.devices.post(path, json={"action": "unlock"}, headers=world.headers("member")).status_code == 404


def test_open_needs_a_lock_that_can_unlatch(world: World, devices: Any, sign_up: Any) -> None:
    resp = devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "open"}, headers=world.headers("owner")
    )
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "action_not_supported"
    latch = build_world(devices, sign_up, supports_open=True)
    resp = devices.post(
        f"/devices/locks/{latch.lock_id}/commands", json={"action": "open"}, headers=latch.headers("owner")
    )
    assert resp.status_code == 202


def test_unprovisioned_lock_takes_no_commands(devices: Any, sign_up: Any) -> None:
    owner = sign_up()
    lock_id = create_lock(devices, owner)["lock"]["id"]
    resp = devices.post(f"/devices/locks/{lock_id}/commands", json={"action": "unlock"}, headers=bearer(owner))
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "lock_not_provisioned"


def test_an_admins_change_is_counted_without_reading_the_locks_other_audit_rows(world: World) -> None:
    """Attack run 93: the change budget's count read every audit row of the lock's last day through the lock's index,
    each member's commands among them (a guest's 30 a minute: 43,200 a day each), to count the few changes of one
    admin: 20,015 rows read for 6. Migration 0074's partial index reads only the changes counted, and its actions
    are the budget's."""
    from lockwise.core import migrate

    (index,) = [m for m in migrate.load() if m.concurrent_index and m.concurrent_index.index == "audit_log_changes_idx"]
    assert changes.COUNTED_SQL.replace(" AND outcome", "\n    AND outcome") in index.sql  # the two agree
    db = get_runtime("devices").db
    with db.transaction() as con:  # a member's day of commands at the lock, and the rest of the fleet's
        con.run(
            "INSERT INTO audit_log (actor, action, outcome, lock_id, target, at) SELECT :a, 'command.unlock', 'ok',"
            " CAST(:l AS uuid), 'x', now() - g * interval '2 seconds' FROM generate_series(1, 20000) g",
            a=audit.user_actor(world.uid("member")),
            l=world.lock_id,
        )
        con.run(
            "INSERT INTO audit_log (actor, action, outcome, lock_id, target, at) SELECT 'user:other', 'command.unlock',"
            " 'ok', gen_random_uuid(), 'x', now() - g * interval '1 second' FROM generate_series(1, 100000) g"
        )
        con.run("ANALYZE audit_log")
    for name in ("Back", "Front"):
        resp = world.devices.patch(
            f"/devices/locks/{world.lock_id}", json={"name": name}, headers=world.headers("owner")
        )
        assert resp.status_code == 200, resp.get_json()
    with db.transaction() as con:
        ((plan,),) = con.run(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM audit_log WHERE lock_id = CAST(:l AS uuid)"
            " AND at > now() - interval '1 day' AND actor = :a AND " + changes.COUNTED_SQL,
            l=world.lock_id,
            a=audit.user_actor(world.uid("owner")),
        )

    def read(node: dict[str, Any]) -> int:
        here = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0) if "Scan" in node["Node Type"] else 0
        return int(here) + sum(read(child) for child in node.get("Plans", []))

    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    assert top["Plans"][0]["Actual Rows"] >= 2 and read(top) <= 50, top


def test_an_accounts_changes_at_all_its_locks_together_are_held_to_a_minutes_budget(world: World) -> None:
    """Attack run 110's leftover: the change budget was a lock's alone, and an account owns up to 100 locks, made and
    paired for free: 30 changes a minute at each, 3,000 a minute, each an audit row kept 400 days and most a rewrite
    of the lock's documents. The changes one account makes at all its locks together are held to
    ``LOCKWISE_LOCK_CHANGES_PER_ACCOUNT_MINUTE``, counted through migration 0079's partial index (its actions the
    budget's); another account's changes, and what ends something, are not held up."""
    from lockwise.core import migrate

    (index,) = [
        m for m in migrate.load() if m.concurrent_index and m.concurrent_index.index == "audit_log_account_changes_idx"
    ]
    assert changes.COUNTED_SQL.replace(" AND outcome", "\n    AND outcome") in index.sql  # the two agree
    settings = get_settings("devices")
    owner = world.uid("owner")
    db_rows(  # the owner's minute of changes at other locks of theirs, one each
        "INSERT INTO audit_log (actor, action, outcome, lock_id, at) SELECT :a, 'lock.update', 'ok',"
        " gen_random_uuid(), now() - interval '30 seconds' FROM generate_series(1, :n)",
        a=audit.user_actor(owner),
        n=settings.lock_changes_per_account_minute,
    )
    refused = world.devices.patch(
        f"/devices/locks/{world.lock_id}", json={"name": "Renamed"}, headers=world.headers("owner")
    )
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (429, "change_limit")
    assert 25 <= int(refused.headers["Retry-After"]) <= 31  # the oldest leaves the minute in 30 s
    assert "locks you manage" in refused.get_json()["error"]["message"]
    admin = world.devices.patch(
        f"/devices/locks/{world.lock_id}/members/{world.uid('member')}",
        json={"role": "member"},
        headers=world.headers("admin"),
    )
    assert admin.status_code == 200, admin.get_json()
    removed = world.devices.delete(
        f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}", headers=world.headers("owner")
    )
    assert removed.status_code == 204
    # the count can be read through the index (its predicate the count's; whether the planner takes it depends on the
    # table's size, and a test's is small)
    assert "audit_log_account_changes_idx" in account_changes_plan(owner, "1 minute")


def account_changes_plan(uid: str, period: str) -> str:
    """The plan, as JSON, of counting ``uid``'s changes (``changes.COUNTED_SQL``) over the last ``period``, sequential
    scans off: whether it reads through migration 0079's partial index."""
    with get_runtime("devices").db.transaction() as con:
        con.run("SET LOCAL enable_seqscan = off")
        ((plan,),) = con.run(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*), min(at) FROM audit_log WHERE actor = :a"
            f" AND at > now() - interval '{period}' AND " + changes.COUNTED_SQL,
            a=audit.user_actor(uid),
        )
    return json.dumps(plan)


#: ``LOCKWISE_LOCK_CHANGES_PER_ACCOUNT_DAY``'s default (attack run 130)
ACCOUNT_CHANGES_A_DAY = 3000


def test_an_accounts_changes_at_all_its_locks_together_are_held_to_a_days_budget(world: World) -> None:
    """Attack run 130 (denial of wallet): with a lock's day (1,000) and the account's minute (120) alone, an account
    managing 100 locks, made and paired for free, made 120 changes a minute all day long, 172,800 a day, each an
    audit row kept 400 days and most a feed entry kept 90 days and a rewrite of the lock's documents. The changes one
    account makes at all its locks together are held to ``LOCKWISE_LOCK_CHANGES_PER_ACCOUNT_DAY`` (3,000), counted
    through migration 0079's partial index; another account's changes, and what ends something, are not held up."""
    owner = world.uid("owner")
    ((made,),) = db_rows(  # the world's invitations by the owner count too
        "SELECT count(*) FROM audit_log WHERE actor = :a AND at > now() - interval '1 day' AND " + changes.COUNTED_SQL,
        a=audit.user_actor(owner),
    )
    db_rows(  # the rest of the owner's day of changes at other locks of theirs, one each, two hours ago, but one
        "INSERT INTO audit_log (actor, action, outcome, lock_id, at) SELECT :a, 'member.update', 'ok',"
        " gen_random_uuid(), now() - interval '2 hours' FROM generate_series(1, :n)",
        a=audit.user_actor(owner),
        n=ACCOUNT_CHANGES_A_DAY - 1 - made,
    )
    lock, headers = world.lock_id, world.headers("owner")
    last = world.devices.patch(f"/devices/locks/{lock}", json={"name": "Renamed"}, headers=headers)
    assert last.status_code == 200, last.get_json()
    refused = world.devices.patch(f"/devices/locks/{lock}", json={"name": "Renamed again"}, headers=headers)
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (429, "change_limit")
    assert 21 * 3600 < int(refused.headers["Retry-After"]) <= 22 * 3600 + 1  # the oldest leaves the day in 22 h
    assert "locks you manage in the last 24 hours" in refused.get_json()["error"]["message"]
    assert world.devices.get(f"/devices/locks/{lock}", headers=headers).get_json()["name"] == "Renamed"
    admin = world.devices.patch(
        f"/devices/locks/{lock}/members/{world.uid('member')}", json={"role": "member"}, headers=world.headers("admin")
    )
    assert admin.status_code == 200, admin.get_json()
    removed = world.devices.delete(f"/devices/locks/{lock}/members/{world.uid('guest_in')}", headers=headers)
    assert removed.status_code == 204
    assert get_settings("devices").lock_changes_per_account_day == ACCOUNT_CHANGES_A_DAY
    assert "audit_log_account_changes_idx" in account_changes_plan(owner, "1 day")  # the day's count too


def test_a_signed_in_request_writes_the_user_row_only_when_it_is_new_or_its_email_changed(
    devices: Any, sign_up: Any, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str | None] = []
    record = users.upsert

    def counted(con: Any, user: Any) -> None:
        written.append(user.email)
        record(con, user)

    monkeypatch.setattr(users, "upsert", counted)
    host = stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    account = sign_up()
    verify_email(host, PROJECT_ID, account["localId"])  # only a verified address is recorded
    account = sign_in(host, account["email"])
    for _ in range(3):
        assert devices.get("/devices/me", headers=bearer(account)).status_code == 200
    assert written == [account["email"]]  # one write transaction, not one per request
    from lockwise.core import runtime

    monkeypatch.setattr(runtime, "RECORDED_USER_TTL_S", 0.0)  # whether the account is gone is read again: no write
    assert devices.get("/devices/me", headers=bearer(account)).status_code == 200
    assert written == [account["email"]]
    new_email = f"moved-{account['email']}"
    req = urllib.request.Request(
        f"http://{host}/identitytoolkit.googleapis.com/v1/projects/{PROJECT_ID}/accounts:update",
        data=json.dumps({"localId": account["localId"], "email": new_email, "emailVerified": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer owner"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    moved = sign_in(host, new_email)
    assert devices.get("/devices/me", headers=bearer(moved)).status_code == 200
    assert written == [account["email"], new_email]
    assert db_rows("SELECT email FROM users WHERE uid = :u", u=account["localId"]) == [[new_email]]


def test_invitation_by_email_is_seen_only_verified_and_joins_only_when_accepted(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    resp = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": "Friend@Example.com", "role": "guest", "access": {"weekdays": ["sat", "sun"]}},
        headers=world.headers("admin"),
    )
    assert resp.status_code == 202 and resp.get_json()["invitation"]["email"] == "friend@example.com"
    again = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": "friend@example.com", "role": "member"},
        headers=world.headers("owner"),
    )
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "already_invited"
    assert again.get_json()["error"]["details"]["invitation_id"] == resp.get_json()["invitation"]["id"]
    # the same invitation sent again by its sender (its answer lost): answered with it, not a 409 (attack run 39)
    resent = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": "friend@example.com", "role": "guest", "access": {"weekdays": ["sat", "sun"]}},
        headers=world.headers("admin"),
    )
    assert resent.status_code == 202 and resent.get_json() == resp.get_json()
    assert db_rows(
        "SELECT count(*) FROM invitations WHERE lock_id = CAST(:l AS uuid) AND email = :e",
        l=world.lock_id,
        e="friend@example.com",
    ) == [[1]]
    friend = sign_up(email="friend@example.com")
    # an unverified address sees nothing (anyone can sign up with any address)
    assert world.devices.get("/devices/invitations", headers=bearer(friend)).get_json() == {
        "invitations": [],
        "address_unconfirmed": False,
        "next_page_token": None,
    }
    invitation = resp.get_json()["invitation"]["id"]
    refused = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(friend))
    assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "invitation_not_found"
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    verify_email(host, project, friend["localId"])
    friend = sign_in(host, "friend@example.com")
    # verified, signed in: still not a member until they say so
    assert world.devices.get(f"/devices/locks/{world.lock_id}", headers=bearer(friend)).status_code == 404
    waiting = world.devices.get("/devices/invitations", headers=bearer(friend)).get_json()["invitations"]
    assert [(i["id"], i["lock"]["id"], i["role"], i["invited_by"]) for i in waiting] == [
        (invitation, world.lock_id, "guest", world.uid("admin"))
    ]
    assert waiting[0]["access"]["weekdays"] == ["sat", "sun"]
    accepted = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(friend))
    assert accepted.status_code == 201 and accepted.get_json()["lock_id"] == world.lock_id
    view = world.devices.get(f"/devices/locks/{world.lock_id}", headers=bearer(friend))
    assert view.status_code == 200 and view.get_json()["role"] == "guest"
    members = world.devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("owner")).get_json()
    joined = [m for m in members["members"] if m["uid"] == friend["localId"]]
    assert joined and joined[0]["access"]["weekdays"] == ["sat", "sun"]
    assert members["invitations"] == []
    # an answered invitation makes nothing more: accepted again (its answer lost), it is the membership it made
    again = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(friend))
    assert again.status_code == 200 and again.get_json() == accepted.get_json()
    assert active_members(world.lock_id) == 6


def test_an_invitation_names_its_senders_verified_address_beside_the_locks_name(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """A lock's name is its owner's free text, and the invitations waiting for a user named the sender by uid alone:
    "Home" from a stranger read as an invitation from home. Each names the address Firebase Auth vouched for as the
    sender's (``invited_by_email``), null for a sender with none verified."""
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    address = f"sender-{secrets.token_hex(4)}@example.com"
    known = sign_up(email=address)
    verify_email(host, project, known["localId"])
    known = sign_in(host, address)
    unverified, invitee = sign_up(), sign_up()
    sent = {}
    for sender, name in ((known, "Home"), (unverified, "Also home")):
        assert world.devices.get("/devices/me", headers=bearer(sender)).status_code == 200
        lock_id = create_lock(world.devices, sender, name=name)["lock"]["id"]
        invited = world.devices.post(
            f"/devices/locks/{lock_id}/members",
            json={"uid": invitee["localId"], "role": "member"},
            headers=bearer(sender),
        )
        assert invited.status_code == 202, invited.get_json()
        sent[name] = sender["localId"]
    waiting = world.devices.get("/devices/invitations", headers=bearer(invitee)).get_json()["invitations"]
    assert [(i["lock"]["name"], i["invited_by"], i["invited_by_email"]) for i in waiting] == [
        ("Home", sent["Home"], address),
        ("Also home", sent["Also home"], None),
    ]


def test_the_members_listing_names_each_by_their_verified_address(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """The owner and admins invite by address, and the members listing named each member by uid alone: whom a
    removal would remove was a guess. Each is named by the address Firebase Auth vouched for as theirs, null for a
    member without one."""
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    address = f"member-{secrets.token_hex(4)}@example.com"
    known = sign_up(email=address)
    verify_email(host, project, known["localId"])
    known = sign_in(host, address)
    unverified = sign_up()
    for account in (known, unverified):
        assert world.devices.get("/devices/me", headers=bearer(account)).status_code == 200
        join(world.devices, world.lock_id, world.accounts["owner"], account, {"role": "member"})
    listed = world.devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("admin")).get_json()
    by_uid = {m["uid"]: m["email"] for m in listed["members"]}
    assert by_uid[known["localId"]] == address and by_uid[unverified["localId"]] is None, by_uid
    guest = world.devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("member"))
    assert guest.status_code == 403  # the listing is still the owner's and admins' alone


def emulator_token(
    uid: str, email: str | None = None, verified: bool = False, *, age_s: int = 0, signed_in_age_s: int | None = None
) -> dict[str, Any]:
    """An account as the Auth emulator's unsigned ID tokens carry it (the functions take them with the emulator
    set), with any address, verified or not, issued ``age_s`` ago: ``{"idToken", "localId"}`` as ``sign_up``
    answers."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    now = int(time.time()) - age_s
    signed_in = now if signed_in_age_s is None else int(time.time()) - signed_in_age_s  # a refreshed token's is older
    claims: dict[str, Any] = {
        "iss": f"https://securetoken.google.com/{PROJECT_ID}",
        "aud": PROJECT_ID,
        "sub": uid,
        "user_id": uid,
        "iat": now,
        "auth_time": signed_in,
        "exp": now + 3600,
        "firebase": {"identities": {}, "sign_in_provider": "password"},  # a custom token's is refused (attack run 121)
    }
    if email is not None:
        claims.update(email=email, email_verified=verified)
    return {"idToken": part({"alg": "none", "typ": "JWT"}) + "." + part(claims) + ".", "localId": uid}


def auth_has(monkeypatch: pytest.MonkeyPatch, addresses: dict[str, str]) -> None:
    """Firebase Auth answers that each uid's account has the address given, verified: for tokens made here for
    accounts the Auth emulator does not hold (``emulator_token``), whose address an invitation is then found by."""

    def verified_email(self: accounts.IdentityToolkit, uid: str) -> str | None:
        return inputs.email_key(addresses.get(uid))

    monkeypatch.setattr(accounts.IdentityToolkit, "verified_email", verified_email)


def test_an_unverified_address_is_not_recorded_and_closes_nobody_elses_invitation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address a token carries unverified is anyone's to claim (an account made with someone else's address
    before they made theirs). It was recorded as the user's, taking it from its verified holder, and a guest leaving
    with it closed the invitation the owner had sent to that holder (attack run). Only a verified address is
    recorded; a leaving member's invitations are closed by uid and by that address only."""
    tag = uuid.uuid4().hex[:8]
    address = f"victim-{tag}@example.com"
    victim = emulator_token(f"victim-{tag}", address, verified=True)
    squatter = emulator_token(f"squatter-{tag}", address.upper(), verified=False)
    auth_has(monkeypatch, {victim["localId"]: address})
    join(world.devices, world.lock_id, world.accounts["owner"], squatter, {"role": "guest"})
    sent = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": address, "role": "admin"},
        headers=world.headers("owner"),
    )
    assert sent.status_code == 202
    assert [
        i["role"] for i in world.devices.get("/devices/invitations", headers=bearer(victim)).get_json()["invitations"]
    ] == ["admin"]
    assert world.devices.get("/devices/invitations", headers=bearer(squatter)).get_json() == {
        "invitations": [],
        "address_unconfirmed": False,
        "next_page_token": None,
    }
    assert db_rows("SELECT uid FROM users WHERE lower(email) = :e", e=address) == [[victim["localId"]]]
    assert db_rows("SELECT email FROM users WHERE uid = :u", u=squatter["localId"]) == [[None]]
    # the squatter's next token writes its address again (another case: an instance records a user once per address)
    again = emulator_token(squatter["localId"], address.capitalize(), verified=False)
    assert world.devices.delete("/devices/me", headers=bearer(again)).status_code == 204
    waiting = world.devices.get("/devices/invitations", headers=bearer(victim)).get_json()["invitations"]
    assert [i["id"] for i in waiting] == [sent.get_json()["invitation"]["id"]]


def test_a_token_from_before_its_account_left_every_lock_makes_no_lock_and_a_later_one_does(world: World) -> None:
    """``DELETE /devices/me`` comes before the account's deletion; a lock made after it in a session signed in before
    (the account's other phone) is 409 ``account_left`` and nothing is made, also with a token refreshed since (a new
    issue time, the same sign-in: a review found the issue time let it through). Signed in again since, the account
    was kept: it makes locks as before."""
    uid = f"leaver-{uuid.uuid4().hex[:8]}"
    other_phone = emulator_token(uid, age_s=5)
    assert world.devices.delete("/devices/me", headers=bearer(other_phone)).status_code == 204
    for token in (other_phone, emulator_token(uid, signed_in_age_s=300)):
        refused = world.devices.post("/devices/locks", json={"name": "Shed"}, headers=bearer(token))
        assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "account_left"
    assert db_rows("SELECT count(*) FROM locks WHERE owner_uid = :u", u=uid) == [[0]]
    # nor does that session join a lock: an invitation sent to the uid afterwards is not taken
    sent = world.devices.post(
        f"/devices/locks/{world.lock_id}/members", json={"uid": uid, "role": "guest"}, headers=world.headers("owner")
    )
    accepted = world.devices.post(
        f"/devices/invitations/{sent.get_json()['invitation']['id']}/accept", headers=bearer(other_phone)
    )
    assert accepted.status_code == 409 and accepted.get_json()["error"]["code"] == "account_left"
    assert db_rows("SELECT count(*) FROM lock_members WHERE user_uid = :u", u=uid) == [[0]]
    with get_runtime("devices").db.transaction() as con:  # the leaving was two minutes ago (past the clocks' leeway)
        con.run("UPDATE users SET left_at = left_at - interval '2 minutes' WHERE uid = :u", u=uid)
    made = world.devices.post("/devices/locks", json={"name": "Shed"}, headers=bearer(emulator_token(uid)))
    assert made.status_code == 201
    assert db_rows("SELECT count(*) FROM locks WHERE owner_uid = :u", u=uid) == [[1]]


def test_a_late_retry_of_leaving_every_lock_leaves_nothing_joined_since(world: World) -> None:
    """Attack run 108's leftover: ``DELETE /devices/me`` sent again by the session that made it (its answer lost)
    left every lock again and moved ``left_at``: a lock joined since in a session signed in after the leaving was
    left, and that session was taken for one from before. A retry of the leaving its session made is done already:
    204, nothing changed."""
    uid = f"leaver-{uuid.uuid4().hex[:8]}"
    old_phone = emulator_token(uid, signed_in_age_s=600)  # signed in 10 minutes ago, its token refreshed since
    assert world.devices.delete("/devices/me", headers=bearer(old_phone)).status_code == 204
    with get_runtime("devices").db.transaction() as con:  # the leaving was two minutes ago (past the clocks' leeway)
        con.run("UPDATE users SET left_at = left_at - interval '2 minutes' WHERE uid = :u", u=uid)
    (left_at,) = db_rows("SELECT left_at FROM users WHERE uid = :u", u=uid)[0]
    sent = world.devices.post(
        f"/devices/locks/{world.lock_id}/members", json={"uid": uid, "role": "guest"}, headers=world.headers("owner")
    )
    new_session = emulator_token(uid)
    joined = world.devices.post(
        f"/devices/invitations/{sent.get_json()['invitation']['id']}/accept", headers=bearer(new_session)
    )
    assert joined.status_code == 201, joined.get_json()
    assert world.devices.delete("/devices/me", headers=bearer(old_phone)).status_code == 204  # the late retry
    assert db_rows("SELECT left_at FROM users WHERE uid = :u", u=uid) == [[left_at]]
    listed = world.devices.get("/devices/locks", headers=bearer(new_session))
    assert listed.status_code == 200 and [lock["id"] for lock in listed.get_json()["locks"]] == [world.lock_id]


def test_a_token_issued_before_its_account_moved_does_not_take_the_address_back(world: World) -> None:
    """A token keeps its address for up to an hour after the account moved to another. One such, seen by an instance
    for the first time, recorded the old address again, taking it from the account that had verified it since; and
    a member's leaving then closed the invitations sent to that account. An address is now replaced, or taken from
    another account, only by a token issued no earlier than the one that recorded it."""
    tag = uuid.uuid4().hex[:8]
    first, second = f"first-{tag}@example.com", f"second-{tag}@example.com"
    stale = emulator_token(f"mover-{tag}", first, verified=True, age_s=600)  # issued before the account moved
    moved = emulator_token(stale["localId"], second, verified=True, age_s=300)
    heir = emulator_token(f"heir-{tag}", first, verified=True, age_s=60)  # verified the address after the move
    for token in (heir, moved, stale):
        assert world.devices.get("/devices/me", headers=bearer(token)).status_code == 200
    recorded = "SELECT uid FROM users WHERE lower(email) = :e"
    assert db_rows(recorded, e=first) == [[heir["localId"]]]
    assert db_rows(recorded, e=second) == [[stale["localId"]]]  # the stale token left the newer address as it was
    guest = emulator_token(stale["localId"], first, verified=True, age_s=600)
    join(world.devices, world.lock_id, world.accounts["owner"], moved, {"role": "guest"})
    sent = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": first, "role": "member"},
        headers=world.headers("owner"),
    ).get_json()["invitation"]["id"]
    assert world.devices.delete("/devices/me", headers=bearer(guest)).status_code == 204  # the mover leaves
    assert db_rows("SELECT closed_at IS NULL FROM invitations WHERE id = CAST(:i AS uuid)", i=sent) == [[True]]
    newer = emulator_token(f"newer-{tag}", first, verified=True)  # a newer token of another account still takes it
    assert world.devices.get("/devices/me", headers=bearer(newer)).status_code == 200
    assert db_rows(recorded, e=first) == [[newer["localId"]]]


def test_accounts_carrying_one_address_make_their_first_requests_at_once(devices: Any) -> None:
    """Six accounts whose tokens carry one verified address (in any case: an account deleted and made again, a
    provider's), their first requests at once: each took the address from the others with an update, then inserted
    it, and two that both found it free met the unique index (500s in an attack run). One at a time now: every
    answer is 200 and one account holds the address."""
    tag = uuid.uuid4().hex[:8]
    address = f"shared-{tag}@example.com"
    accounts = [emulator_token(f"u{i}-{tag}", address.upper() if i % 2 else address, True) for i in range(6)]
    start = threading.Barrier(len(accounts), timeout=30)

    def first_request(account: dict[str, Any]) -> int:
        start.wait()
        return int(devices.get("/devices/locks", headers=bearer(account)).status_code)

    with ThreadPoolExecutor(len(accounts)) as pool:
        assert list(pool.map(first_request, accounts)) == [200] * len(accounts)
    assert len(db_rows("SELECT uid FROM users WHERE lower(email) = :e", e=address)) == 1


def test_an_address_is_compared_as_one_lower_cased_form_everywhere(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python and PostgreSQL lower-case some letters differently (``İ``: two code points in Python, one or none in
    the database): an invitation stored lower-cased by Python was not seen by its address's verified holder, and an
    address that grew past 320 characters as it was lower-cased reached the database's check (500)."""
    tag = uuid.uuid4().hex[:8]
    address = f"\u0130nci-{tag}@example.com"
    sent = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": address, "role": "member"},
        headers=world.headers("owner"),
    )
    assert sent.status_code == 202
    holder = emulator_token(f"inci-{tag}", address, verified=True)
    auth_has(monkeypatch, {holder["localId"]: address})
    waiting = world.devices.get("/devices/invitations", headers=bearer(holder)).get_json()["invitations"]
    assert [i["id"] for i in waiting] == [sent.get_json()["invitation"]["id"]]
    grows = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": "a@" + "\u0130" * 300 + ".com", "role": "member"},
        headers=world.headers("owner"),
    )
    assert grows.status_code == 400 and grows.get_json()["error"]["code"] == "invalid_email"


def test_an_account_whose_address_differs_by_whitespace_is_not_the_addresss_holder(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Firebase Auth keeps ``" bob@x.com"`` and ``"bob@x.com"`` two accounts (it lower-cases an address, and trims
    nothing): the back-end trimmed the address of a token and of a lookup, and the verified account made with the
    victim's address and a space, tab, U+3000, U+0085 or U+001F around it listed and accepted the invitation sent to
    the victim, whose own accept was then 404, and took the address over in ``users`` (attack run 103)."""
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    for pad in ("{}\u3000", "\t{}"):
        address = f"victim-{uuid.uuid4().hex[:8]}@example.com"
        victim = sign_up(email=address)
        verify_email(host, project, victim["localId"])
        victim = sign_in(host, address)
        assert world.devices.get("/devices/me", headers=bearer(victim)).status_code == 200
        other = sign_up(email=pad.format(address))
        verify_email(host, project, other["localId"])
        other = sign_in(host, pad.format(address))
        assert world.devices.get("/devices/me", headers=bearer(other)).status_code == 200
        # the victim's address is still the victim's, and nobody's else
        assert db_rows("SELECT uid FROM users WHERE lower(email) = :e", e=address) == [[victim["localId"]]]
        sent = world.devices.post(
            f"/devices/locks/{world.lock_id}/members",
            json={"email": address, "role": "member"},
            headers=world.headers("owner"),
        )
        assert sent.status_code == 202
        invitation = sent.get_json()["invitation"]["id"]
        assert world.devices.get("/devices/invitations", headers=bearer(other)).get_json()["invitations"] == []
        taken = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(other))
        assert taken.status_code == 404, repr(pad)
        accepted = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(victim))
        assert accepted.status_code == 201, repr(pad)


def test_a_locks_open_invitations_are_listed_a_page_at_a_time(world: World) -> None:
    """Each admin may hold up to ``LOCKWISE_MEMBERS_PER_LOCK`` open invitations of their own (attack run 23), so a
    lock's have no small bound; the members' listing answered them all at once. It now shows the first 100 and
    ``invitations_next_page_token``; ``GET .../invitations`` pages the rest, oldest first, each once."""
    lock = world.lock_id
    with get_runtime("devices").db.transaction() as con:  # 150 sent by the owner and the admin (past any budget)
        con.run(
            "INSERT INTO invitations (lock_id, email, role, invited_by, created_at, expires_at, issuer_signed_in_at)"
            " SELECT CAST(:l AS uuid), 'page-' || i || '@example.com', 'member', CASE WHEN i % 2 = 0 THEN :o ELSE :a"
            " END, now() - make_interval(secs => 300 - i), now() + interval '1 day', now() FROM generate_series(1, 150)"
            " AS i",
            l=lock,
            o=world.uid("owner"),
            a=world.uid("admin"),
        )
    listed = world.devices.get(f"/devices/locks/{lock}/members", headers=world.headers("admin"))
    assert listed.status_code == 200, listed.get_json()
    first = listed.get_json()
    assert len(first["invitations"]) == 100 and first["invitations_next_page_token"]
    path = f"/devices/locks/{lock}/invitations"
    bodies = every_page(world.devices, path, world.accounts["owner"], "40")
    assert [len(b["invitations"]) for b in bodies] == [40, 40, 40, 30]
    paged = [i["email"] for b in bodies for i in b["invitations"]]
    assert paged == [f"page-{i}@example.com" for i in range(1, 151)], "oldest first, each once"
    assert [i["email"] for i in first["invitations"]] == paged[:100]
    rest = world.devices.get(
        path, query_string={"page_token": first["invitations_next_page_token"]}, headers=world.headers("owner")
    )
    assert [i["email"] for i in rest.get_json()["invitations"]] == paged[100:]
    for role in ("member", "guest_in"):  # only those who manage the members
        refused = world.devices.get(path, headers=world.headers(role))
        assert refused.status_code in (403, 404), (role, refused.get_json())
    for query in ({"limit": "0"}, {"page_token": "x"}, {"other": "1"}):
        bad = world.devices.get(path, query_string=query, headers=world.headers("owner"))
        assert bad.status_code == 400, (query, bad.get_json())


def test_an_invitation_sent_again_with_its_idempotency_key_after_a_decline_asks_nobody_again(
    world: World, sign_up: Any
) -> None:
    """Attack run 108's leftover: an invitation sent again after its invitee declined it (its answer lost) asked
    them again, a second invitation, logged and counted. Sent with an ``Idempotency-Key``, a retry is answered with
    the invitation the key made, whatever became of it; the key on another invitation is 409; without a key an
    invitation sent again on purpose still asks again."""
    lock, owner = world.lock_id, world.headers("owner")
    invitee = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    path, body = f"/devices/locks/{lock}/members", {"uid": invitee["localId"], "role": "member"}

    def send(key: str | None, **changes: Any) -> Any:
        headers = {**owner, **({"Idempotency-Key": key} if key else {})}
        return world.devices.post(path, json={**body, **changes}, headers=headers)

    def invites() -> int:
        ((count,),) = db_rows(
            "SELECT count(*) FROM audit_log WHERE action = 'member.invite' AND lock_id = CAST(:l AS uuid)", l=lock
        )
        return int(count)

    before = invites()
    with ThreadPoolExecutor(max_workers=2) as pool:  # twice at once with one key: one invitation
        both = list(pool.map(lambda _: send("invite-1"), range(2)))
    assert [r.status_code for r in both] == [202, 202], [r.get_json() for r in both]
    first = both[0].get_json()["invitation"]["id"]
    assert both[1].get_json()["invitation"]["id"] == first and invites() == before + 1
    assert world.devices.post(f"/devices/invitations/{first}/decline", headers=bearer(invitee)).status_code == 204
    again = send("invite-1")  # (in the body as well as the header)
    keyed_in_body = world.devices.post(path, json={**body, "idempotency_key": "invite-1"}, headers=owner)
    for resp in (again, keyed_in_body):
        assert resp.status_code == 202 and resp.get_json()["invitation"]["id"] == first, resp.get_json()
    assert invites() == before + 1
    waiting = world.devices.get("/devices/invitations", headers=bearer(invitee)).get_json()["invitations"]
    assert waiting == [], "declined, and not asked again"
    other = send("invite-1", role="guest", access={"weekdays": ["sat"]})
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert other.get_json()["error"]["details"] == {"invitation_id": first}
    bad = send("not a key!")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_idempotency_key"
    # a new key, or none: asked again, on purpose
    anew = send("invite-2")
    assert anew.status_code == 202 and anew.get_json()["invitation"]["id"] != first and invites() == before + 2
    waiting = world.devices.get("/devices/invitations", headers=bearer(invitee)).get_json()["invitations"]
    assert [i["id"] for i in waiting] == [anew.get_json()["invitation"]["id"]]


def test_invitation_by_uid_waits_for_consent_and_can_be_declined_or_withdrawn(world: World, sign_up: Any) -> None:
    lock, owner = world.lock_id, world.headers("owner")
    invitee = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    made = world.devices.post(
        f"/devices/locks/{lock}/members", json={"uid": invitee["localId"], "role": "member"}, headers=owner
    )
    assert made.status_code == 202 and made.get_json()["invitation"]["uid"] == invitee["localId"]
    first = made.get_json()["invitation"]["id"]
    # not a member, and nobody else can answer for them
    assert world.devices.get(f"/devices/locks/{lock}", headers=bearer(invitee)).status_code == 404
    for other in ("member", "stranger", "owner"):
        stolen = world.devices.post(f"/devices/invitations/{first}/accept", headers=world.headers(other))
        assert stolen.status_code == 404, other
    listed = world.devices.get(f"/devices/locks/{lock}/members", headers=owner).get_json()
    assert [i["uid"] for i in listed["invitations"]] == [invitee["localId"]]
    assert invitee["localId"] not in [m["uid"] for m in listed["members"]]
    # declined, twice at once: gone, and it never made a membership; sent again (its answer lost), answered as
    # declined, nothing more recorded; not for others
    with ThreadPoolExecutor(max_workers=2) as pool:
        both = list(
            pool.map(
                lambda _: world.devices.post(f"/devices/invitations/{first}/decline", headers=bearer(invitee)),
                range(2),
            )
        )
    assert [r.status_code for r in both] == [204, 204]
    assert world.devices.post(f"/devices/invitations/{first}/decline", headers=bearer(invitee)).status_code == 204
    for other in ("member", "stranger", "owner"):
        refused = world.devices.post(f"/devices/invitations/{first}/decline", headers=world.headers(other))
        assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "invitation_not_found", other
    ((declines,),) = db_rows(
        "SELECT count(*) FROM audit_log WHERE action = 'member.decline_invitation' AND actor = :a",
        a=audit.user_actor(invitee["localId"]),
    )
    assert declines == 1
    assert world.devices.get("/devices/invitations", headers=bearer(invitee)).get_json() == {
        "invitations": [],
        "address_unconfirmed": False,
        "next_page_token": None,
    }
    assert world.devices.post(f"/devices/invitations/{first}/accept", headers=bearer(invitee)).status_code == 404
    # asked again, then withdrawn by the owner before the answer
    second = world.devices.post(
        f"/devices/locks/{lock}/members", json={"uid": invitee["localId"], "role": "member"}, headers=owner
    ).get_json()["invitation"]["id"]
    path = f"/devices/locks/{lock}/invitations/{second}"
    assert world.devices.delete(path, headers=world.headers("member")).status_code == 403
    assert world.devices.delete(path, headers=owner).status_code == 204
    assert world.devices.delete(path, headers=owner).status_code == 404
    assert world.devices.post(f"/devices/invitations/{second}/accept", headers=bearer(invitee)).status_code == 404
    assert world.devices.post(f"/devices/invitations/{second}/decline", headers=bearer(invitee)).status_code == 404
    assert world.devices.get(f"/devices/locks/{lock}", headers=bearer(invitee)).status_code == 404


def move_account(
    auth_host: str, project: str, account: dict[str, Any], email: str, *, verified: bool = True
) -> dict[str, Any]:
    """Give the account another address (verified, as Firebase's email change leaves it) and sign in with it."""
    req = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/projects/{project}/accounts:update",
        data=json.dumps({"localId": account["localId"], "email": email, "emailVerified": verified}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer owner"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    return sign_in(auth_host, email)


def test_a_token_issued_before_its_account_moved_address_accepts_nothing_sent_to_the_old_one(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run 12: ID tokens are checked offline and keep the address they were issued with for up to an hour.
    A token of an account that had moved to another address accepted an invitation sent to the old one after its
    new holder had verified it, and the new holder's accept was then 404. Each accept now asks Firebase Auth for the
    account's address."""
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    old = sign_up(email="handed-on@example.com")
    verify_email(host, project, old["localId"])
    old = sign_in(host, old["email"])  # a token naming the address, verified
    invitation = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": "handed-on@example.com", "role": "member"},
        headers=world.headers("owner"),
    ).get_json()["invitation"]["id"]
    assert [i["id"] for i in world.devices.get("/devices/invitations", headers=bearer(old)).get_json()["invitations"]]
    move_account(host, project, old, "moved-on@example.com")  # the old token still names the first address
    listed = world.devices.get("/devices/invitations", headers=bearer(old))
    assert listed.status_code == 200 and listed.get_json()["invitations"] == []  # nor lists what went to it
    heir = sign_up(email="handed-on@example.com")
    verify_email(host, project, heir["localId"])
    heir = sign_in(host, heir["email"])
    taken = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(old))
    assert (taken.status_code, taken.get_json()["error"]["code"]) == (404, "invitation_not_found")
    closed = world.devices.post(f"/devices/invitations/{invitation}/decline", headers=bearer(old))  # nor closes it
    assert (closed.status_code, closed.get_json()["error"]["code"]) == (404, "invitation_not_found")
    assert world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(heir)).status_code == 201
    assert world.devices.get(f"/devices/locks/{world.lock_id}", headers=bearer(old)).status_code == 404
    # the acceptor moves on too: its acceptance sent again is still answered with what it made, and the address's
    # next holder, a member through another invitation of the same sender, is not answered with theirs (attack run
    # 40: 404 and 200 before, the acceptor found by the address it holds now)
    heir = move_account(host, project, heir, "heir-moved-on@example.com")
    again = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(heir))
    assert again.status_code == 200 and again.get_json()["member"]["uid"] == heir["localId"], again.get_json()
    third = sign_up(email="handed-on@example.com")
    verify_email(host, project, third["localId"])
    third = sign_in(host, third["email"])
    join(world.devices, world.lock_id, world.accounts["owner"], third, {"role": "member"})
    not_theirs = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(third))
    assert (not_theirs.status_code, not_theirs.get_json()["error"]["code"]) == (404, "invitation_not_found")


def test_only_an_invitation_found_by_address_needs_firebase_auth_to_confirm_the_address(
    world: World, sign_up: Any, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invitation addressed to the caller's uid is listed, accepted and declined while Firebase Auth cannot tell
    the caller's address; one found by their token's address needs Auth to confirm the account still has it, and
    meanwhile its answer is 503 ``accounts_unavailable``, not an answer on a stale address, and the listing leaves
    it out and says so (``address_unconfirmed``), listing the rest: the whole listing was a 503, the invitations to
    the caller's uid too. An answer asks Auth only for what was sent to the address; a listing asks for every token
    naming a verified address, whatever was sent to it (attack run 86: asked only when something was, the asking
    told the address's former holder so)."""
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    invitee = sign_up()
    verify_email(host, project, invitee["localId"])
    invitee = sign_in(host, invitee["email"])
    assert world.devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    asked: list[str] = []

    def auth_down(self: accounts.IdentityToolkit, uid: str) -> str | None:
        asked.append(uid)
        raise accounts.DirectoryError("Firebase Auth could not be reached: ConnectionRefusedError")

    monkeypatch.setattr(accounts.IdentityToolkit, "verified_email", auth_down)
    owner, lock = world.headers("owner"), world.lock_id
    by_uid = world.devices.post(
        f"/devices/locks/{lock}/members", json={"uid": invitee["localId"], "role": "guest"}, headers=owner
    ).get_json()["invitation"]["id"]
    listed = world.devices.get("/devices/invitations", headers=bearer(invitee))
    assert listed.status_code == 200 and [i["id"] for i in listed.get_json()["invitations"]] == [by_uid]
    assert listed.get_json()["address_unconfirmed"] is True  # asked, though nothing was sent to the address
    assert world.devices.post(f"/devices/invitations/{by_uid}/decline", headers=bearer(invitee)).status_code == 204
    assert asked == [invitee["localId"]]  # the listing's; the decline asked nothing
    by_address = world.devices.post(
        f"/devices/locks/{lock}/members", json={"email": invitee["email"], "role": "member"}, headers=owner
    ).get_json()["invitation"]["id"]
    again = world.devices.post(
        f"/devices/locks/{lock}/members", json={"uid": invitee["localId"], "role": "guest"}, headers=owner
    ).get_json()["invitation"]["id"]
    listed = world.devices.get("/devices/invitations", headers=bearer(invitee))
    assert listed.status_code == 200, listed.get_json()
    assert [i["id"] for i in listed.get_json()["invitations"]] == [again]  # not the one to the address
    assert listed.get_json()["address_unconfirmed"] is True
    for answer in (
        world.devices.post(f"/devices/invitations/{by_address}/accept", headers=bearer(invitee)),
        world.devices.post(f"/devices/invitations/{by_address}/decline", headers=bearer(invitee)),
    ):
        assert (answer.status_code, answer.get_json()["error"]["code"]) == (503, "accounts_unavailable")
    assert asked == [invitee["localId"]] * 4
    assert world.devices.post(f"/devices/invitations/{again}/accept", headers=bearer(invitee)).status_code == 201
    assert len(asked) == 4 and world.devices.get(f"/devices/locks/{lock}", headers=bearer(invitee)).status_code == 200
    monkeypatch.undo()  # Auth answers again: the invitation to the address is listed
    listed = world.devices.get("/devices/invitations", headers=bearer(invitee)).get_json()
    assert ([i["id"] for i in listed["invitations"]], listed["address_unconfirmed"]) == ([by_address], False)


def counting_address_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The uids Firebase Auth (the emulator) is asked the address of from now on, in order."""
    asked: list[str] = []
    real = accounts.IdentityToolkit.verified_email

    def counted(self: accounts.IdentityToolkit, uid: str) -> str | None:
        asked.append(uid)
        return real(self, uid)

    monkeypatch.setattr(accounts.IdentityToolkit, "verified_email", counted)
    return asked


def test_a_users_invitations_are_listed_a_page_at_a_time(
    world: World, sign_up: Any, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any admin of any lock may invite any account or address, so the invitations waiting for one account have no
    bound, and ``GET /devices/invitations`` read and answered them all at once (as ``GET /devices/locks`` did: attack
    run 54). It now answers a page of at most ``limit``, oldest first, with the next page's token. While Firebase Auth
    cannot confirm the caller's address, a page leaves out what was sent to it and is still full, not short, and
    paging goes on after it; one made while paging comes on a later page, never twice."""
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    invitee = sign_up()
    verify_email(host, project, invitee["localId"])
    invitee = sign_in(host, invitee["email"])
    owner = world.accounts["owner"]

    def invite(to: dict[str, str]) -> str:
        lock = create_lock(world.devices, owner, name="Door")["lock"]["id"]
        resp = world.devices.post(f"/devices/locks/{lock}/members", json={**to, "role": "guest"}, headers=bearer(owner))
        assert resp.status_code == 202, resp.get_json()
        invitation: str = resp.get_json()["invitation"]["id"]
        return invitation

    sent = [invite({"uid": invitee["localId"]}) for _ in range(2)]
    sent.append(invite({"email": invitee["email"]}))
    sent += [invite({"uid": invitee["localId"]}) for _ in range(2)]

    def pages_of(limit: str) -> list[tuple[list[str], bool]]:
        bodies = every_page(world.devices, "/devices/invitations", invitee, limit)
        return [([i["id"] for i in body["invitations"]], body["address_unconfirmed"]) for body in bodies]

    assert pages_of("2") == [(sent[0:2], False), (sent[2:4], False), (sent[4:5], False)]
    assert pages_of("5") == [(sent, False)]
    first = world.devices.get("/devices/invitations", query_string={"limit": "3"}, headers=bearer(invitee)).get_json()
    late = invite({"uid": invitee["localId"]})
    rest = world.devices.get(
        "/devices/invitations", query_string={"page_token": first["next_page_token"]}, headers=bearer(invitee)
    ).get_json()
    assert [i["id"] for i in first["invitations"] + rest["invitations"]] == [*sent, late]
    # a listing's pages ask Firebase Auth once, not a page each (seven pages were a 429: attack run 63)
    again = invite({"email": invitee["email"]})
    asked = counting_address_lookups(monkeypatch)
    monkeypatch.setattr(accounts, "LISTING_CONFIRMED_S", 60.0)
    assert pages_of("1") == [([i], False) for i in [*sent, late, again]]
    # once: the first page asks (every listing of a verified address does: attack run 86), and the later pages take
    # its answer; each page asked before
    assert asked == [invitee["localId"]], asked
    monkeypatch.setattr(accounts, "LISTING_CONFIRMED_S", 0.0)  # each page asks again: Auth is down below

    def auth_down(self: accounts.IdentityToolkit, uid: str) -> str | None:
        raise accounts.DirectoryError("Firebase Auth could not be reached: ConnectionRefusedError")

    monkeypatch.setattr(accounts.IdentityToolkit, "verified_email", auth_down)
    assert pages_of("2") == [(sent[0:2], True), ([sent[3], sent[4]], True), ([late], True)]
    for query in ({"limit": "0"}, {"page_token": "bm90IGEgdG9rZW4"}, {"page": "2"}):
        wrong = world.devices.get("/devices/invitations", query_string=query, headers=bearer(invitee))
        assert wrong.status_code == 400, wrong.get_json()


def test_listing_tells_a_former_holder_nothing_of_what_was_sent_to_the_address_they_gave_up(
    world: World, sign_up: Any, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 86: a token keeps its address for up to an hour after the account moves to another. Listing with
    it hides what was sent to the old address, but Firebase Auth was asked (and the asking paced) only when
    something had been: the former holder's seventh listing in a minute was a 429 when the address had invitations
    waiting and a 200 when it had none, and each listing took an Auth round trip longer. Now every listing of a token
    naming a verified address asks, whatever was sent to it."""
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    asked = counting_address_lookups(monkeypatch)
    seen = {}
    for invited in (True, False):
        given_up = f"given-up-{secrets.token_hex(4)}@example.com"
        holder = move_account(host, project, sign_up(email=given_up), given_up)
        assert world.devices.get("/devices/me", headers=bearer(holder)).status_code == 200
        move_account(host, project, holder, f"moved-{secrets.token_hex(4)}@example.com")  # the token names given_up
        if invited:
            resp = world.devices.post(
                f"/devices/locks/{world.lock_id}/members",
                json={"email": given_up, "role": "member"},
                headers=world.headers("owner"),
            )
            assert resp.status_code == 202, resp.get_json()
        answers = [
            world.devices.get("/devices/invitations", headers=bearer(holder))
            for _ in range(accounts.LISTED_LOOKUPS_PER_MINUTE + 2)
        ]
        seen[invited] = (
            [
                (a.status_code, (a.get_json().get("invitations"), a.get_json().get("error", {}).get("code")))
                for a in answers
            ],
            asked.count(holder["localId"]),
        )
    assert seen[True] == seen[False], seen
    statuses, lookups = seen[True]
    assert [s for s, _ in statuses] == [200] * accounts.LISTED_LOOKUPS_PER_MINUTE + [429] * 2
    assert lookups == accounts.LISTED_LOOKUPS_PER_MINUTE


def test_answering_an_invitation_not_sent_to_the_callers_address_asks_firebase_auth_nothing(
    world: World, sign_up: Any, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 35: accepting or declining any invitation id not addressed to the caller's uid (a made-up one, one
    sent to someone else's uid or address) asked Firebase Auth for the caller's address first, every time, unpaced:
    40 requests of an outsider with a verified address made 40 ``accounts:lookup`` calls, the project's Auth quota
    that every address invitation, listing and the relay's account check spend. Auth is now asked only for an open
    invitation sent to the address the caller's token names; the rest are 404 as before."""
    host, project = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    outsider = sign_up()
    verify_email(host, project, outsider["localId"])
    outsider = sign_in(host, outsider["email"])
    asked = counting_address_lookups(monkeypatch)
    owner, lock = world.headers("owner"), world.lock_id
    to_others = [
        world.devices.post(
            f"/devices/locks/{lock}/members", json=invitee | {"role": "member"}, headers=owner
        ).get_json()["invitation"]["id"]
        for invitee in ({"email": "someone-else@example.com"}, {"uid": world.uid("stranger")})
    ]
    for invitation in [str(uuid.uuid4()) for _ in range(10)] + to_others:
        for route in ("accept", "decline"):
            answer = world.devices.post(f"/devices/invitations/{invitation}/{route}", headers=bearer(outsider))
            assert (answer.status_code, answer.get_json()["error"]["code"]) == (404, "invitation_not_found")
    assert asked == []
    to_her = world.devices.post(
        f"/devices/locks/{lock}/members", json={"email": outsider["email"], "role": "guest"}, headers=owner
    ).get_json()["invitation"]["id"]
    assert world.devices.post(f"/devices/invitations/{to_her}/accept", headers=bearer(outsider)).status_code == 201
    assert asked == [outsider["localId"]]  # her address confirmed for the invitation sent to it


def test_a_removal_ends_every_invitation_sent_before_it_whatever_address_it_went_to(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run: a member invited also by address (as an admin: refused as already_member, so left open) moved
    their account to another address, was removed (which closed the invitations to their uid and to the address they
    held then), moved back and accepted the admin invitation: 201, back in as an admin. An invitation sent before the
    invitee's removal from the lock no longer stands for them; one sent after it does."""
    lock, host, project = world.lock_id, stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    alice = sign_up(email="alice@example.com")
    alice = move_account(host, project, alice, "alice@example.com")
    assert world.devices.get("/devices/me", headers=bearer(alice)).status_code == 200
    join(world.devices, lock, world.accounts["owner"], alice, {"role": "member"})
    add = f"/devices/locks/{lock}/members"
    resp = world.devices.post(add, json={"email": "alice@example.com", "role": "admin"}, headers=world.headers("owner"))
    assert resp.status_code == 202, resp.get_json()
    before = resp.get_json()["invitation"]["id"]
    alice = move_account(host, project, alice, "alice2@example.com")
    assert world.devices.get("/devices/me", headers=bearer(alice)).status_code == 200  # the address on record moves
    resp = world.devices.delete(f"{add}/{alice['localId']}", headers=world.headers("owner"))
    assert resp.status_code == 204, resp.get_json()
    alice = move_account(host, project, alice, "alice@example.com")
    assert world.devices.get("/devices/invitations", headers=bearer(alice)).get_json() == {
        "invitations": [],
        "address_unconfirmed": False,
        "next_page_token": None,
    }
    back = world.devices.post(f"/devices/invitations/{before}/accept", headers=bearer(alice))
    assert back.status_code == 404 and back.get_json()["error"]["code"] == "invitation_not_found", back.get_json()
    assert world.devices.get(f"/devices/locks/{lock}", headers=bearer(alice)).status_code == 404
    # the owner still lists the old one (an address may belong to somebody else by now); withdrawn, and the address
    # invited again after the removal: that one stands
    resp = world.devices.delete(f"/devices/locks/{lock}/invitations/{before}", headers=world.headers("owner"))
    assert resp.status_code == 204, resp.get_json()
    resp = world.devices.post(
        add, json={"email": "alice@example.com", "role": "member"}, headers=world.headers("owner")
    )
    assert resp.status_code == 202, resp.get_json()
    after = resp.get_json()["invitation"]["id"]
    waiting = world.devices.get("/devices/invitations", headers=bearer(alice)).get_json()["invitations"]
    assert [i["id"] for i in waiting] == [after]
    joined = world.devices.post(f"/devices/invitations/{after}/accept", headers=bearer(alice))
    assert joined.status_code == 201 and joined.get_json()["member"]["role"] == "member", joined.get_json()


def member_with_address(world: World, sign_up: Any, host: str, project: str) -> tuple[dict[str, Any], str]:
    """A new account with a verified address of its own (recorded: it has made a request), a member of the lock."""
    address = f"member-{secrets.token_hex(4)}@example.com"
    member = move_account(host, project, sign_up(email=address), address)
    assert world.devices.get("/devices/me", headers=bearer(member)).status_code == 200
    join(world.devices, world.lock_id, world.accounts["owner"], member, {"role": "member"})
    return member, address


@pytest.mark.parametrize("ended_by", ["leaving", "removal"])
def test_a_members_leaving_or_removal_tells_the_admins_nothing_of_their_address(
    world: World, sign_up: Any, stack_env: dict[str, str], ended_by: str
) -> None:
    """Attack run 86: the lock's admins are shown members' uids, never their addresses. An admin invited guessed
    addresses; when the member left (or was removed), the one invitation closed with the membership was the one to
    the member's address. It is withheld now: listed to the admins as waiting, as the others are, and answered by
    nobody: not the former member, nor a new account made with the address (the member's second one, say); sent to
    the address again after the removal, it stands."""
    lock, host, project = world.lock_id, stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    member, address = member_with_address(world, sign_up, host, project)
    add = f"/devices/locks/{lock}/members"
    guesses = [address, f"decoy-{secrets.token_hex(4)}@example.com", f"decoy-{secrets.token_hex(4)}@example.com"]
    sent = {}
    for guess in guesses:
        resp = world.devices.post(add, json={"email": guess, "role": "guest"}, headers=world.headers("admin"))
        assert resp.status_code == 202, resp.get_json()
        sent[guess] = resp.get_json()["invitation"]["id"]

    def open_ones() -> set[str]:
        listed = world.devices.get(add, headers=world.headers("admin")).get_json()["invitations"]
        return {i["id"] for i in listed}

    assert open_ones() >= set(sent.values())
    who = bearer(member) if ended_by == "leaving" else world.headers("owner")
    assert world.devices.delete(f"{add}/{member['localId']}", headers=who).status_code == 204
    still = open_ones()
    assert {guess for guess, invitation in sent.items() if invitation in still} == set(guesses)
    listed = world.devices.get("/devices/invitations", headers=bearer(member)).get_json()["invitations"]
    assert listed == []
    back = world.devices.post(f"/devices/invitations/{sent[address]}/accept", headers=bearer(member))
    assert back.status_code == 404 and back.get_json()["error"]["code"] == "invitation_not_found", back.get_json()
    # the member's account gives the address up, and a new account takes it: the withheld one is not for it either
    move_account(host, project, member, f"elsewhere-{secrets.token_hex(4)}@example.com")
    second = move_account(host, project, sign_up(email=address), address)
    assert world.devices.get("/devices/me", headers=bearer(second)).status_code == 200
    assert world.devices.get("/devices/invitations", headers=bearer(second)).get_json()["invitations"] == []
    back = world.devices.post(f"/devices/invitations/{sent[address]}/accept", headers=bearer(second))
    assert back.status_code == 404 and back.get_json()["error"]["code"] == "invitation_not_found", back.get_json()
    # sent again by the admin after the removal, as any invitation is (the same one answered: attack run 87 found
    # it answered as sent, and standing for nobody), it stands
    again = world.devices.post(add, json={"email": address, "role": "guest"}, headers=world.headers("admin"))
    assert (again.status_code, again.get_json()["invitation"]["id"]) == (202, sent[address]), again.get_json()
    listed = world.devices.get("/devices/invitations", headers=bearer(second)).get_json()["invitations"]
    assert [i["id"] for i in listed] == [sent[address]]
    taken = world.devices.post(f"/devices/invitations/{sent[address]}/accept", headers=bearer(second))
    assert taken.status_code == 201, taken.get_json()


@pytest.mark.parametrize("verified", [True, False])
def test_a_member_who_moved_address_before_their_removal_has_the_invitations_to_the_first_withheld(
    world: World, sign_up: Any, stack_env: dict[str, str], verified: bool
) -> None:
    """Attack run 87: withholding went by the address recorded for the member at their removal. One who had moved
    their account to another address first (verified or not) left the admin invitation sent to the first one open,
    and a second account made with it accepted: 201, an admin. The invitation names who held its address when it
    was sent (``held_by``), and their removal withholds it wherever they are now."""
    lock, host, project = world.lock_id, stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    member, address = member_with_address(world, sign_up, host, project)
    add = f"/devices/locks/{lock}/members"
    sent = world.devices.post(add, json={"email": address, "role": "admin"}, headers=world.headers("owner"))
    assert sent.status_code == 202, sent.get_json()
    invitation = sent.get_json()["invitation"]["id"]
    moved = move_account(host, project, member, f"second-{secrets.token_hex(4)}@example.com", verified=verified)
    world.devices.get("/devices/me", headers=bearer(moved))  # the address on record moves (or is dropped)
    removed = world.devices.delete(f"{add}/{member['localId']}", headers=world.headers("owner"))
    assert removed.status_code == 204, removed.get_json()
    second = move_account(host, project, sign_up(email=address), address)
    assert world.devices.get("/devices/me", headers=bearer(second)).status_code == 200
    assert world.devices.get("/devices/invitations", headers=bearer(second)).get_json()["invitations"] == []
    taken = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(second))
    assert (taken.status_code, taken.get_json()["error"]["code"]) == (404, "invitation_not_found"), taken.get_json()
    listed = world.devices.get(add, headers=world.headers("owner")).get_json()["invitations"]
    assert invitation in [i["id"] for i in listed]  # waiting, as the owner sees it


def test_an_invitation_sent_while_the_invitee_was_a_member_ends_when_their_access_expires(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run 21: a guest whose access ends in an hour was invited by address as a member (left open: refused as
    ``already_member``); once the hour was over, the invitation made them a member without end. Their access
    expiring ends what was sent before it, as a removal does; one sent after it stands."""
    lock, host, project = world.lock_id, stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    add = f"/devices/locks/{lock}/members"
    carol = move_account(host, project, sign_up(email="carol@example.com"), "carol@example.com")
    assert world.devices.get("/devices/me", headers=bearer(carol)).status_code == 200
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    join(world.devices, lock, world.accounts["owner"], carol, {"role": "guest", "access": {"expires_at": soon}})
    resp = world.devices.post(
        add, json={"email": "carol@example.com", "role": "member"}, headers=world.headers("admin")
    )
    assert resp.status_code == 202, resp.get_json()
    before = resp.get_json()["invitation"]["id"]
    refused = world.devices.post(f"/devices/invitations/{before}/accept", headers=bearer(carol))
    assert refused.get_json()["error"]["code"] == "already_member"
    with get_runtime("devices").db.transaction() as con:  # the hour passes: sent 50 minutes ago, expired a minute ago
        con.run(
            "UPDATE invitations SET created_at = now() - interval '50 minutes' WHERE id = CAST(:i AS uuid)", i=before
        )
        con.run(
            "UPDATE lock_members SET expires_at = now() - interval '1 minute'"
            " WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
            l=lock,
            u=carol["localId"],
        )
    took = world.devices.post(f"/devices/invitations/{before}/accept", headers=bearer(carol))
    assert (took.status_code, took.get_json()["error"]["code"]) == (404, "invitation_not_found")
    # the sender still lists the old one (the address may be somebody else's by now): withdrawn, and sent again
    withdrawn = world.devices.delete(f"/devices/locks/{lock}/invitations/{before}", headers=world.headers("admin"))
    assert withdrawn.status_code == 204, withdrawn.get_json()
    resp = world.devices.post(
        add, json={"email": "carol@example.com", "role": "member"}, headers=world.headers("admin")
    )
    assert resp.status_code == 202, resp.get_json()
    joined = world.devices.post(
        f"/devices/invitations/{resp.get_json()['invitation']['id']}/accept", headers=bearer(carol)
    )
    assert joined.status_code == 201 and joined.get_json()["member"]["role"] == "member", joined.get_json()


def test_an_invitation_sent_before_a_removal_stays_ended_after_the_member_rejoins(
    world: World, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run: the removal was read from revoked_at, which rejoining clears; once the rejoined (short) membership
    lapsed, the admin invitation sent before the removal stood again and made the member an admin."""
    lock, host, project = world.lock_id, stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    owner, add = world.headers("owner"), f"/devices/locks/{world.lock_id}/members"
    bob = move_account(host, project, sign_up(email="bob@example.com"), "bob@example.com")
    assert world.devices.get("/devices/me", headers=bearer(bob)).status_code == 200
    join(world.devices, lock, world.accounts["owner"], bob, {"role": "member"})
    resp = world.devices.post(add, json={"email": "bob@example.com", "role": "admin"}, headers=owner)
    before = resp.get_json()["invitation"]["id"]  # left open: already a member
    bob = move_account(host, project, bob, "bob2@example.com")
    assert world.devices.get("/devices/me", headers=bearer(bob)).status_code == 200
    assert world.devices.delete(f"{add}/{bob['localId']}", headers=owner).status_code == 204
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    join(world.devices, lock, world.accounts["owner"], bob, {"role": "guest", "access": {"expires_at": tomorrow}})
    bob = move_account(host, project, bob, "bob@example.com")
    with get_runtime("devices").db.connection() as con:  # the guest's day passes
        con.run(
            "UPDATE lock_members SET expires_at = now() - interval '1 second' WHERE lock_id = CAST(:l AS uuid)"
            " AND user_uid = :u",
            l=lock,
            u=bob["localId"],
        )
    assert world.devices.get("/devices/invitations", headers=bearer(bob)).get_json() == {
        "invitations": [],
        "address_unconfirmed": False,
        "next_page_token": None,
    }
    back = world.devices.post(f"/devices/invitations/{before}/accept", headers=bearer(bob))
    assert back.status_code == 404 and back.get_json()["error"]["code"] == "invitation_not_found", back.get_json()
    assert world.devices.get(f"/devices/locks/{lock}", headers=bearer(bob)).status_code == 404


@pytest.mark.parametrize("at_once", [False, True])
def test_two_invitations_to_one_lock_make_one_membership_and_the_answers_say_which(
    world: World, sign_up: Any, stack_env: dict[str, str], at_once: bool
) -> None:
    """Invited twice (by uid as a guest, by address as an admin): accepting both used to answer 201 twice, each with
    its own role while one was stored (at once: whichever committed last; one after the other: the second marked
    accepted, its role audited, nothing changed). The second is now 409 ``already_member`` and stays open until the
    member is removed: then it no longer stands for them (it let a removed member back in as an admin: attack
    run)."""
    from lockwise.devices import invitations

    lock, host, project = world.lock_id, stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["LOCKWISE_PROJECT_ID"]
    invitee = sign_up(email="twice@example.com")
    verify_email(host, project, invitee["localId"])
    invitee = sign_in(host, "twice@example.com")
    assert world.devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    add = f"/devices/locks/{lock}/members"
    by_uid = world.devices.post(
        add,
        json={"uid": invitee["localId"], "role": "guest", "access": {"weekdays": ["mon"]}},
        headers=world.headers("owner"),
    ).get_json()["invitation"]["id"]
    by_email = world.devices.post(
        add, json={"email": "twice@example.com", "role": "admin"}, headers=world.headers("owner")
    ).get_json()["invitation"]["id"]
    second = f"/devices/invitations/{by_email}/accept"
    if at_once:  # the first accepted, not yet committed, as the second arrives
        db = get_runtime("devices").db
        user = get_runtime("devices").verifier.verify(invitee["idToken"])
        with ThreadPoolExecutor(1) as pool:
            with db.transaction() as con:
                first, _ = invitations.accept(
                    con, by_uid, user, get_runtime("devices").now(), members_per_lock=100, memberships_per_user=200
                )
                answered = pool.submit(world.devices.post, second, headers=bearer(invitee))
                time.sleep(0.5)
                assert not answered.done()  # it waits for the first
            refused = answered.result(30)
        assert first.role == "guest"
    else:
        accepted = world.devices.post(f"/devices/invitations/{by_uid}/accept", headers=bearer(invitee))
        assert accepted.status_code == 201 and accepted.get_json()["member"]["role"] == "guest"
        refused = world.devices.post(second, headers=bearer(invitee))
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "already_member"
    view = world.devices.get(f"/devices/locks/{lock}", headers=bearer(invitee)).get_json()
    assert view["role"] == "guest"
    waiting = world.devices.get("/devices/invitations", headers=bearer(invitee)).get_json()["invitations"]
    assert [i["id"] for i in waiting] == [by_email]  # still open: the invitee may decline it
    # removed, the member does not come back (as an admin) through the invitation left open from before
    removed = world.devices.delete(
        f"/devices/locks/{lock}/members/{invitee['localId']}", headers=world.headers("owner")
    )
    assert removed.status_code == 204
    assert world.devices.get("/devices/invitations", headers=bearer(invitee)).get_json() == {
        "invitations": [],
        "address_unconfirmed": False,
        "next_page_token": None,
    }
    back = world.devices.post(second, headers=bearer(invitee))
    assert back.status_code == 404 and back.get_json()["error"]["code"] == "invitation_not_found"
    assert world.devices.get(f"/devices/locks/{lock}", headers=bearer(invitee)).status_code == 404


def test_inviting_an_unknown_uid_answers_as_a_known_one(world: World, sign_up: Any) -> None:
    """The add-member answer does not tell an admin which uids exist."""
    known = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(known)).status_code == 200
    answers = []
    for uid in (known["localId"], "no-such-user-" + known["localId"][:8]):
        resp = world.devices.post(
            f"/devices/locks/{world.lock_id}/members",
            json={"uid": uid, "role": "member"},
            headers=world.headers("owner"),
        )
        body = resp.get_json()["invitation"]
        answers.append((resp.status_code, sorted(body), body["uid"] == uid))
    assert answers[0] == answers[1] == (202, ["id", "role", "uid"], True)


def test_an_expired_invitation_cannot_be_accepted_and_does_not_block_a_new_one(world: World, sign_up: Any) -> None:
    invitee = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    body = {"uid": invitee["localId"], "role": "guest"}
    old = world.devices.post(f"/devices/locks/{world.lock_id}/members", json=body, headers=world.headers("owner"))
    old_id = old.get_json()["invitation"]["id"]
    with get_runtime("devices").db.transaction() as con:
        con.run(
            "UPDATE invitations SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day'"
            " WHERE id = CAST(:i AS uuid)",
            i=old_id,
        )
    assert world.devices.post(f"/devices/invitations/{old_id}/accept", headers=bearer(invitee)).status_code == 404
    new = world.devices.post(f"/devices/locks/{world.lock_id}/members", json=body, headers=world.headers("owner"))
    assert new.status_code == 202
    accepted = world.devices.post(
        f"/devices/invitations/{new.get_json()['invitation']['id']}/accept", headers=bearer(invitee)
    )
    assert accepted.status_code == 201 and accepted.get_json()["member"]["role"] == "guest"


def test_deleting_a_lock_removes_its_credentials_members_and_attempts(world: World) -> None:
    with get_runtime("devices").db.transaction() as con:
        con.run(
            "INSERT INTO verification_attempts (lock_id, outcome) VALUES (CAST(:l AS uuid), 'rejected')",
            l=world.lock_id,
        )
    assert world.devices.delete(f"/devices/locks/{world.lock_id}", headers=world.headers("owner")).status_code == 204
    for table in (
        "lock_credentials",
        "lock_members",
        "verification_attempts",
        "commands",
        "lock_state",
        "provisioning_codes",
    ):
        assert db_rows(f"SELECT count(*) FROM {table} WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id) == [[0]], (
            table
        )
    assert world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("owner")).status_code == 404
    actions = [
        r[0]
        for r in db_rows("SELECT action FROM audit_log WHERE lock_id = CAST(:l AS uuid) ORDER BY id", l=world.lock_id)
    ]
    assert actions[0] == "lock.create" and actions[-1] == "lock.delete"


def test_audit_log_records_commands_credentials_members_and_denials(world: World) -> None:
    world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("owner")
    )
    world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("guest_out")
    )
    rows = db_rows(
        "SELECT actor, action, outcome FROM audit_log WHERE lock_id = CAST(:l AS uuid) ORDER BY id", l=world.lock_id
    )
    seen = {(a, o) for _, a, o in rows}
    for expected in [
        ("lock.create", "ok"),
        ("credentials.provision", "ok"),
        ("member.invite", "ok"),
        ("member.accept_invitation", "ok"),
        ("member.revoke", "ok"),
        ("command.unlock", "ok"),
        ("command.unlock", "denied"),
    ]:
        assert expected in seen, expected
    denied = [r for r in rows if r[2] == "denied"]
    assert denied[0][0] == f"user:{world.uid('guest_out')}"


def test_an_invitation_by_address_is_audited_by_its_id_not_the_address(world: World) -> None:
    """Attack run 46: the audit log (kept for good) held the invitee's address as the invitation's target, after
    the invitation was pruned and the address's holder deleted their account."""
    address = f"kept-{secrets.token_hex(4)}@example.com"
    made = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": address, "role": "guest"},
        headers=world.headers("owner"),
    )
    assert made.status_code == 202, made.get_json()
    invitation = made.get_json()["invitation"]["id"]
    rows = db_rows(
        "SELECT target, details::text FROM audit_log WHERE lock_id = CAST(:l AS uuid) AND action = 'member.invite'"
        " ORDER BY id DESC LIMIT 1",
        l=world.lock_id,
    )
    assert rows[0][0] == f"invitation:{invitation}" and '"by_address": true' in rows[0][1], rows
    assert db_rows("SELECT count(*) FROM audit_log WHERE audit_log::text ILIKE :a", a=f"%{address}%") == [[0]]


LONG = "x" * 101


#: (method, path, body, status, code): each refused before it changes anything
BAD_INPUT: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/devices/locks", {"name": LONG}, 400, "invalid_name"),
    ("POST", "/devices/locks", {"name": 42}, 400, "invalid_name"),
    ("POST", "/devices/locks", {"name": "  "}, 400, "invalid_name"),
    ("POST", "/devices/locks", {"name": "a\u0000b"}, 400, "invalid_text"),  # the JSON boundary refuses NUL anywhere
    # shown to every member and invitee as written: no bidi override, isolate or zero-width space (attack run)
    ("POST", "/devices/locks", {"name": "Front \u202erood"}, 400, "invalid_name"),
    ("PATCH", "/devices/locks/{lock}", {"name": "\u2066Garage\u2069"}, 400, "invalid_name"),
    ("POST", "/devices/locks", {"name": "Back\u200bdoor"}, 400, "invalid_name"),
    ("POST", "/devices/locks", {"name": "ok", "supports_open": "yes"}, 400, "invalid_supports_open"),
    ("POST", "/devices/locks", None, 400, "empty_body"),
    ("GET", "/devices/locks/not-a-uuid", None, 404, "lock_not_found"),
    ("GET", "/devices/locks/00000000-0000-0000-0000-000000000000", None, 404, "lock_not_found"),
    # a field a route does not take is refused by name, not ignored with the rest carried out (misspelt, a
    # command ran without its idempotency key; a member was added without the limits the owner typed)
    ("POST", "/devices/locks", {"name": "ok", "supports_opn": True}, 400, "unknown_field"),
    ("PATCH", "/devices/locks/{lock}", {"colour": "red"}, 400, "unknown_field"),
    ("PATCH", "/devices/locks/{lock}", {"name": "renamed", "voice_treshold": 0.9}, 400, "unknown_field"),
    ("PATCH", "/devices/locks/{lock}", {}, 400, "invalid_update"),
    ("POST", "/devices/locks/{lock}/commands", {"action": "unlock", "idempotencykey": "k-1"}, 400, "unknown_field"),
    (
        "POST",
        "/devices/locks/{lock}/members",
        {"uid": "x", "role": "member", "acess": {"expires_at": "2030-01-01T00:00:00Z"}},
        400,
        "unknown_field",
    ),
    ("PATCH", "/devices/locks/{lock}/members/ghost", {"role": "member", "acces": {}}, 400, "unknown_field"),
    ("POST", "/devices/locks/{lock}/transfer", {"uid": "ghost", "keep_access": True}, 400, "unknown_field"),
    # a lock's body takes fields it does not name (its firmware may be newer): judged on the ones it does
    (
        "POST",
        "/devices/provision",
        {"code": 5, "public_key": BASE_POINT, "firmware": "9"},
        400,
        "invalid_code_format",
    ),
    ("PATCH", "/devices/locks/{lock}", {"voice_threshold": 7}, 400, "invalid_threshold"),
    ("PATCH", "/devices/locks/{lock}", {"voice_threshold": True}, 400, "invalid_threshold"),
    ("POST", "/devices/locks/{lock}/commands", {"action": "explode"}, 400, "invalid_action"),
    (
        "POST",
        "/devices/locks/{lock}/commands",
        {"action": "unlock", "idempotency_key": "has spaces"},
        400,
        "invalid_idempotency_key",
    ),
    ("POST", "/devices/locks/{lock}/commands", {"action": ["unlock"]}, 400, "invalid_action"),
    # a key's pattern ended in `$`, which matches before a final newline: the database's CHECK refused it, a 500
    # (attack run 58)
    *[
        (method, path, {**body, "idempotency_key": key}, 400, "invalid_idempotency_key")
        for method, path, body in (
            ("POST", "/devices/locks/{lock}/commands", {"action": "lock"}),
            ("POST", "/devices/locks", {"name": "Key with a newline"}),
        )
        for key in ("a" * 128 + "\n", "k-1\n")
    ],
    # a uid no ID token may carry: an invitation nobody could ever answer (attack run 58)
    *[
        ("POST", "/devices/locks/{lock}/members", {"uid": uid, "role": "member"}, 400, "invalid_uid")
        for uid in ("a/b", ".", "..", "__x__")
    ],
    ("POST", "/devices/locks/{lock}/transfer", {"uid": "a/b"}, 400, "invalid_uid"),
    # a query or body the route does not take: ignored, the request carried out without it (attack run 58)
    ("GET", "/devices/locks/{lock}/members?limit=1&page_token=zzz", None, 400, "unknown_field"),
    ("GET", "/devices/invitations?offset=1", None, 400, "unknown_field"),
    ("GET", "/devices/invitations?limit=0", None, 400, "invalid_limit"),
    ("POST", "/devices/locks/{lock}/provisioning", {"ttl_s": 999999}, 400, "unknown_field"),
    ("DELETE", "/devices/locks/{lock}/voice-lockout", {"member": "everyone"}, 400, "unknown_field"),
    ("GET", "/devices/locks/{lock}/commands/nope", None, 404, "command_not_found"),
    ("GET", "/devices/locks/{lock}/commands/00000000-0000-0000-0000-000000000000", None, 404, "command_not_found"),
    ("POST", "/devices/locks/{lock}/members", {"uid": "someone", "role": "owner"}, 400, "invalid_role"),
    ("POST", "/devices/locks/{lock}/members", {"role": "member"}, 400, "invalid_invitee"),
    (
        "POST",
        "/devices/locks/{lock}/members",
        {"uid": "x", "email": "a@b.c", "role": "member"},
        400,
        "invalid_invitee",
    ),
    ("POST", "/devices/locks/{lock}/members", {"email": "not-an-email", "role": "member"}, 400, "invalid_email"),
    ("POST", "/devices/locks/{lock}/members", {"uid": 12, "role": "member"}, 400, "invalid_uid"),
    ("PATCH", "/devices/locks/{lock}/members/ghost", {"role": "member"}, 404, "member_not_found"),
    ("DELETE", "/devices/locks/{lock}/members/ghost", None, 404, "member_not_found"),
    # path parameters cross the input boundary too (PostgreSQL refuses NUL: once a 500)
    ("DELETE", "/devices/locks/{lock}/members/a%00b", None, 400, "invalid_text"),
    ("PATCH", "/devices/locks/{lock}/members/%00", {"role": "member"}, 400, "invalid_text"),
    (
        "POST",
        "/devices/locks/{lock}/members",
        {"uid": "x", "role": "guest", "access": {"timezone": "America", "weekdays": ["mon"]}},
        400,
        "invalid_access",
    ),
    # an access limit beside role instead of in access: ignored, it granted access that never ended
    (
        "POST",
        "/devices/locks/{lock}/members",
        {"uid": "x", "role": "member", "expires_at": "2030-01-01T00:00:00Z"},
        400,
        "invalid_access",
    ),
    (
        "PATCH",
        "/devices/locks/{lock}/members/ghost",
        {"role": "guest", "valid_until": "2030-01-01"},
        400,
        "invalid_access",
    ),
    ("POST", "/devices/locks/{lock}/transfer", {"uid": "ghost"}, 404, "member_not_found"),
    ("POST", "/devices/provision", {"code": "AAAA-BBBB", "public_key": "bm90IGEga2V5"}, 400, "invalid_public_key"),
    # the identity's encoding: OpenSSL takes one signature of it for every message
    (
        "POST",
        "/devices/provision",
        {"code": "AAAA-BBBB", "public_key": "AQ" + "A" * 41 + "="},
        400,
        "invalid_public_key",
    ),
    ("POST", "/devices/provision", {"code": 5, "public_key": BASE_POINT}, 400, "invalid_code_format"),
    ("POST", "/devices/provision", [1, 2], 400, "expected_object"),
]


#: what a refused request must leave as it was: the locks, who holds which role, commands and invitations
WORLD_STATE = """
    SELECT (SELECT string_agg(name || ':' || supports_open || ':' || coalesce(voice_threshold::text, '-'), ',')
              FROM locks),
           (SELECT string_agg(user_uid || ':' || role || ':' || (revoked_at IS NULL), ',' ORDER BY user_uid)
              FROM lock_members),
           (SELECT count(*) FROM commands), (SELECT count(*) FROM invitations)
"""


def test_bad_input_gets_a_4xx_with_a_code(world: World, subtests: pytest.Subtests) -> None:
    """Every case against one world (a world per case cost ~0.3 s each): none may change it, which the last
    check shows, so the cases cannot hide each other."""
    before = db_rows(WORLD_STATE)
    for method, path, body, status, code in BAD_INPUT:
        with subtests.test(msg=f"{method} {path} {body!r:.40}"):
            kwargs: dict[str, Any] = {"headers": world.headers("owner")}
            if body is not None:
                kwargs["json"] = body
            resp = world.devices.open(method, path.format(lock=world.lock_id), **kwargs)
            assert (resp.status_code, resp.get_json()["error"]["code"]) == (status, code), resp.get_json()
    assert db_rows(WORLD_STATE) == before


def test_a_lock_has_one_path(world: World) -> None:
    """A lock id in a path is its canonical form, in either case: ``uuid.UUID`` also took it without hyphens, in
    braces or as a URN, so one lock answered at many paths (a review), unlike invitation ids and lock headers."""
    owner, hexed = world.headers("owner"), world.lock_id.replace("-", "")
    assert world.devices.get(f"/devices/locks/{world.lock_id.upper()}", headers=owner).status_code == 200
    for other in (hexed, "{" + world.lock_id + "}", f"urn:uuid:{world.lock_id}"):
        resp = world.devices.get(f"/devices/locks/{other}", headers=owner)
        assert (resp.status_code, resp.get_json()["error"]["code"]) == (404, "lock_not_found"), other
    resp = world.devices.get(f"/devices/locks/{world.lock_id}/commands/{'1' * 32}", headers=owner)
    assert (resp.status_code, resp.get_json()["error"]["code"]) == (404, "command_not_found")


def test_malformed_json_and_oversized_bodies(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    resp = world.devices.post(
        "/devices/locks", data=b"{oops", content_type="application/json", headers=world.headers("owner")
    )
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "malformed_json"
    resp = world.devices.post(
        "/devices/locks",
        data=b'{"name": "' + b"x" * 3_000_000 + b'"}',
        content_type="application/json",
        headers=world.headers("owner"),
    )
    assert resp.status_code == 413


def test_wrong_pairing_codes_are_limited_per_client_address(
    make_client: Any, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockwise.core.config import get_settings

    monkeypatch.setenv("LOCKWISE_PAIRING_FAILURES_PER_HOUR", "3")
    monkeypatch.setenv("LOCKWISE_TRUSTED_PROXY_HOPS", "1")  # one proxy in front appends the caller's address
    get_settings.cache_clear()
    get_runtime.cache_clear()
    devices = make_client("devices")
    _, public = new_lock_key()
    _, csr = new_tls_key()

    def redeem(code: str, address: str, forged: str = "") -> Any:
        forwarded = f"{forged}, {address}" if forged else address
        body = {"code": code, "public_key": public, "csr": csr}
        return devices.post("/devices/provision", json=body, headers={"X-Forwarded-For": forwarded})

    for _ in range(3):
        assert redeem("WRONG-CODE-1", "203.0.113.7").status_code == 401
    blocked = redeem("WRONG-CODE-2", "203.0.113.7", forged="198.51.100.1")  # what the client adds is not trusted
    assert blocked.status_code == 429 and blocked.get_json()["error"]["code"] == "too_many_pairing_attempts"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 3600  # until the oldest of the three leaves the hour
    good = create_lock(devices, sign_up())["provisioning"]["code"]
    assert redeem(good, "192.0.2.44").status_code == 201, "another address is not held up"
    # a parallel burst gets exactly the limit's worth of tries, not what was in flight when the count was read
    with ThreadPoolExecutor(max_workers=8) as pool:
        burst = list(pool.map(lambda i: redeem(f"WRONG-CODE-{i}", "192.0.2.99").status_code, range(24)))
    assert sorted(burst) == [401] * 3 + [429] * 21, burst
    # a request refused for something else (a bad CSR) does not use up a try
    bad_csr = devices.post(
        "/devices/provision",
        json={"code": "WRONG-CODE-X", "public_key": public, "csr": "not a csr"},
        headers={"X-Forwarded-For": "192.0.2.100"},
    )
    assert bad_csr.status_code == 400
    for _ in range(3):
        assert redeem("WRONG-CODE-1", "192.0.2.100").status_code == 401
    assert redeem("WRONG-CODE-1", "192.0.2.100").status_code == 429
    # attack run 32: a new IPv6 address of one /64 for each wrong code (a row each, never limited) counts as one
    for host in range(1, 4):
        assert redeem("WRONG-CODE-1", f"2001:db8:7:1::{host:x}").status_code == 401
    assert redeem("WRONG-CODE-1", "2001:db8:7:1:ffff:1:2:3").status_code == 429
    assert redeem("WRONG-CODE-1", "2001:db8:7:2::1").status_code == 401  # the next /64 is another subscriber's
    with get_runtime("devices").db.connection() as con:
        sources = con.run("SELECT DISTINCT source FROM pairing_attempts WHERE source LIKE '2001:db8:7:%'")
    assert sorted(r[0] for r in sources) == ["2001:db8:7:1::/64", "2001:db8:7:2::/64"]


def test_a_right_pairing_code_pairs_past_its_addresss_wrong_ones(
    make_client: Any, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 100: the wrong codes are counted per client address, and an address is many locks' (a carrier's
    NAT; with one proxy hop trusted, every lock reaching the production base URL through one node of Firebase
    Hosting's CDN, which the function sees as the caller). An attacker's 20 wrong codes an hour there kept every
    other lock behind it from pairing, each with its owner's right code (429 before any code was tried). Past the
    limit a wrong code, or another lock's key, is still 429 and counted no more; a code that pairs pairs, and one that
    meets another lock's key is spent."""
    from lockwise.core.config import get_settings

    monkeypatch.setenv("LOCKWISE_PAIRING_FAILURES_PER_HOUR", "3")
    monkeypatch.setenv("LOCKWISE_TRUSTED_PROXY_HOPS", "1")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    devices = make_client("devices")
    node = f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"  # the address every lock here is seen at

    def redeem(code: str, key: str | None = None) -> Any:
        body = {"code": code, "public_key": key or new_lock_key()[1], "csr": new_tls_key()[1]}
        return devices.post("/devices/provision", json=body, headers={"X-Forwarded-For": f"203.0.113.5, {node}"})

    for _ in range(3):  # the attacker's
        assert redeem("WRONG-CODE-1").status_code == 401
    refused = redeem("WRONG-CODE-2")
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (429, "too_many_pairing_attempts")
    owner = sign_up()
    first, second = create_lock(devices, owner), create_lock(devices, owner, name="Back door")
    _, key = new_lock_key()
    paired = redeem(first["provisioning"]["code"], key)
    assert paired.status_code == 201, paired.get_json()
    assert paired.get_json()["lock_id"] == first["lock"]["id"]
    # another lock's key with a right code is the 429 past the limit (attack run 86), and spends the code: a free
    # key pairs (201), so a code kept after a key found in use asked about any number of keys, one answer each
    taken = redeem(second["provisioning"]["code"], key)
    assert (taken.status_code, taken.get_json()["error"]["code"]) == (429, "too_many_pairing_attempts")
    assert redeem(second["provisioning"]["code"], key).status_code == 429
    assert redeem("WRONG-CODE-3").status_code == 429
    assert redeem(second["provisioning"]["code"]).status_code == 429  # spent, so a wrong code now
    again = devices.post(f"/devices/locks/{second['lock']['id']}/provisioning", headers=bearer(owner))
    assert redeem(again.get_json()["code"]).status_code == 201  # its owner issues another
    ((counted,),) = db_rows("SELECT count(*) FROM pairing_attempts WHERE source = :s", s=node)
    assert counted == 3, "nothing past the limit is counted"


def test_a_burst_past_the_limit_asks_one_code_about_one_key_in_use(
    make_client: Any, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 104: past the address's limit a valid code that met another lock's key was spent by a transaction
    after the one that found the key (rolled back by the 409): the pairings of a burst sent with the code at once
    each took the code's row in turn as the last one's was rolled back, before the first one's spending could take
    it, and each had its key checked, an answer (by the work done and, with one key free, its 201) for every key and
    not for every code an account is given. The code is spent where the key was found: one key checked a code."""
    from lockwise.core.config import get_settings

    monkeypatch.setenv("LOCKWISE_PAIRING_FAILURES_PER_HOUR", "1")
    monkeypatch.setenv("LOCKWISE_TRUSTED_PROXY_HOPS", "1")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    devices = make_client("devices")
    node = f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"

    def redeem(code: str, key: str) -> Any:
        body = {"code": code, "public_key": key, "csr": new_tls_key()[1]}
        return devices.post("/devices/provision", json=body, headers={"X-Forwarded-For": f"203.0.113.5, {node}"})

    owner = sign_up()
    first, second = create_lock(devices, owner), create_lock(devices, owner, name="Back door")
    _, key = new_lock_key()
    assert redeem(first["provisioning"]["code"], key).status_code == 201
    assert redeem("WRONG-CODE-1", key).status_code == 401  # the address's hour is full
    checked = []
    check = provisioning.refuse_a_shared_signing_key

    def slow_check(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.3)  # the code's row is held meanwhile: the burst's others wait for it
        try:
            check(*args, **kwargs)
        except errors.Conflict:
            checked.append(1)  # another lock's key found, with a code still valid
            raise

    monkeypatch.setattr(provisioning, "refuse_a_shared_signing_key", slow_check)
    csrs = [new_tls_key()[1] for _ in range(5)]

    def probe(csr: str) -> int:
        body = {"code": second["provisioning"]["code"], "public_key": key, "csr": csr}
        headers = {"X-Forwarded-For": f"203.0.113.5, {node}"}
        return int(devices.post("/devices/provision", json=body, headers=headers).status_code)

    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(pool.map(probe, csrs))
    assert answers == [429] * 5
    assert len(checked) == 1, f"one code asked about {len(checked)} keys"
    assert redeem(second["provisioning"]["code"], new_lock_key()[1]).status_code == 429  # spent


def test_wrong_pairing_codes_are_counted_over_the_last_hour_not_the_clock_hour(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted per clock hour, an address's 20 wrong codes in the hour's last seconds and 20 more in the next
    hour's first seconds all passed; counted as this hour's and a share of the last one's, 39 fell within one 60
    minutes (attack run 45). Each attempt is a row: those of the last 60 minutes count, whenever the hour turned."""
    from lockwise.core.config import get_settings

    monkeypatch.setenv("LOCKWISE_PAIRING_FAILURES_PER_HOUR", "3")
    monkeypatch.setenv("LOCKWISE_TRUSTED_PROXY_HOPS", "1")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    devices = make_client("devices")
    _, public = new_lock_key()
    _, csr = new_tls_key()
    address = f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"

    def redeem() -> Any:
        body = {"code": "WRONG-CODE-1", "public_key": public, "csr": csr}
        return devices.post("/devices/provision", json=body, headers={"X-Forwarded-For": address})

    def tried(*minutes_ago: float) -> None:
        for ago in minutes_ago:
            db_rows(
                "INSERT INTO pairing_attempts (source, at) VALUES (:s, now() - make_interval(secs => :a))",
                s=address,
                a=ago * 60,
            )

    tried(61, 61, 61, 58, 57)  # three more than an hour ago; two within it: room for one
    assert redeem().status_code == 401
    refused = redeem()
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "too_many_pairing_attempts"
    assert 1 <= int(refused.headers["Retry-After"]) <= 121  # until the oldest of the three leaves the hour
    ((counted,),) = db_rows("SELECT count(*) FROM pairing_attempts WHERE source = :s", s=address)
    assert counted == 6, "a refused attempt is not counted"
    # a parallel burst gets exactly the room there is
    db_rows("DELETE FROM pairing_attempts WHERE source = :s", s=address)
    tried(30)
    with ThreadPoolExecutor(max_workers=6) as pool:
        burst = list(pool.map(lambda _: redeem().status_code, range(6)))
    assert sorted(burst) == [401, 401] + [429] * 4, burst


def test_an_invitation_whose_access_has_ended_grants_nothing_and_says_so(world: World, sign_up: Any) -> None:
    """An invitation with an `expires_at` already past was sent, accepted (201, "joined") and the member never got
    in (attack run). It is refused when sent (400), as is one ending by the time its window opens, and one whose end
    has passed since it was sent is refused when accepted (409 access_ended), nothing written. So is one whose window
    never opens before it ends (attack run 119)."""
    lock, invitee = world.lock_id, sign_up()
    assert world.devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    add = f"/devices/locks/{lock}/members"
    past = "2001-01-01T00:00:00Z"
    # and one whose access ends by the time its window opens: sent, 202, a guest who could never come in (attack run
    # 119)
    day, week = (f"{dt.datetime.now(dt.UTC) + dt.timedelta(days=n):%Y-%m-%dT%H:%M:%SZ}" for n in (1, 7))
    # and one whose window never opens before it ends: the one day it spans is not a weekday it names
    only = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)
    other = members.WEEKDAY_NAMES[(only.weekday() + 1) % 7]
    for role, access in (
        ("member", {"expires_at": past}),
        ("guest", {"valid_until": past}),
        ("guest", {"valid_from": week, "expires_at": day}),
        ("guest", {"valid_from": day, "expires_at": day}),
        ("guest", {"valid_from": f"{only}T00:00:00Z", "valid_until": f"{only}T23:59:00Z", "weekdays": [other]}),
    ):
        resp = world.devices.post(
            add, json={"uid": invitee["localId"], "role": role, "access": access}, headers=world.headers("owner")
        )
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_access", resp.get_json()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    sent = world.devices.post(
        add,
        json={"uid": invitee["localId"], "role": "member", "access": {"expires_at": soon.isoformat()}},
        headers=world.headers("owner"),
    )
    assert sent.status_code == 202, sent.get_json()
    invitation = sent.get_json()["invitation"]["id"]
    with get_runtime("devices").db.transaction() as con:  # the hour passes before the invitee answers
        con.run(
            "UPDATE invitations SET access = jsonb_set(access, '{expires_at}', to_jsonb(CAST(:p AS text)))"
            " WHERE id = CAST(:i AS uuid)",
            p=past,
            i=invitation,
        )
    resp = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(invitee))
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "access_ended", resp.get_json()
    assert db_rows(
        "SELECT count(*) FROM lock_members WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
        l=lock,
        u=invitee["localId"],
    ) == [[0]]


def test_what_a_person_typed_stays_out_of_the_database_servers_log_and_the_audit_log(
    devices: Any, sign_up: Any, postgres: Any, stack_env: dict[str, str]
) -> None:
    """Attack run 53: an invitation by address sent again (a retry, a double tap) met the unique index of the open
    invitation and was caught; PostgreSQL logged the refused statement with its key, the address, in its own log
    (Cloud Logging in production, kept on its own terms, past the invitation and the account). And a lock's name,
    the owner's free text (a person's name, an address), went into the audit log, kept for good, at its creation and
    at each rename. Neither is written there now."""
    owner = sign_up()
    address = f"dana.{secrets.token_hex(4)}@example.com"
    name, renamed = f"Dana Smith, {secrets.token_hex(3)} Rue des Lilas", f"Dana & Sam, flat {secrets.token_hex(3)}"
    before = postgres.process.log_path.stat().st_size
    lock_id = create_lock(devices, owner, name=name)["lock"]["id"]
    invited = [
        devices.post(
            f"/devices/locks/{lock_id}/members", json={"email": address, "role": "member"}, headers=bearer(owner)
        )
        for _ in range(2)
    ]
    assert [r.status_code for r in invited] == [202, 202]
    assert invited[0].get_json()["invitation"]["id"] == invited[1].get_json()["invitation"]["id"]
    assert devices.patch(f"/devices/locks/{lock_id}", json={"name": renamed}, headers=bearer(owner)).status_code == 200
    with open(postgres.process.log_path, "rb") as log:
        log.seek(before)
        server_log = log.read().decode(errors="replace")
    assert address not in server_log.lower(), server_log[-2000:]
    db = Database(stack_env["DATABASE_URL"], pool_size=1)
    try:
        with db.connection() as con:
            kept = con.run("SELECT action, details::text FROM audit_log WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
    finally:
        db.close()
    assert {"lock.create", "lock.update"} <= {action for action, _ in kept}
    assert not [row for row in kept if "Dana" in str(row[1])], kept


def audited(lock_id: str, *actions: str) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    """The lock's audit rows of ``actions`` in the log's order: (action, actor, target, details)."""
    rows = db_rows(
        "SELECT action, actor, target, details FROM audit_log WHERE lock_id = CAST(:l AS uuid)"
        " AND action = ANY(:a) ORDER BY id",
        l=lock_id,
        a=list(actions),
    )
    return [(r[0], r[1], r[2], r[3] if isinstance(r[3], dict) else json.loads(r[3])) for r in rows]


def _auth_time(account: dict[str, Any]) -> dt.datetime:
    """When ``account``'s ID token says it signed in."""
    payload = account["idToken"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return dt.datetime.fromtimestamp(int(claims["auth_time"]), dt.UTC)


def test_every_audit_row_an_app_user_writes_names_the_session_that_made_it(world: World, sign_up: Any) -> None:
    """Attack run 99 (carried): only a command's row kept the session that made it; an owner's invitations,
    removals, renames and hand-overs named her alone, and a review could not tell them from those of her session on
    a phone stolen and signed out since. Every row a request writes as the signed-in user's keeps when that session
    signed in (``details.signed_in_at``); a row written for someone else (the member removed) keeps it as the
    actor's."""
    owner, guest = world.headers("owner"), sign_up()
    assert world.devices.get("/devices/me", headers=bearer(guest)).status_code == 200
    ((before,),) = db_rows("SELECT coalesce(max(id), 0) FROM audit_log")
    invited = _invited(world, world.lock_id, guest)
    renamed = world.devices.patch(f"/devices/locks/{world.lock_id}", json={"name": "Back door"}, headers=owner)
    assert renamed.status_code == 200, renamed.get_json()
    joined = world.devices.post(f"/devices/invitations/{invited}/accept", headers=bearer(guest))
    assert joined.status_code == 201, joined.get_json()
    removed = world.devices.delete(f"/devices/locks/{world.lock_id}/members/{guest['localId']}", headers=owner)
    assert removed.status_code == 204, removed.get_json()
    offered = world.devices.post(
        f"/devices/locks/{world.lock_id}/transfer", json={"uid": world.uid("admin")}, headers=owner
    )
    assert offered.status_code == 202, offered.get_json()
    rows = [
        (action, actor, json.loads(details) if isinstance(details, str) else details)
        for action, actor, details in db_rows(
            "SELECT action, actor, details FROM audit_log WHERE id > :b AND lock_id = CAST(:l AS uuid) ORDER BY id",
            b=before,
            l=world.lock_id,
        )
    ]
    assert [action for action, *_ in rows] == [
        "member.invite",
        "lock.update",
        "member.accept_invitation",
        "member.revoke",
        "lock.transfer_offer",
    ], rows
    by_actor = {
        f"user:{world.uid('owner')}": _auth_time(world.accounts["owner"]).isoformat(),
        f"user:{guest['localId']}": _auth_time(guest).isoformat(),
    }
    for action, actor, details in rows:
        assert details.get("signed_in_at") == by_actor[actor], (action, actor, details)


def test_a_pairings_audit_row_names_whose_code_paired_the_device(world: World) -> None:
    """Attack run 99 (carried): a pairing is the lock's doing in the log, and a re-pairing named nobody who had let
    the new device in; the code that said so goes 30 days after it ends. The row names the code's issuer and the
    session that asked for it."""
    pair_again(world.devices, world)
    rows = audited(world.lock_id, "credentials.provision")
    action, actor, _target, details = rows[-1]
    assert actor == f"lock:{world.lock_id}"
    assert details["code_issued_by"] == world.uid("owner"), details
    assert details["code_signed_in_at"] == _auth_time(world.accounts["owner"]).isoformat(), details
    assert details["revoked_previous"] == 1


def test_the_audit_log_says_who_let_a_member_in_and_on_what_terms(world: World, sign_up: Any) -> None:
    """Attack run 99: the log named who joined and never who had let them in (the invitation, pruned 30 days after
    it was answered, was the only link to its sender), an admin widening a guest's window to every day was logged as
    "member.update, guest" as a narrowing was, and a withdrawal named no invitation. Each row now says which
    invitation, whose, and the terms given."""
    lock, admin = world.lock_id, world.uid("admin")
    invitee = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    sent = world.devices.post(
        f"/devices/locks/{lock}/members",
        json={"uid": invitee["localId"], "role": "guest", "access": {"weekdays": ["sat"], "timezone": "UTC"}},
        headers=world.headers("admin"),
    )
    assert sent.status_code == 202, sent.get_json()
    invitation = sent.get_json()["invitation"]["id"]
    joined = world.devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(invitee))
    assert joined.status_code == 201, joined.get_json()
    every_day = list(members.WEEKDAY_NAMES)
    widened = world.devices.patch(
        f"/devices/locks/{lock}/members/{invitee['localId']}",
        json={"role": "guest", "access": {"weekdays": every_day, "timezone": "UTC"}},
        headers=world.headers("admin"),
    )
    assert widened.status_code == 200, widened.get_json()
    other = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(other)).status_code == 200
    again = world.devices.post(
        f"/devices/locks/{lock}/members",
        json={"uid": other["localId"], "role": "member"},
        headers=world.headers("admin"),
    )
    withdrawn = again.get_json()["invitation"]["id"]
    assert (
        world.devices.delete(
            f"/devices/locks/{lock}/invitations/{withdrawn}", headers=world.headers("owner")
        ).status_code
        == 204
    )

    rows = audited(lock, "member.invite", "member.accept_invitation", "member.update", "member.withdraw_invitation")
    # the world's own members were invited and joined before: the rows of this one's coming and going
    (invite,) = [r for r in rows if r[0] == "member.invite" and r[2] == invitee["localId"]]
    (accept,) = [r for r in rows if r[0] == "member.accept_invitation" and r[1] == f"user:{invitee['localId']}"]
    (update,) = [r for r in rows if r[0] == "member.update"]
    (withdraw,) = [r for r in rows if r[0] == "member.withdraw_invitation"]
    assert invite[:3] == ("member.invite", f"user:{admin}", invitee["localId"])
    assert invite[3]["invitation"] == invitation
    assert invite[3]["access"] == {"weekdays": ["sat"], "timezone": "UTC"}
    assert accept[:3] == ("member.accept_invitation", f"user:{invitee['localId']}", f"invitation:{invitation}")
    assert accept[3] == {"role": "guest", "invited_by": admin, "signed_in_at": _auth_time(invitee).isoformat()}
    assert update[:3] == ("member.update", f"user:{admin}", invitee["localId"])
    assert update[3]["access"] == {"weekdays": every_day, "timezone": "UTC"}
    assert withdraw[:3] == ("member.withdraw_invitation", f"user:{world.uid('owner')}", f"invitation:{withdrawn}")


def test_an_app_commands_audit_row_names_the_session_that_made_it(world: World) -> None:
    """Attack run 99: the log named the member only, and the session (when it signed in: a stolen phone's, signed
    out since, against the owner's own) was kept with the command, which goes after 30 days and with its lock."""
    made = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("owner")
    )
    assert made.status_code == 202, made.get_json()
    command_id = made.get_json()["command"]["id"]
    ((session,),) = db_rows("SELECT issuer_signed_in_at FROM commands WHERE id = CAST(:i AS uuid)", i=command_id)
    ((action, actor, target, details),) = audited(world.lock_id, "command.unlock")
    assert (action, actor, target) == ("command.unlock", f"user:{world.uid('owner')}", command_id)
    assert session is not None and details == {"issuer": "user", "signed_in_at": session.isoformat()}
