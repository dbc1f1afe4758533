"""When the broker last started, read from Mosquitto's ``$SYS/broker/uptime`` ("<n> seconds", every
``sys_interval``).

A broker restart ends every lock's connection, and Mosquitto 2.0 keeps no last will across it (``persist_write.c``
saves none): a lock that does not come back never sends ``offline``. The relay hands the start to the devices
function with each upkeep, which turns offline the locks not heard from since (``lock_events.not_back_since``).
Only a live publish is read: a retained copy, given on subscribing, is as old as the broker's last publish (up to
``sys_interval``), and a start dated late would turn off a lock heard from just after it. A broker that publishes
no uptime (another broker, ``sys_interval 0``) leaves the start unknown, and nothing is turned offline.
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
    """The broker's last start in unix seconds on this relay's clock, once a live uptime was heard on this
    connection (None until then: a new connection may be to a broker that has just restarted)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started_at: float | None = None

    def heard(self, payload: bytes, *, retained: bool) -> None:
        """A message on ``UPTIME_TOPIC``."""
        if retained:
            return
        parsed = _UPTIME.fullmatch(payload)
        if parsed is None:
            log.warning("broker uptime not understood", extra={"fields": {"payload": payload[:40].decode("latin-1")}})
            return
        started_at = self._clock() - int(parsed[1])
        if self.started_at is None or abs(started_at - self.started_at) > 5:  # not the same start, read again
            log.info("broker start", extra={"fields": {"started_at": started_at}})
        self.started_at = started_at

    def forget(self) -> None:
        """A new connection: the broker may have restarted since the last uptime heard."""
        self.started_at = None
