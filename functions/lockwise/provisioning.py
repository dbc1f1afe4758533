"""Pairing: a one-time, short-lived code the owner's app hands to the lock, redeemed once for the lock's credentials.

The lock sends the public half of an Ed25519 key it generated; the server answers with a broker username (the lock
id) and a random password. PostgreSQL keeps only the password's PBKDF2 hash and the public key, so a dump lets nobody
impersonate the lock. Redeeming a new code revokes the lock's previous credentials.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lockwise import audit, errors, mirror
from lockwise.broker_passwords import hash_password
from lockwise.db import Connection

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O/1/I
CODE_LENGTH = 24  # ~120 bits


def new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def _hash(code: str) -> bytes:
    normalised = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(normalised.encode()).digest()


def issue(con: Connection, lock_id: str, uid: str, ttl_s: int) -> tuple[str, dt.datetime]:
    """A fresh one-time code for ``lock_id``; earlier unredeemed codes of the lock stop working."""
    con.run(
        "UPDATE provisioning_codes SET expires_at = now() WHERE lock_id = CAST(:l AS uuid)"
        " AND redeemed_at IS NULL AND expires_at > now()",
        l=lock_id,
    )
    code = new_code()
    rows = con.run(
        "INSERT INTO provisioning_codes (code_hash, lock_id, created_by, expires_at)"
        " VALUES (:h, CAST(:l AS uuid), :u, now() + make_interval(secs => :ttl)) RETURNING expires_at",
        h=_hash(code),
        l=lock_id,
        u=uid,
        ttl=ttl_s,
    )
    audit.record(con, audit.user_actor(uid), "provisioning.issue", "ok", lock_id=lock_id)
    return code, rows[0][0]


@dataclass(frozen=True)
class Credentials:
    lock_id: str
    mqtt_username: str
    mqtt_password: str

    def public(self, host: str, port: int, server_public_key: str, command_ttl_s: int) -> dict[str, Any]:
        from lockwise import topics

        return {
            "lock_id": self.lock_id,
            "mqtt": {
                "host": host,
                "port": port,
                "tls": True,
                "username": self.mqtt_username,
                "password": self.mqtt_password,
                "topics": {
                    "commands": topics.commands(self.mqtt_username),
                    "state": topics.state(self.mqtt_username),
                    "acks": topics.acks(self.mqtt_username),
                    "status": topics.status(self.mqtt_username),
                },
            },
            "server_public_key": server_public_key,
            "command_ttl_s": command_ttl_s,
        }


def parse_public_key(value: Any) -> bytes:
    """Raw 32-byte Ed25519 public key from base64 (400 ``invalid_public_key`` otherwise)."""
    if not isinstance(value, str) or len(value) > 100:
        raise errors.BadRequest("public_key must be base64 of a 32-byte Ed25519 key", code="invalid_public_key")
    try:
        raw = base64.b64decode(value, validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise errors.BadRequest(
            "public_key must be base64 of a 32-byte Ed25519 key", code="invalid_public_key"
        ) from exc
    return raw


def redeem(con: Connection, code: Any, public_key: bytes) -> Credentials:
    """Exchange a valid code for new credentials (once); the lock's old credentials are revoked."""
    if not isinstance(code, str) or not 4 <= len(code) <= 64:
        raise errors.BadRequest("code must be a string", code="invalid_code_format")
    rows = con.run(
        "SELECT lock_id::text, redeemed_at IS NOT NULL, expires_at <= now() FROM provisioning_codes"
        " WHERE code_hash = :h FOR UPDATE",
        h=_hash(code),
    )
    if not rows or rows[0][1] or rows[0][2]:
        # one message for unknown, used and expired codes: the caller learns nothing about which
        raise errors.Unauthenticated("provisioning code is invalid, used or expired", code="invalid_provisioning_code")
    lock_id = str(rows[0][0])
    con.run("UPDATE provisioning_codes SET redeemed_at = now() WHERE code_hash = :h", h=_hash(code))
    revoked = con.run(
        "UPDATE lock_credentials SET revoked_at = now() WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL"
        " RETURNING id",
        l=lock_id,
    )
    password = secrets.token_urlsafe(24)
    con.run(
        "INSERT INTO lock_credentials (lock_id, mqtt_username, mqtt_password_hash, signing_public_key)"
        " VALUES (CAST(:l AS uuid), :u, :h, :k)",
        l=lock_id,
        u=lock_id,
        h=hash_password(password),
        k=public_key,
    )
    con.run(
        "INSERT INTO lock_state (lock_id) VALUES (CAST(:l AS uuid)) ON CONFLICT (lock_id) DO NOTHING",
        l=lock_id,
    )
    audit.record(
        con,
        audit.lock_actor(lock_id),
        "credentials.provision",
        "ok",
        lock_id=lock_id,
        details={"revoked_previous": len(revoked)},
    )
    mirror.activity(con, lock_id, "provisioned", replaced_credentials=bool(revoked))
    return Credentials(lock_id=lock_id, mqtt_username=lock_id, mqtt_password=password)
