"""Settings: local defaults, and refusal of missing or placeholder secrets outside local mode."""

from __future__ import annotations

import ast
import base64
import dataclasses
import re
from pathlib import Path

import pytest

from lockwise.core import config
from lockwise.core.config import (
    COMMAND_SIGNING_KEY,
    COMMON_VARIABLES,
    FUNCTIONS,
    LOCK_CA,
    READ_BY,
    SERVICE_TOKEN,
    ConfigError,
    DatabaseSettings,
    Settings,
)
from lockwise.devices.lock_certs import LockCa, new_ca

PROD_OK = {
    "LOCKWISE_MODE": "production",
    "LOCKWISE_PROJECT_ID": "lockwise-prod",
    "DATABASE_URL": "postgresql://app:Zx9-long-random@10.0.0.5:5432/lockwise?sslmode=verify-full",
    "LOCKWISE_SERVICE_TOKEN": "s3rv1ce-t0ken-long-random-value-9x",
    "LOCKWISE_COMMAND_SIGNING_KEY": base64.b64encode(bytes(range(32))).decode(),
    "LOCKWISE_LOCK_CA": new_ca(),
    "LOCKWISE_RELAY_ROUTES": "on",
    "LOCKWISE_MQTT_PUBLIC_HOST": "mqtt.lockwise.example",
}


def test_local_mode_runs_on_embedded_defaults() -> None:
    s = Settings.from_env({})
    assert s.mode == "local"
    assert s.project_id == "demo-lockwise"
    assert s.database_url.startswith("postgresql://")


def test_production_accepts_real_secrets() -> None:
    s = Settings.from_env(PROD_OK)
    assert s.mode == "production" and s.project_id == "lockwise-prod"


@pytest.mark.parametrize(
    "name", ["DATABASE_URL", "LOCKWISE_SERVICE_TOKEN", "LOCKWISE_PROJECT_ID", "LOCKWISE_COMMAND_SIGNING_KEY"]
)
def test_production_refuses_a_missing_secret_by_name(name: str) -> None:
    env = {k: v for k, v in PROD_OK.items() if k != name}
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


@pytest.mark.parametrize("value", ["changeme", "local-dev-only", "secret", ""])
def test_production_refuses_a_placeholder_service_token(value: str) -> None:
    env = dict(PROD_OK, LOCKWISE_SERVICE_TOKEN=value)
    with pytest.raises(ConfigError, match="LOCKWISE_SERVICE_TOKEN"):
        Settings.from_env(env)


def test_production_refuses_a_placeholder_database_password() -> None:
    env = dict(PROD_OK, DATABASE_URL="postgresql://app:changeme@db/lockwise")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env(env)


@pytest.mark.parametrize("mode", ["local", "production"])
@pytest.mark.parametrize("password", ["Zk9+Qm7RwLp2/T2xVb==", "4821/Tq9x+Zb==", "ab\uff1acd", "Zk9?x#Qm7"])
def test_a_database_url_a_password_cuts_short_is_refused_quoting_none_of_it(mode: str, password: str) -> None:
    """Attack run 53: a base64 password holding "/" ended the URL's address there; the rest was read as the port,
    and the parser's error, which quotes it, was logged with every request's 500 (the first part of the password
    in each health probe's log line). A review: one whose first part is digits was read as a port, the rest as the
    database's name, and taken; one urllib refuses outright (a full-width colon) was quoted by its error too.
    Refused at start, in words that quote nothing of the URL; the pool's parser says the same."""
    from lockwise.core.db import ConnectParams

    url = f"postgresql://lockwise:{password}@10.0.0.5:5432/lockwise"
    with pytest.raises(ConfigError, match="percent-encode the password") as refused:
        Settings.from_env(dict(PROD_OK, LOCKWISE_MODE=mode, DATABASE_URL=url))
    with pytest.raises(ValueError, match="percent-encode the password") as parsed:
        ConnectParams.from_url(url)
    for exc in (refused.value, parsed.value):
        told = f"{exc} {exc.__cause__} {exc.__context__ if not exc.__suppress_context__ else ''}"
        assert not any(part in told for part in ("Zk9", "Qm7", "T2x", "4821", "Tq9", "ab\uff1acd")), told


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://lockwise:Zk9%2BQm7RwLp2%2FT2xVb%3D%3D@10.0.0.5:5432/lockwise?sslmode=verify-full",
        "postgresql://lockwise:p%40ss@[::1]:5432/lockwise?sslmode=require",
        "postgresql://lockwise:pw@/lockwise?host=/cloudsql/proj:region:inst",
        "postgres://lockwise:pw@db/lockwise?sslmode=disable",
    ],
)
def test_a_database_url_with_its_password_percent_encoded_is_taken(url: str) -> None:
    from urllib.parse import unquote, urlsplit

    from lockwise.core.db import ConnectParams

    assert Settings.from_env(dict(PROD_OK, DATABASE_URL=url)).database_url == url
    assert ConnectParams.from_url(url).password == unquote(urlsplit(url).password or "")


def test_production_refuses_emulator_hosts() -> None:
    with pytest.raises(ConfigError, match="EMULATOR"):
        Settings.from_env(dict(PROD_OK, FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099"))


def test_unknown_mode_and_bad_numbers_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="LOCKWISE_MODE"):
        Settings.from_env({"LOCKWISE_MODE": "staging"})
    with pytest.raises(ConfigError, match="LOCKWISE_MAX_BODY_BYTES"):
        Settings.from_env({"LOCKWISE_MAX_BODY_BYTES": "lots"})


def test_production_refuses_a_weak_or_malformed_signing_key() -> None:
    for value in ["not base64!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(32)).decode()]:
        with pytest.raises(ConfigError, match="LOCKWISE_COMMAND_SIGNING_KEY"):
            Settings.from_env(dict(PROD_OK, LOCKWISE_COMMAND_SIGNING_KEY=value))


def test_each_function_reads_only_its_own_secrets() -> None:
    without_signing = {k: v for k, v in PROD_OK.items() if k != "LOCKWISE_COMMAND_SIGNING_KEY"}
    embed = Settings.from_env(without_signing, component="embed")  # embed signs nothing
    assert embed.command_signing_key is None
    with pytest.raises(ConfigError, match="does not hold LOCKWISE_COMMAND_SIGNING_KEY"):
        embed.signing_key()
    with pytest.raises(ConfigError, match="LOCKWISE_COMMAND_SIGNING_KEY"):
        Settings.from_env(without_signing, component="verify")  # verify signs the unlock it decides
    without_token = {k: v for k, v in PROD_OK.items() if k != "LOCKWISE_SERVICE_TOKEN"}
    public = Settings.from_env(dict(without_token, LOCKWISE_RELAY_ROUTES="off"), component="devices")
    assert public.service_token is None  # the public devices copy serves no trusted caller
    with pytest.raises(ConfigError, match="LOCKWISE_SERVICE_TOKEN"):
        Settings.from_env(dict(without_token, LOCKWISE_RELAY_ROUTES="on"), component="devices")


def test_a_function_without_a_token_refuses_every_service_caller() -> None:
    from lockwise.core import auth, errors

    with pytest.raises(errors.Unauthenticated):
        auth.check_service_token("", None)
    with pytest.raises(errors.Unauthenticated):
        auth.check_service_token("anything", None)


def test_the_migration_job_needs_only_the_database_url_and_its_deployments_project() -> None:
    """The project since attack run 116: the job binds the database to it, and migrates no other deployment's."""
    job = {"LOCKWISE_MODE": "production", "DATABASE_URL": PROD_OK["DATABASE_URL"], "LOCKWISE_PROJECT_ID": "acme-prod"}
    settings = DatabaseSettings.from_env(job)
    assert (settings.database_url, settings.project_id) == (PROD_OK["DATABASE_URL"], "acme-prod")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        DatabaseSettings.from_env({"LOCKWISE_MODE": "production", "LOCKWISE_PROJECT_ID": "acme-prod"})
    with pytest.raises(ConfigError, match="LOCKWISE_PROJECT_ID"):
        DatabaseSettings.from_env({"LOCKWISE_MODE": "production", "DATABASE_URL": PROD_OK["DATABASE_URL"]})
    assert DatabaseSettings.from_env({}).project_id == "demo-lockwise"  # the local stack's


def test_the_rehearsal_switch_admits_emulators_in_production_but_never_on_cloud_run() -> None:
    rehearsal = dict(PROD_OK, LOCKWISE_REHEARSAL="1", FIRESTORE_EMULATOR_HOST="127.0.0.1:8080")
    assert Settings.from_env(rehearsal).firestore_emulator_host == "127.0.0.1:8080"
    for marker in ("K_SERVICE", "CLOUD_RUN_JOB"):
        with pytest.raises(ConfigError, match="refused on Cloud Run"):
            Settings.from_env(dict(rehearsal, **{marker: "lockwise-verify"}))
    with pytest.raises(ConfigError, match="only applies in production"):
        Settings.from_env({"LOCKWISE_REHEARSAL": "1"})


@pytest.mark.parametrize("marker", ["K_SERVICE", "CLOUD_RUN_JOB"])
@pytest.mark.parametrize("mode", [None, "local", "test"])
def test_on_cloud_run_only_production_mode_is_taken(marker: str, mode: str | None) -> None:
    """Attack run 88: the public devices copy with its plain environment lost (its secrets kept) ran in local mode,
    and served the relay's routes to anyone sending the local service token written in the source."""
    env = {
        marker: "lockwise-devices",
        "DATABASE_URL": PROD_OK["DATABASE_URL"],
        **({} if mode is None else {"LOCKWISE_MODE": mode}),
    }
    with pytest.raises(ConfigError, match="only production runs there"):
        Settings.from_env(env)
    with pytest.raises(ConfigError, match="only production runs there"):
        DatabaseSettings.from_env(env)
    assert Settings.from_env(dict(PROD_OK, **{marker: "lockwise-devices"})).mode == "production"


@pytest.mark.parametrize("mode", [None, "local", "test"])
@pytest.mark.parametrize("variable", ["LOCKWISE_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"])
def test_local_and_test_mode_serve_no_real_firebase_project(mode: str | None, variable: str) -> None:
    """Attack run 116: a real project's deployment on a VM (not Cloud Run, where run 88 stopped it), its
    ``LOCKWISE_MODE`` left unset, ran in local mode: with the compose file's ``FIREBASE_AUTH_EMULATOR_HOST`` it took
    the Auth emulator's unsigned tokens, anyone's for any uid, for the real project's accounts, and its relay routes
    the local service token. Only Firebase's demo projects (``demo-...``, emulators only) run outside production."""
    env = {
        variable: "acme-locks-prod",
        "DATABASE_URL": "postgresql://app:Zx9-long-random@10.0.0.5:5432/lockwise?sslmode=require",
        "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
        **({} if mode is None else {"LOCKWISE_MODE": mode}),
    }
    for component in ("devices", "verify", "embed"):
        with pytest.raises(ConfigError, match="LOCKWISE_MODE=production"):
            Settings.from_env(env, component=component)
    with pytest.raises(ConfigError, match="LOCKWISE_MODE=production"):
        DatabaseSettings.from_env(env)  # the migration job
    rehearsal = dict(PROD_OK, LOCKWISE_REHEARSAL="1", FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099")
    with pytest.raises(ConfigError, match="unsigned, taken for a demo project"):  # a VM's copy, the switch left on
        Settings.from_env(rehearsal)
    assert Settings.from_env(dict(rehearsal, LOCKWISE_PROJECT_ID="demo-acme")).auth_emulator_host == "127.0.0.1:9099"
    demo = dict(env, **{variable: "demo-acme"})
    assert Settings.from_env(demo).project_id == DatabaseSettings.from_env(demo).project_id == "demo-acme"
    production = {name: value for name, value in PROD_OK.items() if name != "LOCKWISE_PROJECT_ID"}
    assert Settings.from_env(dict(production, **{variable: "acme-locks-prod"})).project_id == "acme-locks-prod"


@pytest.mark.parametrize("host", ["mqtt." + "a" * 250 + ".example", "mqtt.example/path", "mqtt.exämple.de", "a b"])
@pytest.mark.parametrize("mode", ["production", "local"])
def test_a_broker_host_no_lock_can_keep_stops_the_devices_function(host: str, mode: str) -> None:
    """Attack run 117: any text was taken for the broker host every lock is told at pairing and keeps, at any length
    (docs/FIRMWARE.md, Sizes: at most 253 characters), and any integer for its port."""
    with pytest.raises(ConfigError, match="LOCKWISE_MQTT_PUBLIC_HOST must be a DNS name or an IP address"):
        Settings.from_env(dict(PROD_OK if mode == "production" else {}, LOCKWISE_MQTT_PUBLIC_HOST=host))
    with pytest.raises(ConfigError, match="LOCKWISE_MQTT_PUBLIC_PORT must be at most 65535"):  # nor a port past 16 bits
        Settings.from_env(dict(PROD_OK, LOCKWISE_MQTT_PUBLIC_PORT="73261"), component="devices")
    for taken in ("mqtt.lockwise.example", "203.0.113.7", "2001:db8::7", "b" * 63 + "." + "c" * 63 + ".example"):
        settings = Settings.from_env(dict(PROD_OK, LOCKWISE_MQTT_PUBLIC_HOST=taken), component="devices")
        assert settings.mqtt_public_host == taken


@pytest.mark.parametrize("component", ["devices", "verify"])
def test_a_command_lifetime_past_what_a_lock_keeps_nonces_for_is_refused(component: str) -> None:
    """Attack run 117: any command lifetime was taken, and a lock keeps each command's nonce in its flash until the
    command expires: a day's was a day of commands (docs/FIRMWARE.md sizes the store for 5 minutes at most)."""
    with pytest.raises(ConfigError, match="LOCKWISE_COMMAND_TTL_S must be at most 300"):
        Settings.from_env({"LOCKWISE_COMMAND_TTL_S": "86400"}, component=component)
    assert Settings.from_env({"LOCKWISE_COMMAND_TTL_S": "300"}, component=component).command_ttl_s == 300


def test_a_lock_ca_made_for_another_deployment_stops_the_devices_function() -> None:
    """Attack run 116: production's lock CA copied into staging's secret started staging's devices function, which
    then signed certificates production's broker took (a lock's identity, a relay's). A CA made with
    ``infra.lock_ca init --project P`` names P; a devices function of another project refuses it at start."""
    staging = dict(PROD_OK, LOCKWISE_PROJECT_ID="acme-staging", LOCKWISE_LOCK_CA=new_ca(project="acme-prod"))
    with pytest.raises(ConfigError, match="LOCKWISE_LOCK_CA was made for the deployment of .*'acme-prod'"):
        Settings.from_env(staging, component="devices")
    assert Settings.from_env(staging, component="verify").lock_ca is None  # verify holds no CA: not read
    own = dict(staging, LOCKWISE_LOCK_CA=new_ca(project="acme-staging"))
    assert LockCa.from_pem(Settings.from_env(own, component="devices").lock_ca_pem()).deployment == "acme-staging"
    unnamed = dict(staging, LOCKWISE_LOCK_CA=new_ca())  # made before the CA named its deployment: taken as it was
    assert LockCa.from_pem(Settings.from_env(unnamed, component="devices").lock_ca_pem()).deployment is None


@pytest.mark.parametrize(
    "sslmode", ["Require", "REQUIRE", "verify_full", "verify-Full", "prefer", "allow", "true", "1"]
)
@pytest.mark.parametrize("mode", ["local", "production"])
def test_a_database_urls_sslmode_the_pool_does_not_read_is_refused(sslmode: str, mode: str) -> None:
    """Attack run 89: any ``sslmode`` but the three exact TLS spellings was read as none, so a mistyped one (or
    libpq's ``prefer``, which pg8000 cannot fall back from) sent the password and every voiceprint in plain text."""
    url = f"postgresql://app:Zx9-long-random@10.0.0.5:5432/lockwise?sslmode={sslmode}"
    with pytest.raises(ConfigError, match="sslmode must be one of"):
        Settings.from_env(dict(PROD_OK, LOCKWISE_MODE=mode, DATABASE_URL=url), component="devices")


def test_production_names_its_sslmode_for_a_server_over_the_network() -> None:
    from lockwise.core.db import ConnectParams

    bare = "postgresql://app:Zx9-long-random@10.0.0.5:5432/lockwise"
    with pytest.raises(ConfigError, match="without sslmode"):
        Settings.from_env(dict(PROD_OK, DATABASE_URL=bare), component="devices")
    for url, tls in [
        (bare + "?sslmode=verify-full", True),
        (bare + "?sslmode=require", True),
        (bare + "?sslmode=disable", False),  # a choice named
        ("postgresql://app:Zx9-long-random@127.0.0.1:5432/lockwise", False),  # no network between
        ("postgresql://app:Zx9-long-random@/lockwise?host=/cloudsql/p:r:i", False),  # Cloud SQL's socket
    ]:
        assert Settings.from_env(dict(PROD_OK, DATABASE_URL=url), component="devices").database_url == url
        assert ConnectParams.from_url(url).ssl is tls, url
    local = Settings.from_env({"DATABASE_URL": bare}, component="devices")  # local mode: the stack's choice
    assert local.database_url == bare


def test_production_refuses_the_settings_that_turn_a_guard_off(tmp_path: Path) -> None:
    """Attack run 89: each of these started in production and ran open: a short service token (the verify and embed
    functions' service routes' one credential), the rehearsal switch "off" read as on (the Auth emulator's unsigned
    tokens admitted), replay memory 0 (a replayed recording not recognised), an account check batch of 0 (deleted
    accounts and revoked sessions never learned), the relay's routes served by default, locks told to connect to
    127.0.0.1, the relay's service token sent over plain http. The local stack keeps its defaults."""
    from mqtt_relay.settings import RelaySettings

    devices = dict(PROD_OK, LOCKWISE_RELAY_ROUTES="on", LOCKWISE_MQTT_PUBLIC_HOST="mqtt.lockwise.example")
    assert Settings.from_env(devices, component="devices").relay_routes
    refused = {
        "LOCKWISE_SERVICE_TOKEN": ["x", "1234", "admin", "lockwise-prod", "Password1", "ab" * 20],
        "LOCKWISE_REHEARSAL": ["maybe", "2", "of"],
        "LOCKWISE_REPLAY_MEMORY_HOURS": ["0"],
        "LOCKWISE_ACCOUNT_CHECK_BATCH": ["0"],
        "LOCKWISE_RELAY_ROUTES": [""],
        "LOCKWISE_MQTT_PUBLIC_HOST": ["", "127.0.0.1", "localhost", "127.0.1.1"],
    }
    for name, values in refused.items():
        for value in values:
            env = dict(devices, **{name: value})
            with pytest.raises(ConfigError, match=name):
                Settings.from_env(env, component="verify" if name == "LOCKWISE_REPLAY_MEMORY_HOURS" else "devices")
    for value in ("", "0", "false", "OFF", " No ", "False", "0 "):  # off, as written any way: no emulator admitted
        assert not config.rehearsal({"LOCKWISE_REHEARSAL": value})
        with pytest.raises(ConfigError, match="EMULATOR_HOST"):
            Settings.from_env(dict(devices, LOCKWISE_REHEARSAL=value, FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099"))
    assert config.rehearsal({"LOCKWISE_REHEARSAL": " TRUE "})
    with pytest.raises(ConfigError, match="LOCKWISE_LOCK_CERT_TTL_S must be at most"):
        Settings.from_env(dict(devices, LOCKWISE_LOCK_CERT_TTL_S=str(31 * 24 * 3600)), component="devices")
    with pytest.raises(ConfigError, match="LOCKWISE_LOCKOUT_BASE_S must be at most"):
        Settings.from_env({"LOCKWISE_LOCKOUT_BASE_S": str(10**12)}, component="verify")
    local = Settings.from_env({"LOCKWISE_REPLAY_MEMORY_HOURS": "0"}, component="verify")
    assert (local.relay_routes, local.mqtt_public_host, local.replay_memory_hours) == (True, "127.0.0.1", 0)

    (tmp_path / "ca.pem").write_text("a CA")
    relay = {
        "LOCKWISE_MODE": "production",
        "LOCKWISE_PROJECT_ID": PROD_OK["LOCKWISE_PROJECT_ID"],
        "DATABASE_URL": PROD_OK["DATABASE_URL"],
        "LOCKWISE_SERVICE_TOKEN": PROD_OK["LOCKWISE_SERVICE_TOKEN"],
        "MQTT_HOST": "broker.lockwise.internal",
        "MQTT_CA_FILE": str(tmp_path / "ca.pem"),
        "MQTT_CLIENT_CERTS": str(tmp_path / "ca.pem"),
    }
    for url in ("http://devices-relay.example", "http://10.0.0.9:8080", "ftp://x", "lockwise-devices", "https://"):
        with pytest.raises(ConfigError, match="LOCKWISE_DEVICES_URL"):
            RelaySettings.from_env(dict(relay, LOCKWISE_DEVICES_URL=url))
    for url in ("https://devices-relay.example/", "http://127.0.0.1:8083"):  # the rehearsal's, on this machine
        assert RelaySettings.from_env(dict(relay, LOCKWISE_DEVICES_URL=url)).devices_url == url.rstrip("/")
    with pytest.raises(ConfigError, match="LOCKWISE_SERVICE_TOKEN"):
        RelaySettings.from_env(dict(relay, LOCKWISE_DEVICES_URL="https://d.example", LOCKWISE_SERVICE_TOKEN="1234"))


def test_the_relays_batch_is_at_most_what_the_devices_function_takes(tmp_path: Path) -> None:
    """A larger batch was refused whole by the function (400) and split by the relay, every batch, at full size."""
    from lockwise.devices import topics
    from mqtt_relay.settings import RelaySettings

    (tmp_path / "ca.pem").write_text("a CA")
    files = {"MQTT_CA_FILE": str(tmp_path / "ca.pem"), "MQTT_CLIENT_CERTS": str(tmp_path / "ca.pem")}
    most = topics.MAX_EVENTS_PER_BATCH
    assert RelaySettings.from_env({**files, "LOCKWISE_RELAY_EVENT_BATCH": str(most)}).event_batch == most
    with pytest.raises(ConfigError, match=f"LOCKWISE_RELAY_EVENT_BATCH must be at most {most}"):
        RelaySettings.from_env({**files, "LOCKWISE_RELAY_EVENT_BATCH": str(most + 1)})


def _plain(settings: Settings) -> dict[str, object]:
    """The settings' values but the secrets (a local lock CA is made anew at each read)."""
    values = dataclasses.asdict(settings)
    for secret in ("lock_ca", "command_signing_key", "service_token"):
        values.pop(secret)
    return values


def test_every_variable_the_functions_read_is_either_common_or_listed_with_its_readers() -> None:
    """Every environment variable config.py names (a string that is one whole name, wherever it is read) is a
    secret, a common variable or listed with its readers, and every one listed is named there: the lists are
    what ``from_env`` reads, exactly."""
    tree = ast.parse(Path(config.__file__).read_text())
    env_name = re.compile(r"(LOCKWISE|FIREBASE|FIRESTORE|GOOGLE|LOG|DATABASE)_[A-Z0-9_]+")
    named = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and env_name.fullmatch(node.value)
    }
    secrets = {SERVICE_TOKEN, COMMAND_SIGNING_KEY, LOCK_CA, "DATABASE_URL"}
    assert named - secrets == set(READ_BY) | COMMON_VARIABLES
    assert not set(READ_BY) & COMMON_VARIABLES
    assert all(readers and readers <= set(FUNCTIONS) for readers in READ_BY.values())


@pytest.mark.parametrize("name", sorted(READ_BY))
def test_a_plain_value_one_function_uses_is_read_by_it_and_by_no_other(name: str) -> None:
    """A value set only for devices (a bad one too) stops devices, or changes its settings, and leaves verify and
    embed as they were: each deployable reads only what it uses."""
    for component in FUNCTIONS:
        default = _plain(Settings.from_env({}, component=component))
        try:
            read = _plain(Settings.from_env({name: "-7x"}, component=component))
        except ConfigError as exc:
            assert component in READ_BY[name] and name in str(exc)
            continue
        assert (read != default) == (component in READ_BY[name]), (component, name)


#: each duration and port an operator sets, with the most it takes (attack run 119: none had a bound)
BOUNDED = {
    "LOCKWISE_COMMAND_TTL_S": 300,  # attack run 117: what a lock keeps nonces for
    "LOCKWISE_PROVISIONING_TTL_S": 24 * 3600,
    "LOCKWISE_INVITATION_TTL_S": 365 * 24 * 3600,
    "LOCKWISE_LOCK_REQUEST_SKEW_S": 3600,
    "LOCKWISE_MQTT_PUBLIC_PORT": 65535,
    "LOCKWISE_REPLAY_MEMORY_HOURS": 365 * 24,
    "LOCKWISE_ACCOUNT_RECHECK_S": 30 * 24 * 3600,
}


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_a_duration_or_port_past_what_its_use_holds_stops_the_start_by_name(name: str) -> None:
    """Unbounded, a command's lifetime past 2**32 s failed every relay delivery round (the MQTT expiry's four bytes)
    and past what a date holds every command, a 500; ``30000`` meant as milliseconds kept an unlock valid 8 hours; a
    pairing code's, an invitation's, a recheck or a skew past what a date holds failed in PostgreSQL."""
    most, component = BOUNDED[name], sorted(READ_BY.get(name, FUNCTIONS))[0]
    assert getattr(Settings.from_env({name: str(most)}, component=component), _field(name)) == most
    for past in (most + 1, 10**12):
        with pytest.raises(ConfigError, match=f"{name} must be at most {most}"):
            Settings.from_env({name: str(past)}, component=component)


def _field(name: str) -> str:
    return name.removeprefix("LOCKWISE_").lower()


RELAY_BOUNDED = {
    "LOCKWISE_RELAY_SESSION_EXPIRY_S": 0xFFFFFFFE,
    "LOCKWISE_RELAY_ORPHAN_SCAN_S": 24 * 3600,
    "LOCKWISE_RELAY_FLUSH_EVERY_S": 24 * 3600,
    "LOCKWISE_RELAY_RESEND_AFTER_S": 3600,
    "LOCKWISE_RELAY_POLL_MS": 60_000,
    "MQTT_PORT": 65535,
    "PORT": 65535,
}


@pytest.mark.parametrize("name", sorted(RELAY_BOUNDED))
def test_a_relay_duration_or_port_past_what_its_use_holds_stops_its_start_by_name(name: str, tmp_path: Path) -> None:
    from mqtt_relay.settings import RelaySettings

    (tmp_path / "ca.pem").write_text("a CA")
    files = {"MQTT_CA_FILE": str(tmp_path / "ca.pem"), "MQTT_CLIENT_CERTS": str(tmp_path / "ca.pem")}
    most = RELAY_BOUNDED[name]
    RelaySettings.from_env({**files, name: str(most)})
    for past in (most + 1, 10**12):
        with pytest.raises(ConfigError, match=f"{name} must be at most {most}"):
            RelaySettings.from_env({**files, name: str(past)})


def test_the_relays_bounds_are_what_mqtt_and_a_wait_hold() -> None:
    """The most each bound takes works where it is used: a session expiry is packed in four bytes (0xFFFFFFFF
    meaning never; past them paho raised in its network thread), a wait of a day is within time_t (past it, the
    wait raised OverflowError and ended its thread)."""
    import struct
    import threading

    from mqtt_relay import sessions
    from mqtt_relay.settings import DAY_S, MAX_EXPIRY_S

    sessions.session_properties(MAX_EXPIRY_S).pack()  # type: ignore[no-untyped-call]
    with pytest.raises(struct.error):
        sessions.session_properties(MAX_EXPIRY_S + 2).pack()  # type: ignore[no-untyped-call]
    assert DAY_S < threading.TIMEOUT_MAX
