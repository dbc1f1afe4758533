"""The README's first command: the whole stack comes up, the simulated lock connects over TLS, Ctrl-C stops
everything, and a restart keeps the data."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from infra.local.services import port_open
from lockwise.core.db import Database

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = f"{REPO / 'functions'}:{REPO}"
CLEARED = ("DATABASE_URL", "FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST", "MQTT_HOST", "MQTT_PORT")


def start_stack(state: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ready = state / "ready.json"
    ready.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CLEARED and not k.startswith("LOCKWISE_")}
    env["PYTHONPATH"] = PYTHONPATH
    argv = ["-m", "infra.local.stack", "--state-dir", str(state), "--free-ports", "--ready-file", str(ready)]
    with open(state.parent / "stack.out", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert proc.poll() is None, f"stack exited early: {(state.parent / 'stack.out').read_text()[-3000:]}"
        assert time.monotonic() < deadline, "stack not ready in 240 s"
        time.sleep(0.5)
    return proc, json.loads(ready.read_text())


def stop_stack(proc: subprocess.Popen[bytes], ports: list[int]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(90) == 0
    still_open = [p for p in ports if port_open(p)]
    assert still_open == [], f"left listening after Ctrl-C: {still_open}"


def ports_of(env: dict[str, str]) -> list[int]:
    hosts = [env["FIRESTORE_EMULATOR_HOST"], env["FIREBASE_AUTH_EMULATOR_HOST"]]
    urls = [env["LOCKWISE_EMBED_URL"], env["LOCKWISE_VERIFY_URL"], env["LOCKWISE_DEVICES_URL"]]
    return [int(env["MQTT_PORT"]), int(env["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])] + [
        int(h.rsplit(":", 1)[1]) for h in hosts + urls
    ]


def get_json(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def post_json(url: str, body: dict[str, Any], token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def sign_up(auth_host: str, project: str, email: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signUp?key=fake",
        data=json.dumps({"email": email, "password": "pw-123456", "returnSecureToken": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def test_stack_starts_serves_stops_and_keeps_data(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, env = start_stack(state)
    try:
        # what holds its secrets (the database's password, the service token, the signing key) is its user's only:
        # the ready file was 0644, readable by every user of the machine (attack run 53)
        for held in (state / "ready.json", state / "stack.env", state / "secrets.json"):
            assert stat.S_IMODE(held.stat().st_mode) == 0o600, held
        for name in ("embed", "verify", "devices"):
            status, body = get_json(env[f"LOCKWISE_{name.upper()}_URL"] + f"/{name}/health")
            assert status == 200 and body["status"] == "ok", body
        lock = subprocess.run(
            [sys.executable, "-m", "simlock", "--once"],
            cwd=REPO,
            env={**os.environ, **env, "PYTHONPATH": PYTHONPATH},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert lock.returncode == 0, lock.stderr
        assert "connected over TLS" in lock.stderr
        account = sign_up(env["FIREBASE_AUTH_EMULATOR_HOST"], env["LOCKWISE_PROJECT_ID"], "keeper@example.com")
        status, me = get_json(env["LOCKWISE_DEVICES_URL"] + "/devices/me", account["idToken"])
        assert status == 200 and me["uid"] == account["localId"]
        # pairing: the app creates a lock, the lock redeems the code and connects with its own account
        status, created = post_json(
            env["LOCKWISE_DEVICES_URL"] + "/devices/locks", {"name": "Porch"}, account["idToken"]
        )
        assert status == 201
        identity = tmp_path / "lock.json"
        paired = subprocess.run(
            [
                sys.executable,
                "-m",
                "simlock",
                "--pair",
                created["provisioning"]["code"],
                "--identity",
                str(identity),
                "--once",
            ],
            cwd=REPO,
            env={**os.environ, **env, "PYTHONPATH": PYTHONPATH},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert paired.returncode == 0, paired.stderr
        assert "confirmed by the back-end" in paired.stderr, paired.stderr  # the stack's relay sent the receipts
        assert json.loads(identity.read_text())["lock_id"] == created["lock"]["id"]
        # README's "Try it": the narrated demo against this stack, every step behaving
        demo = subprocess.run(
            [sys.executable, "-m", "infra.local.demo", "--env-file", str(state / "stack.env")],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": PYTHONPATH},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        for step in (
            "the door opens",
            "acknowledged",
            "live view",
            "stranger's voice is refused",
            "lock voice unlock out",
            "from the app instead",
        ):
            assert step in demo.stdout, (step, demo.stdout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    stop_stack(proc, ports_of(env))

    proc, env2 = start_stack(state)  # same state folder: same database
    try:
        db = Database(env2["DATABASE_URL"])
        with db.connection() as con:
            assert con.run("SELECT uid FROM users WHERE uid = :u", u=account["localId"]) == [[account["localId"]]]
        db.close()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    stop_stack(proc, ports_of(env2))
