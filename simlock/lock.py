"""The simulated lock: pairing, one MQTT-over-TLS session with its own credentials, signed commands, acks, state.

It behaves as the ESP32 firmware does: it generates its own Ed25519 key and redeems the owner's one-time pairing
code for its broker account; it subscribes to its command topic in ``on_connect`` (so the subscription survives
reconnects), announces ``online`` (retained) with ``offline`` as its last will, checks each command's server
signature, target lock, expiry and nonce (refusing forged, expired and replayed ones), acts, acknowledges and
publishes its new state. ``drop_acks``, ``delay_s`` and ``go_offline`` let tests misbehave on purpose.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from lockwise import command_signing, lock_auth, topics

log = logging.getLogger("simlock")


@dataclass
class LockConfig:
    lock_id: str  # also the broker username
    password: str
    host: str
    port: int
    ca_file: str
    server_public_key: str | None = None  # without it, commands cannot be checked and are all refused
    signing_key_b64: str | None = None  # the lock's own Ed25519 seed (for signed HTTP requests)
    firmware: str = "sim-1.0.0"
    keepalive_s: int = 15

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)

    @classmethod
    def load(cls, path: Path) -> LockConfig:
        return cls(**json.loads(path.read_text()))

    def signing_key(self) -> Ed25519PrivateKey:
        if not self.signing_key_b64:
            raise ValueError("this lock has no signing key (it was not provisioned)")
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(self.signing_key_b64))


def provision(devices_url: str, code: str, ca_file: str, *, host: str | None = None) -> LockConfig:
    """Redeem a pairing code as a new lock would: generate a key, send its public half, keep what comes back."""
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    body = json.dumps({"code": code, "public_key": public}).encode()
    req = urllib.request.Request(
        f"{devices_url}/devices/provision", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        creds: dict[str, Any] = json.loads(resp.read())
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return LockConfig(
        lock_id=creds["mqtt"]["username"],
        password=creds["mqtt"]["password"],
        host=host or creds["mqtt"]["host"],
        port=int(creds["mqtt"]["port"]),
        ca_file=ca_file,
        server_public_key=creds["server_public_key"],
        signing_key_b64=base64.b64encode(seed).decode(),
    )


@dataclass
class SimulatedLock:
    config: LockConfig
    state: str = "locked"
    battery_pct: int = 87
    drop_acks: bool = False
    delay_s: float = 0.0
    executed: list[command_signing.Command] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (reason, raw payload)
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        cfg = self.config
        self._seen_nonces: set[str] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"lock-{cfg.lock_id}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(cfg.lock_id, cfg.password)
        self.client.tls_set(ca_certs=cfg.ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.will_set(topics.status(cfg.lock_id), "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.connect_result: ReasonCode | None = None

    # ----------------------------------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> None:
        """Connect and wait until subscribed; raises ``ConnectionError`` when the broker refuses us."""
        self.client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.client.loop_stop()
            raise ConnectionError(f"lock {self.config.lock_id} not connected: {self.connect_result}")

    def stop(self, *, graceful: bool = True) -> None:
        if graceful and self.connected.is_set():
            self.client.publish(topics.status(self.config.lock_id), "offline", qos=1, retain=True).wait_for_publish(5)
            self.client.disconnect()
        self.client.loop_stop()

    def go_offline(self) -> None:
        """Drop the connection without a goodbye (the broker then publishes the last will)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.connected.clear()
        self.subscribed.clear()

    def come_back(self, timeout: float = 10.0) -> None:
        self.client.reconnect()
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise ConnectionError(f"lock {self.config.lock_id} could not reconnect: {self.connect_result}")

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _props: Any) -> None:
        self.connect_result = rc
        if rc.is_failure:  # paho keeps retrying with backoff, as the firmware does
            log.warning("lock %s: connection refused: %s", self.config.lock_id, rc)
            return
        self.connected.set()
        client.subscribe(topics.commands(self.config.lock_id), qos=1)
        client.publish(topics.status(self.config.lock_id), "online", qos=1, retain=True)
        self.publish_state()

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        if all(not rc.is_failure for rc in rcs):
            self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _p: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        log.info("lock %s disconnected: %s", self.config.lock_id, rc)

    # ------------------------------------------------------------------------------------------------ behaviour

    def publish_state(self) -> mqtt.MQTTMessageInfo:
        payload = {
            "state": self.state,
            "battery_pct": self.battery_pct,
            "firmware": self.config.firmware,
            "ts": round(time.time(), 3),  # seconds, millisecond precision
        }
        return self.client.publish(topics.state(self.config.lock_id), json.dumps(payload), qos=1)

    def check(self, payload: bytes) -> command_signing.Command:
        """Refuse what the firmware must refuse; raises ``BadCommand`` with the reason."""
        if not self.config.server_public_key:
            raise command_signing.BadCommand("no_server_key")
        command = command_signing.verify(payload, self.config.server_public_key)
        if command.lock != self.config.lock_id:
            raise command_signing.BadCommand("wrong_lock")
        if command.expires_at <= time.time():
            raise command_signing.BadCommand("expired")
        with self._lock:
            if command.nonce in self._seen_nonces:
                raise command_signing.BadCommand("replayed")
            self._seen_nonces.add(command.nonce)
        return command

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            command = self.check(bytes(msg.payload))
        except command_signing.BadCommand as exc:
            log.warning("lock %s refused a command: %s", self.config.lock_id, exc.reason)
            self.refused.append((exc.reason, bytes(msg.payload).decode(errors="replace")))
            if exc.reason == "replayed":
                self._ack_again(bytes(msg.payload))
            return
        self.executed.append(command)
        if command.action in ("unlock", "open"):
            self.state = "unlocked"
        elif command.action == "lock":
            self.state = "locked"
        self._ack(command)
        self.publish_state()

    def _ack(self, command: command_signing.Command) -> None:
        if not self.drop_acks:
            ack = {"id": command.id, "nonce": command.nonce, "result": "ok"}
            self.client.publish(topics.acks(self.config.lock_id), json.dumps(ack), qos=1)

    def _ack_again(self, payload: bytes) -> None:
        """A repeat of a command already executed (its ack was lost): acknowledge again, never act again."""
        if not self.config.server_public_key:
            return
        repeat = command_signing.verify(payload, self.config.server_public_key)
        if any(c.id == repeat.id and c.nonce == repeat.nonce for c in self.executed):
            self._ack(repeat)

    # --------------------------------------------------------------------------------------------- HTTP side

    def signed_request(self, base_url: str, method: str, path: str, body: bytes = b"", **headers: str) -> Any:
        """Send an HTTP request signed with this lock's key; returns ``(status, parsed JSON body)``."""
        signed = lock_auth.sign_headers(self.config.signing_key(), self.config.lock_id, method, path, body)
        req = urllib.request.Request(
            f"{base_url}{path}", data=body or None, method=method, headers={**signed, **headers}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
