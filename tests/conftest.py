"""Session fixtures that start the real components once (PostgreSQL, Mosquitto, Firestore and Auth emulators) and
per-test fixtures that isolate the environment and reset the data.

A component this machine lacks makes its fixture fail with the reason (``MissingComponent``); nothing is skipped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local import services
from tests.openapi_check import OpenApiSpec

REPO = Path(__file__).resolve().parents[1]
PROJECT_ID = "demo-lockwise-test"


class _Services:
    """PostgreSQL (migrated), Mosquitto and the Firestore and Auth emulators, each started once per session in a
    thread of its own: they start side by side, and from the session's start while pytest collects (the Auth
    emulator alone takes ~7 s) when the run holds more than unit tests. Stopped when the session ends."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="lockwise-test-"))
        self.workdir.chmod(0o755)
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="start")
        self._started: dict[str, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()

    def _start(self, name: str) -> Any:
        port = services.free_port()
        if name == "postgres":
            pg = services.start_postgres(self.workdir / "pg", port, secrets.token_urlsafe(12), durable=False)
            from lockwise.core import migrate
            from lockwise.core.db import Database

            con = Database(pg.url).connect()
            try:
                migrate.apply(con)
            finally:
                con.close()
            return pg
        if name == "broker":
            return services.start_mosquitto(self.workdir / "broker", port)
        if name == "firestore":
            return services.start_firestore(self.workdir / "firestore", port, PROJECT_ID)
        return services.start_auth(self.workdir / "auth", port, PROJECT_ID)

    def begin(self, *names: str) -> None:
        with self._lock:
            for name in names:
                if name not in self._started:
                    self._started[name] = self._pool.submit(self._start, name)

    def get(self, name: str) -> Any:
        """The started service; the reason it could not start (``MissingComponent``, ``StartupFailed``) if not."""
        self.begin(name)
        return self._started[name].result()

    def stop(self) -> None:
        for future in self._started.values():
            with contextlib.suppress(Exception):  # its failure was reported by the test that needed it
                future.result().stop()
        self._pool.shutdown()
        if not os.environ.get("LOCKWISE_KEEP_TEST_STATE"):  # set it to read the services' logs after a run
            shutil.rmtree(self.workdir, ignore_errors=True)


_SERVICES: list[_Services] = []  # the session's, made when first needed
SERVICE_NAMES = ("postgres", "broker", "firestore", "auth")


def _services() -> _Services:
    if not _SERVICES:
        _SERVICES.append(_Services())
    return _SERVICES[0]


#: fixtures a unit test may not ask for: the services, and the model directory (built with torch on first use)
NOT_FOR_UNIT_TESTS = frozenset(
    {"postgres", "broker", "firestore_emulator", "auth_emulator", "stack_env", "make_client", "model_dir"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiers mean what they say: everything in tests/model is a ``model`` test (``--fast`` leaves it out), and a
    test in tests/unit that needs a model, the model directory or a service is refused (move it to tests/model or
    tests/integration)."""
    model_tier, unit_tier = REPO / "tests" / "model", REPO / "tests" / "unit"
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if model_tier in path.parents:
            item.add_marker(pytest.mark.model)
        elif unit_tier in path.parents:
            needs = NOT_FOR_UNIT_TESTS.intersection(getattr(item, "fixturenames", ()))
            if item.get_closest_marker("model") or needs:
                raise pytest.UsageError(
                    f"{item.nodeid} is in tests/unit but needs {sorted(needs) or 'a model'}: unit tests need neither"
                )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start the services now, beside collection, unless every path given is under tests/unit or tests/model (the
    tiers that need no service)."""
    quiet = (REPO / "tests" / "unit", REPO / "tests" / "model")
    paths = [Path(str(a).split("::")[0]).resolve() for a in session.config.args] or [REPO / "tests"]
    if not all(any(p == tier or tier in p.parents for tier in quiet) for p in paths):
        _services().begin(*SERVICE_NAMES)


def pytest_sessionfinish(session: pytest.Session) -> None:
    while _SERVICES:
        _SERVICES.pop().stop()


@pytest.fixture(scope="session")
def workdir() -> Path:
    return _services().workdir


# ------------------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres() -> services.Postgres:
    pg: services.Postgres = _services().get("postgres")
    return pg


def _reset_database(pg: services.Postgres) -> None:
    import pg8000.native

    con = pg8000.native.Connection(
        "postgres", unix_sock=f"{pg.socket_dir}/.s.PGSQL.{pg.port}", database=pg.database, ssl_context=False
    )
    try:
        tables = [
            r[0]
            for r in con.run(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
            )
        ]
        if tables:
            # replica mode skips the audit log's append-only triggers for this admin session only
            con.run("SET session_replication_role = replica")
            con.run("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    finally:
        con.close()


# ----------------------------------------------------------------------------------------------------- Broker


@pytest.fixture(scope="session")
def broker() -> services.Broker:
    b: services.Broker = _services().get("broker")
    return b


# ------------------------------------------------------------------------------------------ Firebase emulators


@pytest.fixture(scope="session")
def firestore_emulator() -> services.Emulator:
    emu: services.Emulator = _services().get("firestore")
    return emu


@pytest.fixture(scope="session")
def auth_emulator() -> services.Emulator:
    emu: services.Emulator = _services().get("auth")
    return emu


def _delete(url: str) -> None:
    req = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200, f"DELETE {url} -> {resp.status}"


def reset_firestore(emu: services.Emulator) -> None:
    _delete(f"http://{emu.host}/emulator/v1/projects/{emu.project_id}/databases/(default)/documents")


def reset_auth(emu: services.Emulator) -> None:
    _delete(f"http://{emu.host}/emulator/v1/projects/{emu.project_id}/accounts")


# ----------------------------------------------------------------------------------------- environment, apps


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """A real ECAPA-TDNN (SpeechBrain's class, tiny size) with random weights, in the Hub's layout, with its ONNX
    export in ``onnx/``: embed enrolls through SpeechBrain, verify serves the export, as deployed."""
    from infra.model.cache import random_model

    return random_model("tiny", 1, exported=True)  # built once per machine (no torch import when cached)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """Real recorded speech: Debian's Asterisk prompts, one folder per speaker (``infra.voice.corpus``; the .debs
    and the decoded clips are cached in ~/.cache/lockwise/corpus)."""
    from tests.voices import corpus_dir

    return corpus_dir()


@pytest.fixture(scope="session")
def command_signing_key() -> str:
    import base64

    return base64.b64encode(secrets.token_bytes(32)).decode()


def services_env(
    postgres: services.Postgres,
    firestore_emulator: services.Emulator,
    auth_emulator: services.Emulator,
    broker: services.Broker,
    command_signing_key: str,
) -> dict[str, str]:
    """The environment a function needs to use the session's services (a fresh service token each call)."""
    return {
        "LOCKWISE_MODE": "test",
        "LOCKWISE_PROJECT_ID": PROJECT_ID,
        "DATABASE_URL": postgres.url,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator.host,
        "LOCKWISE_SERVICE_TOKEN": secrets.token_urlsafe(24),
        "LOCKWISE_COMMAND_SIGNING_KEY": command_signing_key,
        "LOCKWISE_MQTT_PUBLIC_HOST": "127.0.0.1",
        "LOCKWISE_MQTT_PUBLIC_PORT": str(broker.port),
        "LOCKWISE_LOCK_CA": broker.lock_ca_pem,  # the broker trusts what this CA signs at pairing
    }


@pytest.fixture
def stack_env(
    monkeypatch: pytest.MonkeyPatch,
    postgres: services.Postgres,
    firestore_emulator: services.Emulator,
    auth_emulator: services.Emulator,
    broker: services.Broker,
    command_signing_key: str,
    model_dir: Path,
) -> Iterator[dict[str, str]]:
    """An isolated environment pointing at the session's services, with their data reset after the test."""
    from lockwise.core.config import get_settings
    from lockwise.core.runtime import get_runtime

    for key in list(os.environ):
        if key.startswith("LOCKWISE_") or key in (
            "DATABASE_URL",
            "FIRESTORE_EMULATOR_HOST",
            "FIREBASE_AUTH_EMULATOR_HOST",
            "GOOGLE_CLOUD_PROJECT",
        ):
            monkeypatch.delenv(key)
    env = services_env(postgres, firestore_emulator, auth_emulator, broker, command_signing_key)
    env["LOCKWISE_MODEL_DIR"] = str(model_dir)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    get_runtime.cache_clear()
    try:
        yield env
    finally:
        with contextlib.suppress(Exception):
            get_runtime("_").db.close()
        get_settings.cache_clear()
        get_runtime.cache_clear()
        _reset_database(postgres)
        reset_firestore(firestore_emulator)
        reset_auth(auth_emulator)


@pytest.fixture(scope="session")
def openapi_spec() -> OpenApiSpec:
    return OpenApiSpec()


class CheckedClient:
    """A functions-framework test client whose every response is checked against the OpenAPI document."""

    def __init__(self, client: Any, spec: OpenApiSpec) -> None:
        self._client = client
        self._spec = spec

    def open(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._client.open(path, method=method, **kwargs)
        self._spec.check(method, path.split("?")[0], resp.status_code, resp.get_data(), resp.content_type)
        return resp

    def get(self, path: str, **kw: Any) -> Any:
        return self.open("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.open("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.open("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.open("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.open("DELETE", path, **kw)


@pytest.fixture
def impatient_devices(stack_env: dict[str, str]) -> Iterator[Any]:
    """The devices function's statements stopped by the server after 0.3 s (4 s deployed, which a test need not
    wait), and a database session of the test's own (returned) to hold rows meanwhile."""
    from lockwise.core.db import Database
    from lockwise.core.runtime import get_runtime

    rt = get_runtime("devices")
    rt.db.statement_timeout_s = 0.3
    rt.db.close()  # the pooled connections were made with the default
    holder = Database(stack_env["DATABASE_URL"], pool_size=1)
    try:
        yield holder
    finally:
        holder.close()
        rt.db.close()
        get_runtime.cache_clear()


@pytest.fixture
def relay_db(stack_env: dict[str, str]) -> Iterator[Any]:
    """A database of the relay's own (one connection), beside the functions' pool: a second process's transactions."""
    from lockwise.core.db import Database

    db = Database(stack_env["DATABASE_URL"], pool_size=1)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def make_client(stack_env: dict[str, str], openapi_spec: OpenApiSpec) -> Callable[[str], CheckedClient]:
    """``make_client("devices")``: the function's Flask app, loaded from its folder as functions-framework does."""
    import functions_framework

    def make(name: str) -> CheckedClient:
        source = str(REPO / "functions" / name / "main.py")
        app = functions_framework.create_app(target=name, source=source)  # type: ignore[no-untyped-call]
        return CheckedClient(app.test_client(), openapi_spec)

    return make


# ------------------------------------------------------------------------------------------------ app users


@pytest.fixture
def sign_up(auth_emulator: services.Emulator) -> Callable[..., dict[str, Any]]:
    """Create an Auth emulator user; returns the signUp response (``idToken``, ``localId``, ``email``)."""

    def create(email: str | None = None, password: str = "correct-horse-9") -> dict[str, Any]:
        email = email or f"user-{secrets.token_hex(4)}@example.com"
        body = json.dumps({"email": email, "password": password, "returnSecureToken": True}).encode()
        req = urllib.request.Request(
            f"http://{auth_emulator.host}/identitytoolkit.googleapis.com/v1/accounts:signUp?key=fake-api-key",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    return create


@pytest.fixture(scope="session", autouse=True)
def hub_offline() -> Iterator[None]:
    """No test reaches the Hugging Face Hub: HF_HUB_OFFLINE=1 for the whole session (the ECAPA loader sets it for
    its process anyway), put back as it was at the end."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, a killed run) becomes KeyboardInterrupt, so the session still stops every service."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture
def no_lazy_speechbrain_modules() -> Iterator[None]:
    """Hypothesis reads ``__file__`` of every module in ``sys.modules``; SpeechBrain's lazy modules import on any
    attribute read (k2, absent here), so they are set aside while a Hypothesis test runs (when an earlier test or
    the model fixture loaded them), and put back after."""
    lazy = {name: m for name, m in list(sys.modules.items()) if type(m).__module__.startswith("speechbrain")}
    for name in lazy:
        del sys.modules[name]
    yield
    sys.modules.update(lazy)


@pytest.fixture
def ge2e_env(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The stack with no model directory configured: the functions fall back to GE2E (real weights, real speech).
    Lockout and the per-minute budgets of model passes are raised out of the way: several strangers in a row would
    (rightly) lock voice unlock, dozens of voices a minute at one door would (rightly) be refused, and each decision
    is what those tests measure."""
    from lockwise.core.config import get_settings

    monkeypatch.delenv("LOCKWISE_MODEL_DIR")
    monkeypatch.setenv("LOCKWISE_LOCKOUT_AFTER", "50")
    monkeypatch.setenv("LOCKWISE_VOICE_ATTEMPTS_PER_MINUTE", "100000")
    monkeypatch.setenv("LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_MINUTE", "100000")
    monkeypatch.setenv("LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_AT_ONCE", "100")
    get_settings.cache_clear()
    yield {k: v for k, v in stack_env.items() if k != "LOCKWISE_MODEL_DIR"}
