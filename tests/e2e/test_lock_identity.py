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


def retained_under(e2e: dict[str, Any], identity: str) -> list[tuple[str, bytes]]:
    """What the broker keeps under a lock identity's topics: the retained messages a new subscription is handed (an
    empty one is a clearing delivered live, not kept)."""
    from tests.e2e.test_relay import relay_client

    got: list[tuple[str, bytes]] = []
    with relay_client(e2e) as client:
        client.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload))) if m.retain else None
        client.subscribe(f"{topics.ROOT}/{identity}/#", qos=1)
        time.sleep(0.5)
    return [m for m in got if m[1]]


def refused_empty(e2e: dict[str, Any], *identities: str) -> int:
    """The relay's empty clearings posted and refused, kept in lock_event_rejects, under ``identities``' topics."""
    (n,) = db_one(
        e2e,
        "SELECT count(*) FROM lock_event_rejects WHERE payload_chars = 0"
        " AND split_part(topic, '/', 2) = ANY(CAST(:i AS text[]))",
        i=list(identities),
    )
    return int(n)


def test_a_replaced_or_deleted_locks_identity_keeps_nothing_retained_at_the_broker(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, broker: Any
) -> None:
    """Attack run 127's leftover, attack run 131: a lock's presence stayed retained on its identity's status topic once
    the lock was paired again or deleted, one per pairing for good, handed to every relay subscription anew after a
    broker restart and each posted and refused as an unknown lock's. The relay clears a retired identity's topics
    (an empty retained message each), from a list the database keeps: an identity retired while no relay runs is
    cleared by the next one to start. Its own clearings, delivered to the relays' subscriptions, are not posted."""
    relay = relays()
    lock_id, old = paired_lock()
    wait_for(lambda: retained_under(e2e, old.config.identity) != [], what="the old device's presence kept")
    old.stop()  # its goodbye, retained
    code = app.call("POST", f"/devices/locks/{lock_id}/provisioning").json()["code"]
    new = SimulatedLock(provision(e2e["url"], code, str(broker.ca_file), host="127.0.0.1"))
    new.start()
    try:
        gone_id, gone = paired_lock("Back door")
        wait_for(lambda: retained_under(e2e, gone.config.identity) != [], what="the deleted lock's presence kept")
        gone.stop()
        relay.stop()  # away as the lock is deleted: the identity waits in the database for the next relay
        assert app.call("DELETE", f"/devices/locks/{gone_id}").status_code == 204
        relays()
        wait_for(
            lambda: retained_under(e2e, old.config.identity) == [] and retained_under(e2e, gone.config.identity) == [],
            timeout=20,
            what="the retired identities' presences cleared",
        )
        kept = retained_under(e2e, new.config.identity)
        assert [topic for topic, _ in kept] == [topics.status(new.config.identity)]  # the live one's stays
        time.sleep(1.0)  # the clearings' copies delivered to the relays' subscriptions, and dropped
        assert refused_empty(e2e, old.config.identity, gone.config.identity) == 0
    finally:
        new.stop(graceful=False)


def test_a_presence_kept_for_an_identity_no_lock_holds_is_cleared_once_it_comes_in(
    e2e: dict[str, Any], relays: Any
) -> None:
    """A presence kept from before the list of retired identities (a lock deleted or paired again earlier), or a
    replaced device's goodbye sent after its identity was cleared, reaches the devices function as an unknown lock's:
    its identity is listed then, and cleared, not handed again to every relay subscription (attack run 131)."""
    import uuid

    from tests.e2e.test_relay import relay_client

    relays()
    ghost = str(uuid.uuid4())
    with relay_client(e2e) as client:  # a relay's identity: the broker's plugin keeps its message as sent
        client.publish(topics.status(ghost), b"offline 4", qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: retained_under(e2e, ghost) == [], timeout=20, what="the unknown identity's presence cleared")
    (left,) = db_one(e2e, "SELECT count(*) FROM retired_broker_identities WHERE identity = :i", i=ghost)
    assert left == 0
