"""Run the relay: ``python -m mqtt_relay`` (configuration from the environment; see README)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from lockwise.core import deployment, errors, migrate
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

    waiting: dict[str, str] = {}  # what the start waits for (``when_reachable``'s last error code)

    def health() -> tuple[dict[str, Any], int]:
        if relay is None:  # no slot leased yet: the database has not been reached, or lacks a migration
            database = {"ok": False, **waiting}
            return {
                "service": "relay",
                "release": settings.release,
                "status": "starting",
                "checks": {"database": database},
            }, 503
        return relay.health()

    server = serve(settings.health_port, health) if settings.health_port else None
    try:
        db = settings.database(pool_size=1)
        # a relay deployed ahead of its migration failed every delivery round on a table it lacked, its health 200
        # (attack run 62): it waits for the migration job instead, saying so
        if when_reachable(stop, lambda: current_schema(db), "find the migrations it needs", waiting) is None:
            return 0
        lease = Lease(db, settings.slots)
        try:
            if when_reachable(stop, lease.acquire, "lease a relay slot", waiting) is None:
                return 0  # stopped before the database was reached
        except NoFreeSlot as exc:
            logging.getLogger("mqtt_relay").error("%s", exc)
            return 2
        # it reads its share group: a database lost since the lease is waited for too (the lease itself is taken
        # again by the relay's first check)
        relay = when_reachable(stop, lambda: Relay(settings, lease), "start the relay", waiting)
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


def current_schema(db: Database) -> int:
    """The database's last migration, once it has every one bundled here (503 ``schema_behind`` before)."""
    with db.connection() as con:
        return migrate.require_current(con)


def when_reachable(stop: threading.Event, attempt: Callable[[], T], doing: str, waiting: dict[str, str]) -> T | None:
    """``attempt()``, tried again (after 0.5 s, doubling up to ``START_WAIT_MAX_S``) while the database cannot be
    reached or lacks a migration: a replica started during an outage (as the platform restarts one that crashed)
    exited at once, and none ran until someone started one by hand (attack run 13: 2.5 minutes, every command of the
    time expired unsent). ``waiting`` holds what it waits for meanwhile (the health report shows it). None when
    ``stop`` is set meanwhile."""
    wait = 0.5
    logger = logging.getLogger("mqtt_relay")
    while not stop.is_set():
        try:
            found = attempt()
        except errors.Unavailable as exc:
            waiting["error"] = exc.code
            if exc.code in (migrate.SCHEMA_BEHIND, deployment.WRONG_DEPLOYMENT):  # to put right, not to wait out
                logger.error("%s: waiting to %s", exc.message, doing, extra={"fields": {"retry_in_s": wait}})
            else:
                logger.warning(
                    "database unreachable: waiting to %s",
                    doing,
                    extra={"fields": {"error": str(exc.__cause__ or exc), "retry_in_s": wait}},
                )
        else:
            waiting.pop("error", None)
            return found
        stop.wait(wait)
        wait = min(wait * 2, START_WAIT_MAX_S)
    return None


if __name__ == "__main__":
    sys.exit(main())
