"""The relay's configuration: the shared settings plus its broker session and the devices function's address."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lockwise.config import ConfigError, Settings, env_int, is_placeholder


@dataclass(frozen=True)
class RelaySettings:
    base: Settings
    relay_id: str
    mqtt_host: str
    mqtt_port: int
    mqtt_ca_file: str
    mqtt_username: str
    mqtt_password: str
    devices_url: str
    health_port: int
    poll_s: float
    resend_after_s: int
    flush_every_s: int
    event_batch: int
    id_token_audience: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RelaySettings:
        env = os.environ if environ is None else environ
        base = Settings.from_env(env)
        local = not base.is_production

        def required(name: str, default: str | None = None, *, secret: bool = False) -> str:
            value = env.get(name) or ""
            if not value:
                if default is not None and local:
                    return default
                raise ConfigError(f"{name} is required for the relay and is not set")
            if secret and not local and is_placeholder(value):
                raise ConfigError(f"{name} holds a placeholder value; set a real secret in production mode")
            return value

        ca_file = required("MQTT_CA_FILE")
        if not os.path.isfile(ca_file):
            raise ConfigError(f"MQTT_CA_FILE={ca_file} does not exist")
        return cls(
            base=base,
            relay_id=env.get("LOCKWISE_RELAY_ID", "relay-1"),
            mqtt_host=required("MQTT_HOST", "127.0.0.1"),
            mqtt_port=env_int(env, "MQTT_PORT", 8883, minimum=1),
            mqtt_ca_file=ca_file,
            mqtt_username=required("MQTT_USERNAME", "lockwise-relay"),
            mqtt_password=required("MQTT_PASSWORD", secret=True),
            devices_url=required("LOCKWISE_DEVICES_URL", "http://127.0.0.1:8083").rstrip("/"),
            health_port=env_int(env, "LOCKWISE_RELAY_HEALTH_PORT", 8090, minimum=0),
            poll_s=float(env_int(env, "LOCKWISE_RELAY_POLL_MS", 1000, minimum=50)) / 1000,
            resend_after_s=env_int(env, "LOCKWISE_RELAY_RESEND_AFTER_S", 5, minimum=1),
            flush_every_s=env_int(env, "LOCKWISE_RELAY_FLUSH_EVERY_S", 10, minimum=1),
            event_batch=env_int(env, "LOCKWISE_RELAY_EVENT_BATCH", 100, minimum=1),
            id_token_audience=env.get("LOCKWISE_RELAY_ID_TOKEN_AUDIENCE") or None,
        )
