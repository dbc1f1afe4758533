"""Production rehearsal: the deployed shape (three functions, the public and internal devices services, two relay
replicas, the migration job) started as deployed, and the whole story driven through
it: a lock is created and paired, a real voice enrolled, the lock hears that voice, the door opens over MQTT through
the relay, and the ack reaches PostgreSQL and the Firestore live view. See conftest.py for what is stood in for."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import requests

from infra.deploy_config import MIGRATE, SERVICES
from infra.local import services
from infra.local.firestore_sdk import sdk_client
from lockwise.core.db import Database
from lockwise.devices import lock_auth
from lockwise.voice import audio
from lockwise.voice.model.resample import resample
from simlock.lock import SimulatedLock, provision
from tests.conftest import PROJECT_ID
from tests.rehearsal.conftest import REHEARSED_RELEASE, Rehearsal
from tests.voices import pcm16
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(1500)  # the first test also builds and installs every bundle
SPEC = {s.name: s for s in SERVICES}
LOCK_RATE = 44100  # what the lock records: mono PCM16 at 44.1 kHz


@pytest.fixture(scope="module")
def deployed(rehearsal: Rehearsal) -> Iterator[Rehearsal]:
    """Migrate first (as deploy does: the job's check fails before it, passes after), then start every service, the
    account sync and two relay replicas."""
    behind = rehearsal.run_job(MIGRATE, "--check")
    assert behind.returncode == 3 and "run the migration job" in behind.stderr + behind.stdout, behind
    migrated = rehearsal.run_job(MIGRATE)
    assert migrated.returncode == 0, migrated.stderr
    checked = rehearsal.run_job(MIGRATE, "--check")
    assert checked.returncode == 0, checked.stderr
    rehearsal.start_function(SPEC["lockwise-devices-relay"])
    from dataclasses import replace

    rehearsal.place = replace(rehearsal.place, devices_relay_url=rehearsal.urls["lockwise-devices-relay"])
    for name in ("lockwise-devices", "lockwise-embed", "lockwise-verify"):
        rehearsal.start_function(SPEC[name])
    for replica in ("a", "b"):
        rehearsal.start_relay(replica)
    yield rehearsal


def health(proc: services.Process) -> dict[str, Any]:
    """A relay's health report, a degraded or starting one (503) too: the relay answers one report a second
    (``health_server.REPORT_REUSE_S``), so the one its readiness check read, still starting, may come again."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/health", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            raise
        body = json.loads(exc.read())
    return body


def relays(r: Rehearsal) -> list[services.Process]:
    return [p for name, p in r.processes.items() if name.startswith("relay-")]


def test_the_migration_job_brings_a_fresh_database_up_to_date_with_its_one_secret(deployed: Rehearsal) -> None:
    db = Database(deployed.database_url)
    try:
        with db.connection() as con:
            versions = [r[0] for r in con.run("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        db.close()
    assert versions and versions == sorted(versions)
    again = deployed.run_job(MIGRATE)  # a second run (the next deploy) applies nothing and succeeds
    assert again.returncode == 0, again.stderr


def test_each_process_is_healthy_in_production_mode_without_the_secrets_of_others(deployed: Rehearsal) -> None:
    trusted = {"X-LockWise-Service-Token": deployed.secret_values["LOCKWISE_SERVICE_TOKEN"]}
    for name in ("lockwise-devices", "lockwise-devices-relay", "lockwise-embed", "lockwise-verify"):
        function = SPEC[name].function
        url = f"{deployed.urls[name]}/{function}/health"
        assert requests.get(url, timeout=10).json() == {"service": function, "status": "ok", "age_s": ANY}, name
        body = requests.get(url, headers=trusted, timeout=10).json()
        if name == "lockwise-devices":  # it holds no service token (it serves no trusted caller): anyone's answer
            assert set(body) == {"service", "status", "age_s"}, body
            continue
        assert (body["status"], body["release"]) == ("ok", REHEARSED_RELEASE), (name, body)
        assert body["checks"]["database"]["migration"] > 60, body  # the schema its code needs, there
    for proc in relays(deployed):
        wait_for(lambda p=proc: health(p)["status"] == "ok", what=f"{proc.name} healthy")  # type: ignore[misc]
        assert health(proc)["release"] == REHEARSED_RELEASE
    relay_env = deployed.env_of(SPEC["lockwise-relay"], "relay")
    assert "LOCKWISE_COMMAND_SIGNING_KEY" not in relay_env and relay_env["LOCKWISE_MODE"] == "production"
    assert "torch" not in _installed(deployed.pythons["embed"]) and "torch" not in _installed(
        deployed.pythons["verify"]
    )


def _installed(python: Path) -> str:
    freeze = [sys.executable, "-m", "pip", "--python", str(python), "freeze"]  # the bundle's own venv holds no pip
    return subprocess.run(freeze, capture_output=True, text=True, check=True).stdout


def test_relay_replicas_hold_distinct_broker_sessions(deployed: Rehearsal) -> None:
    ids = {health(p)["relay_id"] for p in relays(deployed)}
    assert len(ids) == 2 and all(i.startswith("lockwise-relay-") for i in ids)
    time.sleep(2.0)  # replicas sharing a client id throw each other off within a reconnect delay
    for proc in relays(deployed):
        thrown_off = [line for line in proc.log_path.read_text().splitlines() if "disconnected from broker" in line]
        assert thrown_off == [], f"{proc.name} lost its broker session: {thrown_off[:3]}"


def _speaker_clips(corpus: Path, speaker: str, n: int) -> list[Path]:
    """The speaker's longest clips (enrollment wants 2.4 s of speech per sample)."""
    return sorted((corpus / speaker).glob("*.wav"), key=lambda p: p.stat().st_size, reverse=True)[:n]


def _as_lock_records(clip: Path) -> bytes:
    parsed = audio.parse_wav(clip.read_bytes())
    return pcm16(resample(parsed.samples, parsed.rate, LOCK_RATE))


def test_a_voice_opens_the_door_through_the_deployed_processes(
    deployed: Rehearsal, sign_up: Callable[..., dict[str, Any]], corpus: Path
) -> None:
    import base64

    owner = sign_up()
    auth = {"Authorization": f"Bearer {owner['idToken']}"}
    public = deployed.urls["lockwise-devices"]
    created = requests.post(f"{public}/devices/locks", json={"name": "Front door"}, headers=auth, timeout=10)
    assert created.status_code == 201, created.text
    lock_id = created.json()["lock"]["id"]
    mounted_ca = str(Path(deployed.place.mounts) / "ca.crt")
    config = provision(public, created.json()["provisioning"]["code"], mounted_ca, host="127.0.0.1")
    lock = SimulatedLock(config)
    lock.start()  # with the certificate it got at pairing: the broker knew nothing of this lock before
    try:
        *enroll, heard = _speaker_clips(corpus, "allison", 6)
        samples = [{"wav_base64": base64.b64encode(c.read_bytes()).decode()} for c in enroll]
        enrolled = requests.put(
            f"{deployed.urls['lockwise-embed']}/embed/enrollment", json={"samples": samples}, headers=auth, timeout=60
        )
        assert enrolled.status_code == 201, enrolled.text

        body = _as_lock_records(heard)
        signed = lock_auth.sign_headers(
            config.signing_key(), lock_id, "POST", "/verify", body,
            content_type="application/octet-stream", sample_rate=str(LOCK_RATE),
        )  # fmt: skip
        verdict = requests.post(f"{deployed.urls['lockwise-verify']}/verify", data=body, headers=signed, timeout=30)
        assert verdict.status_code == 200, verdict.text
        result = verdict.json()
        assert result["decision"] == "accepted" and result["member_uid"] == owner["localId"]

        wait_for(lambda: [c for c in lock.executed if c.id == result["command_id"]], what="the lock got the unlock")
        assert lock.state == "unlocked"
        db = Database(deployed.database_url)
        try:
            wait_for(lambda: _one(db, "SELECT status FROM commands WHERE id = CAST(:i AS uuid)", result["command_id"])
                     == "acked", what="the ack reached PostgreSQL")  # fmt: skip
            wait_for(lambda: _one(db, "SELECT state FROM lock_state WHERE lock_id = CAST(:i AS uuid)", lock_id)
                     == "unlocked", what="the lock's state reached PostgreSQL")  # fmt: skip
            assert _one(db, "SELECT send_count FROM commands WHERE id = CAST(:i AS uuid)", result["command_id"]) == 1
        finally:
            db.close()
        firestore = sdk_client(PROJECT_ID, deployed.stand_ins["FIRESTORE_EMULATOR_HOST"])
        wait_for(
            lambda: (firestore.document(f"locks/{lock_id}").get().to_dict() or {}).get("state") == "unlocked",
            what="the Firestore live view shows the door unlocked",
        )
        _each_event_forwarded_once(deployed, lock)
    finally:
        lock.stop(graceful=False)


def _one(db: Database, sql: str, value: str) -> Any:
    with db.connection() as con:
        rows = con.run(sql, i=value)
    return rows[0][0] if rows else None


def _each_event_forwarded_once(deployed: Rehearsal, lock: SimulatedLock) -> None:
    """Two replicas share the lock events: every event reaches the devices function through exactly one of them."""
    replicas = relays(deployed)

    def forwarded() -> int:
        return sum(int(health(p)["checks"]["forwarder"]["forwarded"]) for p in replicas)

    wait_for(lambda: all(health(p)["checks"]["forwarder"]["queued"] == 0 for p in replicas), what="relays idle")
    time.sleep(0.5)
    before = forwarded()
    burst = 40
    for i in range(burst):
        lock.battery_pct = 100 - i
        lock.publish_state().wait_for_publish(5)
        time.sleep(0.003)  # each report newer than the last (ts in milliseconds)
    wait_for(lambda: forwarded() >= before + burst, what="the burst forwarded")
    time.sleep(1.0)  # a doubled event would arrive within this
    assert forwarded() == before + burst
    per_replica = [int(health(p)["checks"]["forwarder"]["forwarded"]) for p in replicas]
    assert all(n > 0 for n in per_replica), f"one replica took every event: {per_replica}"


def test_the_relay_bundle_imports_from_its_own_requirements_alone(deployed: Rehearsal) -> None:
    probe = "import mqtt_relay.__main__, sys; print('flask' in sys.modules, 'numpy' in sys.modules)"
    result = subprocess.run(
        [str(deployed.pythons["relay"]), "-c", probe], cwd=deployed.bundles["relay"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
