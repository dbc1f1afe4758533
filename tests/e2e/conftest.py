"""End-to-end fixtures: the devices function served over HTTP, relays as their own processes, paired simulated
locks on the real broker."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.local import services
from lockwise.core.db import Database
from simlock.lock import LockConfig, SimulatedLock, provision
from tests.conftest import _reset_database, reset_auth, reset_firestore, services_env

COMMAND_TTL_S = 6


@pytest.fixture(scope="session")
def e2e_env(
    postgres: services.Postgres,
    firestore_emulator: services.Emulator,
    auth_emulator: services.Emulator,
    broker: services.Broker,
    command_signing_key: str,
) -> dict[str, str]:
    return {
        **services_env(postgres, firestore_emulator, auth_emulator, broker, command_signing_key),
        "LOCKWISE_COMMAND_TTL_S": str(COMMAND_TTL_S),
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(broker.port),
        "MQTT_CA_FILE": str(broker.ca_file),
        "MQTT_CLIENT_CERTS": str(broker.relay_certs),
        "LOCKWISE_RELAY_POLL_MS": "200",
        "LOCKWISE_RELAY_RESEND_AFTER_S": "2",
        "LOCKWISE_RELAY_FLUSH_EVERY_S": "1",
    }


@pytest.fixture(scope="session")
def served_devices(e2e_env: dict[str, str], workdir: Path) -> Iterator[services.FunctionServer]:
    server = services.start_function("devices", services.free_port(), e2e_env, workdir / "served")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def e2e(
    e2e_env: dict[str, str],
    served_devices: services.FunctionServer,
    postgres: services.Postgres,
    firestore_emulator: services.Emulator,
    auth_emulator: services.Emulator,
) -> Iterator[dict[str, Any]]:
    """The environment of one end-to-end test; data is reset afterwards."""
    db = Database(postgres.url)
    yield {"env": {**e2e_env, "LOCKWISE_DEVICES_URL": served_devices.url}, "url": served_devices.url, "db": db}
    db.close()
    _reset_database(postgres)
    reset_firestore(firestore_emulator)
    reset_auth(auth_emulator)


@pytest.fixture
def relays(e2e: dict[str, Any], workdir: Path) -> Iterator[Callable[..., services.Process]]:
    """Start relays; all are stopped at the end of the test."""
    started: list[services.Process] = []

    def start(relay_id: str | None = None, *, listening: bool = True, **env: str) -> services.Process:
        proc = services.start_relay(
            workdir / "relays",
            {**e2e["env"], **env},
            relay_id=relay_id or f"relay-{secrets.token_hex(3)}",
            listening=listening,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


class App:
    """The owner's app, over HTTP."""

    def __init__(self, base_url: str, sign_up: Callable[..., dict[str, Any]]) -> None:
        self.base = base_url
        self.account = sign_up()
        self.headers = {"Authorization": f"Bearer {self.account['idToken']}"}

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(
            method, f"{self.base}{path}", headers={**self.headers, **kw.pop("headers", {})}, timeout=15, **kw
        )

    def unlock(self, lock_id: str, action: str = "unlock") -> dict[str, Any]:
        resp = self.call("POST", f"/devices/locks/{lock_id}/commands", json={"action": action})
        assert resp.status_code == 202, resp.text
        command: dict[str, Any] = resp.json()["command"]
        return command

    def command_status(self, lock_id: str, command_id: str) -> str:
        return str(self.call("GET", f"/devices/locks/{lock_id}/commands/{command_id}").json()["command"]["status"])


@pytest.fixture
def app(e2e: dict[str, Any], sign_up: Callable[..., dict[str, Any]]) -> App:
    return App(e2e["url"], sign_up)


@pytest.fixture
def paired_lock(
    e2e: dict[str, Any], app: App, broker: services.Broker
) -> Iterator[Callable[[], tuple[str, SimulatedLock]]]:
    """Pair new simulated locks through the API, as the firmware would, and connect them."""
    locks: list[SimulatedLock] = []

    def pair(name: str = "Front door") -> tuple[str, SimulatedLock]:
        created = app.call("POST", "/devices/locks", json={"name": name}).json()
        config: LockConfig = provision(
            e2e["url"], created["provisioning"]["code"], str(broker.ca_file), host="127.0.0.1"
        )
        lock = SimulatedLock(config)
        lock.start()
        locks.append(lock)
        return created["lock"]["id"], lock

    yield pair
    for lock in locks:
        lock.stop(graceful=False)


def db_one(e2e: dict[str, Any], sql: str, **params: Any) -> Any:
    """The first row of a query on the test's database, or None."""
    with e2e["db"].connection() as con:
        rows = con.run(sql, **params)
    return rows[0] if rows else None
