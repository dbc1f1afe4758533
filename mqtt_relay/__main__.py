"""Run the relay: ``python -m mqtt_relay`` (configuration from the environment; see README)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

from lockwise.core import errors
from lockwise.core import log as lwlog
from lockwise.core.config import ConfigError
from lockwise.core.db import Database
from mqtt_relay.health_server import serve
from mqtt_relay.relay import Relay
from mqtt_relay.settings import RelaySettings
from mqtt_relay.slots import Lease, NoFreeSlot


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
            if lease.acquire_when_reachable(stop) is None:
                return 0  # stopped before the database was reached
        except NoFreeSlot as exc:
            logging.getLogger("mqtt_relay").error("%s", exc)
            return 2
        relay = _made(settings, lease, stop)
        if relay is None:
            return 0
        if stop.is_set():
            relay.stop()
        relay.run()
        return relay.exit_code
    finally:
        if server is not None:
            server.shutdown()


def _made(settings: RelaySettings, lease: Lease, stop: threading.Event) -> Relay | None:
    """The relay, once the database answers it (it reads its share group): one lost between the lease and this
    waits as the lease did (the lease itself is taken again by the relay's first check); None when stopped."""
    while not stop.is_set():
        try:
            return Relay(settings, lease)
        except errors.Unavailable as exc:
            logging.getLogger("mqtt_relay").warning("database unreachable: waiting to start the relay: %s", exc)
            stop.wait(1.0)
    return None


if __name__ == "__main__":
    sys.exit(main())
