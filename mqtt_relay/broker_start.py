"""How long the broker has been up, read from Mosquitto's ``$SYS/broker/uptime`` ("<n> seconds", every
``sys_interval`` + 1 s).

A broker restart ends every lock's connection, and Mosquitto 2.0 keeps no last will across a crash
(``persist_write.c`` saves none): a lock that does not come back never sends ``offline``. The relay hands the
broker's uptime to the devices function with each upkeep, which turns offline the locks whose connection it heard of
before the broker started (``lockwise.devices.broker_restarts``). An uptime, not a time of day: the function dates
the start on its own clock, and the relay's clock running ahead of it turned live locks offline (a review). A request
held up dates the start late (attack run 18): the upkeep also says when it was sent, and the function skips the sweep
for one more than 2 s old by its clock.

Only a live publish is read: a retained copy, given on subscribing, is as old as the broker's last publish (up to
11 s), and a start dated late would turn off a lock heard of just after the real start. Each reading is late by its
delivery, so of a connection's readings the one that dates the start earliest is kept (one broker start per
connection: a restart ends it). A broker that publishes no uptime (another broker, ``sys_interval 0``) leaves it
unknown, and nothing is turned offline.

The uptime dates the start only to within seconds, so the function allows a slack, and a lock that connected in the
seconds before a second crash fell within it and stayed online (attack run 18). So the broker's plugin
(``infra/broker/lockwise_acl.c``) numbers its run (its start, in microseconds on the broker's clock), publishes the
number on ``RUN_TOPIC`` (retained, under ``$SYS``: never persisted, so only the running broker's) and tags each
lock message with it as it takes it (``RUN_PROPERTY``, an MQTT 5 user property, in place of the lock's own). The relay
forwards each event's tag and sends the run it read with the upkeep: a lock heard from on an earlier run is not
connected, whatever any clock says. The tag is the run the message was published in, even for one delivered after
a restart from the relay's persisted session. A last will goes out without the plugin's tagging, with properties of
its lock's choosing: a run newer than the broker's is not taken (``BrokerStart.tag``; the function bounds it too).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from lockwise.devices import topics

#: the broker's uptime, published by Mosquitto every ``sys_interval`` seconds (retained)
UPTIME_TOPIC = "$SYS/broker/uptime"
_UPTIME = re.compile(rb"([0-9]{1,10}) seconds")
#: the broker's run, published by its plugin once it runs (retained)
RUN_TOPIC = "$SYS/broker/lockwise/run"
#: the user property the plugin tags each lock message with: the run it was published in
RUN_PROPERTY = "lockwise-run"
_RUN = re.compile(r"[1-9][0-9]{0,18}")

log = logging.getLogger("mqtt_relay.broker_start")


class BrokerStart:
    """The broker's start on this relay's monotonic clock, once a live uptime was heard on this connection."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: float | None = None
        #: the broker's run, read on this connection (``RUN_TOPIC``)
        self.run: int | None = None

    def heard_run(self, payload: bytes) -> None:
        """A message on ``RUN_TOPIC``: retained or live, it is the running broker's (``$SYS`` is never persisted)."""
        run = parse_run(payload.decode("latin-1"))
        if run is None:
            log.warning("broker run not understood", extra={"fields": {"payload": payload[:40].decode("latin-1")}})
        elif run != self.run:
            log.info("broker run read", extra={"fields": {"run": run}})
            self.run = run

    def heard(self, payload: bytes, *, retained: bool) -> None:
        """A message on ``UPTIME_TOPIC``."""
        if retained:
            return
        parsed = _UPTIME.fullmatch(payload)
        if parsed is None:
            log.warning("broker uptime not understood", extra={"fields": {"payload": payload[:40].decode("latin-1")}})
            return
        started = self._clock() - int(parsed[1])
        if self._started is None:
            log.info("broker uptime read", extra={"fields": {"uptime_s": int(parsed[1])}})
        self._started = started if self._started is None else min(self._started, started)

    def tag(self, properties: Any) -> int | None:
        """The run a lock message was published in (``run_of``), unless it is newer than the broker's own: only a last
        will, which the plugin cannot tag, carries a run its lock chose. Before the run is read (what a resumed
        session held comes right after the CONNACK; the run topic is subscribed to before the events, so nothing
        newer comes before it) a tag is taken as it is, and the devices function takes none more than 10 minutes
        ahead: dropped, the tag of a live lock's new connection queued there was lost, and its row, left on the
        run before, was turned offline at the next upkeep."""
        run, broker = run_of(properties), self.run  # read once: a drained session's thread calls this while paho's
        # network thread may ``forget`` the run (None between a test and a comparison was a TypeError: attack run 96)
        return None if run is None or (broker is not None and run > broker) else run

    def uptime_s(self) -> float | None:
        """How long the broker has been up now, as far as this relay knows (None: not known on this connection). Read
        once: the upkeep's and the health report's threads ask while paho's may ``forget`` it on a reconnect, and
        None between the test and the subtraction was a TypeError that ended the upkeep's thread for good (attack run
        96)."""
        started = self._started
        return None if started is None else round(self._clock() - started, 3)

    def forget(self) -> None:
        """A new connection: the broker may have restarted since the last uptime and run heard."""
        self._started = None
        self.run = None


def parse_run(text: str) -> int | None:
    """A run's number as the plugin writes it (decimal, no sign or leading zero), or None."""
    return int(text) if _RUN.fullmatch(text) and topics.is_run(int(text)) else None


def run_of(properties: Any) -> int | None:
    """The run a lock message was published in: the plugin's tag among its MQTT 5 user properties (None: untagged,
    a broker without the plugin)."""
    pairs = getattr(properties, "UserProperty", None) or []
    tags = [value for name, value in pairs if name == RUN_PROPERTY]
    return parse_run(tags[0]) if len(tags) == 1 else None
