"""The deploy commands, checked through --dry-run: the flags that matter, the order, and no secret values."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.build import TARGETS, build
from infra.deploy_config import (
    MIGRATE,
    SERVICES,
    JobSpec,
    Place,
    ServiceSpec,
    environment,
    secret_targets,
)
from infra.model import fetch
from infra.pins import INSTALL_OPTIONS
from lockwise.core import firestore_json, mirror
from lockwise.core.config import ConfigError, DatabaseSettings, Settings
from lockwise.devices.lock_certs import new_ca
from mqtt_relay.settings import RelaySettings
from tests.http_stubs import StubHandler, serving

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "--project",
    "lockwise-prod",
    "--region",
    "europe-west1",
    "--devices-relay-url",
    "https://relay-devices.example",
    "--broker-public-host",
    "mqtt.lockwise.example",
]


def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m infra.deploy ARGS``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "infra.deploy", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def dry_run(component: str, *extra: str) -> list[list[str]]:
    result = deploy(component, *ARGS, *extra, "--dry-run")
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def deploy_of(commands: list[list[str]], service: str) -> list[str]:
    found = [c for c in commands if c[:4] == ["gcloud", "run", "deploy", service]]
    assert len(found) == 1, f"{service} deployed {len(found)} times"
    return found[0]


def test_functions_get_the_settings_that_matter() -> None:
    cmds = dry_run("functions")
    verify = deploy_of(cmds, "lockwise-verify")
    assert {
        "--memory=1Gi",  # the ONNX export: 324 MB peak RSS measured
        "--cpu=2",
        "--min-instances=1",
        "--cpu-boost",
        "--concurrency=1",
        "--allow-unauthenticated",
        "--function=verify",
        "--base-image=python311",
    } <= set(verify)
    secrets = next(f for f in verify if f.startswith("--set-secrets="))
    assert "LOCKWISE_COMMAND_SIGNING_KEY=lockwise-command-signing-key:latest" in secrets
    assert "DATABASE_URL=lockwise-database-url:latest" in secrets
    assert "--add-cloudsql-instances=lockwise-prod:europe-west1:lockwise" in verify
    assert "--service-account=lockwise-verify@lockwise-prod.iam.gserviceaccount.com" in verify
    assert any(f.startswith("--set-env-vars=") and "LOCKWISE_MODE=production" in f for f in verify)
    assert any(f.startswith("--set-env-vars=") and "LOCKWISE_MODEL_DIR=/workspace/model" in f for f in verify)
    embed = deploy_of(cmds, "lockwise-embed")
    assert "--min-instances=0" in embed and "--memory=1Gi" in embed
    devices = deploy_of(cmds, "lockwise-devices")
    assert "--memory=512Mi" in devices and any("LOCKWISE_RELAY_ROUTES=off" in f for f in devices)


def test_the_relay_endpoint_is_never_public() -> None:
    cmds = dry_run("all")
    internal = deploy_of(cmds, "lockwise-devices-relay")
    assert "--no-allow-unauthenticated" in internal and "--ingress=internal" in internal
    assert any("LOCKWISE_RELAY_ROUTES=on" in f for f in internal)
    public = deploy_of(cmds, "lockwise-devices")
    assert any("LOCKWISE_RELAY_ROUTES=off" in f for f in public), "the public devices service must not serve /relay"
    invoker = [c for c in cmds if c[:4] == ["gcloud", "run", "services", "add-iam-policy-binding"]]
    assert invoker and "--member=serviceAccount:lockwise-relay@lockwise-prod.iam.gserviceaccount.com" in invoker[0]
    relay = deploy_of(cmds, "lockwise-relay")
    assert {"--no-allow-unauthenticated", "--ingress=internal", "--no-cpu-throttling", "--min-instances=2"} <= set(
        relay
    )
    env = next(f for f in relay if f.startswith("--set-env-vars="))
    assert "LOCKWISE_RELAY_ID_TOKEN_AUDIENCE=https://relay-devices.example" in env


def test_migrations_run_before_new_code_goes_live() -> None:
    cmds = dry_run("all")
    flat = [" ".join(c) for c in cmds]
    migrate_at = next(i for i, c in enumerate(flat) if "jobs execute lockwise-migrate" in c)
    first_deploy = next(i for i, c in enumerate(flat) if c.startswith("gcloud run deploy"))
    assert migrate_at < first_deploy
    assert any("--wait" in c for c in cmds if c[:4] == ["gcloud", "run", "jobs", "execute"])
    assert any(c[1:] and c[1] == "deploy" and "firestore:rules,firestore:indexes,hosting" in c for c in cmds)


@pytest.mark.parametrize("component", ["functions", "relay", "all"])
def test_new_code_goes_live_only_on_a_database_with_every_migration_of_its_build(component: str) -> None:
    """A relay deployed before the migration job failed every delivery round on a table it lacked (attack run 62).
    The functions and the relay are each deployed after the job, on this build's image (a job keeps the image it
    was deployed with), checked the database has every migration bundled with it (``--check``, which fails the
    step); the job is deployed once a plan, and runs longer than its longest statement."""
    from lockwise.core import migrate

    cmds = dry_run(component)
    flat = [" ".join(c) for c in cmds]
    job_deploys = [i for i, c in enumerate(flat) if c.startswith("gcloud run jobs deploy lockwise-migrate")]
    assert len(job_deploys) == 1 and "--image=europe-west1-docker.pkg.dev/" in flat[job_deploys[0]]
    code_deploys = [i for i, c in enumerate(flat) if c.startswith("gcloud run deploy")]
    assert code_deploys
    checks = [i for i, c in enumerate(flat) if "jobs execute lockwise-migrate" in c and "--args=--check" in c]
    for deployed in code_deploys:
        assert any(job_deploys[0] < check < deployed for check in checks), flat[deployed]
    timeout = next(c for c in cmds[job_deploys[0]] if c.startswith("--task-timeout="))
    lock_waits = migrate.LOCK_TRIES * migrate.LOCK_TIMEOUT_S + migrate.LOCK_RETRY_PAUSE_S * 2**migrate.LOCK_TRIES
    assert (
        int(timeout.removeprefix("--task-timeout=").removesuffix("s")) >= 3 * migrate.STATEMENT_TIMEOUT_S + lock_waits
    )


def test_the_jobs_check_runs_the_migration_tool_as_the_image_runs_it() -> None:
    """The check ran the job with ``--args=--check``, which replaces the image's CMD: the image named the tool in
    CMD, so the container ran ``--check`` as a program and every functions and relay deploy failed at it (attack
    run 63). The tool is the image's ENTRYPOINT; what each execution runs is what the rehearsal runs."""
    from infra.deploy_config import MIGRATE

    dockerfile = (REPO / "infra" / "bundles" / "migrate" / "Dockerfile").read_text()

    def instruction(name: str) -> list[str]:
        line = next(line for line in dockerfile.splitlines() if line.startswith(f"{name} "))
        value: list[str] = json.loads(line.removeprefix(f"{name} "))
        return value

    entrypoint, cmd = instruction("ENTRYPOINT"), instruction("CMD")
    assert entrypoint + cmd == list(MIGRATE.argv)
    runs = []
    for c in dry_run("all"):
        if c[:5] == ["gcloud", "run", "jobs", "execute", "lockwise-migrate"]:
            given = [a.removeprefix("--args=").split(",") for a in c if a.startswith("--args=")]
            runs.append(entrypoint + (given[0] if given else cmd))
    assert runs == [list(MIGRATE.argv), [*MIGRATE.argv, "--check"], [*MIGRATE.argv, "--check"]]  # functions, relay


def test_each_step_deploys_the_images_this_release_built_and_says_which_it_is() -> None:
    """Every image was ``:latest``: a step run from a checkout whose images were never pushed deployed (and had its
    migrations checked by) whatever image was last pushed (attack run 63), and every health report said release
    ``dev``. Images are tagged with the release (the checkout's commit, or ``--release``); each deployable is told
    it; the relay is ready only once its health is 200."""
    from infra.deploy import release_of

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    assert release_of(REPO).split("-dirty-")[0] == commit.stdout.strip()
    for release, extra in ((release_of(REPO), ()), ("2026-12-06.1", ("--release", "2026-12-06.1"))):
        cmds = dry_run("all", *extra)
        images = sorted({a.split("=", 1)[1] for c in cmds for a in c if a.startswith(("--image=", "--tag="))})
        repo = "europe-west1-docker.pkg.dev/lockwise-prod/lockwise"
        assert images == [f"{repo}/migrate:{release}", f"{repo}/relay:{release}"]
        for c in cmds:
            if any(a.startswith("--set-env-vars=") for a in c):
                assert _flag(c, "set-env-vars")["LOCKWISE_RELEASE"] == release, c[:4]
    relay = deploy_of(dry_run("relay"), "lockwise-relay")
    probe = _flag(relay, "startup-probe")
    assert (probe["httpGet.path"], probe["httpGet.port"]) == ("/health", "8090")
    from infra.deploy import COMPONENTS

    # the relay is ready only once it reaches the broker, whose config comes first
    assert COMPONENTS.index("broker") < COMPONENTS.index("relay"), COMPONENTS
    assert int(probe["periodSeconds"]) * int(probe["failureThreshold"]) <= 240
    refused = deploy("relay", *ARGS, "--release", "Latest;rm", "--dry-run")
    assert refused.returncode == 2 and "is not an image tag" in refused.stderr


def test_a_release_is_the_commit_and_says_when_what_is_built_differs_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release names what the bundles are built from: the commit, ``-dirty`` when a bundled file differs from it
    or is not added yet (a new migration not committed was built in, untold: attack run 65); outside a checkout the
    deploy asks for ``--release``."""
    from infra.deploy import DeployConfigError, release_of

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    with pytest.raises(DeployConfigError, match="is not a git checkout .*--release"):
        release_of(tmp_path)
    with monkeypatch.context() as no_git:  # a machine without git is told that, not that this is no checkout
        no_git.setenv("PATH", str(tmp_path / "nowhere"))
        with pytest.raises(DeployConfigError, match="git could not be run .*install it, or give --release"):
            release_of(tmp_path)
    git("init", "-q")
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "main.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not bundled\n")
    git("add", "functions/main.py")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "one")
    commit = git("rev-parse", "--short=12", "HEAD")
    assert release_of(tmp_path) == commit  # an untracked file outside what is bundled changes nothing
    (tmp_path / "functions" / "0067_new.sql").write_text("SELECT 1;\n")
    added = release_of(tmp_path)
    (tmp_path / "functions" / "0067_new.sql").write_text("SELECT 2;\n")
    edited = release_of(tmp_path)
    (tmp_path / "functions" / "0067_new.sql").unlink()
    (tmp_path / "functions" / "main.py").write_text("x = 2\n")
    changed = release_of(tmp_path)
    assert all(r.startswith(f"{commit}-dirty-") for r in (added, edited, changed))
    assert len({added, edited, changed}) == 3  # each dirty state its own release
    assert release_of(tmp_path) == changed  # and the same one for the same state
    (tmp_path / ".gitignore").write_text("functions/models/\n")
    (tmp_path / "functions" / "models").mkdir()
    (tmp_path / "functions" / "models" / "weights.bin").write_bytes(b"x")
    assert release_of(tmp_path) == changed  # what git ignores (fetched models) is not read


def test_a_file_git_ignores_that_the_build_ships_makes_the_release_dirty(tmp_path: Path) -> None:
    """Attack run 124: the release read no file git ignores, but git reads rules no one else shares (the checkout's
    .git/info/exclude, the user's core.excludesFile), and a module ignored so was built into the bundles under the
    clean commit's name, which no other checkout of it builds. Caches and the fetched models stay unread."""
    from infra.deploy import release_of

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "functions" / "lockwise" / "core").mkdir(parents=True)
    (tmp_path / "functions" / "lockwise" / "core" / "config.py").write_text("DEBUG = False\n")
    git("add", "functions")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "one")
    commit = git("rev-parse", "--short=12", "HEAD")
    (tmp_path / ".git" / "info").mkdir(exist_ok=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("local_*.py\n__pycache__/\nfunctions/models/\n")
    (tmp_path / "functions" / "lockwise" / "core" / "__pycache__").mkdir()
    (tmp_path / "functions" / "lockwise" / "core" / "__pycache__" / "config.cpython-311.pyc").write_bytes(b"x")
    (tmp_path / "functions" / "models").mkdir()
    (tmp_path / "functions" / "models" / "weights.py").write_text("not shipped from here\n")
    assert release_of(tmp_path) == commit
    (tmp_path / "functions" / "lockwise" / "core" / "local_settings.py").write_text("DEBUG = True\n")
    ignored = release_of(tmp_path)
    assert ignored.startswith(f"{commit}-dirty-")
    (tmp_path / "functions" / "lockwise" / "core" / "local_settings.py").write_text("DEBUG = 2\n")
    assert release_of(tmp_path) not in (commit, ignored)


@pytest.mark.parametrize("component", ["migrate", "functions", "relay", "all"])
def test_no_image_or_bundle_is_deployed_for_a_release_its_build_step_did_not_record(component: str) -> None:
    """Attack run 124: the build step pushes the relay's and the migration job's images before its last command
    records the release, so a build that failed after them (an export of other weights, a bundle changed since its
    build) left the release's images in the registry, and the migrate and relay steps, which read no record, deployed
    them. Each step that deploys this release's code first checks the build step recorded it, once a plan."""
    cmds = dry_run(component, "--release", "r1")
    expect = [sys.executable, "-m", "infra.build", "--out", str(REPO / ".build"), "--expect-release", "r1"]
    assert cmds.count(expect) == 1
    deploys = [
        i
        for i, c in enumerate(cmds)
        if c[:3] == ["gcloud", "run", "deploy"] or c[:4] == ["gcloud", "run", "jobs", "deploy"]
    ]
    assert deploys and cmds.index(expect) < deploys[0]
    if component == "all":  # after the build step records it
        record = next(i for i, c in enumerate(cmds) if "--record-release" in c)
        assert record < cmds.index(expect)


def test_functions_are_deployed_only_from_bundles_built_for_their_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Functions are deployed from ``.build`` whatever release the deploy is told: a step run with another release,
    or after another checkout's build, deployed that code under this release's name (attack run 65). The build records
    its release; the functions step checks it first."""
    from infra import build

    assert build.expect_release(tmp_path, "abc") == 1  # nothing built
    assert build.main(["--out", str(tmp_path), "--record-release", "abc"]) == 1  # nor recorded: bundles missing
    for name in build.TARGETS:
        (tmp_path / name).mkdir()
        build.write_manifest(name, tmp_path / name)
    lock = tmp_path / "pins.json"  # the export's weights, pinned (attack run 124)
    lock.write_text(json.dumps({"files": {"embedding_model.ckpt": "ab" * 32}}))
    monkeypatch.setattr(build, "MODEL_LOCK", lock)
    for voice in build.VOICE_FUNCTIONS:  # copied in by the deploy after the build
        (tmp_path / voice / "model").mkdir()
        (tmp_path / voice / "model" / "ecapa.onnx").write_bytes(b"graph")
        (tmp_path / voice / "model" / "manifest.json").write_text(json.dumps({"model_id": "ecapa-" + "ab" * 8}))
    assert build.main(["--out", str(tmp_path), "--record-release", "abc"]) == 0
    assert build.expect_release(tmp_path, "abc") == 0
    listed = json.loads((tmp_path / "verify" / "bundle.json").read_text())["files"]
    assert listed["model/ecapa.onnx"] == hashlib.sha256(b"graph").hexdigest()  # attack run 101: it was not listed
    assert build.main(["--out", str(tmp_path), "--expect-release", "def"]) == 1  # builds nothing
    assert (tmp_path / build.RELEASE_FILE).exists()
    assert build.main(["devices", "--out", str(tmp_path / "devices")]) == 0  # any build: no release recorded
    assert build.expect_release(tmp_path, "abc") == 1
    cmds = dry_run("functions", "--release", "r1")
    assert cmds[0][1:] == ["-m", "infra.build", "--out", str(REPO / ".build"), "--expect-release", "r1"]
    steps = dry_run("build", "--release", "r1")
    assert steps[-1][1:] == ["-m", "infra.build", "--out", str(REPO / ".build"), "--record-release", "r1"]


def test_least_privilege_and_no_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    cmds = dry_run("accounts")
    roles = {
        c[c.index("--member=serviceAccount:lockwise-relay@lockwise-prod.iam.gserviceaccount.com") + 1]
        for c in cmds
        if "--member=serviceAccount:lockwise-relay@lockwise-prod.iam.gserviceaccount.com" in c
    }
    assert "--role=roles/cloudsql.client" in roles and not any("owner" in r or "editor" in r for r in roles)
    text = "\n".join(" ".join(c) for c in dry_run("all"))
    assert "roles/owner" not in text and "roles/editor" not in text
    assert "postgresql://" not in text and "BEGIN PRIVATE KEY" not in text


def test_every_service_that_asks_firebase_auth_may_read_it() -> None:
    """Attack run 88 read it from the deploy: only the relay's devices copy could read Firebase Auth, while the public
    copy asks it for every operator request and every invitation listed, accepted or declined (``accounts_directory``
    in its ``main.py``): in production each would have been 503 ``accounts_unavailable``. A service whose code asks
    it holds ``roles/firebaseauth.viewer``; no other does."""
    granted: dict[str, set[str]] = {}
    for command in dry_run("accounts"):
        members = [a.split(":", 1)[1].split("@", 1)[0] for a in command if a.startswith("--member=serviceAccount:")]
        roles = [a.split("=", 1)[1] for a in command if a.startswith("--role=")]
        for member in members:
            granted.setdefault(member, set()).update(roles)
    for spec in SERVICES:
        main = REPO / "functions" / spec.bundle / "main.py"
        asks = main.exists() and "accounts.directory_for(" in main.read_text()
        assert ("roles/firebaseauth.viewer" in granted.get(spec.name, set())) == asks, spec.name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--project", "Bad_Project"], "not a valid Google Cloud project id"),
        (["--project", "demo-lockwise"], "emulator-only"),
        (["--project", "lockwise-prod", "--region", "mars"], "region"),
        (["--project", "lockwise-prod", "--broker-public-host", "mqtt.example.com"], "--devices-relay-url"),
        (["--project", "lockwise-prod", "--devices-relay-url", "https://x.example"], "--broker-public-host"),
    ],
)
def test_bad_configuration_is_refused(args: list[str], message: str) -> None:
    result = deploy("all", *args, "--dry-run")
    assert result.returncode == 2 and message in result.stderr


def test_no_bundle_needs_torch_or_another_index(tmp_path: Path) -> None:
    """Every bundle installs from PyPI alone: embed and verify serve the ONNX export (PyTorch's CPU index is not
    reachable everywhere, and the PyPI torch build drags in CUDA)."""
    for name in TARGETS:
        lines = (build(name, tmp_path / name) / "requirements.txt").read_text().splitlines()
        pins = [line for line in lines if line.strip() and not line.startswith(("#", "-"))]
        assert pins and all(line.split("==")[0].lower() not in ("torch", "torchaudio", "speechbrain") for line in pins)
        options = [line for line in lines if line.startswith("-")]  # hashes and wheels alone (attack run 124)
        assert options == list(INSTALL_OPTIONS), f"{name} names another index or option"


def _secret_values(spec: ServiceSpec | JobSpec, place: Place) -> dict[str, str]:
    """What Secret Manager would hand the process: env secrets by value, mounted ones as files."""
    values: dict[str, str] = {}
    for target in secret_targets(spec, place):
        if target.startswith("/"):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text("{}" if target.endswith(".json") else "-----BEGIN CERTIFICATE-----\n")
        elif target == "LOCKWISE_COMMAND_SIGNING_KEY":
            values[target] = base64.b64encode(bytes(range(32))).decode()
        elif target == "LOCKWISE_LOCK_CA":
            values[target] = new_ca()
        elif target == "DATABASE_URL":
            values[target] = "postgresql://app:Zx9-long-random@/lockwise?host=/cloudsql/lockwise-prod:europe-west1:db"
        else:
            values[target] = f"{target.lower()}-long-random-value"
    return values


def _start_settings(spec: ServiceSpec | JobSpec, env: dict[str, str]) -> object:
    if isinstance(spec, ServiceSpec) and spec.function is not None:
        return Settings.from_env(env, component=spec.function)
    if spec.name == "lockwise-relay":
        return RelaySettings.from_env(env)
    return DatabaseSettings.from_env(env)


@pytest.mark.parametrize("spec", [*SERVICES, MIGRATE], ids=lambda s: s.name)
def test_each_deployable_starts_with_exactly_the_secrets_deploy_gives_it(
    spec: ServiceSpec | JobSpec, tmp_path: Path
) -> None:
    place = Place(
        project="lockwise-prod",
        broker_host="broker.internal",
        broker_public_host="mqtt.lockwise.example",
        devices_relay_url="https://relay-devices.example",
        mounts=str(tmp_path / "mounts"),
    )
    secrets = _secret_values(spec, place)
    env = {**environment(spec, place), **secrets}
    _start_settings(spec, env)  # starts in production mode with what deploy gives it
    assert "LOCKWISE_COMMAND_SIGNING_KEY" not in secrets or spec.name != "lockwise-relay"
    for name in secrets:  # and each secret it is given is one it needs
        with pytest.raises(ConfigError, match=name):
            _start_settings(spec, {k: v for k, v in env.items() if k != name})
    for path in (t for t in secret_targets(spec, place) if t.startswith("/")):  # mounted files too
        Path(path).unlink()
        with pytest.raises(ConfigError, match=path):
            _start_settings(spec, env)
        _secret_values(spec, place)


def test_the_relay_never_holds_the_signing_key() -> None:
    relay = next(s for s in SERVICES if s.name == "lockwise-relay")
    assert "LOCKWISE_COMMAND_SIGNING_KEY" not in relay.secrets


def _flag(cmd: list[str], name: str) -> dict[str, str]:
    value = next(f for f in cmd if f.startswith(f"--{name}="))
    return dict(item.split("=", 1) for item in value.split("=", 1)[1].split(","))


def test_deploy_flags_and_the_rehearsal_render_one_environment() -> None:
    """``infra.deploy all --dry-run`` and the rehearsal both take each process's environment from
    ``deploy_config.environment`` and ``secret_targets``: what is deployed is what is rehearsed."""
    cmds = dry_run("all", "--release", "2026-12-06.1")
    place = Place(
        project="lockwise-prod",
        broker_host="broker.lockwise.internal",
        broker_public_host="mqtt.lockwise.example",
        devices_relay_url="https://relay-devices.example",
        release="2026-12-06.1",
    )
    for spec in SERVICES:
        cmd = deploy_of(cmds, spec.name)
        assert _flag(cmd, "set-env-vars") == environment(spec, place), spec.name
        secrets = {target: name.removesuffix(":latest") for target, name in _flag(cmd, "set-secrets").items()}
        assert secrets == secret_targets(spec, place), spec.name
    job = next(c for c in cmds if c[:4] == ["gcloud", "run", "jobs", "deploy"])
    assert _flag(job, "set-env-vars") == environment(MIGRATE, place)
    assert "LOCKWISE_REHEARSAL" not in "\n".join(" ".join(c) for c in cmds)


def test_a_plugin_build_stopped_midway_leaves_the_plugin_mosquitto_loads_whole(tmp_path: Path) -> None:
    """The broker host's ``build-lockwise-acl`` compiled straight into the path Mosquitto loads: a build stopped
    midway (a host shut down, the compiler killed, a full disk) left the plugin cut short, and Mosquitto did not
    start at its next restart (attack run 126's leftover). Run here with a compiler that writes half a file and
    fails, then one that succeeds: the plugin in place is the old one whole, then the new one."""
    from infra.broker import plugin

    target = tmp_path / "lib" / "lockwise_acl.so"
    target.parent.mkdir()
    target.write_bytes(b"the plugin loaded before")
    (tmp_path / "lockwise_acl.c").write_text("/* source */\n")
    script = tmp_path / "build-lockwise-acl"
    script.write_text("#!/bin/sh\nset -eu\n" + plugin.install_script(str(target)))
    script.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_cc = bin_dir / "cc"  # writes its -o file, then ends as told
    fake_cc.write_text(
        '#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\nprintf "$CC_WRITES" > "$2"\nexit "$CC_EXIT"\n'
    )
    fake_cc.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    stopped = subprocess.run([str(script)], env={**env, "CC_WRITES": "half a", "CC_EXIT": "1"}, check=False)
    assert stopped.returncode != 0
    assert target.read_bytes() == b"the plugin loaded before"
    assert sorted(p.name for p in target.parent.iterdir()) == ["lockwise_acl.so"]  # no partial left
    built = subprocess.run([str(script)], env={**env, "CC_WRITES": "the new plugin", "CC_EXIT": "0"}, check=False)
    assert built.returncode == 0 and target.read_bytes() == b"the new plugin"
    assert target.stat().st_mode & 0o777 == 0o755


def test_the_broker_can_be_rendered_to_take_tls_1_3_alone(tmp_path: Path) -> None:
    """``render --min-tls 1.3``: in TLS 1.2 a lock's certificate, its identity and serial, crosses the network in
    clear (left by stop 66); Mosquitto's ``tls_version`` and EMQX's ``versions`` then take 1.3 alone. 1.2 and 1.3
    stay the default (locks on mbedTLS 2 need 1.2)."""
    from infra.broker import render

    crl_url = "https://lockwise-prod.web.app/devices/lock-ca/crl"
    common = ["--host", "broker.lockwise.internal", "--crl-url", crl_url]
    render.main(["--out", str(tmp_path / "new"), "--min-tls", "1.3", *common])
    render.main(["--out", str(tmp_path / "default"), *common])
    for folder, mosquitto, emqx in (("new", "tlsv1.3", "[tlsv1.3]"), ("default", "tlsv1.2", "[tlsv1.3, tlsv1.2]")):
        assert f"tls_version {mosquitto}" in (tmp_path / folder / "mosquitto.conf").read_text().splitlines()
        assert f"    versions = {emqx}" in (tmp_path / folder / "emqx.conf").read_text().splitlines()
    with pytest.raises(SystemExit):
        render.main(["--out", str(tmp_path / "old"), "--min-tls", "1.1", *common])
    # the deploy's broker step passes it on
    (rendered,) = dry_run("broker", "--broker-min-tls", "1.3")
    assert rendered[rendered.index("--min-tls") + 1] == "1.3"
    (rendered,) = dry_run("broker")
    assert rendered[rendered.index("--min-tls") + 1] == "1.2"


def test_the_brokers_revocation_list_is_fetched_over_https_only(tmp_path: Path) -> None:
    """``render --crl-url`` takes an https address (http to this machine only): over http anyone on the path answered
    every minute with an older list the lock CA signed, which the refresh keeps out and exits 0 on (attack run 115:
    the revocations since never reached the broker, and nothing failed)."""
    from infra.broker import render
    from lockwise.core.config import LOOPBACK_HOSTS

    assert render.LOOPBACK_HOSTS == LOOPBACK_HOSTS
    common = ["--host", "broker.lockwise.internal"]
    for url in ("http://lockwise-prod.web.app/devices/lock-ca/crl", "ftp://lockwise-prod.web.app/crl", "https://"):
        with pytest.raises(SystemExit):
            render.main(["--out", str(tmp_path / "refused"), *common, "--crl-url", url])
    assert not (tmp_path / "refused" / "lockwise-crl-refresh").exists()
    for url in ("https://lockwise-prod.web.app/devices/lock-ca/crl", "http://127.0.0.1:8083/devices/lock-ca/crl"):
        render.main(["--out", str(tmp_path / "taken"), *common, "--crl-url", url])
        refresh = (tmp_path / "taken" / "lockwise-crl-refresh").read_text()
        assert f'curl -fsS --tlsv1.2 --max-time 10 "{url}"' in refresh


def test_the_broker_host_has_mosquitto_hand_out_no_tls_session_ticket(tmp_path: Path) -> None:
    """Mosquitto has no option for it: ``openssl.cnf`` (no session tickets, whose one key decrypted every recorded
    TLS 1.2 session: attack run 115) and the systemd drop-in naming it in ``OPENSSL_CONF``, rendered beside
    ``mosquitto.conf``; the local stack's broker reads the same file (``tests/integration/test_broker.py``)."""
    from infra.broker import render

    render.main(["--out", str(tmp_path), "--host", "broker.lockwise.internal", "--crl-url", "https://api.example/crl"])
    cnf = (tmp_path / "openssl.cnf").read_text()
    assert cnf == render.openssl_conf()
    assert {"openssl_conf = lockwise_openssl", "Options = -SessionTicket", "MinProtocol = TLSv1.2"} <= set(
        cnf.splitlines()
    )
    drop_in = (tmp_path / "lockwise-openssl.conf").read_text().splitlines()
    assert "[Service]" in drop_in and "Environment=OPENSSL_CONF=/etc/mosquitto/openssl.cnf" in drop_in


def test_emqxs_dashboard_answers_on_the_broker_host_alone(tmp_path: Path) -> None:
    """EMQX's dashboard and management API answer in plain HTTP on every address by default, under the account
    admin/public, and can add a plain TCP listener or turn authorization off (attack run 115): the rendered
    ``emqx.conf`` binds them to the host's loopback, and no listener but the TLS one is left on."""
    from infra.broker import render

    render.main(["--out", str(tmp_path), "--host", "broker.lockwise.internal", "--crl-url", "https://api.example/crl"])
    emqx = (tmp_path / "emqx.conf").read_text().splitlines()
    assert 'dashboard.listeners.http.bind = "127.0.0.1:18083"' in emqx
    assert [line for line in emqx if "bind" in line and "127.0.0.1" not in line] == ['  bind = "0.0.0.0:8883"']
    for kind in ("tcp", "ws", "wss"):
        assert f"listeners.{kind}.default.enable = false" in emqx, kind


def test_emqx_takes_no_tls_renegotiation_a_client_asks_for(tmp_path: Path) -> None:
    """Mosquitto refuses a client's renegotiation ("no renegotiation", attack run 115 asked it with ``openssl s_client``
    and ``R``); EMQX's default took it, each one a key exchange the broker signed, as often as a connection asked."""
    from infra.broker import render

    render.main(["--out", str(tmp_path), "--host", "broker.lockwise.internal", "--crl-url", "https://api.example/crl"])
    emqx = (tmp_path / "emqx.conf").read_text().splitlines()
    ssl_options = emqx[emqx.index("  ssl_options {") : emqx.index("  }")]
    assert "    client_renegotiation = false" in ssl_options


def test_the_broker_knows_nothing_per_lock_and_every_relay_slot(tmp_path: Path) -> None:
    from infra.broker import plugin, render
    from infra.deploy_config import RELAY_SLOTS
    from mqtt_relay import sessions

    crl_url = "https://lockwise-prod.web.app/devices/lock-ca/crl"
    render.main(["--out", str(tmp_path), "--host", "broker.lockwise.internal", "--crl-url", crl_url])
    conf = (tmp_path / "mosquitto.conf").read_text()
    assert "crlfile /etc/mosquitto/certs/lock-ca.crl" in conf
    refresh = (tmp_path / "lockwise-crl-refresh").read_text()
    assert crl_url in refresh and "systemctl kill --signal=HUP mosquitto" in refresh and "$tmp" in refresh
    assert "OnUnitActiveSec=60s" in (tmp_path / "lockwise-crl.timer").read_text()
    for line in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
                 "tls_version tlsv1.2", "allow_anonymous false", "max_packet_size 65536",
                 "max_keepalive 60"):  # fmt: skip
        assert line in conf.splitlines(), line
    assert "password_file" not in conf
    # every subscription but a lock's own command topic refused by the plugin, built on the host from its source
    # and a lock's events taken only while a relay holds a subscription to exactly what the relays subscribe to
    relays = ",".join(f"lockwise-relay-{slot}" for slot in range(1, RELAY_SLOTS + 1))
    relayed = ",".join(t.removeprefix("$share/g/") for t in sessions.event_topics("g"))
    for line in ("plugin /usr/local/lib/mosquitto/lockwise_acl.so", "plugin_opt_topic_root lockwise",
                 f"plugin_opt_relay_users {relays}", f"plugin_opt_relayed_topics {relayed}",
                 "plugin_opt_run_file /var/lib/mosquitto/lockwise-run",
                 "plugin_opt_lock_max_keepalive 60"):  # fmt: skip
        assert line in conf.splitlines(), line
    assert relayed == "lockwise/+/state,lockwise/+/ack,lockwise/+/status"
    assert (tmp_path / "lockwise_acl.c").read_bytes() == plugin.SOURCE.read_bytes()
    build = (tmp_path / "build-lockwise-acl").read_text()
    assert plugin.install_script(plugin.PROD_PATH) in build and "mosquitto-dev" in build
    acl = (tmp_path / "acl").read_text()
    assert [line for line in acl.splitlines() if line.startswith("user ")] == [
        f"user lockwise-relay-{slot}" for slot in range(1, RELAY_SLOTS + 1)
    ]
    # every relay reads the broker's uptime, where the relay listens for it, published every 10 s, and its run,
    # where the plugin publishes it
    from mqtt_relay.broker_start import RUN_TOPIC, UPTIME_TOPIC

    assert acl.count(f"topic read {UPTIME_TOPIC}\n") == RELAY_SLOTS and "sys_interval 10" in conf.splitlines()
    assert acl.count(f"topic read {RUN_TOPIC}\n") == RELAY_SLOTS
    assert f'#define RUN_TOPIC "{RUN_TOPIC}"' in plugin.SOURCE.read_text()
    patterns = [line for line in acl.splitlines() if line.startswith("pattern ")]
    assert patterns == [
        "pattern read lockwise/%u/cmd",
        "pattern write lockwise/%u/state",
        "pattern write lockwise/%u/ack",
        "pattern write lockwise/%u/status",
    ]
    emqx = (tmp_path / "emqx.conf").read_text()
    assert "peer_cert_as_username = cn" in emqx and "fail_if_no_peer_cert = true" in emqx
    # EMQX takes the TLS 1.2 suites Mosquitto does, not its defaults (CBC, RSA key exchange)
    mosquitto_suites = next(line for line in conf.splitlines() if line.startswith("ciphers ")).split()[1].split(":")
    emqx_suites = re.findall(
        r'"([A-Z0-9_-]+)"', emqx[emqx.index("ciphers = [") : emqx.index("]", emqx.index("ciphers"))]
    )
    assert [s for s in emqx_suites if not s.startswith("TLS_")] == mosquitto_suites
    assert {s for s in emqx_suites if s.startswith("TLS_")} == {
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    }
    emqx_acl = (tmp_path / "emqx_acl.conf").read_text()
    assert '{allow, all, subscribe, ["lockwise/${username}/cmd"]}.' in emqx_acl
    assert "lockwise/${username}/#" not in emqx_acl


class _Hub(StubHandler):
    """What hf_hub_download asks of the Hub: ``/<repo>/resolve/<revision>/<file>`` (HEAD, then GET), answered with
    the commit the revision names and the file's ETag. ``main`` points at ``commit``; any other revision must be
    that commit."""

    files: dict[str, bytes] = {}
    commit = "0123456789abcdef0123456789abcdef01234567"
    asked: list[str] = []

    def _resolve(self, body: bool) -> None:
        *_, revision, name = self.path.split("?")[0].split("/")
        self.asked.append(revision)
        if name not in self.files or revision not in ("main", self.commit):
            return self.answer(404)
        data = self.files[name]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self.answer(200, data, headers={"X-Repo-Commit": self.commit, "ETag": etag}, send_body=body)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._resolve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._resolve(body=True)


def test_model_fetch_pins_a_commit_and_checks_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the session is offline; this Hub is local
    files = {"hyperparams.yaml": b"n_mels: 80\n", "embedding_model.ckpt": b"\x00" * 300_000}
    monkeypatch.setattr(_Hub, "files", dict(files))
    monkeypatch.setattr(_Hub, "asked", [])
    lock = tmp_path / "lock.json"
    unpinned = {"repo": "speechbrain/spkrec-ecapa-voxceleb", "track": "main", "revision": None}
    lock.write_text(json.dumps({**unpinned, "files": dict.fromkeys(files)}))
    with serving(_Hub) as base:
        with pytest.raises(fetch.FetchError, match="not a pinned commit"):
            fetch.fetch(tmp_path / "out", base_url=base, lock_file=lock)
        lock.write_text(json.dumps({**unpinned, "revision": "main", "files": dict.fromkeys(files)}))
        with pytest.raises(fetch.FetchError, match="not a pinned commit"):  # a branch moves: never fetched by name
            fetch.fetch(tmp_path / "out", base_url=base, lock_file=lock)
        recorded = fetch.fetch(tmp_path / "out", record=True, base_url=base, lock_file=lock)
        pinned = json.loads(lock.read_text())
        assert pinned["revision"] == _Hub.commit and pinned["files"] == recorded
        assert recorded["embedding_model.ckpt"] == hashlib.sha256(files["embedding_model.ckpt"]).hexdigest()
        assert (tmp_path / "out" / "embedding_model.ckpt").read_bytes() == files["embedding_model.ckpt"]
        assert not (tmp_path / "out" / ".cache").exists()
        _Hub.asked.clear()
        assert fetch.fetch(tmp_path / "again", base_url=base, lock_file=lock) == recorded
        assert set(_Hub.asked) == {_Hub.commit}  # fetched by the pinned commit only
        _Hub.files["embedding_model.ckpt"] = b"\x01" * 300_000  # the file changed upstream under the same commit
        with pytest.raises(fetch.FetchError, match="does not match the pinned"):
            fetch.fetch(tmp_path / "third", base_url=base, lock_file=lock)
        assert not (tmp_path / "third" / "embedding_model.ckpt").exists()
        assert fetch.main([str(tmp_path / "fourth"), "--base-url", base]) == 1  # the command says so and fails


def test_build_exports_the_cpu_graph_unless_told_not_to() -> None:
    def exports(commands: list[list[str]]) -> list[list[str]]:
        return [c for c in commands if c[1:3] == ["-m", "infra.model.export_onnx"]]

    default, without = exports(dry_run("build")), exports(dry_run("build", "--no-cpu-graph"))
    assert len(default) == len(without) == 1  # one export (with its parity run), copied into both bundles
    assert "--no-cpu-graph" not in default[0]
    assert without[0][-1] == "--no-cpu-graph"


def test_build_copies_the_one_export_into_each_voice_bundle() -> None:
    commands = dry_run("build")
    export = next(i for i, c in enumerate(commands) if c[1:3] == ["-m", "infra.model.export_onnx"])
    exported = commands[export][4]
    copies = [c for c in commands if c[:2] == ["cp", "-R"]]
    assert sorted(Path(c[3]).parent.name for c in copies) == ["embed", "verify"]
    assert all(c[2] == f"{exported}/." and Path(c[3]).name == "model" for c in copies)  # its files, not nested
    assert all(commands.index(c) > export for c in copies)  # after the export wrote it


def test_feed_entries_and_ended_access_expire_by_firestore_ttl_policies_the_deploy_sets() -> None:
    """The mirror gives each feed entry an ``expires_at`` timestamp (``mirror.FEED_KEPT``) and a former member's
    access document a ``purge_at`` one (``mirror.access_ended``); the indexes file that ``firebase deploy --only
    firestore:indexes`` applies makes them the TTL fields of the activity and access collection groups; the restore
    journal's entries (migration 0071) carry an ``expires_at`` too."""
    config = json.loads((REPO / "firebase.json").read_text())
    indexes = json.loads((REPO / config["firestore"]["indexes"]).read_text())
    ttl = [f for f in indexes.get("fieldOverrides", []) if f.get("ttl")]
    assert ttl == [
        {"collectionGroup": "activity", "fieldPath": "expires_at", "ttl": True, "indexes": []},
        {"collectionGroup": "access", "fieldPath": "purge_at", "ttl": True, "indexes": []},
        {"collectionGroup": "journal", "fieldPath": "expires_at", "ttl": True, "indexes": []},
    ]
    ended = dt.datetime(2026, 12, 6, 23, 0, tzinfo=dt.UTC)
    path, op, data = mirror.access_ended("lock", "carol", ended)
    assert (path, op) == ("locks/lock/access/carol", "set") and data is not None
    assert data["purge_at"] == firestore_json.timestamp(ended + mirror.ENDED_ACCESS_KEPT)
    entry = mirror.activity_entry("lock", "state", ended)[2]
    assert entry is not None and entry["expires_at"] == firestore_json.timestamp(ended + mirror.FEED_KEPT)
    assert entry["at"] == "2026-12-06T23:00:00.000Z"


def test_hosting_sends_the_api_to_the_public_services_the_deploy_makes_in_its_region() -> None:
    """Attack run 89: firebase.json rewrote /embed, /verify and /devices to functions of those names, and the deploy
    makes Cloud Run services named lockwise-embed, lockwise-verify and lockwise-devices: the app's and the locks'
    base URL reached none of them (nor the broker host's CRL refresh). The rewrites name the public services, and a
    deploy to another region than theirs is refused before anything is deployed."""
    from infra.deploy import hosting_rewrites

    rewrites = hosting_rewrites()
    assert {service for service, _ in rewrites.values()} == {spec.name for spec in SERVICES if spec.public}
    assert set(rewrites) == {"/embed{,/**}", "/verify{,/**}", "/devices{,/**}"}
    assert any("hosting" in " ".join(c) for c in dry_run("firebase"))
    elsewhere = [a if a != "europe-west1" else "us-central1" for a in ARGS]
    result = deploy("firebase", *elsewhere, "--dry-run")
    assert result.returncode != 0 and "firebase.json rewrites /embed" in result.stderr, result


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--broker-host", "broker.lockwise.internal,GCE_METADATA_HOST=evil.example"),
        ("--devices-relay-url", "https://relay-devices.example,GCE_METADATA_HOST=evil.example"),
        ("--devices-relay-url", "https://relay-devices.example/?x=1"),
        ("--devices-relay-url", "https://user:pw@relay-devices.example"),
        ("--api-host", "lockwise.example,LOCKWISE_MODE=local"),
    ],
)
def test_a_deploy_flag_cannot_add_a_variable_to_a_services_environment(flag: str, value: str) -> None:
    """Attack run 89: ``--set-env-vars`` is a comma-separated list, and ``--broker-host`` was not checked (the
    relay URL only for its https:// prefix): a comma in either set another variable on the relay, its metadata
    server's address say. Each host and URL is checked, and a value holding a comma is never written into the flag."""
    args = [a for pair in zip(ARGS[::2], ARGS[1::2], strict=True) if pair[0] != flag for a in pair]
    result = deploy("all", *args, flag, value, "--dry-run", "--release", "r1")
    assert result.returncode != 0 and flag in result.stderr, (result.stdout[-300:], result.stderr[-300:])
    assert "GCE_METADATA_HOST" not in result.stdout and "LOCKWISE_MODE=local" not in result.stdout
    from infra.deploy import DeployConfigError, _env_flag

    with pytest.raises(DeployConfigError, match="holds a ','"):
        _env_flag({"MQTT_HOST": "a,B=c"})


def test_hosting_uploads_the_console_alone(tmp_path: Path) -> None:
    """Attack run 101: firebase.json had no ``ignore``, and firebase-tools then uploads every file of the public folder,
    hidden ones too (its listFiles globs with ``dot: true``): ``infra/hosting/.gitignore`` and the SDK bundle's build
    stamp ``vendor/firebase.js.sha256`` were served at the site's root, as would a source map, an editor's swap file
    or a ``node_modules``. Asked of the pinned firebase-tools' own listing, with firebase.json's rules."""
    from infra.local.services import TOOLS_HOME

    cli = TOOLS_HOME / "firebase-tools" / "node_modules" / "firebase-tools" / "lib" / "listFiles.js"
    # ./dev test installs both: a machine without them fails here, loudly, rather than skip the check
    assert cli.is_file() and shutil.which("node"), "firebase-tools (./dev setup) and node list what Hosting uploads"
    hosting = json.loads((REPO / "firebase.json").read_text())["hosting"]
    console = ("index.html", "app.js", "recorder.js", "style.css")
    assert all((REPO / hosting["public"] / name).is_file() for name in console)
    site = tmp_path
    for name in (*console, "vendor/firebase.js"):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("console\n")
    for stray in (
        ".gitignore",
        "vendor/firebase.js.sha256",
        "app.js.map",
        "vendor/.app.js.swp",
        ".env",
        "node_modules/esbuild/index.js",
        ".DS_Store",
        "npm-debug.log",
        ".idea/workspace.xml",  # what a hidden folder holds: ``**/.*`` left out the folder's name alone (run 128)
        "vendor/.cache/firebase.js.orig",
    ):
        (site / stray).parent.mkdir(parents=True, exist_ok=True)
        (site / stray).write_text("not the console\n")
    script = (
        "console.log(JSON.stringify(require(process.argv[1]).listFiles(process.argv[2], JSON.parse(process.argv[3]))))"
    )
    listed = subprocess.run(
        ["node", "-e", script, str(cli), str(site), json.dumps(hosting.get("ignore", []))],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert sorted(json.loads(listed.stdout)) == [
        "app.js",
        "index.html",
        "recorder.js",
        "style.css",
        "vendor/firebase.js",
    ]
