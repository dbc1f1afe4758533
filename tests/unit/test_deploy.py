"""The deploy commands, checked through --dry-run: the flags that matter, the order, and no secret values."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.build import build
from infra.model import fetch

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "--project",
    "lockwise-prod",
    "--region",
    "europe-west1",
    "--devices-relay-url",
    "https://relay-devices.example",
]


def dry_run(component: str, *extra: str) -> list[list[str]]:
    result = subprocess.run(
        [sys.executable, "-m", "infra.deploy", component, *ARGS, *extra, "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
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
    assert "--min-instances=0" in embed and "--memory=2Gi" in embed
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--project", "Bad_Project"], "not a valid Google Cloud project id"),
        (["--project", "demo-lockwise"], "emulator-only"),
        (["--project", "lockwise-prod", "--region", "mars"], "region"),
        (["--project", "lockwise-prod"], "--devices-relay-url"),
    ],
)
def test_bad_configuration_is_refused(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.deploy", "all", *args, "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr


def test_production_bundle_takes_torch_from_the_cpu_index(tmp_path: Path) -> None:
    out = build("embed", tmp_path / "embed", production=True)
    requirements = (out / "requirements.txt").read_text()
    assert requirements.startswith("--extra-index-url https://download.pytorch.org/whl/cpu")
    assert "torch==2.9.1+cpu" in requirements and "torchaudio==2.9.1+cpu" in requirements
    assert "+cpu" not in (build("embed", tmp_path / "dev-embed") / "requirements.txt").read_text()  # local: as pinned
    for name in ("devices", "verify"):  # verify serves the ONNX export: no torch in its bundle at all
        text = (build(name, tmp_path / name, production=True) / "requirements.txt").read_text()
        assert "torch==" not in text and "speechbrain" not in text and "extra-index-url" not in text


def test_model_fetch_checks_checksums(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = tmp_path / "hub" / "speechbrain" / "spkrec-ecapa-voxceleb" / "resolve" / "main"
    served.mkdir(parents=True)
    files = {"hyperparams.yaml": b"n_mels: 80\n", "embedding_model.ckpt": b"\x00" * 300_000}
    for name, data in files.items():
        (served / name).write_bytes(data)
    lock = tmp_path / "lock.json"
    lock.write_text(
        json.dumps(
            {
                "repo": "speechbrain/spkrec-ecapa-voxceleb",
                "revision": "main",
                "base_url": "unused",
                "files": dict.fromkeys(files),
            }
        )
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "hub")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(fetch.FetchError, match="no pinned checksum"):
            fetch.fetch(tmp_path / "out", base_url=base, lock_file=lock)
        recorded = fetch.fetch(tmp_path / "out", record=True, base_url=base, lock_file=lock)
        assert recorded["embedding_model.ckpt"] == hashlib.sha256(files["embedding_model.ckpt"]).hexdigest()
        assert json.loads(lock.read_text())["files"] == recorded
        assert "embedding_model.ckpt" in capsys.readouterr().err  # the progress bar
        (served / "embedding_model.ckpt").write_bytes(b"\x01" * 300_000)  # the upstream file changed
        with pytest.raises(fetch.FetchError, match="does not match the pinned"):
            fetch.fetch(tmp_path / "again", base_url=base, lock_file=lock)
        assert not (tmp_path / "again" / "embedding_model.ckpt").exists()
    finally:
        server.shutdown()
