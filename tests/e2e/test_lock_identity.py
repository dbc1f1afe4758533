"""Lock identity end to end: certificates from pairing, renewal, and what re-pairing does to the old identity, with
the served devices function, a relay and the real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from cryptography import x509

from lockwise.devices import topics
from simlock.lock import LockConfig, SimulatedLock, provision
from tests.e2e.conftest import App, db_one
from tests.waiting import wait_for

Pair = Callable[..., tuple[str, SimulatedLock]]


def test_renewal_keeps_the_identity_and_the_session(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair
) -> None:
    relays()
    lock_id, lock = paired_lock()
    before = x509.load_pem_x509_certificate(lock.config.cert_pem.encode())
    time.sleep(1.1)  # a later validity start than the first certificate's
    renewed = lock.renew_certificate(e2e["url"])  # reconnects with the new certificate and key
    after = x509.load_pem_x509_certificate(renewed["certificate"].encode())
    assert renewed["client_id"] == lock.config.identity
    assert after.subject == before.subject and after.serial_number != before.serial_number
    assert after.not_valid_after_utc > before.not_valid_after_utc
    assert after.public_key() != before.public_key()  # a new TLS key with every renewal
    (serial,) = db_one(e2e, "SELECT cert_serial FROM lock_credentials WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
    assert int(serial, 16) == after.serial_number

    # a renewal lists nothing (the list grows with revocations, not with the fleet) ...
    def listed(serial: int) -> bool:
        crl = x509.load_pem_x509_crl(requests.get(f"{e2e['url']}/devices/lock-ca/crl", timeout=10).text.encode())
        return crl.get_revoked_certificate_by_serial_number(serial) is not None

    assert not listed(before.serial_number) and not listed(after.serial_number)
    command = app.unlock(lock_id)
    wait_for(lambda: [c for c in lock.executed if c.id == command["id"]], what="a command after renewal")
    wait_for(lambda: app.command_status(lock_id, command["id"]) == "acked", what="acked after renewal")
    # ... and deleting the lock revokes every certificate its credential was issued, the renewed-away one too (only
    # the last was listed once: the earlier ones stayed valid for their 7 days; attack run)
    assert app.call("DELETE", f"/devices/locks/{lock_id}").status_code == 204
    assert listed(before.serial_number) and listed(after.serial_number)


def test_after_re_pairing_the_old_certificate_reaches_no_live_topic_and_cannot_renew(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, broker: Any
) -> None:
    relays()
    lock_id, old = paired_lock()
    code = app.call("POST", f"/devices/locks/{lock_id}/provisioning").json()["code"]
    new = SimulatedLock(provision(e2e["url"], code, str(broker.ca_file), host="127.0.0.1"))
    new.start()
    try:
        assert new.config.identity != old.config.identity
        # the old certificate still connects until it expires (nothing per lock at the broker to revoke) ...
        assert old.connected.is_set()
        command = app.unlock(lock_id)
        wait_for(lambda: [c for c in new.executed if c.id == command["id"]], what="the new lock got the command")
        wait_for(lambda: app.command_status(lock_id, command["id"]) == "acked", what="acked by the new lock")
        # ... but reaches nothing live: no command, and its reports are refused
        old.client.publish(
            topics.state(old.config.identity),
            json.dumps({"state": "jammed", "battery_pct": 3, "ts": time.time() + 1}),
            qos=1,
        ).wait_for_publish(5)
        new.battery_pct = 55
        new.publish_state().wait_for_publish(5)
        wait_for(
            lambda: (
                db_one(e2e, "SELECT battery_pct FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id) == [55]
            ),
            what="the new lock's report",
        )
        time.sleep(0.5)
        assert db_one(e2e, "SELECT state FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id) != ["jammed"]
        assert [c for c in old.executed if c.id == command["id"]] == []
        with pytest.raises(PermissionError, match="401"):
            old.renew_certificate(e2e["url"])
        # and once the broker reloads the lock CA's revocation list (every minute on the broker host), the old
        # certificate cannot even open a session; the new one still can
        crl_pem = requests.get(f"{e2e['url']}/devices/lock-ca/crl", timeout=10).text
        revoked = x509.load_pem_x509_crl(crl_pem.encode())
        old_serial = x509.load_pem_x509_certificate(old.config.cert_pem.encode()).serial_number
        assert revoked.get_revoked_certificate_by_serial_number(old_serial) is not None
        broker.update_crl(crl_pem)
        old.stop(graceful=False)
        time.sleep(1.0)  # the SIGHUP is handled between connections (a loaded machine's broker may take a while)
        with pytest.raises(ConnectionError):
            SimulatedLock(old.config).start(timeout=3)
        again = SimulatedLock(new.config)
        again.start()
        again.stop(graceful=False)
    finally:
        new.stop(graceful=False)


def test_a_deleted_locks_certificate_is_listed_as_revoked(
    e2e: dict[str, Any], app: App, paired_lock: Pair, broker: Any
) -> None:
    lock_id, lock = paired_lock()
    serial = x509.load_pem_x509_certificate(lock.config.cert_pem.encode()).serial_number
    crl = x509.load_pem_x509_crl(requests.get(f"{e2e['url']}/devices/lock-ca/crl", timeout=10).content)
    assert crl.get_revoked_certificate_by_serial_number(serial) is None
    assert app.call("DELETE", f"/devices/locks/{lock_id}").status_code == 204
    resp = requests.get(f"{e2e['url']}/devices/lock-ca/crl", timeout=10)
    assert resp.headers["Content-Type"].startswith("application/pkix-crl")
    crl = x509.load_pem_x509_crl(resp.content)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    ca = x509.load_pem_x509_certificate(broker.lock_ca_file.read_bytes())
    assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]


def test_a_lock_paired_with_a_password_moves_to_a_certificate(
    e2e: dict[str, Any], app: App, paired_lock: Pair, relays: Any
) -> None:
    """Migration: a credential from before certificates (a broker password, no certificate) learns from its config
    that it has none and gets its first certificate, for the same identity; the password hash is cleared."""
    relays()  # the broker takes the reconnected lock's reports only while a relay is there for them (lockwise_acl.c)
    lock_id, lock = paired_lock()
    with e2e["db"].transaction() as con:
        con.run(
            "UPDATE lock_credentials SET cert_serial = NULL, cert_not_after = NULL, mqtt_password_hash = '$7$101$x$y'"
            " WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL",
            l=lock_id,
        )
    status, config = lock.signed_request(e2e["url"], "GET", "/devices/lock/config")
    assert status == 200 and config["certificate_expires_at"] is None
    renewed = lock.renew_certificate(e2e["url"])
    assert renewed["client_id"] == lock.config.identity == config["mqtt_identity"]
    sql = "SELECT mqtt_password_hash, cert_serial IS NOT NULL FROM lock_credentials WHERE lock_id = CAST(:l AS uuid)"
    row = db_one(e2e, sql, l=lock_id)
    assert row == [None, True]
    assert lock.connected.is_set()


def test_the_simulated_lock_config_round_trips(tmp_path: Any, paired_lock: Pair) -> None:
    _, lock = paired_lock()
    lock.config.save(tmp_path / "lock.json")
    assert LockConfig.load(tmp_path / "lock.json") == lock.config
