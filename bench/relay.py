"""Command round trip and event throughput through the relay, against a plain MQTT path in the same run.

``./dev bench relay [--commands N] [--events N]`` starts a throwaway local stack, pairs a simulated lock and prints:

* app ``POST /commands`` -> lock receipt, and -> ack recorded in PostgreSQL (p50/p95/p99), next to a plain MQTT
  round trip (publish to the lock topic -> lock receipt -> ack received by the publisher) on the same broker;
* lock events forwarded per second through the relay into PostgreSQL, next to a plain MQTT subscriber.
"""

from __future__ import annotations

import argparse
import json
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import local_stack, machine, out, slot_files, summary, table
from infra.deploy_config import RELAY_SLOTS
from lockwise import topics
from lockwise.db import Database
from simlock.lock import SimulatedLock, provision


def sign_up(auth_host: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signUp?key=bench",
        data=json.dumps(
            {"email": f"bench{time.time_ns()}@example.com", "password": "bench-123456", "returnSecureToken": True}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


class TimedLock(SimulatedLock):
    """A simulated lock that notes when each command arrived."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.arrived: dict[str, float] = {}
        inner = self.client.on_message

        def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                cmd_id = json.loads(json.loads(msg.payload)["cmd"])["id"]
                self.arrived.setdefault(cmd_id, time.perf_counter())
            except (ValueError, KeyError, TypeError):
                pass
            if inner is not None:
                inner(c, u, msg)

        self.client.on_message = on_message


def relay_peer(env: dict[str, str], secrets_path: Path) -> mqtt.Client:
    """A plain MQTT client with a relay's rights: the last relay slot's certificate, which the stack's relay does not
    lease (``secrets_path`` is the stack's state folder's secrets file; the certificates sit beside it)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"lockwise-relay-{RELAY_SLOTS}")
    certfile, keyfile = slot_files(secrets_path.parent / "broker" / "identity" / "relay-certs.json", RELAY_SLOTS)
    client.tls_set(
        ca_certs=env["MQTT_CA_FILE"], certfile=certfile, keyfile=keyfile, tls_version=ssl.PROTOCOL_TLS_CLIENT
    )
    client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]))
    client.loop_start()
    return client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args(argv)
    with local_stack() as env:
        state_dir = Path(env["MQTT_CA_FILE"]).parents[2]
        db = Database(env["DATABASE_URL"])
        account = sign_up(env["FIREBASE_AUTH_EMULATOR_HOST"])
        headers = {"Authorization": f"Bearer {account['idToken']}"}
        devices = env["LOCKWISE_DEVICES_URL"]
        created = requests.post(f"{devices}/devices/locks", json={"name": "Bench"}, headers=headers, timeout=10).json()
        config = provision(devices, created["provisioning"]["code"], env["MQTT_CA_FILE"], host="127.0.0.1")
        lock_id = created["lock"]["id"]
        lock = TimedLock(config)
        deadline = time.monotonic() + 20
        while True:  # the broker account sidecar needs a moment to write the new account
            try:
                lock.start(timeout=3)
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
        session = requests.Session()
        receipt, acked = [], []
        listener = db.connect()
        for i in range(args.commands):
            t0 = time.perf_counter()
            wall0 = time.time()
            resp = session.post(
                f"{devices}/devices/locks/{lock_id}/commands",
                json={"action": "unlock" if i % 2 else "lock"},
                headers=headers,
                timeout=10,
            )
            command_id = resp.json()["command"]["id"]
            while True:
                row = listener.run(
                    "SELECT EXTRACT(EPOCH FROM acked_at) FROM commands WHERE id = CAST(:i AS uuid)", i=command_id
                )
                if row and row[0][0] is not None:
                    acked.append((float(row[0][0]) - wall0) * 1000)
                    break
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"command {command_id} not acked in 10 s")
                time.sleep(0.002)
            receipt.append((lock.arrived[command_id] - t0) * 1000)

        # plain path: publish straight to the lock's topic and wait for its ack on the same broker
        plain = relay_peer(env, state_dir / "secrets.json")
        got_ack = threading.Event()
        plain.on_message = lambda _c, _u, _m: got_ack.set()
        plain.subscribe(topics.acks(lock_id), qos=1)
        time.sleep(0.5)
        plain_rt = []
        with db.connection() as con:
            payloads = [r[0] for r in con.run("SELECT payload FROM commands ORDER BY created_at DESC LIMIT 1")]
        # the lock refuses a repeated nonce but still acknowledges it: a fair echo of the same work on the lock
        for _ in range(args.commands):
            got_ack.clear()
            t0 = time.perf_counter()
            plain.publish(topics.commands(lock_id), payloads[0], qos=1)
            if not got_ack.wait(5):
                raise RuntimeError("plain MQTT round trip timed out")
            plain_rt.append((time.perf_counter() - t0) * 1000)
        plain.unsubscribe(topics.acks(lock_id))

        # events: the lock floods state reports; the relay forwards them into PostgreSQL
        relay_url = env["LOCKWISE_RELAY_HEALTH_URL"]
        before = requests.get(relay_url, timeout=5).json()["checks"]["forwarder"]["forwarded"]
        counted = {"n": 0}
        done = threading.Event()

        def count(_c: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
            counted["n"] += 1
            if counted["n"] >= args.events:
                done.set()

        plain.on_message = count
        plain.subscribe(topics.state(lock_id), qos=1)
        time.sleep(0.5)
        t0 = time.perf_counter()
        for _ in range(args.events):
            lock.publish_state()
        done.wait(120)
        plain_rate = args.events / (time.perf_counter() - t0)
        while requests.get(relay_url, timeout=5).json()["checks"]["forwarder"]["forwarded"] - before < args.events:
            if time.perf_counter() - t0 > 300:
                raise RuntimeError("relay did not forward every event in 300 s")
            time.sleep(0.05)
        relay_rate = args.events / (time.perf_counter() - t0)
        lock.stop()
        plain.loop_stop()
        listener.close()
        db.close()

    r, a, p = summary(receipt), summary(acked), summary(plain_rt)
    out(f"\nmachine: {machine()}\n")
    out(
        table(
            f"Command round trip, {args.commands} commands (ms)",
            ["path", "p50", "p95", "p99", "p50 ratio to plain MQTT"],
            [
                ["app POST -> lock receipt (relay)", r["p50"], r["p95"], r["p99"], f"{r['p50'] / p['p50']:.1f}x"],
                ["app POST -> ack recorded (relay)", a["p50"], a["p95"], a["p99"], f"{a['p50'] / p['p50']:.1f}x"],
                ["plain MQTT publish -> lock -> ack", p["p50"], p["p95"], p["p99"], "1.0x"],
            ],
        )
    )
    out(
        table(
            f"Lock events, {args.events} state reports (QoS 1)",
            ["path", "events/s", "ratio"],
            [
                ["relay -> devices function -> PostgreSQL", relay_rate, f"{relay_rate / plain_rate:.2f}x"],
                ["plain MQTT subscriber", plain_rate, "1.00x"],
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
