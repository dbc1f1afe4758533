"""Run the relay: ``python -m mqtt_relay`` (configuration from the environment; see README)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

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
        relay = Relay(settings, lease)
        if stop.is_set():
            relay.stop()
        relay.run()
        return relay.exit_code
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
