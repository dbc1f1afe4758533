"""The Firestore emulator through the functions' REST client, read back with Google's client library, and the Auth
emulator's tokens through the shared verifier (the RS256 checks production tokens get: tests/unit/test_id_tokens.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from infra.local.firestore_sdk import sdk_client
from infra.local.services import Emulator
from lockwise.core import errors, firestore
from lockwise.core import firestore_json as fj
from lockwise.core.id_tokens import IdTokenVerifier, StaticKeys
from tests.conftest import PROJECT_ID, reset_firestore


def test_firestore_emulator_write_then_read(firestore_emulator: Emulator) -> None:
    client = sdk_client(PROJECT_ID, firestore_emulator.host)
    doc = client.collection("locks").document("lock-1")
    doc.set({"state": "locked", "member_uids": ["u1"]})
    assert doc.get().to_dict() == {"state": "locked", "member_uids": ["u1"]}
    reset_firestore(firestore_emulator)
    assert not doc.get().exists, "the emulator's DELETE endpoint did not reset the data"


def test_rest_writes_mean_what_the_client_library_reads(firestore_emulator: Emulator) -> None:
    ours = firestore.make_client(PROJECT_ID, firestore_emulator.host)
    library = sdk_client(PROJECT_ID, firestore_emulator.host)
    doc = "locks/rest-1"
    odd = {"9uid": "member", "a.b": "guest", "we`ird": None}  # keys that need quoting in a field path
    ours.commit([fj.set_write(ours.name(doc), {"state": "locked", "access": odd, "n": 2, "x": 0.5, "on": True})])
    ours.commit(
        [
            fj.merge_write(ours.name(doc), {"access": {"9uid": "admin"}, "battery": 80}),
            fj.set_write(ours.name(f"{doc}/activity/e1"), {"kind": "state", "tags": ["a", 1, None]}),
            fj.set_write(ours.name(f"{doc}/activity/e2"), {"kind": "command"}),
        ]
    )
    assert library.document(doc).get().to_dict() == {
        "state": "locked",
        "access": {**odd, "9uid": "admin"},  # merged into the map, its other keys kept
        "n": 2,
        "x": 0.5,
        "on": True,
        "battery": 80,
    }
    ours.commit([fj.replace_fields_write(ours.name(doc), {"access": {"new": "member"}})])
    assert library.document(doc).get().to_dict()["access"] == {"new": "member"}, "the map is replaced whole"
    assert ours.get(doc) == library.document(doc).get().to_dict()
    listed = ours.list_versions(f"{doc}/activity", 500)
    assert sorted(name.rsplit("/", 1)[1] for name, _version in listed) == ["e1", "e2"]
    stored = {f"{doc}/activity/{d.id}": d.update_time for d in library.collection(f"{doc}/activity").get()}
    assert {name.split("/documents/")[1]: dt.datetime.fromisoformat(version) for name, version in listed} == {
        path: when.replace(tzinfo=dt.UTC)
        for path, when in stored.items()  # the same instant (its digits may differ)
    }
    ours.commit([fj.delete_write(name) for name, _version in listed] + [fj.delete_write(ours.name(doc))])
    assert ours.get(doc) is None and not library.document(doc).get().exists
    assert ours.list_versions(f"{doc}/activity", 500) == []
    odd_id = "a b?c#d%e"  # a document id may hold any character but /: the URL must carry it whole
    ours.commit([fj.set_write(ours.name(f"odd/{odd_id}"), {"n": 1})])
    assert ours.get(f"odd/{odd_id}") == {"n": 1} == library.document("odd", odd_id).get().to_dict()
    assert [name for name, _version in ours.list_versions("odd", 10)] == [ours.name(f"odd/{odd_id}")]
    firestore.ping(ours)  # a missing document is a healthy answer
    with pytest.raises(firestore.FirestoreError, match="400"):  # the emulator refuses an empty field path
        ours.commit([fj.merge_write(ours.name(doc), {"": 1})])


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


def test_the_auth_emulators_anonymous_and_tenant_accounts_are_refused(auth_emulator: Emulator) -> None:
    """Attack run 73: an anonymous account could own a lock and take an admin's place, though nobody can ever sign
    in to it again; a tenant's account was taken, then found gone by the project's account check."""
    import json
    import urllib.request

    def post(path: str, body: dict[str, Any], version: str = "v1", admin: bool = False) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://{auth_emulator.host}/identitytoolkit.googleapis.com/{version}/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": "Bearer owner"} if admin else {})},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
        return answer

    verifier = IdTokenVerifier(PROJECT_ID, None, emulator=True)
    anonymous = post("accounts:signUp?key=fake", {"returnSecureToken": True})["idToken"]
    with pytest.raises(errors.Unauthenticated) as info:
        verifier.verify(anonymous)
    assert info.value.code == "anonymous_account"
    made = post(
        f"projects/{PROJECT_ID}/tenants", {"displayName": "other-brand", "allowPasswordSignup": True}, "v2", admin=True
    )
    tenant = made.get("tenantId") or made["name"].rsplit("/", 1)[-1]
    account = post(
        "accounts:signUp?key=fake",
        {"email": "t@example.com", "password": "correct-horse-9", "tenantId": tenant, "returnSecureToken": True},
    )
    with pytest.raises(errors.Unauthenticated) as info:
        verifier.verify(account["idToken"])
    assert info.value.code == "wrong_tenant"


def test_a_custom_claim_of_another_type_than_the_services_is_refused_by_name(
    sign_up: Any, auth_emulator: Emulator
) -> None:
    """Attack run 121: an operator's claim set with the Admin SDK as the string "true" (not the JSON true) was in
    every ID token Firebase Auth issued the account since, read as no claim: the operator was 403 not_an_operator
    with nothing saying why. A claim the service reads, of another type, is now 401 ``invalid_claim`` naming it."""
    import json
    import urllib.request

    from tests.devices_world import sign_in

    account = sign_up()
    req = urllib.request.Request(
        f"http://{auth_emulator.host}/identitytoolkit.googleapis.com/v1/projects/{PROJECT_ID}/accounts:update",
        data=json.dumps({"localId": account["localId"], "customAttributes": '{"lockwise_operator": "true"}'}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer owner"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    token = sign_in(auth_emulator.host, account["email"])["idToken"]
    with pytest.raises(errors.Unauthenticated) as info:
        IdTokenVerifier(PROJECT_ID, None, emulator=True).verify(token)
    assert info.value.code == "invalid_claim" and "'lockwise_operator'" in str(info.value)
