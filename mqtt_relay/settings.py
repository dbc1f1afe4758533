"""The relay's configuration: its database, its broker session and the devices function's address.

The relay reads only what it uses: ``LOCKWISE_PROJECT_ID`` (the database it serves must be bound to it),
``DATABASE_URL`` and ``LOCKWISE_SERVICE_TOKEN`` (its credential towards the
devices function) are its secrets, plus its slots' broker certificates (a mounted file). It never reads the
command-signing key (commands are signed by the functions and stored signed in the outbox; the relay only carries
them) nor the lock CA.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from lockwise.core import deployment
from lockwise.core.config import (
    LOOPBACK_HOSTS,
    MAX_PORT,
    ConfigError,
    Mode,
    env_int,
    read_database_url,
    read_mode,
    read_project_id,
    read_service_token,
)
from lockwise.core.db import Database
from lockwise.devices import topics

#: an MQTT session expiry's most that still ends (four bytes, whose largest, 0xFFFFFFFF, means never: MQTT 5 3.1.2.11.2)
MAX_EXPIRY_S = 0xFFFFFFFE
DAY_S = 24 * 3600


@dataclass(frozen=True)
class RelaySettings:
    mode: Mode
    log_level: str
    #: what is deployed (``LOCKWISE_RELEASE``, set by the deploy): its health report says it
    release: str
    database_url: str
    service_token: str
    #: replicas lease a slot 1..slots in PostgreSQL; the slot names the MQTT session (see mqtt_relay.slots)
    slots: int
    session_expiry_s: int
    #: how often to look for abandoned replicas' sessions to empty (also once right after connecting)
    orphan_scan_s: int
    mqtt_host: str
    mqtt_port: int
    mqtt_ca_file: str
    #: JSON ``{identity: {"cert": PEM, "key": PEM}}``: one client certificate per slot (``python -m infra.lock_ca``)
    mqtt_client_certs: str
    devices_url: str
    health_port: int
    poll_s: float
    resend_after_s: int
    flush_every_s: int
    event_batch: int
    id_token_audience: str | None
    #: the deployment's Firebase project: the relay serves only a database bound to it (``lockwise.core.deployment``)
    project_id: str

    def database(self, pool_size: int) -> Database:
        """A pool whose every new connection finds the database is this deployment's (503 ``wrong_deployment``
        otherwise): a staging relay pointed at production's database leased one of its slots and carried its
        commands to staging's broker, where no production lock listens (attack run 116)."""
        return deployment.database(self.database_url, self.project_id, pool_size=pool_size)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RelaySettings:
        env = os.environ if environ is None else environ
        mode = read_mode(env)
        local = mode != "production"

        def required(name: str, default: str) -> str:
            value = env.get(name) or ""
            if not value:
                if local:
                    return default
                raise ConfigError(f"{name} is required for the relay and is not set")
            return value

        def file(name: str) -> str:
            path = env.get(name) or ""
            if not path:
                raise ConfigError(f"{name} is required for the relay and is not set")
            if not os.path.isfile(path):
                raise ConfigError(f"{name}={path} does not exist")
            return path

        return cls(
            mode=mode,
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            release=env.get("LOCKWISE_RELEASE", "dev"),
            database_url=read_database_url(env, mode),
            service_token=read_service_token(env, mode),
            slots=env_int(env, "LOCKWISE_RELAY_SLOTS", 8, minimum=1),
            # each at most what its use holds (attack run 119): an expiry is an MQTT four-byte integer, whose largest
            # means never (a connect past it raised in paho's thread, and the relay never connected); a wait past the
            # platform's time_t raised OverflowError in the upkeep's and the orphan scan's threads, ending them
            session_expiry_s=env_int(env, "LOCKWISE_RELAY_SESSION_EXPIRY_S", 3600, minimum=60, maximum=MAX_EXPIRY_S),
            orphan_scan_s=env_int(env, "LOCKWISE_RELAY_ORPHAN_SCAN_S", 300, minimum=1, maximum=DAY_S),
            mqtt_host=required("MQTT_HOST", "127.0.0.1"),
            mqtt_port=env_int(env, "MQTT_PORT", 8883, minimum=1, maximum=MAX_PORT),
            mqtt_ca_file=file("MQTT_CA_FILE"),
            mqtt_client_certs=file("MQTT_CLIENT_CERTS"),
            devices_url=_devices_url(required("LOCKWISE_DEVICES_URL", "http://127.0.0.1:8083"), local),
            # the platform names the port it probes (Cloud Run sets PORT from --port); 0 serves no health endpoint
            health_port=env_int(env, "PORT", 8090, minimum=0, maximum=MAX_PORT),
            poll_s=float(env_int(env, "LOCKWISE_RELAY_POLL_MS", 1000, minimum=50, maximum=60_000)) / 1000,
            resend_after_s=env_int(env, "LOCKWISE_RELAY_RESEND_AFTER_S", 5, minimum=1, maximum=3600),
            flush_every_s=env_int(env, "LOCKWISE_RELAY_FLUSH_EVERY_S", 10, minimum=1, maximum=DAY_S),
            event_batch=env_int(env, "LOCKWISE_RELAY_EVENT_BATCH", 500, minimum=1, maximum=topics.MAX_EVENTS_PER_BATCH),
            id_token_audience=env.get("LOCKWISE_RELAY_ID_TOKEN_AUDIENCE") or None,
            project_id=read_project_id(env, mode),
        )


def _devices_url(value: str, local: bool) -> str:
    """Where the relay sends lock events with its service token: outside local mode an ``https://`` address (plain
    ``http://`` only to this machine), or the token went in clear to whatever the setting named (attack run 89)."""
    url = value.strip().rstrip("/")
    if local:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    if not host or parts.scheme not in ("https", "http") or (parts.scheme == "http" and host not in LOOPBACK_HOSTS):
        raise ConfigError("LOCKWISE_DEVICES_URL must be an https:// address in production mode")
    return url
