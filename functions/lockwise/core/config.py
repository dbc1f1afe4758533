"""Settings, read from the environment once per process, each deployable reading only what it uses.

``Settings.from_env(component=...)`` serves the three functions; the relay (``mqtt_relay.settings``) and the migration
job (``DatabaseSettings``) read their own, smaller sets with the same readers. Outside local
mode a missing or placeholder secret *of that process* stops start-up with a message naming the variable; a secret
the process does not use is never read, so no process demands another's (the relay never holds the command-signing
key).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import SplitResult, parse_qs

from lockwise.core.database_url import split_url

Mode = Literal["local", "test", "production"]
MODES: tuple[Mode, ...] = ("local", "test", "production")

#: Values that mark a secret as "not really set"; refused outside local/test mode.
PLACEHOLDERS = frozenset({"", "changeme", "change-me", "local-dev-only", "secret", "password", "lockwise", "test"})

LOCAL_DATABASE_URL = "postgresql://lockwise:local-dev-only@127.0.0.1:55432/lockwise"
LOCAL_SERVICE_TOKEN = "local-dev-only"
#: the longest a clip sent again is answered with its decision (``LOCKWISE_VOICE_SENT_AGAIN_S``'s bound): a decided
#: clip's identity is kept no longer (``lockwise.core.retention``)
VOICE_SENT_AGAIN_MAX_S = 600
#: the largest TCP port (a broker's port told to locks, the relay's)
MAX_PORT = 65535

#: The one switch that lets a production-mode process use the local stand-ins of managed services (the Firestore and
#: Auth emulators) for the production rehearsal (tests/rehearsal). Refused on Cloud Run, where the platform sets
#: ``K_SERVICE`` (services) or ``CLOUD_RUN_JOB`` (jobs); ``infra/deploy.py`` never sets it (tested).
REHEARSAL_SWITCH = "LOCKWISE_REHEARSAL"
CLOUD_RUN_MARKERS = ("K_SERVICE", "CLOUD_RUN_JOB")

DATABASE_URL = "DATABASE_URL"
SERVICE_TOKEN = "LOCKWISE_SERVICE_TOKEN"
COMMAND_SIGNING_KEY = "LOCKWISE_COMMAND_SIGNING_KEY"
LOCK_CA = "LOCKWISE_LOCK_CA"

#: The secrets each function reads. devices reads the service token only where it serves the relay's routes.
FUNCTION_SECRETS: dict[str, frozenset[str]] = {
    "embed": frozenset({DATABASE_URL, SERVICE_TOKEN}),  # POST /embed: the original contract, for service callers
    "verify": frozenset({DATABASE_URL, SERVICE_TOKEN, COMMAND_SIGNING_KEY}),  # signs the unlock it decides
    # + SERVICE_TOKEN with LOCKWISE_RELAY_ROUTES=on; the lock CA signs the locks' broker certificates
    "devices": frozenset({DATABASE_URL, COMMAND_SIGNING_KEY, LOCK_CA}),
}
FUNCTIONS = tuple(FUNCTION_SECRETS)

_VOICE = frozenset({"embed", "verify"})
_DEVICES = frozenset({"devices"})
#: The plain values only some functions use, and which: the others never read them, so a bad value set for one
#: function stops that function alone (their fields keep the default elsewhere, unused). Every other variable
#: ``Settings`` reads is read by all three (``COMMON_VARIABLES``); a test holds the two lists to ``from_env``.
READ_BY: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        (
            "LOCKWISE_LOCK_CERT_TTL_S",
            "LOCKWISE_LOCK_RENEWALS_PER_DAY",
            "LOCKWISE_PAIRINGS_PER_DAY",
            "LOCKWISE_LOCKS_PER_OWNER",
            "LOCKWISE_MEMBERS_PER_LOCK",
            "LOCKWISE_MEMBERSHIPS_PER_USER",
            "LOCKWISE_PROVISIONING_TTL_S",
            "LOCKWISE_INVITATION_TTL_S",
            "LOCKWISE_PAIRING_FAILURES_PER_HOUR",
            "LOCKWISE_APP_COMMANDS_PER_MINUTE",
            "LOCKWISE_APP_COMMANDS_PER_ACCOUNT_MINUTE",
            "LOCKWISE_LOCK_COMMANDS_PER_MINUTE",
            "LOCKWISE_LOCK_CHANGES_PER_MINUTE",
            "LOCKWISE_LOCK_CHANGES_PER_DAY",
            "LOCKWISE_LOCK_CHANGES_PER_ACCOUNT_MINUTE",
            "LOCKWISE_LOCK_CHANGES_PER_ACCOUNT_DAY",
            "LOCKWISE_MQTT_PUBLIC_HOST",
            "LOCKWISE_MQTT_PUBLIC_PORT",
            "LOCKWISE_FEED_REPORTS_PER_MINUTE",
            "LOCKWISE_FEED_REPORTS_PER_OWNER_MINUTE",
            "LOCKWISE_ACCOUNT_CHECK_BATCH",
            "LOCKWISE_ACCOUNT_RECHECK_S",
            "LOCKWISE_RELAY_ROUTES",
        ),
        _DEVICES,
    ),
    # the lock's signed requests (devices' and verify's) and the commands they sign
    **dict.fromkeys(
        (
            "LOCKWISE_LOCK_REQUEST_SKEW_S",
            "LOCKWISE_LOCK_REQUESTS_PER_MINUTE",
            "LOCKWISE_COMMAND_TTL_S",
            "LOCKWISE_RESTORE_PENDING",
        ),
        frozenset({"devices", "verify"}),
    ),
    **dict.fromkeys(
        (
            "LOCKWISE_ENCODER",
            "LOCKWISE_MODEL_DIR",
            "LOCKWISE_AUDIO_MIN_S",
            "LOCKWISE_AUDIO_MAX_S",
            "LOCKWISE_AUDIO_MIN_SPEECH_S",
            "LOCKWISE_VOICE_THRESHOLD",
            "LOCKWISE_VOICE_MARGIN",
            "LOCKWISE_VOICE_RETRY_BAND",
            "LOCKWISE_ENROLL_AGREEMENT",
            "LOCKWISE_ENROLL_SPLIT_AGREEMENT",
            "LOCKWISE_ENROLL_MIN_SPEECH_S",
        ),
        _VOICE,
    ),
    **dict.fromkeys(
        (
            "LOCKWISE_VERIFY_RUNTIME",
            "LOCKWISE_LOCKOUT_AFTER",
            "LOCKWISE_LOCKOUT_BASE_S",
            "LOCKWISE_VOICE_DAILY_REJECTIONS",
            "LOCKWISE_VOICE_ATTEMPTS_PER_MINUTE",
            "LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_MINUTE",
            "LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_AT_ONCE",
            "LOCKWISE_REPLAY_MEMORY_HOURS",
            "LOCKWISE_VOICE_SENT_AGAIN_S",
            "LOCKWISE_DEBUG_REJECTED_DIR",
        ),
        frozenset({"verify"}),
    ),
    **dict.fromkeys(
        (
            "LOCKWISE_ENROLL_MIN_SAMPLES",
            "LOCKWISE_ENROLL_MAX_SAMPLES",
            "LOCKWISE_ENROLL_MIN_VOICE_S",
            "LOCKWISE_ENROLL_COMPARISONS",
            "LOCKWISE_ENROLLMENTS_PER_DAY",
            "LOCKWISE_ENROLL_REQUESTS_PER_DAY",
        ),
        frozenset({"embed"}),
    ),
}
#: what every function reads (besides its secrets, ``FUNCTION_SECRETS``)
COMMON_VARIABLES = frozenset(
    {
        "LOCKWISE_MODE",
        REHEARSAL_SWITCH,
        "LOCKWISE_PROJECT_ID",
        "GOOGLE_CLOUD_PROJECT",
        "FIRESTORE_EMULATOR_HOST",
        "FIREBASE_AUTH_EMULATOR_HOST",
        "LOCKWISE_RELEASE",
        "LOG_LEVEL",
        "LOCKWISE_MAX_BODY_BYTES",
        "LOCKWISE_DB_POOL_SIZE",
        "LOCKWISE_TRUSTED_PROXY_HOPS",
    }
)


def read_by(component: str, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as ``component`` reads it: without the plain values only other functions use (``READ_BY``)."""
    return {name: value for name, value in env.items() if component in READ_BY.get(name, (component,))}


class ConfigError(RuntimeError):
    """Configuration is missing or unsafe; raised at start-up, never per request."""


def read_mode(env: Mapping[str, str]) -> Mode:
    """``LOCKWISE_MODE`` (local by default, but on Cloud Run only production is taken); in production, refuses the
    rehearsal switch on Cloud Run. A public devices copy whose plain environment was lost (``gcloud run services
    update --set-env-vars`` replaces it whole) ran in local mode and let anyone in to the relay's routes with the
    local service token written in this file (attack run 88)."""
    raw = env.get("LOCKWISE_MODE", "local").strip().lower()
    if raw not in MODES:
        raise ConfigError(f"LOCKWISE_MODE must be one of {', '.join(MODES)}, got {raw!r}")
    mode: Mode = raw
    cloud_run = [marker for marker in CLOUD_RUN_MARKERS if env.get(marker)]
    if cloud_run and mode != "production":
        raise ConfigError(
            f"LOCKWISE_MODE is {mode} on Cloud Run ({cloud_run[0]} is set): only production runs there, its secrets"
            " required; set LOCKWISE_MODE=production"
        )
    if rehearsal(env) and mode != "production":
        raise ConfigError(f"{REHEARSAL_SWITCH} only applies in production mode")
    if rehearsal(env) and cloud_run:
        raise ConfigError(f"{REHEARSAL_SWITCH} is refused on Cloud Run: it admits local stand-ins for managed services")
    return mode


#: how the rehearsal switch is written on and off (any case, spaces around); any other value refuses to start: "no",
#: "off", "False" or "0 " read as on, and admitted the Auth emulator's unsigned tokens (attack run 89)
SWITCH_ON = frozenset({"1", "true", "on", "yes"})
SWITCH_OFF = frozenset({"", "0", "false", "off", "no"})


def rehearsal(env: Mapping[str, str]) -> bool:
    value = env.get(REHEARSAL_SWITCH, "").strip().lower()
    if value not in SWITCH_ON | SWITCH_OFF:
        raise ConfigError(f"{REHEARSAL_SWITCH} must be 1 or 0 (or true/false, on/off, yes/no), got {value!r}")
    return value in SWITCH_ON


def read_secret(env: Mapping[str, str], name: str, mode: Mode, local_default: str) -> str:
    """A secret: required and not a placeholder in production; ``local_default`` elsewhere when unset."""
    value = env.get(name)
    if value is None or value == "":
        if mode != "production":
            return local_default
        raise ConfigError(f"{name} is required in production mode and is not set")
    if mode == "production" and is_placeholder(value):
        raise ConfigError(f"{name} holds a placeholder value; set a real secret in production mode")
    return value


#: ``sslmode`` values the pool reads (``db.ConnectParams``): TLS with the first three, none with ``disable``. libpq's
#: ``allow`` and ``prefer`` fall back to plain text by themselves, which pg8000 cannot do; they and any other
#: spelling (``Require``, ``verify_full``, ``true``) were read as no TLS, silently (attack run 89)
SSL_MODES_TLS = ("require", "verify-ca", "verify-full")
SSL_MODES = (*SSL_MODES_TLS, "disable")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


#: a production service token's least length and distinct characters: the one credential of the verify and embed
#: functions' service routes (an embedding and scoring oracle), guessed online where a short one (``1234``,
#: ``admin``) was taken (attack run 89); ``secrets.token_urlsafe(32)`` gives 43 characters
SERVICE_TOKEN_MIN_LENGTH = 24
SERVICE_TOKEN_MIN_DISTINCT = 10


def read_service_token(env: Mapping[str, str], mode: Mode) -> str:
    """``LOCKWISE_SERVICE_TOKEN`` (``read_secret``): in production, also one long and varied enough to be random."""
    token = read_secret(env, SERVICE_TOKEN, mode, LOCAL_SERVICE_TOKEN)
    if mode == "production" and (
        len(token.strip()) < SERVICE_TOKEN_MIN_LENGTH or len(set(token)) < SERVICE_TOKEN_MIN_DISTINCT
    ):
        raise ConfigError(
            f"{SERVICE_TOKEN} must be at least {SERVICE_TOKEN_MIN_LENGTH} random characters in production mode"
            " (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def read_database_url(env: Mapping[str, str], mode: Mode) -> str:
    """``DATABASE_URL``: refused in every mode when misread, or when its ``sslmode`` is none the pool reads; in
    production, a placeholder password, or a server over the network with no ``sslmode`` named (``disable`` is a
    choice to make, not a default: a network path sees the password and every voiceprint)."""
    url = read_secret(env, DATABASE_URL, mode, LOCAL_DATABASE_URL)
    parts = _split_database_url(url)  # refused in every mode when misread
    if mode == "production" and is_placeholder(parts.password):
        raise ConfigError("DATABASE_URL carries a placeholder password; set a real one in production mode")
    query = parse_qs(parts.query)
    sslmode = query["sslmode"][-1] if "sslmode" in query else None
    if sslmode is not None and sslmode not in SSL_MODES:
        raise ConfigError(
            f"DATABASE_URL's sslmode must be one of {', '.join(SSL_MODES)} (as written, lower case), got {sslmode!r}"
        )
    unix_socket = query.get("host", [""])[-1].startswith("/")
    if mode == "production" and sslmode is None and not unix_socket and parts.hostname not in LOOPBACK_HOSTS:
        raise ConfigError(
            "DATABASE_URL names a server over the network without sslmode: add ?sslmode=verify-full (or require),"
            " or ?sslmode=disable if the path is private by other means"
        )
    return url


#: the Firebase project of the local stack and of local and test mode when none is named
LOCAL_PROJECT_ID = "demo-lockwise"


#: the prefix of Firebase's demo projects, which exist in the emulators only (no real project's id begins so)
DEMO_PROJECT_PREFIX = "demo-"


def read_project_id(env: Mapping[str, str], mode: Mode) -> str:
    """``LOCKWISE_PROJECT_ID`` (or ``GOOGLE_CLOUD_PROJECT``): the deployment's Firebase project, whose ID tokens are
    taken and to which the database is bound (``lockwise.core.deployment``); required in production, and in local
    and test mode a demo project's (``demo-...``). A deployment of a real project off Cloud Run (a VM, a cluster)
    whose ``LOCKWISE_MODE`` was left unset ran in local mode, silently: the Auth emulator's unsigned tokens taken
    for the real project's accounts when ``FIREBASE_AUTH_EMULATOR_HOST`` was set too, the relay's routes open to the
    local service token written in this file when its own was unset, no placeholder refused (attack run 116; run 88
    had stopped it on Cloud Run only)."""
    project_id = env.get("LOCKWISE_PROJECT_ID") or env.get("GOOGLE_CLOUD_PROJECT") or ""
    if not project_id:
        if mode == "production":
            raise ConfigError("LOCKWISE_PROJECT_ID (or GOOGLE_CLOUD_PROJECT) is required in production mode")
        return LOCAL_PROJECT_ID
    if mode != "production" and not project_id.startswith(DEMO_PROJECT_PREFIX):
        raise ConfigError(
            f"LOCKWISE_MODE is {mode} with the Firebase project {project_id!r}: local and test mode serve a demo"
            f" project ({DEMO_PROJECT_PREFIX}..., the emulators' own) only; a real project's deployment runs"
            " LOCKWISE_MODE=production, its secrets required"
        )
    return project_id


@dataclass(frozen=True)
class DatabaseSettings:
    """What a process that only talks to PostgreSQL reads: the migration job."""

    mode: Mode
    database_url: str
    log_level: str
    #: the deployment the job binds the database to, and refuses to migrate one bound to another (``read_project_id``)
    project_id: str = LOCAL_PROJECT_ID

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DatabaseSettings:
        env = os.environ if environ is None else environ
        mode = read_mode(env)
        return cls(
            mode=mode,
            database_url=read_database_url(env, mode),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            project_id=read_project_id(env, mode),
        )


@dataclass(frozen=True)
class Settings:
    """One function's configuration (see README "Environment variables" for each one)."""

    component: str
    mode: Mode
    project_id: str
    database_url: str
    #: the trusted callers' shared secret; None where this function does not serve them (see FUNCTION_SECRETS)
    service_token: str | None
    firestore_emulator_host: str | None
    auth_emulator_host: str | None
    release: str
    log_level: str
    max_body_bytes: int
    db_pool_size: int
    #: Ed25519 private key (base64 of the 32-byte seed) that signs every command a lock receives; None where unused.
    command_signing_key: str | None
    #: the lock CA (certificate and key, PEM) that signs the locks' broker certificates; None where unused
    lock_ca: str | None
    lock_cert_ttl_s: int
    #: certificates a lock's credential may be issued in any 24 hours (pairing's and renewals)
    lock_renewals_per_day: int
    #: pairing codes one account may be given in any 24 hours, over all its locks (each pairing revokes the last
    #: credential: a CRL entry)
    pairings_per_day: int
    #: locks one account may own
    locks_per_owner: int
    #: members a lock may have at once, its owner and open invitations included: each is a voiceprint the door
    #: scores at every attempt, and like voices are scored against each other (``lockwise.voice.first_come``)
    members_per_lock: int
    #: locks one account may be a member of without owning them: its deletion leaves each (about 20 statements in
    #: the one transaction), and it joined them freely (attack run 93: unbounded)
    memberships_per_user: int
    command_ttl_s: int
    provisioning_ttl_s: int
    invitation_ttl_s: int
    #: failed pairing-code redemptions allowed per client address in any hour (then 429 until the oldest leaves it)
    pairing_failures_per_hour: int
    #: proxies in front of the function that append to X-Forwarded-For (the client address is that many from the
    #: right; 0: the connection's address)
    trusted_proxy_hops: int
    lock_request_skew_s: int
    #: signed requests one lock may make in any minute (then 429 lock_rate_limited)
    lock_requests_per_minute: int
    #: commands one member's app may send one lock in any minute, and all their locks together (then 429
    #: command_limit)
    app_commands_per_minute: int
    app_commands_per_account_minute: int
    #: app commands one lock's members other than its owner may send it together in any minute (then 429
    #: command_limit); the owner keeps their own ``app_commands_per_minute``
    lock_commands_per_minute: int
    #: changes one owner or admin may make at one lock in any minute and in any 24 hours (then 429 change_limit:
    #: ``lockwise.devices.changes``)
    lock_changes_per_minute: int
    lock_changes_per_day: int
    lock_changes_per_account_minute: int
    #: and at all the locks one account manages together in any 24 hours (attack run 130)
    lock_changes_per_account_day: int
    #: The broker address handed to a lock when it is provisioned.
    mqtt_public_host: str
    mqtt_public_port: int
    #: voice: which encoder and where its files are (see lockwise.voice.model.encoder)
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
    #: normalised scores only: how far under the threshold a first utterance gets "say it again" (0: never)
    voice_retry_band: float | None
    enroll_agreement: float | None
    #: the lowest cosine two groups of an enrollment's samples may have between their voiceprints (two voices' takes;
    #: ``lockwise.voice.scoring.split_agreement``); -1: not checked
    enroll_split_agreement: float | None
    enroll_min_speech_s: float | None
    #: seconds of voice (the voice activity model's, not loudness) each enrollment sample must hold: noise holds none
    enroll_min_voice_s: float
    lockout_after: int
    #: at most this many rejected, scored voice attempts per lock in any 24 hours (no reset lifts it)
    voice_daily_rejections: int
    #: at most this many voice attempts that reach the model, accepted ones too, per lock and over all the locks of
    #: one owner, in any minute (then 429 voice_attempt_rate)
    voice_attempts_per_minute: int
    voice_attempts_per_owner_minute: int
    #: and at most this many of one owner's locks' attempts in the model at once, cluster-wide
    voice_attempts_per_owner_at_once: int
    #: at most this many enrollments per user in any 24 hours compared with co-members' voices (each is a probe)
    enroll_comparisons: int
    #: at most this many enrollments per user in any 24 hours that reach the model (each embeds every sample)
    enrollments_per_day: int
    #: enrollment requests a user may send in any 24 hours, whatever their answer (counted before the body is read)
    enroll_requests_per_day: int
    #: how long an attempt's fingerprint stays at its lock to refuse a replay of it (0: attempts are not kept)
    replay_memory_hours: int
    #: how long after a clip's decision the same clip from the same lock is answered with it (0: never; verify)
    voice_sent_again_s: int
    #: a lock's state and online/offline reports listed in its activity feed per minute, at most (devices)
    feed_reports_per_minute: int
    #: and in the feeds of the locks one account owns together (devices; attack run 110)
    feed_reports_per_owner_minute: int
    #: users whose account the relay's flush asks Firebase Auth about, per flush (0: never; devices' relay routes)
    account_check_batch: int
    #: how long a user's account is taken as existing after Firebase Auth last said so
    account_recheck_s: int
    lockout_base_s: int
    debug_rejected_dir: str | None
    #: serve the relay's endpoints (off on the public devices service; on for the internal one)
    relay_routes: bool
    #: the database was restored and what it took back is not yet done again (``lockwise.devices.restored``): the
    #: locks' requests and the app's changes wait (503 ``restore_in_progress``), as while a run is under way
    restore_pending: bool = False

    def lock_ca_pem(self) -> str:
        """The lock CA; only the devices function holds it."""
        if self.lock_ca is None:
            raise ConfigError(f"the {self.component} function does not hold {LOCK_CA}")
        return self.lock_ca

    def signing_key(self) -> str:
        """The command-signing key; only functions that sign commands hold it."""
        if self.command_signing_key is None:
            raise ConfigError(f"the {self.component} function does not hold {COMMAND_SIGNING_KEY}")
        return self.command_signing_key

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, component: str = "devices") -> Settings:
        """``component``: the function reading (embed | verify | devices); it decides which secrets are read."""
        if component not in FUNCTION_SECRETS:
            raise ConfigError(f"unknown function {component!r}; expected one of {', '.join(FUNCTIONS)}")
        env = read_by(component, os.environ if environ is None else environ)
        mode = read_mode(env)
        local = mode != "production"
        # named in production, never taken by default: a copy whose plain environment was lost served the relay's
        # routes, its token their only guard (attack run 89)
        named = local or component != "devices"
        relay_routes = _choice(env, "LOCKWISE_RELAY_ROUTES", ("on", "off"), "on" if named else None) == "on"
        needs = FUNCTION_SECRETS[component] | ({SERVICE_TOKEN} if component == "devices" and relay_routes else set())

        firestore_emulator = env.get("FIRESTORE_EMULATOR_HOST") or None
        auth_emulator = env.get("FIREBASE_AUTH_EMULATOR_HOST") or None
        if not local and (firestore_emulator or auth_emulator) and not rehearsal(env):
            raise ConfigError(
                "FIRESTORE_EMULATOR_HOST / FIREBASE_AUTH_EMULATOR_HOST must not be set in production mode "
                "(emulator tokens are unsigned)"
            )
        database_url = read_database_url(env, mode)  # its own refusals first: they name what the URL gets wrong
        project_id = read_project_id(env, mode)
        if auth_emulator and not project_id.startswith(DEMO_PROJECT_PREFIX):  # the rehearsal's production mode too
            raise ConfigError(
                f"FIREBASE_AUTH_EMULATOR_HOST is set for the Firebase project {project_id!r}: the emulator's tokens"
                f" are unsigned, taken for a demo project ({DEMO_PROJECT_PREFIX}...) only (attack run 116)"
            )

        settings = cls(
            component=component,
            mode=mode,
            project_id=project_id,
            database_url=database_url,
            service_token=read_service_token(env, mode) if SERVICE_TOKEN in needs else None,
            firestore_emulator_host=firestore_emulator,
            auth_emulator_host=auth_emulator,
            release=env.get("LOCKWISE_RELEASE", "dev"),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            max_body_bytes=env_int(env, "LOCKWISE_MAX_BODY_BYTES", 2_000_000, minimum=1024),
            # 2 at least: a request holding one connection reads the database's clock on another (``db_clock``)
            db_pool_size=env_int(env, "LOCKWISE_DB_POOL_SIZE", 4, minimum=2),
            command_signing_key=_signing_key(env, local) if COMMAND_SIGNING_KEY in needs else None,
            lock_ca=_lock_ca(env, mode, project_id) if LOCK_CA in needs else None,
            # at most 30 days: a broker without a revocation list (EMQX) takes a revoked lock's certificate until
            # it ends (attack run 89: no bound)
            lock_cert_ttl_s=env_int(env, "LOCKWISE_LOCK_CERT_TTL_S", 7 * 24 * 3600, minimum=60, maximum=30 * 24 * 3600),
            lock_renewals_per_day=env_int(env, "LOCKWISE_LOCK_RENEWALS_PER_DAY", 6, minimum=2),
            pairings_per_day=env_int(env, "LOCKWISE_PAIRINGS_PER_DAY", 50, minimum=2),
            locks_per_owner=env_int(env, "LOCKWISE_LOCKS_PER_OWNER", 100, minimum=1),
            members_per_lock=env_int(env, "LOCKWISE_MEMBERS_PER_LOCK", 100, minimum=2),
            memberships_per_user=env_int(env, "LOCKWISE_MEMBERSHIPS_PER_USER", 200, minimum=1),
            # each duration at most what its use holds (attack run 119): unbounded, a command's lifetime past 2**32 s
            # (the MQTT message expiry's four bytes) failed every relay's delivery round, past what a date holds every
            # command (a 500), and 30000 meant as milliseconds kept a tap's unlock valid for 8 hours; a pairing code's
            # or an invitation's, an account's recheck, a lock's skew past what a date holds failed each creation or
            # the upkeep's step in PostgreSQL (timestamp out of range). A command's at most 5 minutes: a lock keeps
            # each command's nonce until it expires (docs/FIRMWARE.md sizes its store by it: attack run 117)
            command_ttl_s=env_int(env, "LOCKWISE_COMMAND_TTL_S", 30, minimum=5, maximum=MAX_COMMAND_TTL_S),
            provisioning_ttl_s=env_int(env, "LOCKWISE_PROVISIONING_TTL_S", 600, minimum=60, maximum=24 * 3600),
            invitation_ttl_s=env_int(
                env, "LOCKWISE_INVITATION_TTL_S", 7 * 24 * 3600, minimum=3600, maximum=365 * 24 * 3600
            ),
            pairing_failures_per_hour=env_int(env, "LOCKWISE_PAIRING_FAILURES_PER_HOUR", 20, minimum=1),
            trusted_proxy_hops=env_int(env, "LOCKWISE_TRUSTED_PROXY_HOPS", 0, minimum=0),
            lock_request_skew_s=env_int(env, "LOCKWISE_LOCK_REQUEST_SKEW_S", 60, minimum=5, maximum=3600),
            lock_requests_per_minute=env_int(env, "LOCKWISE_LOCK_REQUESTS_PER_MINUTE", 120, minimum=10),
            app_commands_per_minute=env_int(env, "LOCKWISE_APP_COMMANDS_PER_MINUTE", 30, minimum=1),
            app_commands_per_account_minute=env_int(env, "LOCKWISE_APP_COMMANDS_PER_ACCOUNT_MINUTE", 60, minimum=1),
            lock_commands_per_minute=env_int(env, "LOCKWISE_LOCK_COMMANDS_PER_MINUTE", 60, minimum=1),
            lock_changes_per_minute=env_int(env, "LOCKWISE_LOCK_CHANGES_PER_MINUTE", 30, minimum=1),
            lock_changes_per_day=env_int(env, "LOCKWISE_LOCK_CHANGES_PER_DAY", 1000, minimum=1),
            lock_changes_per_account_minute=env_int(env, "LOCKWISE_LOCK_CHANGES_PER_ACCOUNT_MINUTE", 120, minimum=1),
            lock_changes_per_account_day=env_int(env, "LOCKWISE_LOCK_CHANGES_PER_ACCOUNT_DAY", 3000, minimum=1),
            mqtt_public_host=_public_host(env, local or rehearsal(env)) if component == "devices" else "127.0.0.1",
            # a TCP port: a lock keeps it in 16 bits (any integer was sent it: attack run 117)
            mqtt_public_port=env_int(env, "LOCKWISE_MQTT_PUBLIC_PORT", 8883, minimum=1, maximum=MAX_PORT),
            encoder=_choice(env, "LOCKWISE_ENCODER", ("ecapa", "ge2e", "auto"), "auto"),
            model_dir=env.get("LOCKWISE_MODEL_DIR") or None,
            verify_runtime=_choice(env, "LOCKWISE_VERIFY_RUNTIME", ("onnx", "speechbrain"), "onnx"),
            audio_min_s=env_float(env, "LOCKWISE_AUDIO_MIN_S", 2.0, 0.5, 60),
            audio_max_s=env_float(env, "LOCKWISE_AUDIO_MAX_S", 15.0, 1.0, 120),
            audio_min_speech_s=env_float(env, "LOCKWISE_AUDIO_MIN_SPEECH_S", 1.0, 0.0, 60),
            enroll_min_samples=env_int(env, "LOCKWISE_ENROLL_MIN_SAMPLES", 5, minimum=1),
            enroll_max_samples=env_int(env, "LOCKWISE_ENROLL_MAX_SAMPLES", 5, minimum=1),
            # a cosine in [-1, 1], or on the normalised scale (z-scores) when the encoder ships a cohort
            voice_threshold=_optional_float(env, "LOCKWISE_VOICE_THRESHOLD", -1, 50),
            voice_margin=_optional_float(env, "LOCKWISE_VOICE_MARGIN", 0, 10),
            voice_retry_band=_optional_float(env, "LOCKWISE_VOICE_RETRY_BAND", 0, 10),
            enroll_agreement=_optional_float(env, "LOCKWISE_ENROLL_AGREEMENT", -1, 1),
            enroll_split_agreement=_optional_float(env, "LOCKWISE_ENROLL_SPLIT_AGREEMENT", -1, 1),
            enroll_min_speech_s=_optional_float(env, "LOCKWISE_ENROLL_MIN_SPEECH_S", 0, 60),
            enroll_min_voice_s=env_float(env, "LOCKWISE_ENROLL_MIN_VOICE_S", 0.3, 0.0, 60),
            lockout_after=env_int(env, "LOCKWISE_LOCKOUT_AFTER", 5, minimum=1),
            voice_daily_rejections=env_int(env, "LOCKWISE_VOICE_DAILY_REJECTIONS", 20, minimum=1),
            voice_attempts_per_minute=env_int(env, "LOCKWISE_VOICE_ATTEMPTS_PER_MINUTE", 10, minimum=1),
            voice_attempts_per_owner_minute=env_int(env, "LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_MINUTE", 60, minimum=1),
            voice_attempts_per_owner_at_once=env_int(env, "LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_AT_ONCE", 2, minimum=1),
            enroll_comparisons=env_int(env, "LOCKWISE_ENROLL_COMPARISONS", 5, minimum=1),
            enrollments_per_day=env_int(env, "LOCKWISE_ENROLLMENTS_PER_DAY", 20, minimum=1),
            enroll_requests_per_day=env_int(env, "LOCKWISE_ENROLL_REQUESTS_PER_DAY", 100, minimum=1),
            # 0 kept no attempt's recording, and a replayed one was not recognised (attack run 89)
            replay_memory_hours=env_int(
                env, "LOCKWISE_REPLAY_MEMORY_HOURS", 168, minimum=0 if local else 1, maximum=365 * 24
            ),
            voice_sent_again_s=env_int(
                env, "LOCKWISE_VOICE_SENT_AGAIN_S", 120, minimum=0, maximum=VOICE_SENT_AGAIN_MAX_S
            ),
            feed_reports_per_minute=env_int(env, "LOCKWISE_FEED_REPORTS_PER_MINUTE", 30, minimum=1),
            feed_reports_per_owner_minute=env_int(env, "LOCKWISE_FEED_REPORTS_PER_OWNER_MINUTE", 120, minimum=1),
            # 0 (the local stack's) checks no account: deleted ones and revoked sessions never learned (attack run 89)
            account_check_batch=min(env_int(env, "LOCKWISE_ACCOUNT_CHECK_BATCH", 100, minimum=0 if local else 1), 100),
            account_recheck_s=env_int(env, "LOCKWISE_ACCOUNT_RECHECK_S", 3600, minimum=60, maximum=30 * 24 * 3600),
            # at most an hour: the lockout doubles up to 2**16 times (an hour's is 7 years), and a base past what a
            # date holds was an OverflowError, a 500 at the door (attack run 98)
            lockout_base_s=env_int(env, "LOCKWISE_LOCKOUT_BASE_S", 30, minimum=1 if local else 30, maximum=3600),
            debug_rejected_dir=_debug_dir(env, local),
            relay_routes=relay_routes,
            restore_pending=_choice(env, "LOCKWISE_RESTORE_PENDING", ("on", "off"), "off") == "on",
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


def _choice(env: Mapping[str, str], name: str, options: tuple[str, ...], default: str | None) -> str:
    """``name``'s value among ``options``; ``default`` when unset (None: it must be set)."""
    value = env.get(name) or default
    if value is None:
        raise ConfigError(f"{name} must be set to one of {', '.join(options)} in production mode")
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def _public_host(env: Mapping[str, str], on_this_machine: bool) -> str:
    """``LOCKWISE_MQTT_PUBLIC_HOST``, the broker host a lock is told at pairing: required in production, and no
    loopback address there but in the rehearsal (unset, every lock was told ``127.0.0.1`` and never connected;
    attack run 89)."""
    value = (env.get("LOCKWISE_MQTT_PUBLIC_HOST") or "").strip()
    if on_this_machine:
        value = value or "127.0.0.1"
    elif not value or value.lower() in LOOPBACK_HOSTS or value.startswith("127."):
        raise ConfigError("LOCKWISE_MQTT_PUBLIC_HOST (the broker host locks connect to) is required in production mode")
    # a lock keeps it with its pairing, in a buffer sized by docs/FIRMWARE.md ("Sizes"): any text was sent it, at any
    # length (attack run 117)
    if len(value) > MAX_HOST_CHARS or not set(value) <= HOST_CHARACTERS:
        raise ConfigError(
            f"LOCKWISE_MQTT_PUBLIC_HOST must be a DNS name or an IP address, at most {MAX_HOST_CHARS} characters of"
            " letters, digits, '.', '-' and ':' (locks are sent it as it is)"
        )
    return value


#: the longest a command may be delivered for (``command_ttl_s``)
MAX_COMMAND_TTL_S = 300
#: the broker host a lock is told: a DNS name's longest, of the characters a DNS name or an IP address has
MAX_HOST_CHARS = 253
HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:")


def _debug_dir(env: Mapping[str, str], local: bool) -> str | None:
    value = env.get("LOCKWISE_DEBUG_REJECTED_DIR") or None
    if value and not local:
        raise ConfigError("LOCKWISE_DEBUG_REJECTED_DIR (saving rejected voice samples) is refused in production mode")
    return value


def _lock_ca(env: Mapping[str, str], mode: Mode, project_id: str) -> str:
    """The lock CA; refused when it names another deployment's project (``LockCa.deployment``; attack run 116)."""
    from lockwise.devices.lock_certs import CaError, LockCa, new_ca

    value = read_secret(env, LOCK_CA, mode, "")
    if not value:  # local only: a per-process CA (the local stack and the broker tests set the variable)
        return new_ca("LockWise per-process lock CA")
    try:
        ca = LockCa.from_pem(value)
    except CaError as exc:
        raise ConfigError(f"{LOCK_CA}: {exc}") from exc
    if ca.deployment is not None and ca.deployment != project_id:
        raise ConfigError(
            f"{LOCK_CA} was made for the deployment of the Firebase project {ca.deployment!r}, not this one's"
            f" ({project_id!r}): each deployment has a lock CA of its own (python -m infra.lock_ca init --project)"
        )
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


def _split_database_url(url: str) -> SplitResult:
    """The database URL split (``database_url.split_url``), or ``ConfigError`` at start for one that a password not
    percent-encoded cut short, in words that quote none of it: parsed on each request, its error was logged with
    every 500, a part of the password in each health probe's log line (attack run 53)."""
    try:
        return split_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


@lru_cache(maxsize=4)
def get_settings(component: str) -> Settings:
    """The function's settings, read once per process."""
    return Settings.from_env(component=component)
