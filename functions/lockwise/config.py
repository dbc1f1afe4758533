"""One frozen settings object, read from the environment once per process.

``Settings.from_env()`` is the only place that reads configuration. Outside local mode, a missing or placeholder
secret stops start-up with a message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Mode = Literal["local", "test", "production"]
MODES: tuple[Mode, ...] = ("local", "test", "production")

#: Values that mark a secret as "not really set"; refused outside local/test mode.
PLACEHOLDERS = frozenset({"", "changeme", "change-me", "local-dev-only", "secret", "password", "lockwise", "test"})

LOCAL_DATABASE_URL = "postgresql://lockwise:local-dev-only@127.0.0.1:55432/lockwise"
LOCAL_SERVICE_TOKEN = "local-dev-only"


class ConfigError(RuntimeError):
    """Configuration is missing or unsafe; raised at start-up, never per request."""


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration (see README "Environment variables" for each one)."""

    mode: Mode
    project_id: str
    database_url: str
    service_token: str
    firestore_emulator_host: str | None
    auth_emulator_host: str | None
    release: str
    log_level: str
    max_body_bytes: int
    db_pool_size: int
    #: Ed25519 private key (base64 of the 32-byte seed) that signs every command a lock receives.
    command_signing_key: str
    command_ttl_s: int
    provisioning_ttl_s: int
    invitation_ttl_s: int
    lock_request_skew_s: int
    #: The broker address handed to a lock when it is provisioned.
    mqtt_public_host: str
    mqtt_public_port: int
    #: voice: which encoder and where its files are (see lockwise.voice.encoder)
    encoder: str
    model_dir: str | None
    #: how verify runs ECAPA-TDNN: its ONNX export (no torch, the default) or SpeechBrain (the reference)
    verify_runtime: str
    audio_min_s: float
    audio_max_s: float
    audio_min_speech_s: float
    enroll_min_samples: int
    enroll_max_samples: int
    #: overrides of the encoder's calibrated defaults (None: use the encoder's)
    voice_threshold: float | None
    voice_margin: float | None
    enroll_agreement: float | None
    enroll_min_speech_s: float | None
    lockout_after: int
    lockout_base_s: int
    debug_rejected_dir: str | None
    #: serve the relay's endpoints (off on the public devices service; on for the internal one)
    relay_routes: bool

    @property
    def is_production(self) -> bool:
        return self.mode == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        mode_raw = env.get("LOCKWISE_MODE", "local").strip().lower()
        if mode_raw not in MODES:
            raise ConfigError(f"LOCKWISE_MODE must be one of {', '.join(MODES)}, got {mode_raw!r}")
        mode: Mode = mode_raw
        local = mode != "production"

        def secret(name: str, local_default: str) -> str:
            value = env.get(name)
            if value is None or value == "":
                if local:
                    return local_default
                raise ConfigError(f"{name} is required in production mode and is not set")
            if not local and is_placeholder(value):
                raise ConfigError(f"{name} holds a placeholder value; set a real secret in production mode")
            return value

        database_url = secret("DATABASE_URL", LOCAL_DATABASE_URL)
        if not local and is_placeholder(_password_of(database_url)):
            raise ConfigError("DATABASE_URL carries a placeholder password; set a real one in production mode")

        firestore_emulator = env.get("FIRESTORE_EMULATOR_HOST") or None
        auth_emulator = env.get("FIREBASE_AUTH_EMULATOR_HOST") or None
        if not local and (firestore_emulator or auth_emulator):
            raise ConfigError(
                "FIRESTORE_EMULATOR_HOST / FIREBASE_AUTH_EMULATOR_HOST must not be set in production mode "
                "(emulator tokens are unsigned)"
            )
        project_id = env.get("LOCKWISE_PROJECT_ID") or env.get("GOOGLE_CLOUD_PROJECT") or ""
        if not project_id:
            if not local:
                raise ConfigError("LOCKWISE_PROJECT_ID (or GOOGLE_CLOUD_PROJECT) is required in production mode")
            project_id = "demo-lockwise"

        settings = cls(
            mode=mode,
            project_id=project_id,
            database_url=database_url,
            service_token=secret("LOCKWISE_SERVICE_TOKEN", LOCAL_SERVICE_TOKEN),
            firestore_emulator_host=firestore_emulator,
            auth_emulator_host=auth_emulator,
            release=env.get("LOCKWISE_RELEASE", "dev"),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            max_body_bytes=env_int(env, "LOCKWISE_MAX_BODY_BYTES", 2_000_000, minimum=1024),
            db_pool_size=env_int(env, "LOCKWISE_DB_POOL_SIZE", 4, minimum=1),
            command_signing_key=_signing_key(env, local),
            command_ttl_s=env_int(env, "LOCKWISE_COMMAND_TTL_S", 30, minimum=5),
            provisioning_ttl_s=env_int(env, "LOCKWISE_PROVISIONING_TTL_S", 600, minimum=60),
            invitation_ttl_s=env_int(env, "LOCKWISE_INVITATION_TTL_S", 7 * 24 * 3600, minimum=3600),
            lock_request_skew_s=env_int(env, "LOCKWISE_LOCK_REQUEST_SKEW_S", 60, minimum=5),
            mqtt_public_host=env.get("LOCKWISE_MQTT_PUBLIC_HOST", "127.0.0.1"),
            mqtt_public_port=env_int(env, "LOCKWISE_MQTT_PUBLIC_PORT", 8883, minimum=1),
            encoder=_choice(env, "LOCKWISE_ENCODER", ("ecapa", "ge2e", "auto"), "auto"),
            model_dir=env.get("LOCKWISE_MODEL_DIR") or None,
            verify_runtime=_choice(env, "LOCKWISE_VERIFY_RUNTIME", ("onnx", "speechbrain"), "onnx"),
            audio_min_s=env_float(env, "LOCKWISE_AUDIO_MIN_S", 2.0, 0.5, 60),
            audio_max_s=env_float(env, "LOCKWISE_AUDIO_MAX_S", 15.0, 1.0, 120),
            audio_min_speech_s=env_float(env, "LOCKWISE_AUDIO_MIN_SPEECH_S", 1.0, 0.0, 60),
            enroll_min_samples=env_int(env, "LOCKWISE_ENROLL_MIN_SAMPLES", 3, minimum=1),
            enroll_max_samples=env_int(env, "LOCKWISE_ENROLL_MAX_SAMPLES", 5, minimum=1),
            voice_threshold=_optional_float(env, "LOCKWISE_VOICE_THRESHOLD", -1, 1),
            voice_margin=_optional_float(env, "LOCKWISE_VOICE_MARGIN", 0, 2),
            enroll_agreement=_optional_float(env, "LOCKWISE_ENROLL_AGREEMENT", -1, 1),
            enroll_min_speech_s=_optional_float(env, "LOCKWISE_ENROLL_MIN_SPEECH_S", 0, 60),
            lockout_after=env_int(env, "LOCKWISE_LOCKOUT_AFTER", 5, minimum=1),
            lockout_base_s=env_int(env, "LOCKWISE_LOCKOUT_BASE_S", 30, minimum=1 if local else 30),
            debug_rejected_dir=_debug_dir(env, local),
            relay_routes=_choice(env, "LOCKWISE_RELAY_ROUTES", ("on", "off"), "on") == "on",
        )
        if not 2 <= settings.enroll_min_samples <= settings.enroll_max_samples <= 20:
            raise ConfigError("LOCKWISE_ENROLL_MIN_SAMPLES/MAX_SAMPLES must satisfy 2 <= min <= max <= 20")
        if settings.audio_min_s >= settings.audio_max_s:
            raise ConfigError("LOCKWISE_AUDIO_MIN_S must be below LOCKWISE_AUDIO_MAX_S")
        return settings


def env_float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def _optional_float(env: Mapping[str, str], name: str, low: float, high: float) -> float | None:
    return env_float(env, name, 0.0, low, high) if env.get(name) else None


def _choice(env: Mapping[str, str], name: str, options: tuple[str, ...], default: str) -> str:
    value = env.get(name) or default
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def _debug_dir(env: Mapping[str, str], local: bool) -> str | None:
    value = env.get("LOCKWISE_DEBUG_REJECTED_DIR") or None
    if value and not local:
        raise ConfigError("LOCKWISE_DEBUG_REJECTED_DIR (saving rejected voice samples) is refused in production mode")
    return value


def _signing_key(env: Mapping[str, str], local: bool) -> str:
    import base64
    import binascii

    raw = env.get("LOCKWISE_COMMAND_SIGNING_KEY", "")
    if not raw:
        if not local:
            raise ConfigError("LOCKWISE_COMMAND_SIGNING_KEY is required in production mode and is not set")
        # Local only: a per-process key. Set the variable when several processes sign (./dev stack does).
        return base64.b64encode(os.urandom(32)).decode()
    try:
        seed = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("LOCKWISE_COMMAND_SIGNING_KEY must be base64 of a 32-byte Ed25519 seed") from exc
    if len(seed) != 32:
        raise ConfigError("LOCKWISE_COMMAND_SIGNING_KEY must be base64 of a 32-byte Ed25519 seed")
    if not local and len(set(seed)) < 8:
        raise ConfigError("LOCKWISE_COMMAND_SIGNING_KEY looks like a placeholder; generate a random key")
    return raw


def is_placeholder(value: str | None) -> bool:
    return value is None or value.strip().lower() in PLACEHOLDERS


def _password_of(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).password


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()
