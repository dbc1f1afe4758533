"""The Firestore emulator through the shared client, and Firebase ID tokens through the shared verifier."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from infra.local.services import Emulator
from lockwise.core import errors
from lockwise.core.firestore import make_client
from lockwise.core.id_tokens import IdTokenVerifier, StaticKeys
from tests.conftest import PROJECT_ID, reset_firestore


def test_firestore_emulator_write_then_read(firestore_emulator: Emulator) -> None:
    client = make_client(PROJECT_ID, firestore_emulator.host)
    doc = client.collection("locks").document("lock-1")
    doc.set({"state": "locked", "member_uids": ["u1"]})
    assert doc.get().to_dict() == {"state": "locked", "member_uids": ["u1"]}
    reset_firestore(firestore_emulator)
    assert not doc.get().exists, "the emulator's DELETE endpoint did not reset the data"


def test_auth_emulator_token_is_accepted(sign_up: Any, auth_emulator: Emulator) -> None:
    account = sign_up(email="owner@example.com")
    user = IdTokenVerifier(PROJECT_ID, None, emulator=True).verify(account["idToken"])
    assert user.uid == account["localId"]
    assert user.email == "owner@example.com"


def test_token_for_another_project_is_rejected(sign_up: Any) -> None:
    token = sign_up()["idToken"]
    with pytest.raises(errors.Unauthenticated) as info:
        IdTokenVerifier("demo-someone-else", None, emulator=True).verify(token)
    assert info.value.code == "wrong_audience"


def test_unsigned_emulator_token_is_rejected_outside_emulator_mode(sign_up: Any) -> None:
    token = sign_up()["idToken"]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(errors.Unauthenticated):
        IdTokenVerifier(PROJECT_ID, StaticKeys({"k1": key.public_key()})).verify(token)


# --------------------------------------------------------------------------- RS256, as production tokens are


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}


def signed(key: rsa.RSAPrivateKey, kid: str = "k1", **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": f"https://securetoken.google.com/{PROJECT_ID}",
        "aud": PROJECT_ID,
        "sub": "uid-123",
        "iat": now - 10,
        "auth_time": now - 10,
        "exp": now + 3600,
        "email": "a@example.com",
    }
    claims.update(overrides)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})


def verifier(keys: dict[str, rsa.RSAPrivateKey]) -> IdTokenVerifier:
    return IdTokenVerifier(PROJECT_ID, StaticKeys({"k1": keys["k1"].public_key()}))


def test_signed_token_is_accepted(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    assert verifier(keys).verify(signed(keys["k1"])).uid == "uid-123"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda k: signed(k["k2"], kid="k1"), "invalid_token"),  # signature by the wrong key
        (lambda k: signed(k["k2"], kid="k2"), "invalid_token"),  # unknown key id
        (lambda k: signed(k["k1"], exp=int(time.time()) - 60), "token_expired"),
        (lambda k: signed(k["k1"], aud="demo-other"), "invalid_token"),
        (lambda k: signed(k["k1"], iss="https://evil.example.com"), "invalid_token"),
        (lambda k: signed(k["k1"], sub=""), "invalid_token"),
        (lambda k: signed(k["k1"], iat=int(time.time()) + 600), "invalid_token"),
        (lambda k: signed(k["k1"])[:-4] + "AAAA", "invalid_token"),  # tampered signature
        (lambda k: "not.a.jwt", "invalid_token"),
    ],
)
def test_bad_tokens_are_rejected(keys: dict[str, rsa.RSAPrivateKey], make: Any, code: str) -> None:
    with pytest.raises(errors.Unauthenticated) as info:
        verifier(keys).verify(make(keys))
    assert info.value.code == code


def test_hs256_token_with_the_public_key_as_secret_is_rejected(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    pub = (
        keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forged = jwt.encode({"sub": "x", "aud": PROJECT_ID}, pub.decode()[:40], algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(errors.Unauthenticated):
        verifier(keys).verify(forged)
