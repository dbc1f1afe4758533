"""docs/FIRMWARE.md against the real server: a lock paired with the vectors' fixed key signs its requests with the
independent implementation of the document (tests/unit/test_firmware_vectors.py, no ``lockwise.devices.lock_auth``), and
commands the server signed verify the way the document tells a lock to check them (no ``command_signing``).

Nothing here signs with the server's own code, so a server that drifts from the document fails these tests."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from lockwise.core.runtime import get_runtime
from tests.devices_world import bearer, create_lock
from tests.unit.test_firmware_vectors import LOCK_KEY, VECTORS, lock_verdict, sign_request

pytestmark = pytest.mark.model  # verify loads the speaker encoder

RATE = 44100


def pair_with_key(devices: Any, code: str, public_key_b64: str) -> dict[str, Any]:
    """Redeem a pairing code for a lock whose public signing key is ``public_key_b64`` (and a CSR for a new TLS key,
    as docs/FIRMWARE.md says); returns the credentials."""
    from simlock.lock import new_tls_key

    body = {"code": code, "public_key": public_key_b64, "csr": new_tls_key()[1]}
    resp = devices.post("/devices/provision", json=body)
    assert resp.status_code == 201, resp.get_json()
    credentials: dict[str, Any] = resp.get_json()
    return credentials


@dataclass
class PairedLock:
    owner: dict[str, Any]
    lock_id: str
    credentials: dict[str, Any]


@pytest.fixture
def clients(make_client: Any) -> dict[str, Any]:
    return {name: make_client(name) for name in ("devices", "verify")}


@pytest.fixture
def lock(clients: dict[str, Any], sign_up: Any) -> PairedLock:
    owner = sign_up()
    created = create_lock(clients["devices"], owner)
    credentials = pair_with_key(
        clients["devices"], created["provisioning"]["code"], VECTORS["lock_key"]["public_key_b64"]
    )
    assert credentials["lock_id"] == created["lock"]["id"]
    return PairedLock(owner, credentials["lock_id"], credentials)


def pcm16_tone(seconds: float = 3.0, rate: int = RATE) -> bytes:
    """A 220 Hz tone at half scale, 16-bit signed little-endian mono: loud, unclipped, long enough."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


def error_code(resp: Any) -> str:
    return str(resp.get_json()["error"]["code"])


def test_lock_config_answers_a_request_signed_as_documented(clients: dict[str, Any], lock: PairedLock) -> None:
    path = "/devices/lock/config"
    resp = clients["devices"].get(path, headers=sign_request(LOCK_KEY, lock.lock_id, "GET", path))
    assert resp.status_code == 200, resp.get_json()
    config = resp.get_json()
    assert config["lock_id"] == lock.lock_id
    assert config["server_public_key"] == lock.credentials["server_public_key"]
    assert config["topics"]["commands"] == f"lockwise/{lock.credentials['mqtt']['client_id']}/cmd"


def test_the_documented_401_codes(clients: dict[str, Any], lock: PairedLock) -> None:
    devices, path = clients["devices"], "/devices/lock/config"

    def code_for(headers: dict[str, str]) -> str:
        resp = devices.get(path, headers=headers)
        assert resp.status_code == 401, resp.get_json()
        return error_code(resp)

    signed = sign_request(LOCK_KEY, lock.lock_id, "GET", path)
    assert code_for({k: v for k, v in signed.items() if k != "X-LockWise-Signature"}) == "missing_lock_signature"
    assert code_for({**signed, "X-LockWise-Nonce": "too-short"}) == "bad_lock_signature"
    stale = sign_request(LOCK_KEY, lock.lock_id, "GET", path, timestamp=str(int(time.time()) - 3600))
    assert code_for(stale) == "stale_request"
    assert code_for(sign_request(LOCK_KEY, str(uuid.uuid4()), "GET", path)) == "bad_lock_signature"  # not revealed
    # a Content-Type the lock did not sign (an empty line 6 was signed)
    assert code_for({**sign_request(LOCK_KEY, lock.lock_id, "GET", path), "Content-Type": "text/plain"}) == (
        "bad_lock_signature"
    )
    # the contract's spellings only, each signed as sent (an attack run found these taken: int() and lower())
    now = int(time.time())
    for timestamp in (f"+{now}", f" {now}", f"{now} ", f"{now:_}", f"{now}.0", f"-{now}"):
        assert code_for(sign_request(LOCK_KEY, lock.lock_id, "GET", path, timestamp=timestamp)) == "bad_lock_signature"
    assert code_for(sign_request(LOCK_KEY, lock.lock_id.upper(), "GET", path)) == "bad_lock_signature"
    assert devices.get(path, headers=signed).status_code == 200
    assert code_for(signed) == "replayed_request"


def test_verify_takes_pcm_with_a_signed_sample_rate(clients: dict[str, Any], lock: PairedLock) -> None:
    verify, body = clients["verify"], pcm16_tone()
    headers = sign_request(
        LOCK_KEY, lock.lock_id, "POST", "/verify", body, content_type="application/octet-stream", sample_rate=str(RATE)
    )
    resp = verify.post("/verify", data=body, headers=headers)
    # decoded, validated and scored: nobody at this lock has a voiceprint, so the answer is this rejection
    assert resp.status_code == 200, resp.get_json()
    result = resp.get_json()
    assert (result["decision"], result["reason"]) == ("rejected", "no_candidates") and "score" not in result

    # the sample rate is signed: changing it after signing is refused before anything is decoded
    tampered = sign_request(
        LOCK_KEY, lock.lock_id, "POST", "/verify", body, content_type="application/octet-stream", sample_rate=str(RATE)
    )
    tampered["X-Sample-Rate"] = "22050"
    resp = verify.post("/verify", data=body, headers=tampered)
    assert (resp.status_code, error_code(resp)) == (401, "bad_lock_signature")


def test_verify_takes_the_rate_from_a_signed_query_string(clients: dict[str, Any], lock: PairedLock) -> None:
    verify, body, target = clients["verify"], pcm16_tone(), f"/verify?sample_rate={RATE}"
    headers = sign_request(LOCK_KEY, lock.lock_id, "POST", target, body, content_type="audio/pcm")
    resp = verify.post(target, data=body, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["reason"] == "no_candidates"
    # the query is part of the target: signing the bare path and sending the query is a bad signature
    bare = sign_request(LOCK_KEY, lock.lock_id, "POST", "/verify", body, content_type="audio/pcm")
    resp = verify.post(target, data=body, headers=bare)
    assert (resp.status_code, error_code(resp)) == (401, "bad_lock_signature")


def test_audio_l16_is_not_served(clients: dict[str, Any], lock: PairedLock) -> None:
    body = pcm16_tone()
    headers = sign_request(LOCK_KEY, lock.lock_id, "POST", "/verify", body, content_type="audio/L16")
    resp = clients["verify"].post("/verify", data=body, headers=headers)
    assert (resp.status_code, error_code(resp)) == (415, "unsupported_media_type")


def test_server_commands_verify_as_the_document_says(clients: dict[str, Any], lock: PairedLock) -> None:
    resp = clients["devices"].post(
        f"/devices/locks/{lock.lock_id}/commands", json={"action": "unlock"}, headers=bearer(lock.owner)
    )
    assert resp.status_code == 202, resp.get_json()
    command = resp.get_json()["command"]
    with get_runtime("devices").db.connection() as con:
        ((payload,),) = con.run("SELECT payload FROM commands WHERE id = CAST(:i AS uuid)", i=command["id"])
    server_key = lock.credentials["server_public_key"]
    seen: set[str] = set()
    verdict, fields = lock_verdict(payload, server_key, lock.lock_id, time.time(), seen)
    assert verdict == "act" and fields is not None
    assert (fields["id"], fields["lock"], fields["action"]) == (command["id"], lock.lock_id, "unlock")
    assert fields["issued_at"] < fields["expires_at"] == fields["issued_at"] + lock.credentials["command_ttl_s"]
    # the canonical form the document shows: keys sorted, no whitespace
    cmd = json.loads(payload)["cmd"]
    assert cmd == json.dumps({"v": 1, **fields}, sort_keys=True, separators=(",", ":"))
    # the checks after the signature
    assert lock_verdict(payload, server_key, lock.lock_id, time.time(), seen) == ("replayed", None)
    assert lock_verdict(payload, server_key, str(uuid.uuid4()), time.time(), set())[0] == "wrong_lock"
    assert lock_verdict(payload, server_key, lock.lock_id, fields["expires_at"], set())[0] == "expired"
    assert lock_verdict(payload, VECTORS["server_key"]["public_key_b64"], lock.lock_id, time.time(), set()) == (
        "bad_signature",
        None,
    )


def test_a_deleted_lock_is_told_as_the_document_says(clients: dict[str, Any], lock: PairedLock) -> None:
    """Attack run 91: FIRMWARE.md's renewal section said a deleted lock got ``unknown_lock``; the server answers it
    ``bad_lock_signature``, as a lock id nobody paired (nobody learns which ids exist), and the document says so."""
    devices, path = clients["devices"], "/devices/lock/config"
    assert devices.get(path, headers=sign_request(LOCK_KEY, lock.lock_id, "GET", path)).status_code == 200
    deleted = devices.delete(f"/devices/locks/{lock.lock_id}", headers=bearer(lock.owner))
    assert deleted.status_code == 204, deleted.get_json()
    refused = devices.get(path, headers=sign_request(LOCK_KEY, lock.lock_id, "GET", path))
    assert (refused.status_code, error_code(refused)) == (401, "bad_lock_signature")


def test_pairing_code_errors_are_as_the_document_says(clients: dict[str, Any], sign_up: Any) -> None:
    """Attack run 91: a code that is not a string of 4-64 characters is 400 ``invalid_code_format``; any other wrong
    code, whatever its length, is 401 ``invalid_provisioning_code``; dashes, spaces and case are ignored."""
    from simlock.lock import new_tls_key

    devices = clients["devices"]
    code = create_lock(devices, sign_up())["provisioning"]["code"]
    key = VECTORS["lock_key"]["public_key_b64"]

    def pair(sent: Any) -> Any:
        return devices.post("/devices/provision", json={"code": sent, "public_key": key, "csr": new_tls_key()[1]})

    for sent in (12345, "abc", "x" * 65):
        resp = pair(sent)
        assert (resp.status_code, error_code(resp)) == (400, "invalid_code_format"), sent
    wrong = pair(code[:-1])  # a length other than 24: a wrong code like any other
    assert (wrong.status_code, error_code(wrong)) == (401, "invalid_provisioning_code")
    spaced = " ".join(code.replace("-", "").lower()[i : i + 4] for i in range(0, 24, 4))
    assert pair(spaced).status_code == 201
