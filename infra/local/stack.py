"""The whole LockWise back-end on this machine: ``./dev stack`` (runs ``python -m infra.local.stack``).

Starts PostgreSQL, Mosquitto (TLS, client certificates only), the Firestore and Auth emulators, applies the
migrations, serves the three functions with functions-framework and the web console (``infra.local.console``), prints
where everything listens and waits. Ctrl-C
(or SIGTERM) stops every process it started. State (database, broker persistence, certificates, generated local
secrets, logs) lives in ``.local/`` so a restart keeps enrolled voices and locks.

An existing service is used instead of a local one when its variable is set: ``DATABASE_URL``,
``MQTT_HOST``/``MQTT_PORT``/``MQTT_CA_FILE``, ``FIRESTORE_EMULATOR_HOST``, ``FIREBASE_AUTH_EMULATOR_HOST``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from infra.local import console, services
from infra.local.private_files import write_private
from infra.local.services import REPO

log = logging.getLogger("lockwise.stack")

DEFAULT_PORTS = {
    "postgres": 55432,
    "broker": 8883,
    "firestore": 8080,
    "auth": 9099,
    "embed": 8081,
    "verify": 8082,
    "devices": 8083,
    "relay": 8090,
    "console": 5000,
}
DEMO_LOCK_USER = "lock-demo-0001"


def _local_secrets(state: Path) -> dict[str, str]:
    """Random local-only secrets, generated on first run and kept in ``.local/secrets.json`` (git-ignored)."""
    path = state / "secrets.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
    else:
        data = {}
    for key in ("db_password", "service_token"):
        data.setdefault(key, secrets.token_urlsafe(18))
    data.setdefault("command_signing_key", base64.b64encode(secrets.token_bytes(32)).decode())
    write_private(path, json.dumps(data, indent=2))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local")
    parser.add_argument("--ready-file", type=Path, help="write the stack's environment here once ready")
    parser.add_argument("--free-ports", action="store_true", help="pick free ports instead of the defaults")
    args = parser.parse_args(argv)
    ports = {name: services.free_port() for name in DEFAULT_PORTS} if args.free_ports else dict(DEFAULT_PORTS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    state: Path = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    secrets_ = _local_secrets(state)
    env = os.environ
    project = env.get("LOCKWISE_PROJECT_ID", "demo-lockwise")
    started: list[Any] = []
    stop_event = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    table: list[tuple[str, str, str]] = []
    busy = [f"{name} ({port})" for name, port in ports.items() if services.port_open(port)]
    if busy:
        log.error("ports already in use: %s. Is another stack running? (--free-ports picks others)", ", ".join(busy))
        return 1
    try:
        # The services start side by side (the Auth emulator alone takes ~5 s), each appending what it started to
        # ``started`` as soon as it runs, so a failure anywhere still stops everything in ``finally``.
        with ThreadPoolExecutor(max_workers=5, thread_name_prefix="start") as pool:
            database = pool.submit(_database, env, state, ports["postgres"], secrets_["db_password"], started)
            broker_ = pool.submit(_broker, env, state, ports["broker"], started)
            firestore = pool.submit(_firestore, env, logs, ports["firestore"], project, started)
            auth = pool.submit(_auth, env, state, ports["auth"], project, started)
            model = pool.submit(_model, env.get("LOCKWISE_MODEL_DIR"))
            database_url, rows = database.result()
            table += rows
            (mqtt_host, mqtt_port, ca_file, lock_ca, relay_certs, demo_identity), rows = broker_.result()
            table += rows
            fs_host, rows = firestore.result()
            table += rows
            auth_host, rows = auth.result()
            table += rows
            model_dir, rows = model.result()
            table += rows
        fn_env = {
            "LOCKWISE_MODE": "local",
            "LOCKWISE_PROJECT_ID": project,
            "DATABASE_URL": database_url,
            "FIRESTORE_EMULATOR_HOST": fs_host,
            "FIREBASE_AUTH_EMULATOR_HOST": auth_host,
            "LOCKWISE_SERVICE_TOKEN": secrets_["service_token"],
            "LOCKWISE_COMMAND_SIGNING_KEY": secrets_["command_signing_key"],
            "LOCKWISE_MQTT_PUBLIC_HOST": mqtt_host,
            "LOCKWISE_MQTT_PUBLIC_PORT": str(mqtt_port),
            "LOCKWISE_LOCK_CA": lock_ca,
            # the Auth emulator forgets its accounts when it stops while PostgreSQL keeps their rows: after a
            # restart, the relay's flush would find every recorded user deleted and end them (lockwise.core.accounts;
            # its tests run against the test stack's emulator). Set it to try the sweep here
            "LOCKWISE_ACCOUNT_CHECK_BATCH": env.get("LOCKWISE_ACCOUNT_CHECK_BATCH", "0"),
        }
        if model_dir:
            fn_env["LOCKWISE_MODEL_DIR"] = model_dir

        def serve(name: str) -> tuple[str, str, str]:
            server = services.start_function(name, ports[name], fn_env, logs)
            started.append(server)
            return (f"function {name}", server.url + f"/{name}", str(logs / f"{name}.log"))

        with ThreadPoolExecutor(max_workers=len(services.FUNCTIONS), thread_name_prefix="start") as pool:
            table += list(pool.map(serve, services.FUNCTIONS))

        if not relay_certs:
            table.append(("relay", "not started", "set MQTT_CLIENT_CERTS (python -m infra.lock_ca) for that broker"))
        else:
            relay_env = dict(
                fn_env,
                MQTT_HOST=mqtt_host,
                MQTT_PORT=str(mqtt_port),
                MQTT_CA_FILE=ca_file,
                MQTT_CLIENT_CERTS=relay_certs,
                LOCKWISE_DEVICES_URL=f"http://127.0.0.1:{ports['devices']}",
            )
            relay = services.start_relay(logs, relay_env, health_port=ports["relay"])
            started.append(relay)
            table.append(("mqtt relay", f"http://127.0.0.1:{ports['relay']}/health", str(relay.log_path)))

        web = console.Console(
            ports["console"],
            {name: f"http://127.0.0.1:{ports[name]}" for name in services.FUNCTIONS},
            console.emulator_init(project, auth_host, fs_host),
        ).start()
        started.append(web)
        table.append(("web console", web.url, "infra/hosting (the app's side: sign in, locks, live view, enroll)"))

        stack_env = dict(
            fn_env,
            MQTT_HOST=mqtt_host,
            MQTT_PORT=str(mqtt_port),
            MQTT_CA_FILE=ca_file,
            LOCKWISE_DEMO_LOCK_IDENTITY=str(demo_identity),
            LOCKWISE_EMBED_URL=f"http://127.0.0.1:{ports['embed']}",
            LOCKWISE_VERIFY_URL=f"http://127.0.0.1:{ports['verify']}",
            LOCKWISE_DEVICES_URL=f"http://127.0.0.1:{ports['devices']}",
            LOCKWISE_RELAY_HEALTH_URL=f"http://127.0.0.1:{ports['relay']}/health",
            LOCKWISE_CONSOLE_URL=web.url,
        )
        stack_env.pop("LOCKWISE_LOCK_CA")  # the functions' secret, not the clients' (and a multi-line PEM)
        env_file = state / "stack.env"
        write_private(env_file, "".join(f"{k}={v}\n" for k, v in stack_env.items()))
        if args.ready_file:
            write_private(args.ready_file, json.dumps(stack_env))
        _print_table(table, env_file)
        while not stop_event.wait(1.0):
            for svc in started:
                proc = getattr(svc, "process", None)
                if proc is not None and not proc.alive():
                    log.error("%s exited unexpectedly:\n%s", proc.name, proc.log_tail())
                    stop_event.set()
        return 0
    except (services.MissingComponent, console.ConsoleNotBuilt) as exc:
        log.error("missing component: %s", exc)
        return 2
    except services.StartupFailed as exc:
        log.error("start-up failed: %s", exc)
        return 1
    finally:
        for svc in reversed(started):
            svc.stop()
        log.info("stopped %d services", len(started))


@contextmanager
def background(
    model_dir: Path | None = None, timeout_s: float = 240, settings: Mapping[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """The whole stack (``python -m infra.local.stack --free-ports``) in a temporary state folder, stopped when the
    block ends; yields its environment. ``model_dir``: an ECAPA-TDNN directory (default: the stack's GE2E);
    ``settings``: ``LOCKWISE_`` variables its functions read. Used by the benchmarks and by ``./dev demo`` when no
    stack is running."""
    state = Path(tempfile.mkdtemp(prefix="lockwise-bench-"))
    state.chmod(0o755)
    ready = state / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKWISE_", "MQTT_"))}
    for key in ("DATABASE_URL", "FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST"):
        env.pop(key, None)
    env["PYTHONPATH"] = f"{REPO / 'functions'}:{REPO}"
    if model_dir is not None:
        env["LOCKWISE_MODEL_DIR"] = str(model_dir)
    env.update(settings or {})
    with open(state / "stack.out", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.local.stack",
                "--state-dir",
                str(state / "s"),
                "--free-ports",
                "--ready-file",
                str(ready),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((state / "stack.out").read_text()[-3000:])
            time.sleep(0.3)
        yield json.loads(ready.read_text())
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(90)


def _write_demo_lock(broker: services.Broker, path: Path) -> None:
    """A lock identity for ``./dev simlock`` without pairing: a certificate for ``lock-demo-0001`` from the local
    lock CA (it reaches only its own topics, like any lock; pair a real one with ``./dev simlock --pair``)."""
    from infra.lock_ca import client_cert
    from simlock.lock import LockConfig

    cert, key = client_cert(broker.lock_ca_pem, DEMO_LOCK_USER, 365)
    config = LockConfig(DEMO_LOCK_USER, DEMO_LOCK_USER, cert, key, "127.0.0.1", broker.port, str(broker.ca_file))
    config.save(path)


Row = tuple[str, str, str]


def _database(
    env: Mapping[str, str], state: Path, port: int, password: str, started: list[Any]
) -> tuple[str, list[Row]]:
    """PostgreSQL (or ``DATABASE_URL``'s), migrated: its URL and table rows."""
    database_url = env.get("DATABASE_URL")
    if database_url:
        rows = [("postgres", "external", "DATABASE_URL")]
    else:
        pg = services.start_postgres(state / "postgres", port, password, durable=True)
        started.append(pg)
        database_url = pg.url
        rows = [("postgres", f"127.0.0.1:{pg.port}", str(state / "postgres" / "postgres.log"))]
    _migrate(database_url, env.get("LOCKWISE_PROJECT_ID") or "demo-lockwise", external=bool(env.get("DATABASE_URL")))
    return database_url, rows


class BrokerAccess(NamedTuple):
    host: str
    port: int
    ca_file: str
    lock_ca: str  # PEM
    relay_certs: str  # the relay slots' certificates file ("" when the broker came without them)
    demo_identity: Path


def _broker(env: Mapping[str, str], state: Path, port: int, started: list[Any]) -> tuple[BrokerAccess, list[Row]]:
    """Mosquitto (or ``MQTT_HOST``'s broker, whose lock CA and relay certificates come with it)."""
    demo_identity = state / "demo-lock.json"
    if env.get("MQTT_HOST"):
        host, port = env["MQTT_HOST"], int(env.get("MQTT_PORT", "8883"))
        access = BrokerAccess(
            host,
            port,
            ca_file=env.get("MQTT_CA_FILE", ""),
            lock_ca=env.get("LOCKWISE_LOCK_CA", ""),
            relay_certs=env.get("MQTT_CLIENT_CERTS", ""),
            demo_identity=demo_identity,
        )
        return access, [("broker", "external", f"{host}:{port}")]
    broker = services.start_mosquitto(state / "broker", port)
    started.append(broker)
    _write_demo_lock(broker, demo_identity)
    rows = [("broker (mqtts)", f"127.0.0.1:{broker.port}", "client certificates only; lock CA in " +
             str(state / "broker" / "identity"))]  # fmt: skip
    access = BrokerAccess(
        "127.0.0.1", broker.port, str(broker.ca_file), broker.lock_ca_pem, str(broker.relay_certs), demo_identity
    )
    return access, rows


def _firestore(
    env: Mapping[str, str], logs: Path, port: int, project: str, started: list[Any]
) -> tuple[str, list[Row]]:
    host = env.get("FIRESTORE_EMULATOR_HOST")
    if host:
        return host, [("firestore", "external", host)]
    fs = services.start_firestore(logs, port, project)
    started.append(fs)
    return fs.host, [("firestore emulator", fs.host, str(logs / "firestore.log"))]


def _auth(env: Mapping[str, str], state: Path, port: int, project: str, started: list[Any]) -> tuple[str, list[Row]]:
    host = env.get("FIREBASE_AUTH_EMULATOR_HOST")
    if host:
        return host, [("auth", "external", host)]
    auth = services.start_auth(state / "auth", port, project)
    started.append(auth)
    return auth.host, [("auth emulator", auth.host, str(state / "auth" / "auth.log"))]


def _model(model_dir: str | None) -> tuple[str | None, list[Row]]:
    if not model_dir:
        return None, [("speaker model", "GE2E", "resemblyzer's real weights; LOCKWISE_MODEL_DIR selects ECAPA")]
    _ensure_exported(Path(model_dir))
    return model_dir, [("speaker model", "ECAPA-TDNN", f"{model_dir} (verify serves its ONNX export)")]


def _ensure_exported(model_dir: Path) -> None:
    """Verify serves ECAPA from its ONNX export: make it next to the SpeechBrain files, parity-checked, once per
    set of weights (an export of older weights would give verify another model_id than embed)."""
    from lockwise.voice.model.ecapa import model_identity
    from lockwise.voice.model.encoder import onnx_dir
    from lockwise.voice.model.model_files import ModelError
    from lockwise.voice.model.onnx_ecapa import load_artifact_manifest

    try:
        if load_artifact_manifest(onnx_dir(model_dir))["model_id"] == model_identity(model_dir):
            return  # an export of these very weights
    except ModelError:
        pass  # none yet, or unreadable: export (again)
    from infra.model.export_onnx import export

    log.info("exporting %s to ONNX for the verify function", model_dir)
    export(model_dir, model_dir / "onnx")


def _migrate(database_url: str, project: str, *, external: bool = False) -> None:
    """Migrate the stack's database and bind it to ``project`` (``lockwise.core.deployment``), as the migration job
    does; ``StartupFailed`` for one bound to another project, or for an ``external`` one (``DATABASE_URL``) bound to
    none that holds accounts already: a deployment's database its own job has not bound yet (attack run 116: the stack
    bound it to its demo project, took the Auth emulator's unsigned tokens for its accounts, and the deployment's
    functions then served nothing)."""
    from lockwise.core import deployment, migrate

    con = migrate.job_connection(database_url)
    try:
        try:
            deployment.check(con, project)
        except deployment.WrongDeployment as exc:
            raise services.StartupFailed(
                f"DATABASE_URL names the database of the Firebase project {exc.bound!r}'s deployment, not this"
                f" stack's ({project!r}): start the stack with a database of its own (unset DATABASE_URL)"
            ) from None
        if external and deployment.bound_project(con) is None and _holds_accounts(con):
            raise services.StartupFailed(
                "DATABASE_URL names a database that holds accounts and is bound to no deployment (a deployment's,"
                " before its migration job bound it): the stack binds only a database of its own or an empty one;"
                f" if it is yours, bind it: INSERT INTO deployment (project_id) VALUES ('{project}')"
            )
        applied = migrate.apply(con)
        deployment.bind(con, project)
    finally:
        con.close()
    log.info("migrations: %d applied now, database up to date", len(applied))


def _holds_accounts(con: Any) -> bool:
    """Whether the database has a ``users`` table with a row in it."""
    if not con.run("SELECT to_regclass('users') IS NOT NULL")[0][0]:
        return False
    return bool(con.run("SELECT EXISTS (SELECT 1 FROM users)")[0][0])


def _print_table(rows: list[tuple[str, str, str]], env_file: Path) -> None:
    width = max(len(r[0]) for r in rows)
    lines = ["", "LockWise stack is up (Ctrl-C stops everything):", ""]
    lines += [f"  {name:<{width}}  {where:<36}  {detail}" for name, where, detail in rows]
    lines += [
        "",
        f"  environment for clients: {env_file}",
        "  simulated lock:          ./dev simlock   (connects over TLS with the demo lock's certificate)",
        "",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    time.tzset()
    sys.exit(main())
