"""Start and stop the real local components: PostgreSQL, Mosquitto (TLS), the Firebase emulators, the functions.

Used by the local stack (``infra/local/stack.py``) and by the test fixtures, so both run exactly the same thing.
Each service runs in its own process group and is stopped by signalling the whole group; ``stop()`` waits until
its port is closed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import firebase_tools
from infra.local.certs import TlsFiles, ensure_tls
from infra.local.private_files import write_private

log = logging.getLogger("lockwise.local")

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO / "functions"
FIREBASE_TOOLS_VERSION = "15.34.2"
TOOLS_HOME = Path(os.environ.get("LOCKWISE_TOOLS_HOME", Path.home() / ".cache" / "lockwise"))


class MissingComponent(RuntimeError):
    """A program the stack needs is not installed; the message says what to install."""


class StartupFailed(RuntimeError):
    """A service did not become ready; the message carries the tail of its log."""


_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()  # services may be started from several threads (the tests start them together)


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range (32768 and up on Linux): a port taken from that range can
    be grabbed as the local port of some outgoing connection before its service binds it (seen: a relay's health
    port, "address already in use"). Never the same port twice from one process."""
    rng = random.SystemRandom()
    with _HANDING_OUT:
        for _ in range(500):
            port = rng.randrange(20000, 32000)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port between 20000 and 32000")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Process:
    """A child process group with a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
        # Kill whatever is left of the group (daemonised children of wrappers, for instance).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    port: int,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
    popen = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    out.close()
    return Process(name, popen, log_path, port, stop_signal)


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """The first truthy value ``check`` returns within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return None


def wait_until(proc: Process, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartupFailed(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        if ready():
            return
        time.sleep(0.1)
    proc.stop()
    raise StartupFailed(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.log_tail()}")


def http_ok(url: str, accept: tuple[int, ...] = (200,), timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status) in accept
    except urllib.error.HTTPError as exc:
        return exc.code in accept
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if candidates:
        return Path(candidates[-1])
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise MissingComponent("PostgreSQL server binaries not found: apt-get install postgresql")


@dataclass
class Postgres:
    process: Process
    port: int
    password: str
    socket_dir: Path
    database: str = "lockwise"
    user: str = "lockwise"
    argv: list[str] = field(default_factory=list)  # the server's command line, for ``start_again``

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?host={self.socket_dir}"

    def stop(self) -> None:
        self.process.stop()

    def start_again(self) -> None:
        """The server stopped (``stop``: a fast shutdown) started again on its data, port and socket."""
        self.process = _spawn_postgres(self.argv, self.process.log_path, self.port, self.socket_dir)


def _spawn_postgres(argv: list[str], log_path: Path, port: int, sock: Path) -> Process:
    """Start the server; return once it takes connections."""
    import pg8000.native

    proc = spawn("postgres", _as_postgres(argv), log_path, port, stop_signal=signal.SIGINT)

    def ready() -> bool:
        try:
            pg8000.native.Connection("postgres", unix_sock=f"{sock}/.s.PGSQL.{port}", timeout=1).close()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    wait_until(proc, ready, 30)
    return proc


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if is_root() else argv


def start_postgres(state_dir: Path, port: int, password: str, *, durable: bool) -> Postgres:
    """A real PostgreSQL server whose data lives in ``state_dir/data`` (kept across restarts)."""
    import pg8000.native

    bindir = _pg_bindir()
    state_dir.mkdir(parents=True, exist_ok=True)
    data = state_dir / "data"
    sock = state_dir / "sock"
    sock.mkdir(exist_ok=True)
    if is_root():
        for p in (state_dir, *state_dir.parents):
            if p.stat().st_mode & 0o011 != 0o011:
                p.chmod(p.stat().st_mode | 0o011)  # user postgres must traverse to its data folder
        shutil.chown(state_dir, "postgres")
        shutil.chown(sock, "postgres")
    fresh = not (data / "PG_VERSION").exists()
    if fresh:
        pwfile = state_dir / "pwfile"
        write_private(pwfile, password + "\n")  # initdb reads it; nobody else (attack run 53's review)
        if is_root():
            shutil.chown(pwfile, "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        pwfile.unlink()
    argv = [
        str(bindir / "postgres"),
        "-D",
        str(data),
        "-c",
        f"port={port}",
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={sock}",
        "-c",
        f"fsync={'on' if durable else 'off'}",
        "-c",
        "full_page_writes=" + ("on" if durable else "off"),
        "-c",
        "max_connections=200",
    ]
    pg = Postgres(_spawn_postgres(argv, state_dir / "postgres.log", port, sock), port, password, sock, argv=argv)
    admin = pg8000.native.Connection("postgres", unix_sock=f"{sock}/.s.PGSQL.{port}")
    try:
        if not admin.run("SELECT 1 FROM pg_roles WHERE rolname = :u", u=pg.user):
            admin.run(f"CREATE ROLE {pg.user} LOGIN PASSWORD {pg8000.native.literal(password)}")
        if not admin.run("SELECT 1 FROM pg_database WHERE datname = :d", d=pg.database):
            admin.run(f"CREATE DATABASE {pg.database} OWNER {pg.user}")
    finally:
        admin.close()
    return pg


# ---------------------------------------------------------------------------------------------------- Mosquitto


@dataclass
class Broker:
    """A running mosquitto that admits clients by certificate only: the locks' (signed by the lock CA at pairing)
    and the relay slots' (``relay_certs``); it keeps nothing per lock."""

    process: Process
    port: int
    tls: TlsFiles
    #: the lock CA, certificate and key (what the devices function holds as LOCKWISE_LOCK_CA)
    lock_ca_pem: str
    lock_ca_file: Path  # its certificate alone: what the broker checks client certificates against
    crl_file: Path  # the lock CA's revocation list the broker holds (``update_crl``)
    relay_certs: Path  # MQTT_CLIENT_CERTS for the relays
    config_file: Path
    #: OpenSSL's settings for it (``render.openssl_conf``: no TLS session tickets), as its systemd drop-in names them
    openssl_conf: Path

    @property
    def ca_file(self) -> Path:
        """The CA of the broker's server certificate: what clients pin."""
        return self.tls.ca_cert

    def client_files(self, identity: str, directory: Path, days: int = 1) -> tuple[Path, Path]:
        """A certificate for ``identity`` from the lock CA, written as (cert, key) files: for tests and tools."""
        from infra.lock_ca import client_cert

        cert_pem, key_pem = client_cert(self.lock_ca_pem, identity, days)
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{identity}.crt", directory / f"{identity}.key"
        cert.write_text(cert_pem)
        write_private(key, key_pem)
        return cert, key

    def update_crl(self, pem: str) -> None:
        """Install a new revocation list and make mosquitto re-read it (what the broker host's timer does)."""
        tmp = self.crl_file.with_name(self.crl_file.name + ".tmp")
        tmp.write_text(pem)
        tmp.chmod(0o644)
        tmp.replace(self.crl_file)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.popen.pid, signal.SIGHUP)

    def restart(self) -> None:
        """Stop and start the same broker (same port, config and persistence), as after a crash or upgrade."""
        self.process.stop()
        self.start_again()

    def start_again(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        argv, env = [binary, "-c", str(self.config_file)], mosquitto_env(self.openssl_conf)
        self.process = spawn("mosquitto", argv, self.process.log_path, self.port, env=env)
        wait_until(self.process, lambda: port_open(self.port), 15)

    def stop(self) -> None:
        self.process.stop()


def start_relay(
    state_dir: Path,
    env: dict[str, str],
    *,
    relay_id: str = "relay-1",
    health_port: int | None = None,
    listening: bool = False,
) -> Process:
    """The MQTT relay as its own process (``python -m mqtt_relay``); ready once its health endpoint answers, or with
    ``listening`` once it says ``ok`` (connected, its subscriptions to the locks' events sent: the broker turns locks
    away while no relay listens).

    ``relay_id`` names its log file; the relay's broker identity is the slot it leases (``mqtt_relay.slots``)."""
    port = health_port or free_port()
    child_env = dict(os.environ)
    child_env.update(env)
    child_env.update(PORT=str(port))
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(FUNCTIONS_DIR), str(REPO), env.get("PYTHONPATH", "")) if p
    )
    proc = spawn(
        f"relay-{relay_id}",
        [sys.executable, "-m", "mqtt_relay"],
        state_dir / f"{relay_id}.log",
        port,
        env=child_env,
        cwd=REPO,
    )
    ready = (200,) if listening else (200, 503)
    wait_until(proc, lambda: http_ok(f"http://127.0.0.1:{port}/health", accept=ready), 30)
    return proc


def _share_with_mosquitto(path: Path, mode: int = 0o640) -> None:
    if is_root():
        shutil.chown(path, group="mosquitto")
    path.chmod(mode)


def ensure_lock_ca(state_dir: Path) -> tuple[str, Path]:
    """The local lock CA (made once per state folder, like the server certificate) and a relay certificate per
    slot; returns the CA's PEM (certificate and key) and the relay certificates' file."""
    from infra.lock_ca import relay_certs
    from lockwise.devices.lock_certs import new_ca

    state_dir.mkdir(parents=True, exist_ok=True)
    ca_file, relays = state_dir / "lock-ca.pem", state_dir / "relay-certs.json"
    if not ca_file.exists():
        write_private(ca_file, new_ca("LockWise local lock CA"))
        relays.unlink(missing_ok=True)
    pem = ca_file.read_text()
    if not relays.exists():
        write_private(relays, json.dumps(relay_certs(pem)))
    return pem, relays


def mosquitto_env(openssl_conf: Path) -> dict[str, str]:
    """Mosquitto's environment: OpenSSL reads ``openssl_conf`` (the broker host's systemd drop-in does the same)."""
    return {**os.environ, "OPENSSL_CONF": str(openssl_conf)}


def start_mosquitto(state_dir: Path, port: int, *, min_tls: str = "1.2") -> Broker:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise MissingComponent("mosquitto not found: apt-get install mosquitto mosquitto-clients")
    from infra.broker import plugin, render
    from lockwise.devices.lock_certs import LockCa, crl

    state_dir.mkdir(parents=True, exist_ok=True)
    tls = ensure_tls(state_dir / "tls")
    _share_with_mosquitto(tls.server_key)
    lock_ca_pem, relay_certs = ensure_lock_ca(state_dir / "identity")
    client_ca, crl_file = state_dir / "tls" / "lock-ca.crt", state_dir / "tls" / "lock-ca.crl"
    lock_ca = LockCa.from_pem(lock_ca_pem)
    client_ca.write_text(lock_ca.cert_pem())
    if not crl_file.exists():  # mosquitto needs one from the start: an empty list, until the first refresh
        crl_file.write_text(crl(lock_ca, [], dt.datetime.now(dt.UTC)))
        crl_file.chmod(0o644)
    persistence = state_dir / "persistence"
    persistence.mkdir(exist_ok=True)
    if is_root():
        shutil.chown(persistence, "mosquitto", "mosquitto")
        for p in (state_dir, *state_dir.parents):
            if p.stat().st_mode & 0o011 != 0o011:
                p.chmod(p.stat().st_mode | 0o011)
    acl_file = state_dir / "acl"
    acl_file.write_text(render.acl())
    _share_with_mosquitto(acl_file)
    try:
        acl_plugin = plugin.build(state_dir / "plugin")
    except plugin.CannotBuild as exc:
        raise MissingComponent(str(exc)) from exc
    conf = state_dir / "mosquitto.conf"
    conf.write_text(
        render.mosquitto_conf(
            {
                "ACL_FILE": str(acl_file),
                "ACL_PLUGIN": str(acl_plugin),
                "PERSISTENCE_DIR": str(persistence),
                "LOG_DEST": "stderr",  # unbuffered: Mosquitto never flushes stdout, so a kill -9 lost the log's tail
                "PORT": str(port),
                "BIND_ADDRESS": "127.0.0.1",
                "CLIENT_CAFILE": str(client_ca),
                "CRLFILE": str(crl_file),
                "CERTFILE": str(tls.server_cert),
                "KEYFILE": str(tls.server_key),
            },
            min_tls,
        )
    )
    openssl_conf = state_dir / "openssl.cnf"
    openssl_conf.write_text(render.openssl_conf())
    openssl_conf.chmod(0o644)
    env = mosquitto_env(openssl_conf)
    process = spawn("mosquitto", [binary, "-c", str(conf)], state_dir / "mosquitto.log", port, env=env)
    wait_until(process, lambda: port_open(port), 15)
    return Broker(
        process=process,
        port=port,
        tls=tls,
        lock_ca_pem=lock_ca_pem,
        lock_ca_file=client_ca,
        crl_file=crl_file,
        relay_certs=relay_certs,
        config_file=conf,
        openssl_conf=openssl_conf,
    )


# ------------------------------------------------------------------------------------------ Firebase emulators


def firestore_emulator_jar() -> Path:
    """The official Cloud Firestore emulator jar: $FIRESTORE_EMULATOR_JAR, the gcloud SDK, firebase-tools' cache."""
    env_jar = os.environ.get("FIRESTORE_EMULATOR_JAR")
    if env_jar:
        if Path(env_jar).is_file():
            return Path(env_jar)
        raise MissingComponent(f"FIRESTORE_EMULATOR_JAR={env_jar} does not exist")
    candidates = [
        "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
        "/usr/share/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
        "/opt/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
    ]
    gcloud = shutil.which("gcloud")
    if gcloud:
        sdk_root = Path(os.path.realpath(gcloud)).parents[1]
        candidates.insert(0, str(sdk_root / "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"))
    candidates += sorted(glob.glob(str(Path.home() / ".cache/firebase/emulators/cloud-firestore-emulator-v*.jar")))
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    raise MissingComponent(
        "the Cloud Firestore emulator jar was not found. Looked at $FIRESTORE_EMULATOR_JAR, the gcloud SDK "
        "(platform/cloud-firestore-emulator/cloud-firestore-emulator.jar) and firebase-tools' cache "
        "(~/.cache/firebase/emulators/cloud-firestore-emulator-v*.jar). It ships with google-cloud-cli's "
        "cloud-firestore-emulator component; no package registry reachable here carries it. Set "
        "FIRESTORE_EMULATOR_JAR to a copy, or FIRESTORE_EMULATOR_HOST to a running emulator."
    )


@dataclass
class Emulator:
    process: Process
    host: str  # "127.0.0.1:PORT"
    project_id: str

    def stop(self) -> None:
        self.process.stop()


def start_firestore(state_dir: Path, port: int, project_id: str) -> Emulator:
    java = shutil.which("java")
    if not java:
        raise MissingComponent("java not found: apt-get install default-jre-headless")
    jar = firestore_emulator_jar()
    argv = [
        java,
        "-Duser.language=en",
        "-Xmx512m",
        "-cp",
        str(jar),
        "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
        "start",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--project_id={project_id}",
    ]
    rules = REPO / "infra" / "firestore.rules"
    if rules.exists():
        argv.append(f"--rules={rules}")
    proc = spawn("firestore-emulator", argv, state_dir / "firestore.log", port)
    wait_until(proc, lambda: http_ok(f"http://127.0.0.1:{port}/"), 60)
    # its first document read takes seconds on a fresh JVM (the rules compiled, the classes loaded): made here, with
    # time to spare, not by the first health report, whose 3 s Firestore check it failed on a fresh machine
    document = f"http://127.0.0.1:{port}/v1/projects/{project_id}/databases/(default)/documents/_warm/up"
    wait_until(proc, lambda: http_ok(document, (200, 403, 404), timeout_s=30.0), 90)
    return Emulator(proc, f"127.0.0.1:{port}", project_id)


def firebase_cli() -> Path:
    cli = firebase_tools.cli(TOOLS_HOME / "firebase-tools")  # where the deploy runs it from too
    if not cli.exists():
        raise MissingComponent(
            f"firebase-tools {FIREBASE_TOOLS_VERSION} not installed under {cli.parents[2]}: run ./dev setup"
        )
    return cli


def start_auth(state_dir: Path, port: int, project_id: str) -> Emulator:
    cli = firebase_cli()
    state_dir.mkdir(parents=True, exist_ok=True)
    base = json.loads((REPO / "firebase.json").read_text())
    emulators = base.get("emulators", {})
    emulators["auth"] = {"host": "127.0.0.1", "port": port}
    emulators["hub"] = {"host": "127.0.0.1", "port": free_port()}
    emulators["logging"] = {"host": "127.0.0.1", "port": free_port()}
    emulators["ui"] = {"enabled": False}
    config = state_dir / "firebase.auth.json"
    config.write_text(json.dumps({"emulators": emulators}, indent=2))
    env = dict(os.environ, NO_UPDATE_NOTIFIER="1", FIREBASE_CLI_DISABLE_UPDATE_CHECK="true", CI="true")
    argv = [str(cli), "emulators:start", "--only", "auth", "--project", project_id, "--config", str(config)]
    proc = spawn("auth-emulator", argv, state_dir / "auth.log", port, env=env, cwd=state_dir, stop_signal=signal.SIGINT)
    wait_until(proc, lambda: http_ok(f"http://127.0.0.1:{port}/"), 90)
    return Emulator(proc, f"127.0.0.1:{port}", project_id)


# -------------------------------------------------------------------------------------------------- Functions

FUNCTIONS = ("embed", "verify", "devices")


@dataclass
class FunctionServer:
    name: str
    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()


def function_argv(name: str, source_dir: Path, port: int) -> list[str]:
    """How a function is served: functions-framework with ``source_dir/main.py`` on 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        name,
        "--source",
        str(source_dir / "main.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def start_function(
    name: str, port: int, env: dict[str, str], state_dir: Path, source_dir: Path | None = None
) -> FunctionServer:
    """Serve ``functions/<name>/main.py`` with functions-framework (or a built bundle in ``source_dir``)."""
    bundle = source_dir is not None
    source_dir = source_dir or FUNCTIONS_DIR / name
    child_env = dict(os.environ)
    child_env.update(env)
    if bundle:  # a built bundle must stand on its own: nothing of the source tree on the path
        child_env.pop("PYTHONPATH", None)
    else:
        child_env["PYTHONPATH"] = os.pathsep.join([str(FUNCTIONS_DIR), child_env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    argv = function_argv(name, source_dir, port)
    proc = spawn(f"function-{name}", argv, state_dir / f"{name}.log", port, env=child_env, cwd=source_dir)
    wait_until(proc, lambda: http_ok(f"http://127.0.0.1:{port}/{name}/health", accept=(200, 503)), 120)
    return FunctionServer(name, proc, port)


@contextlib.contextmanager
def stopping(*services: object) -> Iterator[None]:
    try:
        yield
    finally:
        for svc in reversed(services):
            stop = getattr(svc, "stop", None)
            if stop:
                stop()
