"""The simulated lock: one MQTT-over-TLS session with its own credentials, as the ESP32 firmware holds it.

It subscribes to its command topic in ``on_connect`` (so the subscription survives reconnects), announces itself
``online`` (retained) with ``offline`` as its last will, publishes its state, and acts on the commands it receives.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from lockwise import topics

log = logging.getLogger("simlock")


@dataclass
class LockConfig:
    lock_id: str  # also the broker username
    password: str
    host: str
    port: int
    ca_file: str
    firmware: str = "sim-1.0.0"
    keepalive_s: int = 15


@dataclass
class SimulatedLock:
    config: LockConfig
    state: str = "locked"
    battery_pct: int = 87
    received: list[dict[str, Any]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        cfg = self.config
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"lock-{cfg.lock_id}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(cfg.lock_id, cfg.password)
        self.client.tls_set(ca_certs=cfg.ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.will_set(topics.status(cfg.lock_id), "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
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
        if graceful:
            self.client.publish(topics.status(self.config.lock_id), "offline", qos=1, retain=True).wait_for_publish(5)
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _props: Any) -> None:
        self.connect_result = rc
        if rc.is_failure:
            log.warning("lock %s: connection refused: %s", self.config.lock_id, rc)
            client.disconnect()
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
            "ts": int(time.time()),
        }
        return self.client.publish(topics.state(self.config.lock_id), json.dumps(payload), qos=1)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            command = json.loads(msg.payload)
        except ValueError:
            log.warning("lock %s: unreadable command on %s", self.config.lock_id, msg.topic)
            return
        if not isinstance(command, dict):
            return
        self.received.append(command)
        action = command.get("action")
        if action in ("lock", "unlock"):
            self.state = "locked" if action == "lock" else "unlocked"
            self.publish_state()
