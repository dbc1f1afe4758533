"""Run the relay: ``python -m mqtt_relay`` (configuration from the environment; see README)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from lockwise.core import errors
from lockwise.core import log as lwlog
from lockwise.core.config import ConfigError
from lockwise.core.db import Database
from mqtt_relay.health_server import serve
from mqtt_relay.relay import Relay
from mqtt_relay.settings import RelaySettings
from mqtt_relay.slots import Lease, NoFreeSlot

T = TypeVar("T")


def main() -> int:
    try:
        settings = RelaySettings.from_env()
    except ConfigError as exc:
        logging.basicConfig()
        logging.getLogger("mqtt_relay").error("configuration error: %s", exc)
        return 2
    lwlog.configure("relay", settings.log_level)
    stop = threading.Event()
    relay: Relay | None = None

    def on_signal(*_: object) -> None:
        stop.set()
        if relay is not None:
            relay.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def health() -> tuple[dict[str, Any], int]:
        if relay is None:  # no slot leased yet: the database has not been reached
            return {"service": "relay", "status": "starting", "checks": {"database": {"ok": False}}}, 503
        return relay.health()

    server = serve(settings.health_port, health) if settings.health_port else None
    try:
        lease = Lease(Database(settings.database_url, pool_size=1), settings.slots)
        try:
            if when_reachable(stop, lease.acquire, "lease a relay slot") is None:
                return 0  # stopped before the database was reached
        except NoFreeSlot as exc:
            logging.getLogger("mqtt_relay").error("%s", exc)
            return 2
        # it reads its share group: a database lost since the lease is waited for too (the lease itself is taken
        # again by the relay's first check)
        relay = when_reachable(stop, lambda: Relay(settings, lease), "start the relay")
        if relay is None:
            return 0
        if stop.is_set():
            relay.stop()
        relay.run()
        return relay.exit_code
    finally:
        if server is not None:
            server.shutdown()


#: the longest wait between two tries to reach the database at start
START_WAIT_MAX_S = 10.0


def when_reachable(stop: threading.Event, attempt: Callable[[], T], doing: str) -> T | None:
    """``attempt()``, tried again (after 0.5 s, doubling up to ``START_WAIT_MAX_S``) while the database cannot be
    reached: a replica started during an outage (as the platform restarts one that crashed) exited at once, and none
    ran until someone started one by hand (attack run 13: 2.5 minutes, every command of the time expired unsent).
    None when ``stop`` is set meanwhile."""
    wait = 0.5
    while not stop.is_set():
        try:
            return attempt()
        except errors.Unavailable as exc:
            logging.getLogger("mqtt_relay").warning(
                "database unreachable: waiting to %s",
                doing,
                extra={"fields": {"error": str(exc.__cause__ or exc), "retry_in_s": wait}},
            )
        stop.wait(wait)
        wait = min(wait * 2, START_WAIT_MAX_S)
    return None


if __name__ == "__main__":
    sys.exit(main())
