"""Command round trip and event throughput through the relay, against a plain MQTT path in the same run.

``./dev bench relay [--commands N] [--events N]`` starts a throwaway local stack, pairs a simulated lock and prints:

* app ``POST /commands`` -> arrival at the lock, and -> ack recorded in PostgreSQL (p50/p95/p99), next to a plain MQTT
  round trip (publish to the lock topic -> arrival at the lock -> ack received by the publisher) on the same broker;
* lock state reports from ``--locks`` locks at once, per second through the relay into PostgreSQL and the Firestore
  mirror (timed until the last is applied and mirrored), next to a plain MQTT subscriber on the same broker; then
  counts the state entries in the locks' Firestore feeds: each report listed once (a report that reached the
  devices function after a newer one is listed as late), none lost or doubled.
"""

from __future__ import annotations

import argparse
import json
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
from google.cloud.firestore_v1.base_query import FieldFilter
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import BENCH_FUNCTION_SETTINGS, local_stack, machine, out, slot_files, summary, table
from infra.deploy_config import RELAY_SLOTS
from infra.local.firestore_sdk import sdk_client as firestore_client
from lockwise.core.db import Database
from lockwise.devices import topics
from mqtt_relay.sessions import no_delay
from mqtt_relay.slots import Lease
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
    client.on_socket_open = no_delay  # as the relay and the locks do
    client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]))
    client.loop_start()
    return client


@dataclass
class RelayResult:
    arrival: dict[str, float]
    acked: dict[str, float]
    plain_rt: dict[str, float]
    relay_rate: float
    plain_rate: float
    events: int
    locks: int
    applied: int  # state entries in the Firestore activity feeds: each event listed once, none lost or doubled
    stale: int  # reports listed late (they came after a newer one of the same lock), or repeats
    rejected: int


def paired_locks(env: dict[str, str], headers: dict[str, str], n: int) -> list[tuple[str, TimedLock]]:
    """``n`` locks paired through the API, each connected to the broker with its own certificate."""
    devices = env["LOCKWISE_DEVICES_URL"]
    locks = []
    for i in range(n):
        created = requests.post(f"{devices}/devices/locks", json={"name": f"Bench {i}"}, headers=headers, timeout=10)
        body = created.json()
        config = provision(devices, body["provisioning"]["code"], env["MQTT_CA_FILE"], host="127.0.0.1")
        lock = TimedLock(config)
        deadline = time.monotonic() + 20
        while True:  # the broker account sidecar needs a moment to write the new account
            try:
                lock.start(timeout=3)
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
        locks.append((body["lock"]["id"], lock))
    return locks


def state_entries(env: dict[str, str], locks: list[tuple[str, TimedLock]]) -> int:
    """How many state entries the locks' Firestore activity feeds hold."""
    feed = firestore_client(env["LOCKWISE_PROJECT_ID"], env["FIRESTORE_EMULATOR_HOST"])
    kind_state = FieldFilter("kind", "==", "state")
    return sum(
        1 for lid, _ in locks for _doc in feed.collection(f"locks/{lid}/activity").where(filter=kind_state).stream()
    )


def wait_until(predicate: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.05)


def measure(env: dict[str, str], commands: int, events: int, n_locks: int) -> RelayResult:
    """Command round trips, then ``events`` state reports from ``n_locks`` locks at once, on a running stack."""
    db = Database(env["DATABASE_URL"])
    try:
        with Lease(db, RELAY_SLOTS).borrow_when_free(RELAY_SLOTS, 20):  # the plain client's: no relay borrows it
            return _measure(env, db, commands, events, n_locks)
    finally:
        db.close()


def _measure(env: dict[str, str], db: Database, commands: int, events: int, n_locks: int) -> RelayResult:
    state_dir = Path(env["MQTT_CA_FILE"]).parents[2]
    account = sign_up(env["FIREBASE_AUTH_EMULATOR_HOST"])
    headers = {"Authorization": f"Bearer {account['idToken']}"}
    devices = env["LOCKWISE_DEVICES_URL"]
    locks = paired_locks(env, headers, n_locks)
    session = requests.Session()
    arrival, acked = [], []
    listener = db.connect()
    for i in range(commands):
        # round the locks: the app may send one lock 30 commands a minute (LOCKWISE_APP_COMMANDS_PER_MINUTE)
        lock_id, lock = locks[i % len(locks)]
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
        arrival.append((lock.arrived[command_id] - t0) * 1000)

    # plain path: publish straight to a lock's topic and wait for its ack on the same broker, round the locks as the
    # commands went (one lock acking 200 commands in a fraction of a second is over the broker's pace for a lock:
    # lockwise_acl.c, 5)
    plain = relay_peer(env, state_dir / "secrets.json")
    got_ack = threading.Event()
    awaited = [""]  # the ack topic of the lock just commanded: another lock's (a kept ack sent again) is not its

    def on_ack(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == awaited[0]:
            got_ack.set()

    plain.on_message = on_ack
    plain.subscribe(topics.acks("+"), qos=1)
    time.sleep(0.5)
    plain_rt = []
    with db.connection() as con:
        newest = con.run(
            "SELECT DISTINCT ON (lock_id) lock_id::text, payload FROM commands WHERE lock_id = ANY(CAST(:l AS uuid[]))"
            " ORDER BY lock_id, created_at DESC",
            l=[lid for lid, _ in locks],
        )
    payloads = {str(lid): payload for lid, payload in newest}
    # the lock refuses a repeated nonce but still acknowledges it: a fair echo of the same work on the lock
    for i in range(commands):
        lock_id, lock = locks[i % len(locks)]
        awaited[0] = topics.acks(lock.config.identity)
        got_ack.clear()
        t0 = time.perf_counter()
        plain.publish(topics.commands(lock.config.identity), payloads[lock_id], qos=1)
        if not got_ack.wait(5):
            raise RuntimeError("plain MQTT round trip timed out")
        plain_rt.append((time.perf_counter() - t0) * 1000)
    plain.unsubscribe(topics.acks("+"))

    # events: every lock floods state reports (distinct, increasing times); the relay forwards them into
    # PostgreSQL and the Firestore mirror; a plain subscriber on the same broker counts the same messages
    relay_url = env["LOCKWISE_RELAY_HEALTH_URL"]
    before = requests.get(relay_url, timeout=5).json()["checks"]["forwarder"]
    counted = {"n": 0}
    done = threading.Event()

    def count(_c: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
        counted["n"] += 1
        if counted["n"] >= events:
            done.set()

    plain.on_message = count
    plain.subscribe(topics.state("+"), qos=1)
    like = [f"locks/{lid}%" for lid, _ in locks]

    def settled(con: Any) -> bool:  # nothing of the phases before waits in the relay or the mirror's queue
        forwarder = requests.get(relay_url, timeout=5).json()["checks"]["forwarder"]
        queued = con.run("SELECT count(*) FROM firestore_outbox WHERE doc_path LIKE ANY(:l)", l=like)[0][0]
        return bool(forwarder["queued"] == 0 and queued == 0)

    with db.connection() as con:  # the command phase's state reports forwarded and mirrored first, then counted
        wait_until(lambda: settled(con))
        time.sleep(0.5)  # and still so a moment later (an event between the relay's queue and its post)
        wait_until(lambda: settled(con))
    entries_before = state_entries(env, locks)
    base = time.time()
    per_lock = events // n_locks
    events = per_lock * n_locks
    t0 = time.perf_counter()
    for i in range(per_lock):
        for _lock_id, each in locks:
            body = {"state": "locked" if i % 2 else "unlocked", "battery_pct": i % 101, "ts": round(base + i / 1000, 3)}
            each.client.publish(topics.state(each.config.identity), json.dumps(body), qos=1)
    done.wait(120)
    plain_rate = events / (time.perf_counter() - t0)
    with db.connection() as con:
        while True:
            forwarder = requests.get(relay_url, timeout=5).json()["checks"]["forwarder"]
            queued = con.run("SELECT count(*) FROM firestore_outbox WHERE doc_path LIKE ANY(:l)", l=like)[0][0]
            if forwarder["forwarded"] - before["forwarded"] >= events and forwarder["queued"] == 0 and queued == 0:
                break
            dropped = forwarder["dropped"] - before["dropped"]
            if dropped and forwarder["queued"] == 0 and queued == 0:  # never forwarded: waiting on is pointless
                raise RuntimeError(f"the relay dropped {dropped} of the flood's events (a lock's line full: a flood)")
            if time.perf_counter() - t0 > 300:
                raise RuntimeError("relay did not bring every event into PostgreSQL and Firestore in 300 s")
            time.sleep(0.02)
    relay_rate = events / (time.perf_counter() - t0)
    after = requests.get(relay_url, timeout=5).json()["checks"]["forwarder"]
    applied = state_entries(env, locks) - entries_before
    for _lid, each in locks:
        each.stop()
    plain.disconnect()
    plain.loop_stop()
    listener.close()
    return RelayResult(
        arrival=summary(arrival),
        acked=summary(acked),
        plain_rt=summary(plain_rt),
        relay_rate=relay_rate,
        plain_rate=plain_rate,
        events=events,
        locks=n_locks,
        applied=applied,
        stale=after["stale"] - before["stale"],
        rejected=after["rejected"] - before["rejected"],
    )


def report(result: RelayResult) -> str:
    r, a, p = result.arrival, result.acked, result.plain_rt
    return table(
        "Command round trip (ms)",
        ["path", "p50", "p95", "p99", "p50 ratio to plain MQTT"],
        [
            ["app POST -> arrival at the lock (relay)", r["p50"], r["p95"], r["p99"], f"{r['p50'] / p['p50']:.1f}x"],
            ["app POST -> ack recorded (relay)", a["p50"], a["p95"], a["p99"], f"{a['p50'] / p['p50']:.1f}x"],
            ["plain MQTT publish -> lock -> ack", p["p50"], p["p95"], p["p99"], "1.0x"],
        ],
    ) + table(
        f"Lock events: {result.events} state reports (QoS 1) from {result.locks} locks",
        ["path", "events/s", "ratio", "in the feed once", "late or repeated", "lost or doubled"],
        [
            [
                "relay -> devices -> PostgreSQL + Firestore mirror",
                result.relay_rate,
                f"{result.relay_rate / result.plain_rate:.2f}x",
                f"{result.applied} of {result.events}",
                result.stale,
                abs(result.events - result.applied),
            ],
            ["plain MQTT subscriber", result.plain_rate, "1.00x", "", "", ""],
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--locks", type=int, default=30)
    args = parser.parse_args(argv)
    with local_stack(settings=BENCH_FUNCTION_SETTINGS) as env:
        result = measure(env, args.commands, args.events, args.locks)
    out(f"\nmachine: {machine()}\n")
    out(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
