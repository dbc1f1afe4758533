"""Run the relay: ``python -m mqtt_relay`` (configuration from the environment; see README)."""

from __future__ import annotations

import logging
import signal
import sys

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
    lease = Lease(Database(settings.database_url, pool_size=1), settings.slots)
    try:
        lease.acquire()
    except NoFreeSlot as exc:
        logging.getLogger("mqtt_relay").error("%s", exc)
        return 2
    relay = Relay(settings, lease)
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    signal.signal(signal.SIGINT, lambda *_: relay.stop())
    server = serve(settings.health_port, relay.health) if settings.health_port else None
    try:
        relay.run()
    finally:
        if server is not None:
            server.shutdown()
    return relay.exit_code


if __name__ == "__main__":
    sys.exit(main())
