"""The Firestore emulator through the shared client, and the Auth emulator's tokens through the shared verifier
(the RS256 checks production tokens get: tests/unit/test_id_tokens.py)."""

from __future__ import annotations

from typing import Any

import pytest
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
