"""The real Mosquitto broker: TLS only, passwords, and a per-lock ACL."""

from __future__ import annotations

import secrets
import ssl
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from infra.local.services import Broker
from lockwise import topics
from simlock.lock import LockConfig, SimulatedLock


class Peer:
    """A minimal MQTT client that records what it receives."""

    def __init__(self, broker: Broker, user: str, password: str, *, ca: str | None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.result: object = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"peer-{secrets.token_hex(4)}")
        self.client.username_pw_set(user, password)
        if ca is not None:
            self.client.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        else:
            self.client.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT)  # system CAs only: must not trust ours
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.broker = broker

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        self.result = rc
        if not rc.is_failure:  # type: ignore[attr-defined]
            self.connected.set()

    def start(self) -> bool:
        try:
            self.client.connect("127.0.0.1", self.broker.port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        self.client.loop_start()
        return self.connected.wait(5)

    def subscribe(self, topic: str) -> None:
        info = threading.Event()
        self.client.on_subscribe = lambda *_a: info.set()
        self.client.subscribe(topic, qos=1)
        assert info.wait(5), "no SUBACK"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def two_locks(broker: Broker) -> Iterator[dict[str, str]]:
    creds = {f"lock-{secrets.token_hex(6)}": secrets.token_urlsafe(12) for _ in range(2)}
    for user, pw in creds.items():
        broker.add_user(user, pw)
    yield creds


def test_lock_connects_over_tls_with_its_own_account(broker: Broker, two_locks: dict[str, str]) -> None:
    user, pw = next(iter(two_locks.items()))
    lock = SimulatedLock(LockConfig(user, pw, "127.0.0.1", broker.port, str(broker.ca_file)))
    relay = Peer(broker, broker.relay_user, broker.relay_password, ca=str(broker.ca_file))
    assert relay.start()
    relay.subscribe(f"{topics.ROOT}/+/state")
    lock.start()
    try:
        deadline = time.monotonic() + 5
        while not any(t == topics.state(user) for t, _ in relay.messages) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(t == topics.state(user) for t, _ in relay.messages), "the relay never saw the lock's state"
    finally:
        lock.stop()
        relay.stop()


def test_connection_without_our_ca_is_refused(broker: Broker, two_locks: dict[str, str]) -> None:
    user, pw = next(iter(two_locks.items()))
    peer = Peer(broker, user, pw, ca=None)
    assert not peer.start(), "a client that does not trust the LockWise CA must not get a session"
    peer.client.loop_stop()


def test_wrong_password_is_refused(broker: Broker, two_locks: dict[str, str]) -> None:
    user = next(iter(two_locks))
    peer = Peer(broker, user, "not-the-password", ca=str(broker.ca_file))
    assert not peer.start()
    assert peer.result is not None and peer.result.is_failure  # type: ignore[attr-defined]
    peer.stop()


def test_plain_tcp_is_not_offered(broker: Broker, two_locks: dict[str, str]) -> None:
    user, pw = next(iter(two_locks.items()))
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.username_pw_set(user, pw)
    got = threading.Event()
    client.on_connect = lambda *_a: got.set()
    client.connect("127.0.0.1", broker.port, keepalive=5)
    client.loop_start()
    try:
        assert not got.wait(3), "the broker accepted MQTT without TLS"
    finally:
        client.loop_stop()


def test_one_lock_cannot_read_or_write_another_locks_topics(broker: Broker, two_locks: dict[str, str]) -> None:
    (a, pw_a), (b, pw_b) = two_locks.items()
    ca = str(broker.ca_file)
    spy, victim, relay = Peer(broker, a, pw_a, ca=ca), Peer(broker, b, pw_b, ca=ca), None
    relay = Peer(broker, broker.relay_user, broker.relay_password, ca=ca)
    for peer in (spy, victim, relay):
        assert peer.start()
    try:
        spy.subscribe(topics.commands(b))  # granted SUBACK, but must receive nothing
        victim.subscribe(topics.commands(b))
        relay.subscribe(topics.state(b))
        relay.client.publish(topics.commands(b), b"for-b-only", qos=1).wait_for_publish(5)
        spy.client.publish(topics.state(b), b"forged-by-a", qos=1).wait_for_publish(5)
        victim.client.publish(topics.state(b), b"real-from-b", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (not victim.messages or len(relay.messages) < 1):
            time.sleep(0.05)
        time.sleep(0.5)  # give a wrongly-delivered message time to arrive
        assert victim.messages == [(topics.commands(b), b"for-b-only")]
        assert spy.messages == [], "lock A received lock B's command"
        assert relay.messages == [(topics.state(b), b"real-from-b")], "lock A could publish as lock B"
    finally:
        for peer in (spy, victim, relay):
            peer.stop()
