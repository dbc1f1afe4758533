"""The reference lock (``simlock``) acknowledges a voice grant it acted on while the broker was out of reach once it
connects again, as docs/FIRMWARE.md asks (an ack is recorded up to a day late; without it the app reads ``expired``
for a door that opened). A fast test of the lock's own bookkeeping, with its MQTT client recorded instead of
connected; the relay's e2e tests run the same lock against the real broker."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockwise.devices import command_signing, topics
from simlock.lock import LockConfig, SimulatedLock


class RecordedClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    def publish(self, topic: str, payload: str, **_kw: Any) -> None:
        self.published.append((topic, payload))

    def subscribe(self, *_a: Any, **_kw: Any) -> None:
        pass


def recorded_lock(monkeypatch: pytest.MonkeyPatch, server: Ed25519PrivateKey) -> tuple[LockConfig, RecordedClient]:
    """A lock's configuration trusting ``server``'s commands, and the client every ``SimulatedLock`` made from now on
    publishes to (recorded, never connected)."""
    config = LockConfig(
        lock_id=str(uuid.uuid4()),
        identity="lk-test",
        cert_pem="",
        key_pem="",
        host="127.0.0.1",
        port=1,
        ca_file="",
        server_public_key=command_signing.public_key_b64(server),
    )
    recorded = RecordedClient()
    monkeypatch.setattr(SimulatedLock, "_new_client", lambda _self: recorded)
    return config, recorded


def test_a_grant_acted_on_while_disconnected_is_acknowledged_once_on_the_next_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Ed25519PrivateKey.generate()
    config, recorded = recorded_lock(monkeypatch, server)
    lock_id = config.lock_id
    lock = SimulatedLock(config)
    now = int(time.time())
    grant = command_signing.Command(str(uuid.uuid4()), lock_id, "unlock", "n" * 24, now, now + 30)
    answer = {"decision": "accepted", "reason": "accepted", "grant": command_signing.sign(grant, server)}
    lock.signed_request = lambda *_a, **_kw: (200, answer)  # type: ignore[method-assign]

    assert lock.hear("http://verify", b"RIFF")["acted_on_grant"]
    assert lock.state == "unlocked" and recorded.published == []  # not connected: nothing sent yet

    class Connected:
        is_failure = False

    lock._on_connect(recorded, None, None, Connected(), None)  # type: ignore[arg-type]
    lock._on_connect(recorded, None, None, Connected(), None)  # type: ignore[arg-type]  # a second connection
    acks = [json.loads(p) for t, p in recorded.published if t == topics.acks("lk-test")]
    assert acks == [{"id": grant.id, "nonce": grant.nonce, "result": "ok"}]


def test_a_spent_nonce_is_acknowledged_again_only_for_its_own_command_also_after_a_restart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """docs/FIRMWARE.md, "Repeats": a correctly signed command whose nonce is spent is acknowledged again when it is
    the command carried out (same id), and refused without an ack when it names another id."""
    server = Ed25519PrivateKey.generate()
    config, recorded = recorded_lock(monkeypatch, server)
    lock_id = config.lock_id
    nonces = tmp_path / "nonces.json"
    now = int(time.time())
    command = command_signing.Command(str(uuid.uuid4()), lock_id, "unlock", "s" * 24, now, now + 30)
    other = command_signing.Command(str(uuid.uuid4()), lock_id, "unlock", "s" * 24, now, now + 30)

    class Message:
        def __init__(self, cmd: command_signing.Command) -> None:
            self.payload = command_signing.sign(cmd, server).encode()

    lock = SimulatedLock(config, nonce_file=nonces)
    lock._on_message(recorded, None, Message(command))  # type: ignore[arg-type]
    rebooted = SimulatedLock(config, nonce_file=nonces)  # the spent nonces and their ids read back
    for each in (lock, rebooted):
        each._on_message(recorded, None, Message(command))  # type: ignore[arg-type]
        each._on_message(recorded, None, Message(other))  # type: ignore[arg-type]
    acks = [json.loads(p)["id"] for t, p in recorded.published if t == topics.acks("lk-test")]
    assert acks == [command.id] * 3 and [c.id for c in lock.executed] == [command.id] and not rebooted.executed
    assert [reason for reason, _ in rebooted.refused] == ["replayed", "replayed"]


def test_the_last_commands_nonce_outlives_its_expiry_for_a_clock_stepped_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Attack runs 69 and 70: the lock forgot a nonce once its command expired; a time sync stepping its clock back
    then made the command valid again, and its replay was carried out (step 7 allows an equal ``issued_at``); a
    5-minute margin did not stop a step of 10. The nonces of the last second carried out are kept for good, across
    a reboot too, and go once a newer command is carried out (older ones are refused as ``superseded``)."""
    server = Ed25519PrivateKey.generate()
    config, recorded = recorded_lock(monkeypatch, server)
    nonces = tmp_path / "nonces.json"
    start = float(int(time.time()))

    def message(action: str, nonce: str, issued: float) -> Any:
        command = command_signing.Command(
            str(uuid.uuid4()), config.lock_id, action, nonce * 24, int(issued), int(issued) + 30
        )

        class Message:
            payload = command_signing.sign(command, server).encode()

        return Message()

    def hear(lock: SimulatedLock, heard: Any) -> None:
        lock._on_message(recorded, None, heard)  # type: ignore[arg-type]

    unlock = message("unlock", "n", start)
    lock = SimulatedLock(config, nonce_file=nonces)
    hear(lock, unlock)
    monkeypatch.setattr(time, "time", lambda: start + 3600)  # an hour on, the lock reboots
    rebooted = SimulatedLock(config, nonce_file=nonces)
    monkeypatch.setattr(time, "time", lambda: start + 5)  # and a time sync steps its clock back an hour
    hear(rebooted, unlock)
    assert rebooted.executed == [] and [reason for reason, _ in rebooted.refused] == ["replayed"]
    hear(rebooted, message("lock", "m", start + 10))  # a newer command carried out
    monkeypatch.setattr(time, "time", lambda: start + 3600)
    hear(rebooted, message("unlock", "k", start + 3590))  # saves the nonces kept
    kept = json.loads(nonces.read_text())
    assert "n" * 24 not in kept and "m" * 24 not in kept and "k" * 24 in kept
    monkeypatch.setattr(time, "time", lambda: start + 5)
    again = SimulatedLock(config, nonce_file=nonces)
    hear(again, unlock)
    assert again.executed == [] and [reason for reason, _ in again.refused] == ["superseded"]


def test_a_nonce_stored_without_its_time_is_kept_while_it_may_be_the_last_seconds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Attack run 71: a nonce file of the version before (``[expires_at, id]``) loaded with no ``issued_at`` and was
    kept only until its command expired, so the clock stepped back let the last command through again on a lock
    upgraded after it. An entry without its time is kept while its expiry is not before the last ``issued_at``."""
    server = Ed25519PrivateKey.generate()
    config, recorded = recorded_lock(monkeypatch, server)
    nonces = tmp_path / "nonces.json"
    start = float(int(time.time()))
    command = command_signing.Command(
        str(uuid.uuid4()), config.lock_id, "unlock", "o" * 24, int(start), int(start) + 30
    )
    nonces.write_text(json.dumps({command.nonce: [command.expires_at, command.id]}))  # the old format
    nonces.with_name(nonces.name + ".issued_at").write_text(str(command.issued_at))

    class Message:
        payload = command_signing.sign(command, server).encode()

    monkeypatch.setattr(time, "time", lambda: start + 100)  # upgraded, booted after the command expired
    upgraded = SimulatedLock(config, nonce_file=nonces)
    monkeypatch.setattr(time, "time", lambda: start + 5)  # a time sync steps the clock back
    upgraded._on_message(recorded, None, Message())  # type: ignore[arg-type]
    assert upgraded.executed == [] and [reason for reason, _ in upgraded.refused] == ["replayed"]
