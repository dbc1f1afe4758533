"""The simulated lock: pairing, one MQTT-over-TLS session with its own certificate, signed commands, acks, state.

It behaves as the ESP32 firmware does (docs/FIRMWARE.md): it generates its own Ed25519 key (to sign its HTTP
requests) and EC P-256 key (its TLS identity, never sent anywhere), redeems the owner's one-time pairing code with the
public half of the first and a CSR for the second, and gets back its broker identity and a client certificate; it
renews the certificate before it expires with a signed request. It subscribes to its command topic in
``on_connect`` (so the subscription survives
reconnects), announces ``online`` (retained) with ``offline`` as its last will, checks each command's server
signature, target lock, expiry and nonce (refusing forged, expired and replayed ones), acts, acknowledges and
publishes its new state. It keeps each state report and ack until the relay's receipt names it, sending it again
while none comes (``publish_kept``). ``drop_acks``, ``delay_s`` and ``go_offline`` let tests misbehave on purpose.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import ssl
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from infra.local.private_files import write_private
from lockwise.devices import command_signing, lock_auth, receipts, topics
from mqtt_relay.sessions import no_delay
from simlock import http_out
from simlock.unconfirmed import Unconfirmed

log = logging.getLogger("simlock")


@dataclass
class LockConfig:
    lock_id: str
    identity: str  # the broker identity: its certificate's common name, MQTT username and client id
    cert_pem: str  # the client certificate (signed by the lock CA) ...
    key_pem: str  # ... and its EC P-256 key, which never leaves the lock
    host: str
    port: int
    ca_file: str  # the CA of the broker's server certificate
    server_public_key: str | None = None  # without it, commands cannot be checked and are all refused
    signing_key_b64: str | None = None  # the lock's own Ed25519 seed (for signed HTTP requests)
    firmware: str = "sim-1.0.0"
    keepalive_s: int = 15

    def save(self, path: Path) -> None:
        """Its keys are in it: its user's only from the first byte (written, then made 0600, it was readable for an
        instant, and an existing file's mode was kept until then: attack run 57)."""
        write_private(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> LockConfig:
        return cls(**json.loads(path.read_text()))

    def tls_files(self, directory: Path) -> tuple[str, str]:
        """The certificate and key as files (what the TLS library loads), written into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert, key = directory / "client.crt", directory / "client.key"
        cert.write_text(self.cert_pem)
        write_private(key, self.key_pem)  # a file there kept its mode (``touch`` sets none on an existing one)
        return str(cert), str(key)

    def signing_key(self) -> Ed25519PrivateKey:
        if not self.signing_key_b64:
            raise ValueError("this lock has no signing key (it was not provisioned)")
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(self.signing_key_b64))


def new_tls_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The lock's TLS key and a CSR for it (PEM); the subject is ignored by the server."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lockwise-lock")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(Encoding.PEM).decode()


def pem_of(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def provision(devices_url: str, code: str, ca_file: str, *, host: str | None = None) -> LockConfig:
    """Redeem a pairing code as a new lock would: generate both keys, send the public halves, keep the answer."""
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    tls_key, csr = new_tls_key()
    body = json.dumps({"code": code, "public_key": public, "csr": csr}).encode()
    req = urllib.request.Request(
        f"{devices_url}/devices/provision", data=body, headers={"Content-Type": "application/json"}
    )
    with http_out.open_url(req, timeout=10) as resp:
        creds: dict[str, Any] = json.loads(resp.read())
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    mqtt_ = creds["mqtt"]
    if mqtt_.get("tls") is not True:  # the lock connects over TLS whatever an answer says (docs/FIRMWARE.md)
        raise ValueError(f"the pairing answer says tls {mqtt_.get('tls')!r}: a lock connects over TLS only")
    return LockConfig(
        lock_id=creds["lock_id"],
        identity=mqtt_["client_id"],
        cert_pem=mqtt_["certificate"],
        key_pem=pem_of(tls_key),
        host=host or mqtt_["host"],
        port=int(mqtt_["port"]),
        ca_file=ca_file,
        server_public_key=creds["server_public_key"],
        signing_key_b64=base64.b64encode(seed).decode(),
    )


#: reconnecting: 1 s, doubling to 30 s while connections end with nothing of the lock's acknowledged, each wait
#: drawn between half and all of it (docs/FIRMWARE.md, "Connecting"; paho's own backoff starts again at every CONNACK,
#: and the broker turns a lock away right after it while no relay is connected)
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 30.0


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
    #: where used command nonces survive a restart (the firmware's NVS); None: memory only
    nonce_file: Path | None = None
    #: the longest wait before reconnecting (``BACKOFF_MAX_S``; a test may want a lock quick to return)
    backoff_max_s: float = BACKOFF_MAX_S

    def __post_init__(self) -> None:
        # the newest command acted on: an older one arriving later must not undo it (kept with the nonces)
        self._last_issued_at = self._load_last_issued_at()
        #: nonce -> the command's expires_at, id (its repeat is acknowledged only with the same id) and issued_at
        self._seen_nonces: dict[str, tuple[int, str, int]] = self._load_nonces()
        self._lock = threading.Lock()
        #: grants acted on while the broker was out of reach: acknowledged as the next connection is made (an ack is
        #: recorded up to a day late; the app otherwise reads ``expired`` for a door that opened)
        self._unacked: list[command_signing.Command] = []
        self._files = Path(tempfile.mkdtemp(prefix="simlock-"))
        self.connection_no = 0  # the current connection's number (docs/FIRMWARE.md, "Online and offline")
        self.client = self._new_client()
        self.connect_result: ReasonCode | None = None
        self.backoff_s = BACKOFF_MIN_S  # the next reconnect's wait, at most (before its jitter)
        self._acked = False  # whether a message of this connection was acknowledged (its PUBACK)
        #: state reports and acks no receipt has named yet (a test may shorten its ``wait_s``), and the timer that
        #: sends them again
        self.unconfirmed = Unconfirmed()
        self._resend_timer: threading.Timer | None = None
        self._resend_at = 0.0
        self._stopped = False

    def _new_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.identity,  # the broker forces it to the certificate's identity anyway
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        certfile, keyfile = cfg.tls_files(self._files)
        client.tls_set(ca_certs=cfg.ca_file, certfile=certfile, keyfile=keyfile, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._next_connection(client)
        client.reconnect_delay_set(min_delay=1, max_delay=1)  # drawn again at every disconnect (_on_disconnect)
        client.on_socket_open = no_delay  # as docs/FIRMWARE.md asks of the firmware (TCP_NODELAY)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        return client

    def _next_connection(self, client: mqtt.Client) -> None:
        """Number the next connection (milliseconds since the epoch, always above the last) and set its last will
        to match: its reports read ``online <n>`` and ``offline <n>`` (docs/FIRMWARE.md, "Online and offline")."""
        self.connection_no = max(int(time.time() * 1000), self.connection_no + 1)
        client.will_set(topics.status(self.config.identity), f"offline {self.connection_no}", qos=1, retain=True)

    # ----------------------------------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> None:
        """Connect and wait until subscribed; raises ``ConnectionError`` when the broker refuses us."""
        with self._lock:
            self._stopped = False
        self.client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.client.loop_stop()
            raise ConnectionError(f"lock {self.config.lock_id} not connected: {self.connect_result}")

    def stop(self, *, graceful: bool = True) -> None:
        with self._lock:
            self._stopped = True  # nothing is sent again on the stopped client
            if self._resend_timer is not None:
                self._resend_timer.cancel()
                self._resend_timer = None
        if graceful and self.connected.is_set():
            goodbye = f"offline {self.connection_no}"
            self.client.publish(topics.status(self.config.identity), goodbye, qos=1, retain=True).wait_for_publish(5)
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
        """Reconnect (with the current certificate), as a new numbered connection."""
        with self._lock:
            self._stopped = False
        self._next_connection(self.client)
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
        client.subscribe(topics.commands(self.config.identity), qos=1)
        client.publish(topics.status(self.config.identity), f"online {self.connection_no}", qos=1, retain=True)
        with self._lock:  # what no receipt named: a broker killed after its PUBACK lost it
            self.unconfirmed.connected(time.monotonic())
            self._arm()
        self._ack_grants()
        self.publish_state()

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        if all(not rc.is_failure for rc in rcs):
            self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _p: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self._next_connection(client)  # before the reconnect: the next session's will carries its own number
        log.info("lock %s disconnected: %s", self.config.lock_id, rc)
        self._back_off(client)

    def _on_connect_fail(self, client: mqtt.Client, _ud: Any) -> None:
        self._back_off(client)  # no broker there (it is restarting): waited for like a close, doubling

    def _back_off(self, client: mqtt.Client) -> None:
        """Draw the wait before paho's next connection attempt (``BACKOFF_MIN_S`` again once a message of the last
        connection was acknowledged)."""
        if self._acked:
            self.backoff_s, self._acked = BACKOFF_MIN_S, False
        wait = random.uniform(self.backoff_s / 2, self.backoff_s)  # noqa: S311 - jitter, not a secret
        self.backoff_s = min(self.backoff_s * 2, self.backoff_max_s)  # the next one's, unless this one's are taken
        client.reconnect_delay_set(wait, wait)  # type: ignore[arg-type]  # paho waits its min_delay next

    def _on_publish(self, _c: mqtt.Client, _ud: Any, _mid: int, _rc: ReasonCode, _p: Any) -> None:
        self._acked = True  # QoS 1: the broker took a message of ours (its PUBACK), so it is not turning us away

    # ------------------------------------------------------------------------------------------------ behaviour

    def publish_state(self) -> mqtt.MQTTMessageInfo:
        payload = {
            "state": self.state,
            "battery_pct": self.battery_pct,
            "firmware": self.config.firmware,
            "ts": round(time.time(), 3),  # seconds, millisecond precision
            "connection": self.connection_no,  # a report that comes after this connection's goodbye changes no status
        }
        return self.publish_kept(topics.state(self.config.identity), json.dumps(payload))

    def publish_kept(self, topic: str, payload: str) -> mqtt.MQTTMessageInfo:
        """Publish a state report or an ack, QoS 1, and keep it until a receipt names it: a broker killed before it
        saved the message loses it after its PUBACK (docs/FIRMWARE.md, "Receipts"; ``simlock.unconfirmed``)."""
        raw = payload.encode()
        with self._lock:
            self.unconfirmed.sent(topic, raw, time.monotonic())
        return self.client.publish(topic, raw, qos=1)

    def wait_confirmed(self, timeout_s: float) -> bool:
        """Wait until a receipt has named every kept message (before a deliberate disconnect: docs/FIRMWARE.md,
        "Receipts"); whether it did within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self.unconfirmed.kept:
                    return True
            time.sleep(0.02)
        return False

    def _arm(self) -> None:
        """Time the next sending again, if one may be due (the caller holds ``_lock``)."""
        due = self.unconfirmed.next_due()
        if due is None or self._stopped:
            return
        timer = self._resend_timer
        if timer is not None and timer.is_alive():
            if self._resend_at <= due:
                return  # it comes first anyway
            timer.cancel()
        self._resend_at = due
        self._resend_timer = threading.Timer(max(0.0, due - time.monotonic()), self._send_again)
        self._resend_timer.daemon = True
        self._resend_timer.start()

    def _send_again(self) -> None:
        """Send again what is due, while connected (not connected: the next connection times it again)."""
        with self._lock:
            if self._resend_timer is not threading.current_thread():
                return  # replaced by a sooner one, or the lock stopped
            self._resend_timer = None
            if self._stopped or not self.connected.is_set():
                return
            again = self.unconfirmed.due(time.monotonic())
            self._arm()
        for kept in again:
            self.client.publish(kept.topic, kept.payload, qos=1)

    def _receipt(self, names: list[str]) -> None:
        with self._lock:
            self.unconfirmed.named(names)
            self._arm()  # a later message named: an earlier one still kept went astray

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
            if command.issued_at < self._last_issued_at:
                raise command_signing.BadCommand("superseded")
            self._last_issued_at = command.issued_at
            self._seen_nonces[command.nonce] = (command.expires_at, command.id, command.issued_at)
            self._save_nonces()
        return command

    def _load_nonces(self) -> dict[str, tuple[int, str, int]]:
        """The nonces of commands acted on that are still kept (``_kept``), with their command ids and times: a
        command whose nonce is here is a replay, also after a restart. A file written before the ids were kept names
        none (its repeats are refused, not acknowledged), one written before the times were, no time."""
        if self.nonce_file is None or not self.nonce_file.exists():
            return {}
        stored: dict[str, int | list[Any]] = json.loads(self.nonce_file.read_text())
        spent = {
            n: (v, "", 0) if isinstance(v, int) else (int(v[0]), str(v[1]), int(v[2]) if len(v) > 2 else 0)
            for n, v in stored.items()
        }
        return {nonce: entry for nonce, entry in spent.items() if self._kept(entry, time.time())}

    def _kept(self, entry: tuple[int, str, int], now: float) -> bool:
        """Whether a spent nonce is still kept (docs/FIRMWARE.md): until its command expires, and for good while its
        command is of the last second carried out, which step 7 lets through: a clock stepped back by a time sync
        made it valid again, and a nonce forgotten at its expiry let it be carried out twice (attack runs 69, 70)."""
        expires, _id, issued_at = entry
        if issued_at == 0:  # stored before the times were: of the last second, as far as is known, unless it expired
            issued_at = expires  # before that second (a command's issued_at is never after its expiry: attack run 71)
        return expires > now or issued_at >= self._last_issued_at

    def _issued_file(self) -> Path | None:
        return None if self.nonce_file is None else self.nonce_file.with_name(self.nonce_file.name + ".issued_at")

    def _load_last_issued_at(self) -> int:
        found = self._issued_file()
        return int(found.read_text()) if found is not None and found.exists() else 0

    def _save_nonces(self) -> None:
        if self.nonce_file is None:
            return
        issued = self._issued_file()
        if issued is not None:
            partial = issued.with_name(issued.name + ".tmp")
            partial.write_text(str(self._last_issued_at))
            partial.replace(issued)
        now = time.time()
        live = {nonce: list(entry) for nonce, entry in self._seen_nonces.items() if self._kept(entry, now)}
        tmp = self.nonce_file.with_name(self.nonce_file.name + ".tmp")
        tmp.write_text(json.dumps(live))
        tmp.replace(self.nonce_file)  # written before the lock acts: a crash never forgets an executed command

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        names = receipts.read(bytes(msg.payload))
        if names is not None:  # a receipt: what the back-end holds is no longer kept (never a command)
            self._receipt(names)
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            command = self.check(bytes(msg.payload))
        except command_signing.BadCommand as exc:
            self.refused.append((exc.reason, bytes(msg.payload).decode(errors="replace")))
            if exc.reason == "replayed":  # a repeat (an ack was lost, or the grant came first): ack, never act
                log.info("lock %s got a command again: acknowledging, not acting", self.config.lock_id)
                self._ack_again(bytes(msg.payload))
            else:
                log.warning("lock %s refused a command: %s", self.config.lock_id, exc.reason)
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
            self.publish_kept(topics.acks(self.config.identity), json.dumps(ack))

    def _ack_again(self, payload: bytes) -> None:
        """A repeat of a command already executed (its ack was lost): acknowledge again, never act again."""
        if not self.config.server_public_key:
            return
        repeat = command_signing.verify(payload, self.config.server_public_key)
        with self._lock:
            spent = self._seen_nonces.get(repeat.nonce)
        if spent is not None and spent[1] == repeat.id:  # acted on (before a restart too: the nonces are persisted)
            self._ack(repeat)

    # --------------------------------------------------------------------------------------------- HTTP side

    def signed_request(
        self, base_url: str, method: str, path: str, body: bytes = b"", *, content_type: str = "", sample_rate: str = ""
    ) -> Any:
        """Send an HTTP request signed with this lock's key (content type and sample rate signed with it, as
        docs/FIRMWARE.md says); returns ``(status, parsed JSON body)``."""
        signed = lock_auth.sign_headers(
            self.config.signing_key(),
            self.config.lock_id,
            method,
            path,
            body,
            content_type=content_type or ("application/octet-stream" if body else ""),
            sample_rate=sample_rate,
        )
        req = urllib.request.Request(f"{base_url}{path}", data=body or None, method=method, headers=signed)
        return http_out.send(req, timeout=30)  # no redirect followed with the signed headers

    def hear(self, verify_url: str, wav: bytes, again: bytes | None = None) -> dict[str, Any]:
        """What a lock does at the door: send the clip it recorded (WAV) to verify, signed; on ``say_again`` send
        ``again`` (the person speaking a second time) as the follow-up; on ``accepted`` check the grant as any
        command and act on it (unlock, ack, report state). Returns the final answer, with ``status`` and whether the
        grant was acted on here (``acted_on_grant``; False when the same command came over MQTT first)."""
        status, answer = self.signed_request(verify_url, "POST", "/verify", wav, content_type="audio/wav")
        if status == 200 and answer.get("reason") == "say_again" and again is not None:
            log.info("lock %s: say that again, please", self.config.lock_id)
            target = f"/verify?follow_up={answer['attempt_id']}"
            status, answer = self.signed_request(verify_url, "POST", target, again, content_type="audio/wav")
        result: dict[str, Any] = {
            "status": status,
            "acted_on_grant": False,
            **(answer if isinstance(answer, dict) else {}),
        }
        if status == 200 and answer.get("decision") == "accepted":
            try:
                command = self.check(answer["grant"].encode())  # BadCommand if the grant is not good: never act
            except command_signing.BadCommand as exc:
                if exc.reason != "replayed":
                    raise
                return result  # the same command came over MQTT first and was acted on then: not twice
            self.executed.append(command)
            self.state = "unlocked"
            result["acted_on_grant"] = True
            with self._lock:
                self._unacked.append(command)
            if self.connected.is_set():
                self._ack_grants()
                self.publish_state()
        return result

    def _ack_grants(self) -> None:
        """Acknowledge the grants acted on and not yet acknowledged (each once)."""
        with self._lock:
            unacked, self._unacked = self._unacked, []
        for command in unacked:
            self._ack(command)

    def renew_certificate(self, devices_url: str) -> dict[str, Any]:
        """Renew the broker certificate with a new TLS key (before it expires, as the firmware does at
        ``renew_after``); the next connection uses it. Raises ``PermissionError`` when the server refuses."""
        tls_key, csr = new_tls_key()
        status, answer = self.signed_request(
            devices_url, "POST", "/devices/lock/certificate", json.dumps({"csr": csr}).encode(),
            content_type="application/json",
        )  # fmt: skip
        if status != 201:
            raise PermissionError(f"certificate renewal refused: {status} {answer}")
        self.config.cert_pem, self.config.key_pem = answer["certificate"], pem_of(tls_key)
        was_connected = self.connected.is_set()
        if was_connected:  # the firmware reconnects with its new certificate; the session (same identity) resumes
            self.client.disconnect()
            self.client.loop_stop()
        self.client = self._new_client()
        if was_connected:
            self.start()
        result: dict[str, Any] = answer
        return result
