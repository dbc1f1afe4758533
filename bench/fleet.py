"""A fleet of locks on the broker with their own certificates: ``./dev bench fleet [--locks N]``.

Starts PostgreSQL, Mosquitto (the deployed configuration: client certificates only) and one relay; makes N locks
(rows and credentials as pairing leaves them, a certificate each from the lock CA) and connects them all at once over
TLS from one asyncio process (a minimal MQTT 3.1.1 client: CONNECT, SUBSCRIBE to its command topic, PUBACK), then
prints:

* connect rate (TLS handshake with a client certificate + CONNACK + SUBACK) and the broker's memory per connection;
* fan-out: one signed command to every lock at once through the outbox and the relay, latency from the commit to
  each lock's arrival (p50/p99), next to the plain path in the same run: one MQTT client with a relay's rights
  publishing the same payloads straight to every lock topic.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import resource
import secrets
import ssl
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import machine, out, pct, slot_files, table
from infra.deploy_config import RELAY_SLOTS
from infra.local import services
from infra.lock_ca import client_cert
from lockwise.core.auth import User
from lockwise.core.db import Database
from lockwise.devices import commands, locks, topics
from mqtt_relay.slots import Lease


@dataclass
class FleetLock:
    identity: str
    lock_id: str
    credential_id: str
    cert: Path
    key: Path
    received: dict[str, float] = field(default_factory=dict)  # command payload marker -> perf_counter
    writer: asyncio.StreamWriter | None = None


def _remaining_length(n: int) -> bytes:
    out_ = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out_.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out_)


def _string(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int = 600) -> bytes:
    variable = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive)  # 3.1.1, clean session
    body = variable + _string(client_id)
    return bytes([0x10]) + _remaining_length(len(body)) + body


def subscribe_packet(topic: str, packet_id: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + _string(topic) + bytes([1])
    return bytes([0x82]) + _remaining_length(len(body)) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = (await reader.readexactly(1))[0]
    length, multiplier = 0, 1
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            break
    return header, await reader.readexactly(length)


async def run_lock(
    lock: FleetLock, host: str, port: int, ca: str, gate: asyncio.Semaphore, connected: list[float]
) -> None:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(str(lock.cert), str(lock.key))
    async with gate:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
        writer.write(connect_packet(lock.identity))
        header, body = await read_packet(reader)
        if header >> 4 != 2 or body[1] != 0:
            raise ConnectionError(f"{lock.identity}: CONNACK {body!r}")
        writer.write(subscribe_packet(topics.commands(lock.identity)))
        header, body = await read_packet(reader)
        if header >> 4 != 9 or body[2] == 0x80:
            raise ConnectionError(f"{lock.identity}: SUBACK {body!r}")
        connected.append(time.perf_counter() - started)
    lock.writer = writer
    while True:
        try:
            header, body = await read_packet(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if header >> 4 == 3:  # PUBLISH
            topic_len = struct.unpack("!H", body[:2])[0]
            offset = 2 + topic_len
            qos = (header >> 1) & 3
            if qos:
                packet_id = body[offset : offset + 2]
                offset += 2
                writer.write(bytes([0x40, 0x02]) + packet_id)
            payload = body[offset:]
            marker = "relay" if b'"sig"' in payload and b"plain-" not in payload else payload.decode()[:12]
            lock.received.setdefault(marker, time.perf_counter())


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_fleet(db: Database, ca_pem: str, n: int, folder: Path) -> list[FleetLock]:
    fleet = []
    owner = User(uid="bench-owner", email=None, email_verified=False, claims={"auth_time": int(time.time())})
    with db.transaction() as con:
        con.run("INSERT INTO users (uid, email) VALUES ('bench-owner', 'bench@example.com') ON CONFLICT DO NOTHING")
        for i in range(n):
            lock_id = locks.create(con, owner, f"Bench {i}", False, max_owned=n)
            identity = f"lk-bench-{i:05d}"
            ((credential_id,),) = con.run(
                "INSERT INTO lock_credentials (lock_id, mqtt_username, signing_public_key)"
                " VALUES (CAST(:l AS uuid), :u, :k) RETURNING id::text",
                l=lock_id,
                u=identity,
                k=secrets.token_bytes(32),
            )
            cert_pem, key_pem = client_cert(ca_pem, identity, 1)
            cert, key = folder / f"{identity}.crt", folder / f"{identity}.key"
            cert.write_text(cert_pem)
            key.write_text(key_pem)
            fleet.append(FleetLock(identity, lock_id, str(credential_id), cert, key))
    return fleet


async def fan_out_through_relay(db: Database, fleet: list[FleetLock], signing_key: str) -> list[float]:
    with db.transaction() as con:
        for lock in fleet:
            at = dt.datetime.now(dt.UTC)
            commands.create(
                con, lock_id=lock.lock_id, made_for=lock.credential_id, action="unlock", issuer_kind="user",
                issuer_uid="bench-owner",
                signing_key_b64=signing_key, at=at, expires=at.replace(microsecond=0) + dt.timedelta(seconds=120),
            )  # fmt: skip
    committed = time.perf_counter()
    deadline = time.monotonic() + 120
    while any("relay" not in lock.received for lock in fleet) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return [lock.received["relay"] - committed for lock in fleet if "relay" in lock.received]


def plain_publisher(env: dict[str, str], certs: Path) -> mqtt.Client:
    """One client with a relay's rights (the last slot's certificate), connected before the fleet: paho waits on its
    socket with select(), which cannot watch a descriptor numbered past 1024."""
    certfile, keyfile = slot_files(certs, RELAY_SLOTS)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"lockwise-relay-{RELAY_SLOTS}")
    client.tls_set(ca_certs=env["MQTT_CA_FILE"], certfile=certfile, keyfile=keyfile)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", int(env["MQTT_PORT"]))
    client.loop_start()
    return client


async def fan_out_plain(client: mqtt.Client, fleet: list[FleetLock]) -> list[float]:
    started = time.perf_counter()
    for i, lock in enumerate(fleet):
        client.publish(topics.commands(lock.identity), f"plain-{i:06d}", qos=1)
    deadline = time.monotonic() + 120
    while any(not [k for k in lock.received if k.startswith("plain-")] for lock in fleet):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return [
        min(t for k, t in lock.received.items() if k.startswith("plain-")) - started
        for lock in fleet
        if any(k.startswith("plain-") for k in lock.received)
    ]


async def bench(n: int, concurrency: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(4 * n + 1024, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    root = Path(tempfile.mkdtemp(prefix="lockwise-fleet-"))
    root.chmod(0o755)
    pg = services.start_postgres(root / "pg", services.free_port(), secrets.token_urlsafe(12), durable=False)
    broker = services.start_mosquitto(root / "broker", services.free_port())
    relay: services.Process | None = None
    try:
        from lockwise.core import migrate

        db = Database(pg.url, pool_size=2)
        con = migrate.job_connection(pg.url)
        migrate.apply(con)
        con.close()
        out(f"making {n} locks and their certificates ...\n")
        made = time.perf_counter()
        fleet = make_fleet(db, broker.lock_ca_pem, n, root)
        issue_s = time.perf_counter() - made
        signing_key = base64.b64encode(secrets.token_bytes(32)).decode()
        env = {
            "LOCKWISE_MODE": "local",
            "DATABASE_URL": pg.url,
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(broker.port),
            "MQTT_CA_FILE": str(broker.ca_file),
            "MQTT_CLIENT_CERTS": str(broker.relay_certs),
            "LOCKWISE_DEVICES_URL": "http://127.0.0.1:9",  # no lock events in this benchmark
            "LOCKWISE_RELAY_POLL_MS": "50",
        }
        relay = services.start_relay(root, env)
        # the plain path's client holds the last relay slot's lease, so the relay never borrows that slot meanwhile
        with Lease(db, RELAY_SLOTS).borrow_when_free(RELAY_SLOTS, 20):
            plain = plain_publisher(env, broker.relay_certs)
            before = rss_kb(broker.process.popen.pid)
            gate, connected = asyncio.Semaphore(concurrency), list[float]()
            started = time.perf_counter()
            tasks = [
                asyncio.create_task(run_lock(lock, "127.0.0.1", broker.port, str(broker.ca_file), gate, connected))
                for lock in fleet
            ]
            while len(connected) < n:
                failed = [t for t in tasks if t.done() and t.exception()]
                if failed:
                    raise RuntimeError(f"{len(failed)} locks could not connect: {failed[0].exception()}")
                await asyncio.sleep(0.02)
            connect_s = time.perf_counter() - started
            await asyncio.sleep(1.0)
            after = rss_kb(broker.process.popen.pid)
            relay_latency = await fan_out_through_relay(db, fleet, signing_key)
            plain_latency = await fan_out_plain(plain, fleet)
            plain.loop_stop()
        for task in tasks:
            task.cancel()
        ms = [1000 * x for x in connected]
        out(f"\nmachine: {machine()}\n")
        out(
            table(
                f"Fleet: {n} locks with their own certificates on one Mosquitto ({dt.date.today()})",
                ["measure", "value"],
                [
                    ["certificates issued (key + CSR + signature)", f"{n / issue_s:.0f}/s"],
                    ["locks connected at once", f"{len(connected)} of {n}"],
                    ["connect rate (TLS + CONNECT + SUBSCRIBE)", f"{n / connect_s:.0f}/s ({connect_s:.1f} s)"],
                    ["connect latency p50 / p99 (ms)", f"{pct(ms, 50):.1f} / {pct(ms, 99):.1f}"],
                    ["broker RSS before / after (MB)", f"{before / 1024:.1f} / {after / 1024:.1f}"],
                    ["broker memory per connection (KB)", f"{(after - before) / n:.1f}"],
                ],
            )
        )
        rows = []
        for name, values in (("through outbox + relay", relay_latency), ("plain MQTT publish", plain_latency)):
            v = [1000 * x for x in values]
            rows.append([name, f"{len(v)} of {n}", pct(v, 50), pct(v, 99), max(v) if v else float("nan")])
        ratio = pct(relay_latency, 50) / pct(plain_latency, 50) if plain_latency else float("nan")
        out(table("Command fan-out to every lock at once (ms from commit / first publish)",
                  ["path", "received", "p50", "p99", "last"], rows))  # fmt: skip
        out(f"\nrelay p50 / plain p50: {ratio:.1f}x\n")
    finally:
        if relay is not None:
            relay.stop()
        broker.stop()
        pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100, help="TLS handshakes in flight at once")
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCKWISE_MODE", "local")
    asyncio.run(bench(args.locks, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
