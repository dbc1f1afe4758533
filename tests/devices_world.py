"""A lock with one user in each role, built through the devices API, for the devices and relay tests."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from lockwise.core.runtime import get_runtime
from lockwise.devices import members
from lockwise.devices.lock_auth import sign_headers
from simlock.lock import LockConfig, new_tls_key
from simlock.lock import pem_of as tls_pem

ROLES = ("owner", "admin", "member", "guest_in", "guest_out", "stranger", "revoked")


def bearer(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['idToken']}"}


def new_lock_key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@dataclass
class World:
    devices: Any
    accounts: dict[str, dict[str, Any]]
    lock_id: str
    credentials: dict[str, Any]
    lock_key: Ed25519PrivateKey
    tls_key_pem: str  # the lock's TLS key, for its broker certificate

    def headers(self, role: str) -> dict[str, str]:
        return bearer(self.accounts[role])

    def uid(self, role: str) -> str:
        return str(self.accounts[role]["localId"])

    def lock_config(self, broker: Any) -> LockConfig:
        seed = self.lock_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return LockConfig(
            lock_id=self.lock_id,
            identity=self.credentials["mqtt"]["client_id"],
            cert_pem=self.credentials["mqtt"]["certificate"],
            key_pem=self.tls_key_pem,
            host="127.0.0.1",
            port=broker.port,
            ca_file=str(broker.ca_file),
            server_public_key=self.credentials["server_public_key"],
            signing_key_b64=base64.b64encode(seed).decode(),
        )


def create_lock(
    devices: Any, owner: dict[str, Any], name: str = "Front door", supports_open: bool = False
) -> dict[str, Any]:
    resp = devices.post("/devices/locks", json={"name": name, "supports_open": supports_open}, headers=bearer(owner))
    assert resp.status_code == 201, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    return body


def provision(devices: Any, code: str) -> tuple[dict[str, Any], Ed25519PrivateKey, str]:
    """Pair as a lock does: an Ed25519 key for its requests, a CSR for its TLS key; returns the answer and both keys."""
    key, public = new_lock_key()
    tls_key, csr = new_tls_key()
    resp = devices.post("/devices/provision", json={"code": code, "public_key": public, "csr": csr})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json(), key, tls_pem(tls_key)


def pair_again(devices: Any, world: World) -> tuple[dict[str, Any], Ed25519PrivateKey, str]:
    """The owner pairs ``world``'s lock with a new device (``provision``'s answer and keys); the world keeps the old
    one's."""
    code = devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=world.headers("owner"))
    assert code.status_code == 201, code.get_json()
    return provision(devices, code.get_json()["code"])


def join(
    devices: Any, lock_id: str, inviter: dict[str, Any], invitee: dict[str, Any], grant: dict[str, Any]
) -> dict[str, Any]:
    """``inviter`` invites ``invitee`` by uid and the invitee accepts: the only way into a lock. Returns the member."""
    resp = devices.post(
        f"/devices/locks/{lock_id}/members", json={"uid": invitee["localId"], **grant}, headers=bearer(inviter)
    )
    assert resp.status_code == 202, resp.get_json()
    invitation = resp.get_json()["invitation"]["id"]
    accepted = devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(invitee))
    assert accepted.status_code == 201, accepted.get_json()
    member: dict[str, Any] = accepted.get_json()["member"]
    return member


def hand_over(devices: Any, lock_id: str, giver: dict[str, Any], taker: dict[str, Any]) -> Any:
    """``giver`` (the owner) offers the lock to ``taker`` (a member), who accepts: the only way a lock changes hands.
    Returns the acceptance's answer (the offer is asserted made)."""
    offered = devices.post(f"/devices/locks/{lock_id}/transfer", json={"uid": taker["localId"]}, headers=bearer(giver))
    assert offered.status_code == 202, offered.get_json()
    return devices.post(f"/devices/locks/{lock_id}/transfer/accept", headers=bearer(taker))


def build_world(devices: Any, sign_up: Any, supports_open: bool = False) -> World:
    accounts = {role: sign_up() for role in ROLES}
    for account in accounts.values():
        assert devices.get("/devices/me", headers=bearer(account)).status_code == 200
    created = create_lock(devices, accounts["owner"], supports_open=supports_open)
    lock_id = created["lock"]["id"]
    credentials, key, tls_key = provision(devices, created["provisioning"]["code"])
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    grants: dict[str, dict[str, Any]] = {
        "admin": {"role": "admin"},
        "member": {"role": "member"},
        "guest_in": {"role": "guest", "access": {"weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}},
        "guest_out": {"role": "guest", "access": {"valid_from": future}},
        "revoked": {"role": "member"},
    }
    for role, grant in grants.items():
        join(devices, lock_id, accounts["owner"], accounts[role], grant)
    resp = devices.delete(
        f"/devices/locks/{lock_id}/members/{accounts['revoked']['localId']}", headers=bearer(accounts["owner"])
    )
    assert resp.status_code == 204
    return World(devices, accounts, lock_id, credentials, key, tls_key)


def verify_as_a_lock(verify: Any, world: World, path: Path, again: Path) -> dict[str, Any]:
    """``path`` sent to the world's door as a lock sends it; on ``say_again`` the person speaks again (``again``)
    and that clip follows up."""

    def post(clip: Path, target: str = "/verify") -> dict[str, Any]:
        body = clip.read_bytes()
        signed = sign_headers(world.lock_key, world.lock_id, "POST", target, body, content_type="audio/wav")
        result: dict[str, Any] = verify.post(target, data=body, headers=signed).get_json()
        return result

    first = post(path)
    if first["reason"] != "say_again":
        return first
    second = post(again, f"/verify?follow_up={first['attempt_id']}")
    assert second["reason"] != "say_again", "a follow-up is never asked again"
    return second


def verify_email(auth_host: str, project: str, uid: str) -> None:
    req = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/projects/{project}/accounts:update",
        data=json.dumps({"localId": uid, "emailVerified": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer owner"},
    )
    urllib.request.urlopen(req, timeout=10).close()


def sign_in(auth_host: str, email: str, password: str = "correct-horse-9") -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword?key=fake",
        data=json.dumps({"email": email, "password": password, "returnSecureToken": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def custom_token_sign_in(auth_host: str, uid: str, claims: dict[str, Any] | None = None) -> dict[str, Any]:
    """A session made from a custom token for ``uid`` (with developer ``claims``), as whoever holds a key that signs
    for the project's Admin SDK makes one (``createCustomToken``, then ``signInWithCustomToken``); the emulator takes
    it unsigned. The ID token Firebase Auth issues for it: ``{"idToken", ...}``."""
    now = int(time.time())

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    minted = {
        "iss": "minter@example.iam.gserviceaccount.com",
        "sub": "minter@example.iam.gserviceaccount.com",
        "aud": "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit",
        "iat": now,
        "exp": now + 3600,
        "uid": uid,
        "claims": claims or {},
    }
    req = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signInWithCustomToken?key=fake",
        data=json.dumps(
            {"token": f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(minted)}.", "returnSecureToken": True}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def google_sign_in(auth_host: str, email: str) -> dict[str, Any]:
    """The holder of ``email`` signs in with Google, which vouches for the address (``email_verified``); an account
    already made with that address, unverified, is the one they get (Firebase keeps its uid)."""
    idp = json.dumps({"sub": "google-" + email, "email": email, "email_verified": True})
    body = {"postBody": f"id_token={idp}&providerId=google.com", "requestUri": "http://localhost"}
    req = urllib.request.Request(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signInWithIdp?key=fake",
        data=json.dumps({**body, "returnSecureToken": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def active_members(lock_id: str) -> int:
    """How many members ``lock_id`` has now, as the API counts them (``members.Membership.active``)."""
    runtime = get_runtime("devices")
    with runtime.db.connection() as con:
        return sum(m.active(runtime.now()) for m in members.list_for_lock(con, lock_id))


def command_nonce(command_id: str) -> str:
    """The nonce a command was signed with, as its lock reads it from the message (its ack repeats it)."""
    with get_runtime("devices").db.connection() as con:
        ((nonce,),) = con.run("SELECT nonce FROM commands WHERE id = CAST(:i AS uuid)", i=command_id)
    return str(nonce)


def every_page(devices: Any, path: str, account: dict[str, Any], limit: str) -> list[dict[str, Any]]:
    """Each page of the listing at ``path`` (``GET /devices/locks``, ``/devices/invitations``) as ``account`` reads
    it, ``limit`` a page, following ``next_page_token`` to the last (at most 10 pages)."""
    bodies: list[dict[str, Any]] = []
    token = None
    while True:
        query = {"limit": limit, **({"page_token": token} if token else {})}
        resp = devices.get(path, query_string=query, headers=bearer(account))
        assert resp.status_code == 200, resp.get_json()
        bodies.append(resp.get_json())
        token = bodies[-1]["next_page_token"]
        if token is None:
            return bodies
        assert len(bodies) < 10, "the pages end"


def invited(world: World, sign_up: Any, by: str = "owner") -> tuple[dict[str, Any], str]:
    """An account who uses LockWise, invited to the world's lock as a member by its ``by``: the account and the
    invitation."""
    account = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(account)).status_code == 200
    sent = world.devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"uid": account["localId"], "role": "member"},
        headers=world.headers(by),
    )
    assert sent.status_code == 202, sent.get_json()
    return account, str(sent.get_json()["invitation"]["id"])
