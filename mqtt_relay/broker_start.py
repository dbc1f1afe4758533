"""How long the broker has been up, read from Mosquitto's ``$SYS/broker/uptime`` ("<n> seconds", every
``sys_interval`` + 1 s).

A broker restart ends every lock's connection, and Mosquitto 2.0 keeps no last will across a crash
(``persist_write.c`` saves none): a lock that does not come back never sends ``offline``. The relay hands the
broker's uptime to the devices function with each upkeep, which turns offline the locks whose connection it heard of
before the broker started (``lock_events.not_back_since``). An uptime, not a time of day: the function dates the start
on its own clock, and the relay's clock running ahead of it turned live locks offline (a review). A request held up
dates the start late (attack run 18): the upkeep also says when it was sent, and the function skips the sweep for
one more than 2 s old by its clock.

Only a live publish is read: a retained copy, given on subscribing, is as old as the broker's last publish (up to
11 s), and a start dated late would turn off a lock heard of just after the real start. Each reading is late by its
delivery, so of a connection's readings the one that dates the start earliest is kept (one broker start per
connection: a restart ends it). A broker that publishes no uptime (another broker, ``sys_interval 0``) leaves it
unknown, and nothing is turned offline.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

#: the broker's uptime, published by Mosquitto every ``sys_interval`` seconds (retained)
UPTIME_TOPIC = "$SYS/broker/uptime"
_UPTIME = re.compile(rb"([0-9]{1,10}) seconds")

log = logging.getLogger("mqtt_relay.broker_start")


class BrokerStart:
    """The broker's start on this relay's monotonic clock, once a live uptime was heard on this connection."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: float | None = None

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

    def uptime_s(self) -> float | None:
        """How long the broker has been up now, as far as this relay knows (None: not known on this connection)."""
        return None if self._started is None else round(self._clock() - self._started, 3)

    def forget(self) -> None:
        """A new connection: the broker may have restarted since the last uptime heard."""
        self._started = None
