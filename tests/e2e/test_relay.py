"""The relay end to end: the served devices function, relay processes, the real broker and simulated locks."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from infra.local import services
from infra.local.firestore_sdk import sdk_client
from lockwise.devices import broker_restarts, lock_events, topics
from simlock.lock import SimulatedLock
from tests import tcp_cut
from tests.conftest import PROJECT_ID
from tests.e2e.conftest import COMMAND_TTL_S, App, db_one
from tests.http_stubs import StubHandler, serving
from tests.tcp_cut import TcpCut
from tests.waiting import wait_for

Pair = Callable[..., tuple[str, SimulatedLock]]


def status_is(app: App, lock_id: str, command_id: str, status: str) -> Callable[[], bool]:
    return lambda: app.command_status(lock_id, command_id) == status


def online(e2e: dict[str, Any], lock_id: str) -> bool:
    """Whether the server shows the lock online."""
    return bool(db_one(e2e, "SELECT online FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id) == [True])


def wait_online(e2e: dict[str, Any], lock_id: str, timeout: float = 15) -> None:
    wait_for(lambda: online(e2e, lock_id), timeout=timeout, what="lock online")


def online_beside_a_killed_relay(e2e: dict[str, Any], relays: Any, paired_lock: Pair) -> tuple[str, SimulatedLock]:
    """A paired lock, seen online through the relay ``relay-crashy``, which is then killed (its session kept)."""
    relay = relays("relay-crashy")
    lock_id, lock = paired_lock()
    wait_online(e2e, lock_id)
    relay.popen.send_signal(signal.SIGKILL)
    relay.popen.wait(5)
    return lock_id, lock


def test_app_unlock_reaches_the_lock_and_the_ack_comes_home(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair
) -> None:
    relay = relays()
    lock_id, lock = paired_lock()
    command = app.unlock(lock_id)
    wait_for(lambda: [c for c in lock.executed if c.id == command["id"]], what="lock received the unlock")
    assert lock.state == "unlocked"
    wait_for(lambda: app.command_status(lock_id, command["id"]) == "acked", what="ack recorded")
    wait_for(
        lambda: db_one(e2e, "SELECT state FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id) == ["unlocked"],
        what="state stored",
    )
    client = sdk_client(PROJECT_ID, e2e["env"]["FIRESTORE_EMULATOR_HOST"])
    wait_for(
        lambda: (client.document(f"locks/{lock_id}").get().to_dict() or {}).get("state") == "unlocked",
        what="Firestore shows unlocked",
    )
    health = wait_for(  # the report is reused for a second (``health_server.REPORT_REUSE_S``)
        lambda: (h := requests.get(f"http://127.0.0.1:{relay.port}/health", timeout=5).json())["delivered"] >= 1 and h,
        what="the relay's health counting the delivery",
    )
    assert health["status"] == "ok" and health["checks"]["broker"]["ok"]
    # its broker certificate's end, said nowhere before every relay was turned away a year on (attack run 57)
    assert health["certificate"]["ok"] and 30 < health["certificate"]["days_left"] <= 365, health["certificate"]
    sent, retained = db_one(e2e, "SELECT send_count, status FROM commands WHERE id = CAST(:i AS uuid)", i=command["id"])
    assert sent == 1 and retained == "acked"


def test_command_survives_a_broker_restart(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, broker: services.Broker
) -> None:
    relays()
    lock_id, lock = paired_lock()
    # back within 2 s: the command lives 6 s here, and a lock backing off to 30 s (turned away until the relay is
    # back) missed it once in a full run
    lock.backoff_max_s = 2
    broker.process.stop()  # mid-flight: the command is made while the broker is down
    command = app.unlock(lock_id)
    time.sleep(1.0)
    assert app.command_status(lock_id, command["id"]) == "pending"
    broker.start_again()
    wait_for(
        lambda: [c for c in lock.executed if c.id == command["id"]],
        timeout=COMMAND_TTL_S + 2,
        what="delivered after the broker came back",
    )
    wait_for(lambda: app.command_status(lock_id, command["id"]) == "acked", what="ack after restart")


def test_relay_killed_and_restarted_delivers_once_and_loses_no_event(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair
) -> None:
    lock_id, lock = online_beside_a_killed_relay(e2e, relays, paired_lock)
    commands = [app.unlock(lock_id), app.unlock(lock_id, "lock")]
    lock.battery_pct = 42
    # while no relay is connected, the broker turns the lock away unacknowledged and the lock keeps the event (before,
    # the broker acknowledged it into the crashed relay's session; attack run 17)
    lock.publish_state()
    relays("relay-crashy")  # same client id: the persistent session resumes
    for command in commands:
        wait_for(status_is(app, lock_id, command["id"], "acked"), what=f"{command['action']} acked")
    assert sorted(c.id for c in lock.executed) == sorted(c["id"] for c in commands), "each command executed once"
    wait_for(
        lambda: db_one(e2e, "SELECT battery_pct FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id) == [42],
        what="the event published during the outage arrived",
    )


def test_a_broker_restart_loses_no_event_a_lock_sends_before_a_relay_is_back(
    e2e: dict[str, Any], relays: Any, paired_lock: Pair, broker: services.Broker
) -> None:
    """Mosquitto 2.0 does not persist shared subscriptions: a restarted broker restored the relay's session without
    them and acknowledged, and dropped, every lock event published before a relay subscribed again (attack run 16: 3
    and 48 reports lost). Here the relay is away while the broker restarts and the lock reports three times: the
    broker closes the lock's connection unacknowledged (``lockwise_acl.c``) and the lock sends them again on each
    reconnect, until a relay is back. All three arrive."""
    lock_id, lock = online_beside_a_killed_relay(e2e, relays, paired_lock)
    # the lock reconnects on its own and is turned away again and again, connected for milliseconds at a time
    # (attack run 17): no wait for it here, paho keeps what it publishes meanwhile
    broker.restart()
    lock.battery_pct, keys = 33, []
    for battery in (31, 32, 33):
        ts = round(time.time(), 3)
        report = {"state": lock.state, "battery_pct": battery, "firmware": lock.config.firmware, "ts": ts}
        lock.client.publish(topics.state(lock.config.identity), json.dumps(report), qos=1)
        keys.append(lock_events.report_key(dt.datetime.fromtimestamp(ts, dt.UTC), lock.state))
        time.sleep(0.01)
    time.sleep(2)  # the lock reconnects, is refused again and again meanwhile
    relays("relay-crashy")

    def known() -> list[str]:
        row = db_one(e2e, "SELECT recent_reports FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
        return list(row[0] or []) if row else []

    wait_for(lambda: set(keys) <= set(known()), what="the three reports sent before the relay was back")
    assert db_one(e2e, "SELECT battery_pct FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id) == [33]


def test_a_broker_killed_after_acknowledging_a_locks_reports_and_ack_loses_none_of_them(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, broker: services.Broker
) -> None:
    """Mosquitto acknowledges a lock's message as it takes it and saves on a 1 s timer: killed -9 just after, it
    lost every report and ack the relay had not taken yet (attack run 29: 20 of 20 while the relay was behind, and a
    command that opened the door read ``expired``). The lock now keeps each report and ack until a receipt names it
    and sends it again after reconnecting. Here the relay's connection goes silent (the broker sees it connected,
    what it sends the relay goes nowhere), the lock acts on a command and reports five times, each acknowledged by
    the broker, which is then killed at once."""
    with TcpCut(("127.0.0.1", broker.port)) as cut:
        relays(MQTT_PORT=str(cut.port))
        lock_id, lock = paired_lock()
        wait_online(e2e, lock_id)
        lock.unconfirmed.wait_s, lock.backoff_max_s, lock.delay_s = 1.0, 2.0, 1.5
        command = app.unlock(lock_id)
        wait_for(status_is(app, lock_id, command["id"], "sent"), what="the command sent")
        cut.cut(tcp_cut.SILENT)  # the lock is still acting on it (delay_s): its ack goes to the broker alone
        wait_for(lambda: [c for c in lock.executed if c.id == command["id"]], what="the command carried out")
        lock.delay_s, keys = 0.0, []
        for battery in range(51, 56):
            lock.battery_pct = battery
            lock.publish_state().wait_for_publish(5)  # the broker's PUBACK: it holds the report
            report = json.loads(list(lock.unconfirmed.kept.values())[-1].payload)
            keys.append(lock_events.report_key(dt.datetime.fromtimestamp(report["ts"], dt.UTC), report["state"]))
            time.sleep(0.002)
        wait_for(lambda: not lock.client._out_messages, what="the lock's ack acknowledged")  # noqa: SLF001
        assert len(lock.unconfirmed.kept) >= 6, "the five reports and the ack are kept: no receipt from the relay"
        broker.process.popen.kill()  # before its next save
        broker.process.popen.wait(5)
        broker.start_again()
        cut.drop()  # the relay's connection ends as the broker's death would have ended it

        def known() -> list[str]:
            row = db_one(e2e, "SELECT recent_reports FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
            return list(row[0] or []) if row else []

        wait_for(lambda: set(keys) <= set(known()), timeout=30, what="the five reports the killed broker had taken")
        wait_for(status_is(app, lock_id, command["id"], "acked"), timeout=30, what="the ack the killed broker took")
        assert lock.unconfirmed.sent_again >= 6, "the lock sent its reports and its ack again"
        wait_for(lambda: not lock.unconfirmed.kept, timeout=15, what="every message the lock kept named by a receipt")


class DevicesAway:
    """Passes the relay's calls to the devices function, and answers its event batches 503 while ``away``."""

    def __init__(self, target: str) -> None:
        self.away, self.refused = False, 0
        outer = self

        class Handler(StubHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.body()
                if outer.away and self.path == "/devices/relay/events":
                    outer.refused += 1
                    status, answer = 503, b'{"error": {"code": "unavailable"}}'
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                    resp = requests.post(target + self.path, data=body, headers=headers, timeout=30)
                    status, answer = resp.status_code, resp.content
                self.answer(status, answer, content_type="application/json")

        self.handler = Handler
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> DevicesAway:
        self.url = self.stack.enter_context(serving(self.handler))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def test_a_message_redelivered_while_the_devices_function_is_away_survives_a_relay_restart(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, broker: services.Broker
) -> None:
    """Attack run 31: the relay acknowledged at once a copy of a message it held (to keep each lock's line to one
    copy), and a copy is also what the broker redelivers when the relay's session resumes. So with the devices
    function away, a relay that reconnected held the lock's ack and report in memory alone, and a relay restart lost
    both (the command read ``expired``, the battery stayed as it was). A copy is now acknowledged with its first."""
    with DevicesAway(e2e["url"]) as devices, TcpCut(("127.0.0.1", broker.port)) as cut:
        first = relays("relay-away", MQTT_PORT=str(cut.port), LOCKWISE_DEVICES_URL=devices.url)
        lock_id, lock = paired_lock()
        wait_online(e2e, lock_id)
        lock.delay_s = 1.5
        command = app.unlock(lock_id)
        wait_for(status_is(app, lock_id, command["id"], "sent"), what="the command sent")
        devices.away = True  # the lock is still acting on it (delay_s): its ack and report wait in the relay
        wait_for(lambda: [c for c in lock.executed if c.id == command["id"]], what="the command carried out")
        lock.delay_s, lock.battery_pct = 0.0, 42
        lock.publish_state().wait_for_publish(5)
        wait_for(lambda: devices.refused >= 2, what="the relay holding the lock's events")

        def repeated() -> int:
            health = requests.get(f"http://127.0.0.1:{first.port}/health", timeout=5).json()
            return int(health["checks"]["forwarder"]["repeated"])

        cut.drop()  # the relay's connection ends and it reconnects: the broker redelivers what it holds unacknowledged
        wait_for(lambda: repeated() >= 3, what="the ack and both reports redelivered, held as copies")
        first.popen.kill()  # before the function is back
        first.popen.wait(5)
        devices.away = False
        relays("relay-away")  # the same session: the broker redelivers what is still unacknowledged
        wait_for(status_is(app, lock_id, command["id"], "acked"), timeout=20, what="the ack the relay held")
        wait_for(
            lambda: (
                db_one(e2e, "SELECT battery_pct FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id) == [42]
            ),
            what="the report the relay held",
        )
        assert lock.unconfirmed.sent_again == 0  # the broker's redelivery, not the lock, brought them


def test_a_lock_that_does_not_come_back_after_a_broker_restart_is_shown_offline(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, broker: services.Broker
) -> None:
    """Mosquitto keeps no last will across a crash: a lock whose power was cut while the broker was away sent no
    ``offline`` and was shown online until it came back, its commands sent into its broker session. The relay reads
    the broker's run (and uptime) and the upkeep turns offline the locks whose connection came before the broker's
    start; a lock that reconnected stays online and is sent its command."""
    relay = relays()
    gone_id, gone = paired_lock("Garage")
    back_id, back = paired_lock()
    for lock_id in (gone_id, back_id):
        wait_online(e2e, lock_id)
    # both connected a minute before the restart (a start within 10 s of a connection is not told from it:
    # BROKER_START_SLACK), so that staying online needs a new connection
    with e2e["db"].transaction() as con:
        con.run(
            "UPDATE lock_state SET connected_at = connected_at - interval '1 minute'"
            " WHERE lock_id = ANY(CAST(:l AS uuid[]))",
            l=[gone_id, back_id],
        )
    # a crash: a broker that stops cleanly sends the wills of the clients it still holds (the relay takes them)
    broker.process.popen.send_signal(signal.SIGKILL)
    broker.process.popen.wait(5)
    gone.go_offline()  # its power cut meanwhile: no goodbye, and its will died with the broker
    starting = time.time()
    broker.start_again()
    started = (starting, time.time())

    # a live uptime comes within the broker's sys_interval (10 s), the upkeep every second after
    wait_for(
        lambda: not online(e2e, gone_id) and online(e2e, back_id), timeout=30, what="the lock not back shown offline"
    )
    client = sdk_client(PROJECT_ID, e2e["env"]["FIRESTORE_EMULATOR_HOST"])
    wait_for(
        lambda: (client.document(f"locks/{gone_id}").get().to_dict() or {}).get("online") is False,
        what="the app shown it offline",
    )
    entries = [e.to_dict() for e in client.collection(f"locks/{gone_id}/activity").stream()]
    assert [e.get("reason") for e in entries if e["kind"] == "offline"] == ["broker_restart"]

    def uptime() -> float | None:
        health = requests.get(f"http://127.0.0.1:{relay.port}/health", timeout=5).json()
        return health["checks"]["broker"]["uptime_s"]  # type: ignore[no-any-return]

    # the uptime (for connections heard of without a run) comes with the broker's next $SYS publish, within 11 s
    wait_for(lambda: uptime() is not None, timeout=15, what="the broker's uptime read")
    read = time.time() - (uptime() or 0)
    assert started[0] - 1.5 < read < started[1] + 1.5, "the broker's start as the relay read it, within a second"
    command = app.unlock(back_id)
    wait_for(lambda: [c for c in back.executed if c.id == command["id"]], what="the lock back sent its command")


def test_a_lock_that_connected_just_before_a_second_broker_crash_is_shown_offline(
    e2e: dict[str, Any], relays: Any, paired_lock: Pair, broker: services.Broker
) -> None:
    """Attack run 18: two broker crashes a few seconds apart. A lock that connected after the first and lost its power
    during the second was shown online for good: its connection fell within the 10 s by which the broker's uptime
    dates its start. The broker's plugin numbers each run and tags the lock's messages with it; the upkeep turns
    offline the lock heard from on the earlier run, whatever the clocks say, and leaves the one back on the new run."""
    relay = relays()
    dies_id, dies = paired_lock("Garage")
    lives_id, lives = paired_lock()
    for lock in (dies, lives):
        lock.backoff_max_s = 1  # back within a second of each restart
    for lock_id in (dies_id, lives_id):
        wait_online(e2e, lock_id)

    def runs() -> dict[str, int | None]:
        rows = db_one(
            e2e,
            "SELECT array_agg(lock_id::text ORDER BY lock_id), array_agg(connected_run ORDER BY lock_id)"
            " FROM lock_state WHERE lock_id = ANY(CAST(:l AS uuid[]))",
            l=[dies_id, lives_id],
        )
        return dict(zip(rows[0], rows[1], strict=True))

    before = {lock_id: run or 0 for lock_id, run in runs().items()}
    assert all(before.values()), f"the relay forwards each event's run: {before}"

    def crash() -> None:
        broker.process.popen.send_signal(signal.SIGKILL)
        broker.process.popen.wait(5)

    crash()
    broker.start_again()
    wait_for(
        lambda: all(run is not None and run > before[lock_id] for lock_id, run in runs().items()),
        timeout=20,
        what="both locks heard from on the broker's new run",
    )
    connected_at = db_one(e2e, "SELECT connected_at FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=dies_id)[0]
    crashed = dt.datetime.now(dt.UTC)
    crash()  # again, seconds after the first: the lock that connected in between dies meanwhile
    dies.go_offline()
    broker.start_again()
    wait_for(
        lambda: not online(e2e, dies_id) and online(e2e, lives_id) and runs()[lives_id] != runs()[dies_id],
        timeout=30,
        what="the lock not back shown offline",
    )
    slack = broker_restarts.BROKER_START_SLACK
    assert crashed - connected_at < slack, (
        f"its connection {crashed - connected_at} before the crash: the clocks' slack"
    )
    wait_for(  # the report is reused for a second (``health_server.REPORT_REUSE_S``)
        lambda: (
            requests.get(f"http://127.0.0.1:{relay.port}/health", timeout=5).json()["checks"]["broker"]["run"]
            == runs()[lives_id]
        ),
        what="the run the relay read, in its health",
    )
    client = sdk_client(PROJECT_ID, e2e["env"]["FIRESTORE_EMULATOR_HOST"])
    wait_for(
        lambda: (client.document(f"locks/{dies_id}").get().to_dict() or {}).get("online") is False,
        what="the app shown it offline",
    )
    # its last entry (turned away by the broker until the relay was back, after the first restart, its will said
    # offline too: an entry with no reason)
    entries = sorted(
        (e.to_dict() for e in client.collection(f"locks/{dies_id}/activity").stream()), key=lambda e: e["at"]
    )
    assert [e.get("reason") for e in entries if e["kind"] == "offline"][-1] == "broker_restart", entries


def test_a_delayed_online_will_sent_as_the_broker_stops_does_not_keep_a_dead_lock_online(
    e2e: dict[str, Any], relays: Any, paired_lock: Pair, broker: services.Broker
) -> None:
    """Attack run 19: a lock's own firmware set a last will saying ``online``, delayed a day (MQTT 5 Will Delay
    Interval: the broker's plugin could not tell its check from a publish until attack run 127, and now drops it; the
    run rule is guarded here should one come through), and lost its power. Mosquitto sends pending
    wills as it stops; the will reached the relay untagged after the restart, cleared the lock's run, and the row, its
    connection dated within the clocks' slack, was shown online for good. An untagged message now keeps the run
    known, and the upkeep turns the lock offline."""
    import ssl

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    relays()
    lock_id, lock = paired_lock()
    _, other = paired_lock()
    wait_online(e2e, lock_id)
    lock.stop(graceful=True)  # the honest firmware leaves; firmware of the lock's own choosing takes its identity
    wait_for(lambda: not online(e2e, lock_id), what="offline after its goodbye")
    config = lock.config
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.identity, protocol=mqtt.MQTTv5)
    cert, key = config.tls_files(Path(tempfile.mkdtemp(prefix="will-")))
    client.tls_set(ca_certs=config.ca_file, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    delayed = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
    delayed.WillDelayInterval = 86400
    will = f"online {int(time.time() * 1000) + 5000}"
    client.will_set(topics.status(config.identity), will, qos=1, properties=delayed)
    session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    session.SessionExpiryInterval = 86400
    client.connect(config.host, config.port, keepalive=60, clean_start=True, properties=session)
    client.loop_start()
    try:
        client.publish(topics.status(config.identity), f"online {int(time.time() * 1000)}", qos=1).wait_for_publish(5)
        wait_online(e2e, lock_id)
    finally:
        client.loop_stop()
        sock = client.socket()
        if sock is not None:
            sock.close()  # its power cut: the will waits its delay in the broker
    time.sleep(1)
    other.publish_state().wait_for_publish(5)  # any check after the close: the will is no longer told from a publish
    broker.restart()  # a clean stop sends it
    wait_for(lambda: not online(e2e, lock_id), timeout=30, what="the dead lock shown offline after the restart")
    time.sleep(3)  # the will, forwarded meanwhile, brings nothing back
    assert not online(e2e, lock_id)


def test_nothing_is_lost_while_the_database_restarts(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, postgres: services.Postgres
) -> None:
    """PostgreSQL restarts (a fast shutdown, as a managed database's restart or failover does). A quick restart with
    nothing asked meanwhile: the next requests are served, the function's pooled connections the server ended
    replaced, not failed (they were answered 503 one by one). A longer outage while a lock reports: the relay holds the
    reports (unacknowledged at the broker) until the devices function takes them again, and the app's command
    meanwhile is answered 503, not taken and lost; once the database is back every report arrives, each once."""
    relay = relays(LOCKWISE_RELAY_FLUSH_EVERY_S="3600")  # no periodic flush: nothing but this test's requests
    lock_id, lock = paired_lock()

    def reports() -> tuple[int | None, int]:
        """The lock's battery as last reported, and how many of its reports are known."""
        row = db_one(
            e2e, "SELECT battery_pct, recent_reports FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id
        )
        return (row[0], len(row[1] or [])) if row else (None, 0)

    wait_for(lambda: reports()[1], what="the lock's first report")
    known = reports()[1]
    try:
        postgres.stop()  # a quick restart, nothing asked meanwhile: the pools still hold the ended connections
        postgres.start_again()
        for _ in range(3):  # the app's next requests, each on a pooled connection the server ended
            assert app.call("GET", f"/devices/locks/{lock_id}").status_code == 200
        postgres.stop()  # a longer outage, with a lock and the app at work
        refused = app.call("POST", f"/devices/locks/{lock_id}/commands", json={"action": "unlock"})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] in {"database_unavailable", "database_busy"}
        for battery in (41, 42, 43):
            lock.battery_pct = battery
            lock.publish_state().wait_for_publish(5)
            time.sleep(0.01)  # distinct report times
        time.sleep(4)  # the relay tries to hand them over meanwhile, and its delivery rounds fail
        postgres.start_again()
    finally:  # the session's server is shared: never leave it stopped (one more try if a start failed)
        if not postgres.process.alive():
            postgres.start_again()
    wait_for(lambda: reports()[0] == 43, what="the reports sent while the database was down")
    assert reports()[1] == known + 3, "each of the three reports taken once"
    command = app.unlock(lock_id)
    wait_for(status_is(app, lock_id, command["id"], "acked"), what="the command after the restart acked")
    # the relay's rounds failed every second or two while it was down: a streak is logged at its start (with the
    # traceback) and its end, not once a round (a traceback a second: attack run 114's leftover)
    messages = [json.loads(line).get("message") for line in relay.log_path.read_text().splitlines() if line[:1] == "{"]
    streaks = messages.count("delivery round failed; retrying")  # (the quick restart may have made one too)
    assert 1 <= streaks <= 2 and messages.count("delivery round works again") == streaks, messages
    assert messages.count("LISTEN connection (polling meanwhile) failed; retrying") <= 2, messages


def test_a_relay_started_while_the_database_is_down_waits_for_it(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, postgres: services.Postgres
) -> None:
    """A relay (re)started during a database outage, as the platform restarts one that crashed, exited at once, and
    no relay ran until one was started by hand: every command of the time expired unsent (attack run 13). It now
    says it is starting (503) and waits; once the database is back it leases a slot and delivers."""
    lock_id, _lock = paired_lock()
    try:
        postgres.stop()
        relay = relays(listening=False)  # ready once its health endpoint answers: 503, starting
        health = requests.get(f"http://127.0.0.1:{relay.port}/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "starting"
        time.sleep(2)
        assert relay.popen.poll() is None, relay.log_path.read_text()[-2000:]
        postgres.start_again()
    finally:  # the session's server is shared: never leave it stopped
        if not postgres.process.alive():
            postgres.start_again()
    wait_for(
        lambda: requests.get(f"http://127.0.0.1:{relay.port}/health", timeout=5).json().get("status") == "ok",
        what="the relay leasing a slot once the database is back",
    )
    # the lock was turned away while no relay was connected, and backs off up to 30 s meanwhile (docs/FIRMWARE.md):
    # it takes a command once it is back (the test failed once in a full run, its lock still waiting to try again)
    wait_online(e2e, lock_id, timeout=45)
    command = app.unlock(lock_id)
    wait_for(status_is(app, lock_id, command["id"], "acked"), what="a command delivered by the waiting relay")
    # it waited at its first step: finding the migrations it needs in the database
    assert "database unreachable: waiting to find the migrations it needs" in relay.log_path.read_text()


def test_two_relays_never_deliver_a_command_twice(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair
) -> None:
    relays("relay-a")
    relays("relay-b")
    lock_id, lock = paired_lock()
    commands = [app.unlock(lock_id, "unlock" if i % 2 else "lock") for i in range(12)]
    for command in commands:
        wait_for(status_is(app, lock_id, command["id"], "acked"), what="acked")
    executed = [c.id for c in lock.executed]
    assert sorted(executed) == sorted(c["id"] for c in commands)
    assert len(set(executed)) == len(executed)
    assert [r for r in lock.refused if r[0] == "replayed"] == [], "a command reached the lock twice"
    counts = {
        row[0]
        for row in e2e["db"]
        .connect()
        .run("SELECT send_count FROM commands WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
    }
    assert counts == {1}


def test_command_that_expired_while_the_lock_was_offline_is_never_executed(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair
) -> None:
    relays()
    lock_id, lock = paired_lock()
    lock.go_offline()
    command = app.unlock(lock_id)
    wait_for(lambda: app.command_status(lock_id, command["id"]) == "expired", timeout=COMMAND_TTL_S + 5, what="expired")
    time.sleep(1.0)  # the broker's clock, of whole seconds
    lock.come_back()
    # a barrier instead of a pause: a command made now reaches the lock after anything the broker queued for it
    # before (QoS 1 keeps one topic's order), so once it is executed the expired one had every chance to arrive
    barrier = app.unlock(lock_id, action="lock")
    wait_for(lambda: [c for c in lock.executed if c.id == barrier["id"]], what="the command sent after it executed")
    assert [c for c in lock.executed if c.id == command["id"]] == []
    row = db_one(e2e, "SELECT status FROM commands WHERE id = CAST(:i AS uuid)", i=command["id"])
    assert row == ["expired"]
    # nor was it even handed over: every copy the relay published (one per re-send) expired in the broker with the
    # command (MQTT 5 message expiry); they were kept in the offline lock's session, for ever (attack run)
    assert [reason for reason, _ in lock.refused] == []


def test_a_command_to_a_lock_known_offline_waits_unsent_and_goes_out_when_it_is_back(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair
) -> None:
    """Attack run 14: a command published to an offline lock waited in its broker session, out of reach (a member
    removed meanwhile had their unlock carried out when the lock came back). Once the lock's goodbye is taken, what
    is made for it stays pending (a removal can withdraw it) and is sent when the lock is back, with its report."""
    relays()
    lock_id, lock = paired_lock()
    goodbye = 2 * lock.connection_no + 1  # the order of its "offline <n>"
    lock.stop()
    # its goodbye applied, not only "offline": a lock's row says so from its pairing on, and a lock never heard from
    # is sent to (the test failed once in a full run: its command was made before the lock's reports were taken)
    wait_for(
        lambda: (
            db_one(e2e, "SELECT online, status_order FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
            == [False, goodbye]
        ),
        what="the lock's goodbye applied",
    )
    command = app.unlock(lock_id)
    time.sleep(1.5)  # a relay round or more
    row = db_one(e2e, "SELECT status, send_count FROM commands WHERE id = CAST(:i AS uuid)", i=command["id"])
    assert row == ["pending", 0]
    lock.come_back()
    wait_for(lambda: [c for c in lock.executed if c.id == command["id"]], timeout=COMMAND_TTL_S, what="sent once back")
    wait_for(status_is(app, lock_id, command["id"], "acked"), what="acked")


@contextlib.contextmanager
def relay_client(e2e: dict[str, Any]) -> Iterator[mqtt.Client]:
    """A client with a relay's rights: the last slot's certificate, with the slot's lease held meanwhile (so that no
    relay borrows the slot to empty its session while this client uses it)."""

    from infra.deploy_config import RELAY_SLOTS
    from mqtt_relay.slots import Lease

    with (
        Lease(e2e["db"], RELAY_SLOTS).borrow_when_free(RELAY_SLOTS, 15) as identity,
        _slot_client(e2e["env"], identity) as client,
    ):
        yield client


@contextlib.contextmanager
def _slot_client(env: dict[str, str], identity: str) -> Iterator[mqtt.Client]:
    import ssl

    entry = json.loads(Path(env["MQTT_CLIENT_CERTS"]).read_text())[identity]
    folder = Path(tempfile.mkdtemp())
    (folder / "c.crt").write_text(entry["cert"])
    (folder / "c.key").write_text(entry["key"])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity)
    client.tls_set(
        ca_certs=env["MQTT_CA_FILE"],
        certfile=str(folder / "c.crt"),
        keyfile=str(folder / "c.key"),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.connect("127.0.0.1", int(env["MQTT_PORT"]))
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_replayed_command_is_refused_by_the_lock(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair
) -> None:
    relays()
    lock_id, lock = paired_lock()
    command = app.unlock(lock_id)
    wait_for(lambda: app.command_status(lock_id, command["id"]) == "acked", what="acked")
    (payload,) = db_one(e2e, "SELECT payload FROM commands WHERE id = CAST(:i AS uuid)", i=command["id"])
    lock.state = "locked"
    with relay_client(e2e) as replayer:
        replayer.publish(topics.commands(lock.config.identity), payload, qos=1).wait_for_publish(5)
        wait_for(lambda: [r for r in lock.refused if r[0] == "replayed"], what="replay refused")
    assert len([c for c in lock.executed if c.id == command["id"]]) == 1
    assert lock.state == "locked"
    # a forged command (not signed by the server) is refused too
    forged = json.loads(payload)
    forged["cmd"] = forged["cmd"].replace(command["id"], "00000000-0000-0000-0000-000000000000")
    with relay_client(e2e) as replayer:
        replayer.publish(topics.commands(lock.config.identity), json.dumps(forged), qos=1).wait_for_publish(5)
        wait_for(lambda: [r for r in lock.refused if r[0] == "bad_signature"], what="forgery refused")


def test_one_lock_cannot_publish_state_for_another(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair
) -> None:
    relays()
    lock_a, a = paired_lock("A")
    lock_b, b = paired_lock("B")
    wait_for(
        lambda: db_one(e2e, "SELECT state FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_b) == ["locked"],
        what="B reported",
    )
    forged = json.dumps({"state": "unlocked", "battery_pct": 1, "ts": time.time() + 1})
    a.client.publish(topics.state(b.config.identity), forged, qos=1).wait_for_publish(5)
    a.client.publish(topics.status(b.config.identity), "offline", qos=1).wait_for_publish(5)
    a.battery_pct = 11
    a.publish_state().wait_for_publish(5)  # A's own report goes through, so the relay was listening
    wait_for(
        lambda: db_one(e2e, "SELECT battery_pct FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_a) == [11],
        what="A's own state",
    )
    time.sleep(0.5)
    assert db_one(
        e2e, "SELECT state, battery_pct, online FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_b
    ) == ["locked", 87, True]


def test_relay_stops_gracefully_on_sigterm(e2e: dict[str, Any], relays: Any) -> None:
    relay = relays()
    relay.popen.send_signal(signal.SIGTERM)
    assert relay.popen.wait(20) == 0
    assert "relay stopped" in relay.log_path.read_text()


@pytest.mark.parametrize("scan_s", ["1", "300"], ids=["scan_every_second", "scan_every_5_minutes"])
def test_events_queued_for_a_crashed_replica_are_forwarded_by_the_survivor(
    e2e: dict[str, Any], relays: Any, paired_lock: Pair, scan_s: str
) -> None:
    """The broker keeps handing part of the shared lock events to a dead replica's persistent session; a live relay
    takes the free slot, forwards what the session holds and ends it, and the lock gets the receipts of those too.
    Not at its next scan of every slot (5 minutes by default): a slot a replica held, free for ``LEFT_AFTER_S``, is
    emptied then (attack run 68: a replica killed and not replaced delayed 75 of 385 reports by up to 285 s)."""
    from mqtt_relay.relay import LEFT_AFTER_S, LEFT_CHECK_S

    survivor = relays("relay-survivor", LOCKWISE_RELAY_ORPHAN_SCAN_S=scan_s)
    doomed = relays("relay-doomed")
    lock_id, lock = paired_lock()
    wait_online(e2e, lock_id)
    lock.unconfirmed.wait_s = 120  # nothing sent again here: each kept report is named as the survivor takes it
    time.sleep(LEFT_CHECK_S + 1)  # the survivor has seen the doomed replica hold its slot
    doomed.popen.send_signal(signal.SIGKILL)
    doomed.popen.wait(5)
    for battery in range(60, 20, -1):  # 40 reports, each newer than the last (their ts has millisecond steps)
        lock.battery_pct = battery
        lock.publish_state().wait_for_publish(5)
        time.sleep(0.003)
    wait_for(
        lambda: db_one(e2e, "SELECT battery_pct FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id) == [21],
        timeout=LEFT_AFTER_S + 3 * LEFT_CHECK_S + 10,
        what=f"the last report applied (survivor's log: {survivor.log_path})",
    )

    def health() -> dict[str, Any]:
        body: dict[str, Any] = requests.get(f"http://127.0.0.1:{survivor.port}/health", timeout=5).json()
        return body

    wait_for(
        lambda: health()["drained"] > 0,
        timeout=LEFT_AFTER_S + 3 * LEFT_CHECK_S + 10,
        what="the dead replica's session emptied by the survivor",
    )
    assert health()["checks"]["forwarder"]["forwarded"] >= 40
    wait_for(lambda: not lock.unconfirmed.kept, what="a receipt for each report the lock kept (32), drained ones too")
    assert lock.unconfirmed.sent_again == 0


def test_emptying_free_slots_sessions_leaves_no_socket_open(e2e: dict[str, Any]) -> None:
    """A relay empties each free slot's session at every scan (``sessions.drain``): one MQTT client made, connected
    and ended each time. paho closed its sockets only as the client was collected, and the client's own callbacks
    hold it in a cycle: each emptying left its descriptors open until the garbage collector's next full pass (attack
    run 114: 100 after 50). Counted with the collector off, as a long-lived relay's full passes are rare."""
    import gc

    from mqtt_relay import sessions
    from mqtt_relay.forwarder import Forwarder
    from mqtt_relay.settings import RelaySettings

    settings = RelaySettings.from_env(e2e["env"])
    forwarder = Forwarder(settings.devices_url, settings.service_token)
    slot = "lockwise-relay-8"  # no relay runs here: every slot is free, and none has a session left
    sessions.drain(settings, slot, forwarder, [], quiet_s=0.1)  # what a first connection makes once (TLS, imports)

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    gc.disable()
    try:
        before = descriptors()
        for _ in range(30):
            assert sessions.drain(settings, slot, forwarder, [], quiet_s=0.1) == 0
        left_open = descriptors() - before
    finally:
        gc.enable()
    assert left_open <= 2, f"{left_open} descriptors left open by 30 emptyings"


def test_one_locks_poison_events_never_hold_up_another_locks(
    e2e: dict[str, Any], relays: Any, paired_lock: Pair
) -> None:
    """A lock that publishes what the devices function cannot take (NUL in a string, a lone surrogate, deep nesting,
    a huge number, an oversized payload) has those events refused alone; every other event, its own included, is
    applied, and the relay counts what it refused."""
    relay = relays()
    lock_a, a = paired_lock("A")
    lock_b, b = paired_lock("B")
    state_a = topics.state(a.config.identity)
    poison = [
        json.dumps({"state": "locked", "firmware": "\u0000", "ts": time.time()}),
        '{"state": "locked", "firmware": "\\ud800", "ts": 1}',
        "[" * 5000 + "]" * 5000,
        '{"state": "locked", "battery_pct": 1' + "0" * 5000 + ', "ts": 1}',
        json.dumps({"state": "locked", "firmware": "x" * 40_000, "ts": time.time()}),  # under 64 KiB, over 16 KiB
        # 5,000 characters, 20,000 bytes as posted (12 each when escaped: a batch of them was 98 MB; attack run)
        json.dumps({"state": "locked", "firmware": "\U0001f600" * 5000, "ts": time.time()}, ensure_ascii=False),
    ]
    for payload in poison:
        a.client.publish(state_a, payload, qos=1).wait_for_publish(5)
    b.battery_pct, a.battery_pct = 33, 44
    b.publish_state().wait_for_publish(5)
    time.sleep(0.01)
    a.publish_state().wait_for_publish(5)
    for lock_id, battery in ((lock_b, 33), (lock_a, 44)):
        wait_for(
            lambda lock_id=lock_id, battery=battery: (
                db_one(  # type: ignore[misc]
                    e2e, "SELECT battery_pct FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=lock_id
                )
                == [battery]
            ),
            what=f"{battery}% applied behind the poison",
        )
    older = json.dumps({"state": "unlocked", "battery_pct": 1, "ts": time.time() - 3600})  # judged, not applied
    a.client.publish(state_a, older, qos=1).wait_for_publish(5)

    def forwarder() -> dict[str, Any]:
        checks: dict[str, Any] = requests.get(f"http://127.0.0.1:{relay.port}/health", timeout=5).json()["checks"]
        return dict(checks["forwarder"])

    health = wait_for(lambda: (h := forwarder())["stale"] >= 1 and h, what="the older report counted as stale")
    assert health["rejected"] >= 4 and health["dropped"] >= 2, health
    with e2e["db"].connection() as con:
        reasons = [r[0] for r in con.run("SELECT reason FROM lock_event_rejects ORDER BY id")]
    assert any("NUL" in r for r in reasons) and any("surrogate" in r for r in reasons), reasons
    assert any("deeper" in r for r in reasons) and any("digits" in r for r in reasons), reasons


def test_a_restarted_lock_still_refuses_a_command_it_already_executed(
    e2e: dict[str, Any], app: App, relays: Any, paired_lock: Pair, tmp_path: Path
) -> None:
    """The simulated lock keeps the nonces of executed commands until they expire, across a restart, as the
    firmware must (docs/FIRMWARE.md): a replayed grant does not open the door again after a reboot."""
    relays()
    lock_id, first = paired_lock()
    first.stop(graceful=False)
    nonces = tmp_path / "nonces.json"
    lock = SimulatedLock(first.config, nonce_file=nonces)
    lock.start()
    command = app.unlock(lock_id)
    wait_for(lambda: app.command_status(lock_id, command["id"]) == "acked", what="acked")
    (payload,) = db_one(e2e, "SELECT payload FROM commands WHERE id = CAST(:i AS uuid)", i=command["id"])
    lock.stop(graceful=False)
    rebooted = SimulatedLock(first.config, nonce_file=nonces)  # a new process: nothing in memory
    rebooted.start()
    try:
        with relay_client(e2e) as replayer:
            replayer.publish(topics.commands(lock.config.identity), payload, qos=1).wait_for_publish(5)
            wait_for(lambda: [r for r in rebooted.refused if r[0] == "replayed"], what="replay refused after reboot")
        assert rebooted.executed == [] and rebooted.state == "locked"
    finally:
        rebooted.stop(graceful=False)
