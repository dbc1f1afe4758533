"""Every lock request's signature is checked as many times whatever its lock id holds (attack run 75: a lock id's
answer took ~165 µs more per key it held, telling a prober which ids were paired and how often). A fast count of the
checks; the signatures themselves are checked against real PostgreSQL in ``tests/integration/test_devices_authz.py``
and ``test_firmware_contract.py``."""

from __future__ import annotations

import time
import uuid
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from werkzeug.datastructures import Headers

from lockwise.core import errors
from lockwise.core.db import Connection
from lockwise.devices import lock_auth


class Keys:
    """A database whose lock id holds ``keys`` (the active one first)."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys

    def run(self, sql: str, **params: Any) -> Any:
        assert sql.startswith("SELECT id::text, signing_public_key") and params["k"] == lock_auth.KEYS_KEPT
        return [[str(uuid.uuid4()), key, i == 0, None, False] for i, key in enumerate(self.keys)]  # no restore


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The keys each signature is checked against, in order."""
    keys: list[bytes] = []
    real = lock_auth._verifies

    def counted(public_key: bytes, signature: bytes, signed: bytes) -> bool:
        keys.append(public_key)
        return real(public_key, signature, signed)

    monkeypatch.setattr(lock_auth, "_verifies", counted)
    return keys


def refusal(keys: list[bytes], signer: Ed25519PrivateKey) -> str:
    lock_id = str(uuid.uuid4())
    headers = lock_auth.sign_headers(signer, lock_id, "GET", "/devices/lock/config", b"")
    with pytest.raises(errors.Unauthenticated) as refused:
        lock_auth.authenticate(
            cast(Connection, Keys(keys)),
            Headers(headers),
            "GET",
            "/devices/lock/config",
            b"",
            skew_s=60,
            per_minute=120,
            now=int(time.time()),
        )
    return refused.value.code


@pytest.mark.parametrize("held", [0, 1, 2, 4])
def test_a_wrong_signature_is_checked_as_often_whatever_keys_the_lock_id_holds(held: int, checked: list[bytes]) -> None:
    keys = [public(Ed25519PrivateKey.generate()) for _ in range(held)]
    assert refusal(keys, Ed25519PrivateKey.generate()) == "bad_lock_signature"
    assert len(checked) == lock_auth.KEYS_KEPT
    assert checked[:held] == keys  # its own keys, then the one no lock holds
    assert all(k not in keys for k in checked[held:])


def test_a_revoked_key_is_known_only_to_its_holder_after_every_check(checked: list[bytes]) -> None:
    """The active key and three revoked ones: signed by the second, every key is still checked, and the answer is
    the revoked key's (pair again)."""
    held = [Ed25519PrivateKey.generate() for _ in range(4)]
    assert refusal([public(k) for k in held], held[1]) == "unknown_lock"
    assert checked == [public(k) for k in held]
