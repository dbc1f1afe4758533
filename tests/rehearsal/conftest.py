"""The production rehearsal: every deployable built, installed and started exactly as it is deployed.

Each bundle is built by ``infra.build`` (what ``python -m infra.deploy build`` runs), installed into its own fresh
virtualenv from its own ``requirements.txt`` alone (pip's cache is shared), and started from its bundle folder in
production mode with exactly the environment ``infra.deploy_config.environment`` renders for it and its secrets as
Secret Manager hands them over (variables, and files where the deploy mounts them). Only the managed services are
stood in for, and only through what ``STAND_INS`` adds: the ``LOCKWISE_REHEARSAL`` switch (refused on Cloud Run),
the Firestore and Auth emulators for the functions, and a local metadata server for the relay's identity tokens.
Cloud SQL is the local PostgreSQL (a fresh database the migration job migrates first); the broker VM is a Mosquitto of
its own with the same rendered configuration (client certificates only, from its own lock CA), so no session another
test left on the shared broker under a relay slot's identity meets these relays (relay slots are leased per
database, and the other tests' database is another one).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from infra import pins
from infra.build import TARGETS, build
from infra.deploy_config import (
    SERVICES,
    JobSpec,
    Place,
    ServiceSpec,
    command,
    environment,
    secret_targets,
)
from infra.local import services
from tests.conftest import PROJECT_ID
from tests.http_stubs import StubHandler, running

#: all the rehearsal adds to a deployable's environment, by kind of process
STAND_INS = {
    "function": ("LOCKWISE_REHEARSAL", "FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST"),
    "relay": ("LOCKWISE_REHEARSAL", "GCE_METADATA_HOST"),
    "job": ("LOCKWISE_REHEARSAL",),
}

#: the release the rehearsal deploys (each process is told it, as the deploy tells them)
REHEARSED_RELEASE = "rehearsal-1"


def _base_env() -> dict[str, str]:
    """What any container has: no PYTHONPATH, nothing of this test run's environment."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()), "LANG": "C.UTF-8"}


def install(bundle: Path, venv: Path) -> Path:
    """A fresh virtualenv with the bundle's own requirements and nothing else; returns its python. pip runs from
    this test run's environment into the new one (``pip --python``): the same pip and resolver, without
    bootstrapping a copy of pip into every virtualenv (~3.5 s each)."""
    make = [sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)]
    subprocess.run(make, check=True, capture_output=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    result = subprocess.run(
        [*pip, "install", "-q", "--disable-pip-version-check", "-r", "requirements.txt"],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{bundle.name}: pip install failed:\n{result.stderr[-3000:]}"
    listed = subprocess.run(
        [*pip, "list", "--format=json", "--disable-pip-version-check"], capture_output=True, text=True, check=True
    )
    installed = {canonicalize_name(d["name"]): d["version"] for d in json.loads(listed.stdout)}
    # what was tested is what deploys: every distribution the bundle's install took is pinned at its version
    pinned = pins.installs(bundle / "requirements.txt")
    differ = sorted(
        f"{n}: installed {installed.get(n)}, pinned {pinned.get(n)}"
        for n in installed.keys() | pinned.keys()
        if installed.get(n) != pinned.get(n)
    )
    assert not differ, f"{bundle.name} installed what its requirements.txt does not pin: {differ}"
    return python


class Metadata(StubHandler):
    """Stand-in for the Cloud Run metadata server: an identity token for the requested audience."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        ok = self.headers.get("Metadata-Flavor") == "Google" and "audience=" in self.path
        body = b"rehearsal-identity-token" if ok else b"missing Metadata-Flavor or audience"
        self.answer(200 if ok else 400, body)


@dataclass
class Rehearsal:
    root: Path
    place: Place
    pythons: dict[str, Path]
    bundles: dict[str, Path]
    secret_values: dict[str, str]
    stand_ins: dict[str, str]
    database_url: str
    processes: dict[str, services.Process] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def env_of(self, spec: ServiceSpec | JobSpec, kind: str, place: Place | None = None) -> dict[str, str]:
        place = place or self.place
        env = {**_base_env(), **environment(spec, place)}
        for target in secret_targets(spec, place):
            if target.startswith("/"):  # a mounted secret: the file exists where the deploy mounts it
                assert Path(target).is_file(), target
            else:
                env[target] = self.secret_values[target]
        env.update({name: self.stand_ins[name] for name in STAND_INS[kind]})
        return env

    def run_job(self, spec: JobSpec, *args: str) -> subprocess.CompletedProcess[str]:
        """The job run as deployed, with ``args`` as ``gcloud run jobs execute --args`` gives them."""
        argv = [*command(spec, self.place), *args]
        argv[0] = str(self.pythons[spec.bundle])
        return subprocess.run(
            argv, cwd=self.bundles[spec.bundle], env=self.env_of(spec, "job"), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    def start_function(self, spec: ServiceSpec) -> str:
        assert spec.function is not None
        bundle = self.bundles[spec.bundle]
        port = services.free_port()
        env = self.env_of(spec, "function", self._at(bundle))
        env["PORT"] = str(port)  # the platform's: Cloud Run tells the function where to listen
        argv = [str(self.pythons[spec.bundle]), "-m", "functions_framework", "--target", spec.function]
        argv += ["--source", "main.py", "--host", "127.0.0.1", "--port", str(port)]
        proc = services.spawn(spec.name, argv, self.root / "logs" / f"{spec.name}.log", port, env=env, cwd=bundle)
        self.processes[spec.name] = proc
        services.wait_until(
            proc, lambda: services.http_ok(f"http://127.0.0.1:{port}/{spec.function}/health", (200, 503)), 120
        )
        self.urls[spec.name] = f"http://127.0.0.1:{port}"
        return self.urls[spec.name]

    def start_relay(self, replica: str) -> services.Process:
        spec = next(s for s in SERVICES if s.name == "lockwise-relay")
        port = services.free_port()
        env = self.env_of(spec, "relay")
        env["PORT"] = str(port)  # Cloud Run sets PORT from --port
        argv = [str(self.pythons["relay"]), "-m", "mqtt_relay"]
        log = self.root / "logs" / f"relay-{replica}.log"
        proc = services.spawn(f"relay-{replica}", argv, log, port, env=env, cwd=self.bundles["relay"])
        self.processes[f"relay-{replica}"] = proc
        services.wait_until(proc, lambda: services.http_ok(f"http://127.0.0.1:{port}/health", (200, 503)), 60)
        return proc

    def _at(self, bundle: Path) -> Place:
        from dataclasses import replace

        return replace(self.place, bundle_root=str(bundle))

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()


def _fresh_database(pg: services.Postgres) -> str:
    """Cloud SQL's stand-in: a new database and role on the session's PostgreSQL, nothing migrated yet."""
    import pg8000.native

    password = secrets.token_urlsafe(18)
    admin = pg8000.native.Connection("postgres", unix_sock=f"{pg.socket_dir}/.s.PGSQL.{pg.port}")
    try:
        admin.run("DROP DATABASE IF EXISTS rehearsal WITH (FORCE)")
        admin.run("DROP ROLE IF EXISTS rehearsal")
        admin.run(f"CREATE ROLE rehearsal LOGIN PASSWORD {pg8000.native.literal(password)}")
        admin.run("CREATE DATABASE rehearsal OWNER rehearsal")
    finally:
        admin.close()
    return f"postgresql://rehearsal:{password}@127.0.0.1:{pg.port}/rehearsal"


@pytest.fixture(scope="module")
def rehearsal(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: services.Postgres,
    firestore_emulator: services.Emulator,
    auth_emulator: services.Emulator,
    model_dir: Path,
) -> Iterator[Rehearsal]:
    root = tmp_path_factory.mktemp("rehearsal")  # kept after the run (pytest keeps the last three): the logs
    root.chmod(0o755)
    (root / "logs").mkdir()
    bundles = {name: build(name, root / "bundles" / name) for name in TARGETS}
    # what `infra.deploy build` does next: the speaker model's ONNX export into each voice bundle (here the
    # export of the tests' small random ECAPA-TDNN: the real weights are fetched by checksum at deploy time)
    for name in ("embed", "verify"):
        shutil.copytree(model_dir / "onnx", bundles[name] / "model")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two installs at a time: pip waits on disk and cache
        installed = {name: pool.submit(install, bundle, root / "venvs" / name) for name, bundle in bundles.items()}
        pythons = {name: future.result() for name, future in installed.items()}
    with contextlib.ExitStack() as stack:
        broker = services.start_mosquitto(root / "broker", services.free_port())
        stack.callback(broker.stop)
        metadata = stack.enter_context(running(ThreadingHTTPServer(("127.0.0.1", 0), Metadata)))
        mounts = root / "mounts"
        mounts.mkdir()
        shutil.copy(broker.ca_file, mounts / "ca.crt")  # the broker CA and the relay slots' certificates, mounted
        shutil.copy(broker.relay_certs, mounts / "relay-certs.json")  # as the deploy mounts them
        database_url = _fresh_database(postgres)
        place = Place(
            project=PROJECT_ID,
            broker_host="127.0.0.1",
            broker_public_host="127.0.0.1",
            broker_port=broker.port,
            mounts=str(mounts),
            release=REHEARSED_RELEASE,
        )
        secret_values = {
            "DATABASE_URL": database_url,
            "LOCKWISE_SERVICE_TOKEN": secrets.token_urlsafe(24),
            "LOCKWISE_COMMAND_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "LOCKWISE_LOCK_CA": broker.lock_ca_pem,
        }
        stand_ins = {
            "LOCKWISE_REHEARSAL": "1",
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
            "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator.host,
            "GCE_METADATA_HOST": f"127.0.0.1:{metadata.server_port}",
        }
        r = Rehearsal(root, place, pythons, bundles, secret_values, stand_ins, database_url)
        stack.callback(r.stop)
        yield r
