"""The relay process: one persistent MQTT-over-TLS session, the outbox delivery loop and the event forwarder.

Threads: paho's network loop (callbacks), the forwarder worker, a LISTEN connection that wakes the delivery loop on
``NOTIFY lockwise_commands``, and the health server. The delivery loop runs in the caller's thread until
``stop()``; SIGTERM finishes in-flight work, then exits.

Replicas: each leases a slot (``mqtt_relay.slots``) that names its MQTT session, so no two live replicas share a
client id. Lock events arrive through MQTT shared subscriptions (``$share/<group>/...``, a group only the relays can
name: ``sessions.share_group``), so each event goes to one replica. The session is MQTT 5 with a session expiry,
so the broker drops what an abandoned slot's session queued once it has been gone that long; a replica that stops
cleanly unsubscribes first, so nothing is queued for it. While no replica is connected, the broker's plugin
(``infra/broker/lockwise_acl.c``) turns locks away with their events unacknowledged: they wait at the locks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import math
import select
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from lockwise.core.db import Connection
from lockwise.devices import receipts, topics
from mqtt_relay import outbox, retired, sessions
from mqtt_relay.broker_start import RUN_TOPIC, UPTIME_TOPIC, BrokerStart
from mqtt_relay.forwarder import Event, Forwarder, receipts_of
from mqtt_relay.identity import IdTokens
from mqtt_relay.settings import RelaySettings
from mqtt_relay.slots import Lease, LeaseLost
from mqtt_relay.streaks import FailureStreak

log = logging.getLogger("mqtt_relay")

PUBACK_TIMEOUT_S = 5.0
LEASE_CHECK_S = 1.0
#: how often a replica looks for a slot another replica left (one query) ...
LEFT_CHECK_S = 5.0
#: ... and how long that slot must stay free to be taken as abandoned: far longer than a replica takes to lease its
#: slot again once the database is back (``LEASE_CHECK_S``: a restart of PostgreSQL frees every slot at once, and a
#: live replica's session must not be emptied under it)
LEFT_AFTER_S = 15.0
#: the wait before the next upkeep when the last one left locks' access due
UPKEEP_AGAIN_S = 0.1
#: days before its broker certificate ends from which the relay's health report and log say so
CERTIFICATE_WARNING_DAYS = 30


class Relay:
    def __init__(self, settings: RelaySettings, lease: Lease) -> None:
        self.settings = settings
        self.db = settings.database(pool_size=2)
        self.lease = lease
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self.delivered = 0
        self.exit_code = 0
        # persistent session (clean_start=False with an expiry): unacknowledged events are redelivered after a crash
        self.client = sessions.new_client(settings, lease.client_id)
        self.certificate_expires = sessions.certificate_expiry(settings, lease.client_id)
        self._expiry_warned: float | None = None  # when the certificate's end coming was last logged
        with self.db.connection() as con:
            self.group = sessions.share_group(con)
        self.event_topics = sessions.event_topics(self.group)
        # back within 2 s of a restarted broker: Mosquitto 2.0 does not persist shared subscriptions (persist_write.c
        # saves a node's plain subscriptions only), and until a relay subscribes again the broker's plugin
        # (lockwise_acl.c) turns every lock away with its events unacknowledged (before it, they were acknowledged
        # and dropped: attack run 16, 48 reports of 10 locks in the 7 s the backoff, grown to 30 s, kept it away)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        identity = IdTokens(settings.id_token_audience).header if settings.id_token_audience else None
        self.forwarder = Forwarder(
            settings.devices_url,
            settings.service_token,
            batch=settings.event_batch,
            identity=identity,
            on_taken=self._after_taken,
        )
        self.drained = 0
        #: how long the broker has been up (heard live): the upkeep turns offline the locks not back since it started
        self.broker_start = BrokerStart()

    # ------------------------------------------------------------------------------------------------ MQTT side

    def _on_connect(self, client: mqtt.Client, _ud: Any, flags: Any, rc: ReasonCode, _props: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the relay", extra={"fields": {"reason": str(rc)}})
            return
        self.broker_start.forget()
        # every replica: plain subscriptions (not shared), nothing queued; first, so that the broker's run (retained)
        # comes before any event published since (``BrokerStart.tag``)
        client.subscribe([(RUN_TOPIC, 0), (UPTIME_TOPIC, 0)])
        client.subscribe(sessions.event_subscriptions(self.group))  # here, so subscriptions survive reconnects
        client.unsubscribe(sessions.LEGACY_EVENT_TOPICS)  # a session resumed from before the group had a secret name
        self.connected.set()
        self._wake.set()
        log.info("connected to broker", extra={"fields": {"session_present": bool(flags.session_present)}})

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _props: Any) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("disconnected from broker; reconnecting", extra={"fields": {"reason": str(rc)}})

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == UPTIME_TOPIC:
            self.broker_start.heard(bytes(msg.payload), retained=bool(msg.retain))
            return
        if msg.topic == RUN_TOPIC:
            self.broker_start.heard_run(bytes(msg.payload))
            return
        ack = functools.partial(self._ack, msg.mid, msg.qos)
        tag = self.broker_start.tag(msg.properties)
        self.forwarder.submit(Event.of(msg.topic, bytes(msg.payload), ack, tag, redelivered=bool(msg.dup), mid=msg.mid))

    def _ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    def publish(self, messages: list[tuple[str, str, int]]) -> list[bool]:
        """QoS 1, never retained (a retained unlock would open the door on the next reconnect), expiring in the
        broker with the command (an offline lock's session kept every copy of every re-send: attack run); all in
        flight at once, then each waited for until its PUBACK."""
        if not self.connected.is_set():
            return [False] * len(messages)
        infos = [
            self.client.publish(topic, payload, qos=1, retain=False, properties=_expiring(expires_in_s))
            for topic, payload, expires_in_s in messages
        ]
        return _acknowledged(infos)

    def clear_retained(self, cleared: list[str]) -> list[bool]:
        """An empty retained message at QoS 1 to each topic of ``cleared``, which deletes what the broker kept there
        (``retired.clear_due``); all in flight at once, then each waited for until its PUBACK. The relays' own
        subscriptions get each, empty: dropped unposted (``Forwarder.submit``)."""
        if not self.connected.is_set():
            return [False] * len(cleared)
        return _acknowledged([self.client.publish(topic, b"", qos=1, retain=True) for topic in cleared])

    # ------------------------------------------------------------------------------------------ outbox side

    def _listen(self) -> None:
        """Wake the delivery loop on every NOTIFY lockwise_commands (pg8000 reads them only with a reply)."""
        con: Connection | None = None
        lost = FailureStreak(log, "LISTEN connection (polling meanwhile)", level=logging.WARNING)
        while not self.stopping.is_set():
            try:
                if con is None:
                    con = self.db.connect()
                    con.run("LISTEN lockwise_commands")
                    lost.succeeded()
                sock = getattr(con, "_usock", None)
                ready = select.select([sock], [], [], 1.0)[0] if sock is not None else []
                if ready:
                    con.run("SELECT 1")
                    notifications = getattr(con, "notifications", None)
                    if notifications:
                        notifications.clear()
                        self._wake.set()
            except Exception as exc:  # noqa: BLE001 - the polling fallback covers us while the database is away
                lost.failed(exc)
                if con is not None:
                    with contextlib.suppress(Exception):
                        con.close()
                con = None
                self.stopping.wait(1.0)
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()

    def run(self) -> None:
        """Run until ``stop()``: connect, forward events, deliver commands."""
        self.forwarder.start()
        self.client.connect_async(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            keepalive=30,
            clean_start=False,
            properties=sessions.session_properties(self.settings.session_expiry_s),
        )
        self.client.loop_start()
        listener = threading.Thread(target=self._listen, name="listen", daemon=True)
        listener.start()
        threading.Thread(target=self._empty_abandoned_sessions, name="orphans", daemon=True).start()
        threading.Thread(target=self._upkeep, name="upkeep", daemon=True).start()
        last_lease_check = 0.0
        rounds_failing = FailureStreak(log, "delivery round")
        clearing_failing = FailureStreak(log, "clearing retired identities", level=logging.WARNING)
        while not self.stopping.is_set():
            self._wake.wait(self.settings.poll_s)
            self._wake.clear()
            if self.stopping.is_set():
                break
            try:
                delivered = outbox.deliver_due(self.db, self.publish, resend_after_s=self.settings.resend_after_s)
                self.delivered += len(delivered)
                for d in delivered:
                    log.info("command delivered", extra={"fields": {"command_id": d.command_id, "lock_id": d.lock_id}})
                rounds_failing.succeeded()
            except Exception as exc:  # noqa: BLE001 - database restarts are survived by retrying next round
                rounds_failing.failed(exc)
                self.stopping.wait(1.0)
            try:  # after the commands: a round's clearing waits up to PUBACK_TIMEOUT_S for a broker gone quiet
                if self.connected.is_set():
                    retired.clear_due(self.db, self.clear_retained)
                clearing_failing.succeeded()
            except Exception as exc:  # noqa: BLE001 - its rows wait for the next round
                clearing_failing.failed(exc)
            if time.monotonic() - last_lease_check > LEASE_CHECK_S:
                last_lease_check = time.monotonic()
                self._check_lease()
        self._shutdown(listener)

    def _after_taken(self, events: list[Event]) -> None:
        """Events the devices function took (or that it never will): each lock gets a receipt naming its state reports
        and acks among them, so it stops keeping them (docs/FIRMWARE.md, "Receipts"); at QoS 0, neither waited for
        nor queued for a lock away (one lost costs a lock's sending the event again, taken once). Any event of a lock
        (the relay takes its state reports, acks and statuses) may say it is back online, and clears what it was sent
        unanswered: its commands, held while it was known offline or at its allowance (``outbox.deliver_due``), go
        out in the next round at once, not at the next poll."""
        self._send_receipts(events)
        if events:
            self._wake.set()

    def _send_receipts(self, events: list[Event]) -> None:
        for lock, names in receipts_of(events).items():
            for message in receipts.messages(names):
                self.client.publish(topics.commands(lock), message, qos=0)

    def _upkeep(self) -> None:
        """Now and every ``flush_every_s``: the devices function's upkeep (``Forwarder.flush_mirror``), on a thread of
        its own. In the delivery loop, commands waited for it: a call takes up to its timeout, and its refresh of
        locks' access up to seconds when many edges fall together (a review). When it says locks' access is left
        due, again at once (``UPKEEP_AGAIN_S``): edges that fall together (every whole-day guest of a zone at its
        midnight) took a 10 s period for each 5 s budget of refreshes, their guests' open listeners kept meanwhile."""
        while not self.stopping.is_set():
            try:
                again = self.forwarder.flush_mirror(self.broker_start.uptime_s(), self.broker_start.run)
                self._certificate()  # its end logged as it nears, whether anyone reads the health report or not
            except Exception:  # noqa: BLE001 - never the upkeep's end: an error escaping here ended its thread for
                # good, silently to the health report, and the mirror, access and offline sweeps with it (attack
                # run 96: the broker's start forgotten by paho's thread mid-read)
                log.exception("relay upkeep failed; trying again at the next")
                again = False
            self.stopping.wait(UPKEEP_AGAIN_S if again else self.settings.flush_every_s)

    def _empty_abandoned_sessions(self) -> None:
        """Forward and end the sessions of slots no live replica holds: all of them now and every ``orphan_scan_s``
        (those of replicas gone before this one came), and in between, every ``LEFT_CHECK_S``, a slot a replica held
        that has stayed free ``LEFT_AFTER_S``: a replica killed and not replaced left its share of every lock's
        events in its session until the next scan, up to 5 minutes (attack run 68: 75 of 385 reports over 30 s
        late, acks after their commands expired). A scan that failed is tried again at the next check, not the next
        scan."""
        self.connected.wait(30)
        held_once: set[int] = set()  # slots seen held since this replica came
        free_since: dict[int, float] = {}
        next_scan = 0.0
        failing = False
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                with self.db.connection() as con:
                    left = slots_left(self.lease.held(con), held_once, free_since, now)
                scan = now >= next_scan
                # a full scan passes over a slot freed under LEFT_AFTER_S ago too: its replica may be leasing it
                # again after an outage of the database, during which the scan fell due (attack run 71)
                due = [s for s in range(1, self.lease.slots + 1) if now - free_since.get(s, -math.inf) >= LEFT_AFTER_S]
                for slot in due if scan else left:
                    if self.stopping.is_set():
                        break
                    if self._empty(slot):  # not when another held it: it may leave it later (attack run 71)
                        held_once.discard(slot)
                        free_since.pop(slot, None)
                if scan:
                    next_scan = now + self.settings.orphan_scan_s
                failing = False
            except Exception as exc:  # noqa: BLE001 - tried again at the next check
                if failing:  # one traceback an outage, not one every check
                    log.warning("emptying abandoned relay sessions still failing: %s", exc)
                else:
                    log.exception("emptying abandoned relay sessions failed")
                failing = True
            self.stopping.wait(LEFT_CHECK_S)

    def _empty(self, slot: int) -> bool:
        """Forward and end the session of ``slot`` if no replica holds it; whether it was free."""
        with self.lease.borrow(slot) as client_id:
            if client_id is None or self.stopping.is_set():
                return False
            self.drained += sessions.drain(
                self.settings, client_id, self.forwarder, self.event_topics, tag=self.broker_start.tag
            )
            return True

    def _check_lease(self) -> None:
        try:
            self.lease.check()
        except LeaseLost:
            log.exception("relay slot lost; stopping so that two replicas never share a session")
            self.exit_code = 3
            self.stopping.set()

    def _another_replica_listens(self) -> bool:
        try:
            return self.lease.others_alive()
        except Exception:  # noqa: BLE001 - unknown: stay subscribed (events wait in the session rather than vanish)
            return False

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def _shutdown(self, listener: threading.Thread) -> None:
        if self.connected.is_set() and self.exit_code == 0 and self._another_replica_listens():
            # leave the share group first, so the broker queues nothing more for this session while it is away (the
            # last replica stays in it: once it is gone, the broker's plugin holds the locks' events at the locks)
            with contextlib.suppress(RuntimeError, ValueError):
                self.client.unsubscribe([*self.event_topics, UPTIME_TOPIC, RUN_TOPIC])
        self.forwarder.stop()
        listener.join(timeout=3)
        self.client.disconnect()
        self.client.loop_stop()
        self.db.close()
        self.lease.release()
        log.info(
            "relay stopped", extra={"fields": {"delivered": self.delivered, "forwarded": self.forwarder.forwarded}}
        )

    # ------------------------------------------------------------------------------------------------- health

    def health(self) -> tuple[dict[str, Any], int]:
        broker = {"ok": self.connected.is_set(), "uptime_s": self.broker_start.uptime_s(), "run": self.broker_start.run}
        checks: dict[str, Any] = {"broker": broker}
        try:
            checks["database"] = {"ok": True, **outbox.lag(self.db)}
        except Exception as exc:  # noqa: BLE001 - health reports, never raises
            checks["database"] = {"ok": False, "error": type(exc).__name__}
        checks["forwarder"] = {
            "ok": self.forwarder.last_error is None,
            "queued": self.forwarder.queue.qsize(),
            "forwarded": self.forwarder.forwarded,
            "rejected": self.forwarder.rejected,
            "stale": self.forwarder.stale,
            "dropped": self.forwarder.dropped,
            "flooded": self.forwarder.flooded,
            "repeated": self.forwarder.repeated,
            "cleared": self.forwarder.cleared,
            **({"error": self.forwarder.last_error} if self.forwarder.last_error else {}),
        }
        healthy = all(c["ok"] for c in checks.values())
        body = {
            "service": "relay",
            "release": self.settings.release,
            "relay_id": self.lease.client_id,
            "drained": self.drained,
            "status": "ok" if healthy else "degraded",
            "delivered": self.delivered,
            "checks": checks,
            # Firestore or a prune failing for now: shown, not unhealthy (a restarted relay would meet the same)
            "upkeep": {"ok": self.forwarder.upkeep_error is None}
            | ({"error": self.forwarder.upkeep_error} if self.forwarder.upkeep_error else {}),
            # shown, not unhealthy until it ends (then the broker turns this slot away: "broker" says so)
            "certificate": self._certificate(),
        }
        return body, 200 if healthy else 503

    def _certificate(self) -> dict[str, Any]:
        """The slot's client certificate's end, ``ok`` while over ``CERTIFICATE_WARNING_DAYS`` away; logged as a
        warning (at most once a day) once it is nearer, by the upkeep and the health report: issued for a year, its
        end was said nowhere (attack run 57; read by the health report only, nothing polls it on Cloud Run: a
        review)."""
        ends = self.certificate_expires.isoformat()
        left = self.certificate_expires - dt.datetime.now(dt.UTC)
        ok = left > dt.timedelta(days=CERTIFICATE_WARNING_DAYS)
        warned = self._expiry_warned
        if not ok and (warned is None or time.monotonic() - warned > 86_400):
            self._expiry_warned = time.monotonic()
            log.warning(
                "the relay's broker certificate ends soon: issue new ones (python -m infra.lock_ca relay-certs)",
                extra={"fields": {"identity": self.lease.client_id, "expires_at": ends}},
            )
        return {"ok": ok, "expires_at": ends, "days_left": left.days}


def slots_left(held: set[int], held_once: set[int], free_since: dict[int, float], now: float) -> list[int]:
    """The slots a replica left: held once (``held_once``, grown here) and free since (``free_since``, kept here) at
    least ``LEFT_AFTER_S`` before ``now``, by the slots ``held`` now."""
    held_once |= held
    for slot in held:
        free_since.pop(slot, None)
    for slot in held_once - held:
        free_since.setdefault(slot, now)
    return sorted(slot for slot, since in free_since.items() if now - since >= LEFT_AFTER_S)


def _acknowledged(infos: list[mqtt.MQTTMessageInfo]) -> list[bool]:
    """Whether the broker acknowledged each of ``infos`` (in flight together) within ``PUBACK_TIMEOUT_S`` of now."""
    deadline = time.monotonic() + PUBACK_TIMEOUT_S
    results = []
    for info in infos:
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            results.append(False)
            continue
        results.append(info.is_published())
    return results


def _expiring(seconds: int) -> Properties:
    """A PUBLISH's MQTT 5 properties: the broker drops the message once ``seconds`` have passed undelivered."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = max(1, seconds)
    return properties
