"""Firebase ID tokens as production signs them (RS256, Google's keys): what the verifier accepts and refuses.

Pure: keys made here, no emulator (the Auth emulator's unsigned tokens: tests/integration/test_firebase.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import threading
import time
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from lockwise.core import errors, id_tokens
from lockwise.core.id_tokens import GoogleKeys, IdTokenVerifier, StaticKeys

PROJECT_ID = "demo-lockwise"


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


def test_a_session_made_from_a_custom_token_is_refused(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    """Attack run 121: a custom token's session (``createCustomToken`` for any uid) was taken as the uid's own."""
    token = signed(keys["k1"], firebase={"sign_in_provider": "custom", "identities": {}})
    with pytest.raises(errors.Unauthenticated) as info:
        verifier(keys).verify(token)
    assert info.value.code == "custom_token_session"


def test_signed_token_is_accepted(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    assert verifier(keys).verify(signed(keys["k1"])).uid == "uid-123"
    for provider in ("password", "google.com", "phone"):
        token = signed(keys["k1"], firebase={"sign_in_provider": provider, "identities": {}})
        assert verifier(keys).verify(token).uid == "uid-123"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda k: signed(k["k2"], kid="k1"), "invalid_token"),  # signature by the wrong key
        (lambda k: signed(k["k2"], kid="k2"), "invalid_token"),  # unknown key id
        (lambda k: signed(k["k1"], exp=int(time.time()) - 60), "token_expired"),
        (lambda k: signed(k["k1"], aud="demo-other"), "invalid_token"),
        (lambda k: signed(k["k1"], iss="https://evil.example.com"), "invalid_token"),
        (lambda k: signed(k["k1"], sub=""), "invalid_token"),
        (lambda k: signed(k["k1"], sub="a\u0000b"), "invalid_token"),  # PostgreSQL refuses NUL in text: once a 500
        (lambda k: signed(k["k1"], sub="\ud800"), "invalid_token"),  # a lone surrogate: not UTF-8
        (lambda k: signed(k["k1"], sub=["uid"]), "invalid_token"),
        # the uid names the user's Firestore documents (users/{uid}, locks/{id}/access/{uid}): a trailing slash was
        # stripped into another user's (an attack run's uid "V/" wrote users/V), an inner one named a path below
        (lambda k: signed(k["k1"], sub="victim-uid/"), "invalid_token"),
        (lambda k: signed(k["k1"], sub="org/team/carol"), "invalid_token"),
        (lambda k: signed(k["k1"], sub="."), "invalid_token"),
        (lambda k: signed(k["k1"], sub=".."), "invalid_token"),
        (lambda k: signed(k["k1"], sub="__reserved__"), "invalid_token"),
        (lambda k: signed(k["k1"], iat=int(time.time()) + 600), "invalid_token"),
        (lambda k: signed(k["k1"], auth_time=-1e20), "invalid_token"),  # taken as a sign-in time (attack run 58)
        (lambda k: signed(k["k1"], auth_time=0), "invalid_token"),
        # an Identity Platform tenant's account, and an anonymous one (attack run 73)
        (lambda k: signed(k["k1"], firebase={"tenant": "t-1", "sign_in_provider": "password"}), "wrong_tenant"),
        (lambda k: signed(k["k1"], firebase={"sign_in_provider": "anonymous"}), "anonymous_account"),
        (lambda k: signed(k["k1"])[:-4] + "AAAA", "invalid_token"),  # tampered signature
        (lambda k: "not.a.jwt", "invalid_token"),
    ],
)
def test_bad_tokens_are_rejected(keys: dict[str, rsa.RSAPrivateKey], make: Any, code: str) -> None:
    with pytest.raises(errors.Unauthenticated) as info:
        verifier(keys).verify(make(keys))
    assert info.value.code == code


@pytest.mark.parametrize("uid", ["a.b", "%2F", "__x", "x__", "__", "...", "uid#?", "Zo\u00eb \u202e", "u" * 128])
def test_subjects_firestore_takes_as_one_document_id_are_accepted(keys: dict[str, rsa.RSAPrivateKey], uid: str) -> None:
    assert verifier(keys).verify(signed(keys["k1"], sub=uid)).uid == uid


def test_hs256_token_with_the_public_key_as_secret_is_rejected(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    pub = (
        keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forged = jwt.encode({"sub": "x", "aud": PROJECT_ID}, pub.decode()[:40], algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(errors.Unauthenticated):
        verifier(keys).verify(forged)


@pytest.mark.parametrize(("verified", "read"), [(True, True), (False, False), (None, False)])
def test_an_address_is_verified_by_a_json_true_only(
    keys: dict[str, rsa.RSAPrivateKey], verified: object, read: bool
) -> None:
    """``bool()`` of the claim read the string "no" as verified (attack run 58, an unsigned emulator token); one of
    another type is refused (``test_a_claim_the_service_reads_of_another_type_is_refused_by_name``)."""
    assert verifier(keys).verify(signed(keys["k1"], email_verified=verified)).email_verified is read


@pytest.mark.parametrize("email", ["a\u0000@example.com", "\ud800@example.com", "not an address"])
def test_an_email_claim_that_is_not_an_address_is_as_none(keys: dict[str, rsa.RSAPrivateKey], email: object) -> None:
    """Google signs no such claim; a custom token may carry one. The user is the token's subject all the same, with
    no email."""
    user = verifier(keys).verify(signed(keys["k1"], email=email))
    assert user.uid == "uid-123" and user.email is None


@pytest.mark.parametrize(
    ("claims", "named"),
    [
        ({"email_verified": "no"}, "email_verified"),
        ({"email_verified": "true"}, "email_verified"),
        ({"email_verified": 1}, "email_verified"),
        ({"email": ["a@example.com"]}, "email"),  # once reached the email check as a list: a 500
        ({"email": 5}, "email"),
        ({"lockwise_operator": "true"}, "lockwise_operator"),
        ({"lockwise_operator": 1}, "lockwise_operator"),
        ({"firebase": "password"}, "firebase"),  # was read as {}: its tenant and provider unchecked
        ({"firebase": {"sign_in_provider": ["anonymous"]}}, "firebase.sign_in_provider"),
    ],
)
def test_a_claim_the_service_reads_of_another_type_is_refused_by_name(
    keys: dict[str, rsa.RSAPrivateKey], claims: dict[str, Any], named: str
) -> None:
    """Attack run 121: a claim the service reads, of another type than Firebase gives it, was read as if absent
    (an address as none, a verified flag or the operator's claim as false, ``firebase`` as empty, so its tenant and
    sign-in provider went unchecked): custom claims set with the Admin SDK (``setCustomUserClaims``), or a custom
    token's developer claims, collide with them silently. Each is 401 ``invalid_claim`` naming the claim."""
    with pytest.raises(errors.Unauthenticated) as info:
        verifier(keys).verify(signed(keys["k1"], **claims))
    assert info.value.code == "invalid_claim"
    assert f"'{named}'" in str(info.value)


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A certificate of ``key``'s, as Google's securetoken endpoint publishes one."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _certificates(published: dict[str, rsa.RSAPrivateKey]) -> bytes:
    """What Google's securetoken endpoint serves: ``{kid: x509 PEM}``."""
    pems = {kid: _self_signed(key).public_bytes(serialization.Encoding.PEM).decode() for kid, key in published.items()}
    return json.dumps(pems).encode()


def test_made_up_key_ids_fetch_googles_keys_at_most_once_a_minute(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    """Attack run 35: each token naming a key id the cache did not hold fetched Google's certificates again (41
    fetches for 40 tokens), under the lock every verification of the instance waits for. Now such a token is
    refused at once, and the certificates are fetched again for one at most once a minute: a key Google has just
    published is still found within that minute; the cache's own expiry (max-age) is kept."""
    published = {"k1": keys["k1"]}
    fetches: list[float] = []
    clock = [1000.0]

    def fetch(url: str) -> tuple[bytes, int]:
        fetches.append(clock[0])
        return _certificates(published), 21600  # Google's max-age: about 6 hours

    verify = IdTokenVerifier(PROJECT_ID, GoogleKeys(fetch=fetch, clock=lambda: clock[0])).verify
    assert verify(signed(keys["k1"])).uid == "uid-123" and len(fetches) == 1
    for i in range(40):
        with pytest.raises(errors.Unauthenticated):
            verify(signed(keys["k2"], kid=f"made-up-{i}"))
        clock[0] += 0.5  # 40 tokens in 20 s
    assert len(fetches) == 1, "a made-up key id within a minute of the last fetch fetched them again"
    published["k2"] = keys["k2"]  # Google begins signing with a new key
    clock[0] += 40.0  # a minute after the first fetch
    assert verify(signed(keys["k2"], kid="k2")).uid == "uid-123"
    assert len(fetches) == 2
    clock[0] += 21600.0  # the cache expired: fetched again whatever the key
    assert verify(signed(keys["k1"])).uid == "uid-123" and len(fetches) == 3


def test_while_googles_keys_cannot_be_fetched_the_last_ones_verify_and_nobody_waits_for_each_try(
    keys: dict[str, rsa.RSAPrivateKey],
) -> None:
    """A review: once the cache had expired while googleapis.com did not answer, every verification made its own
    fetch and waited for its timeout, one at a time under the instance's lock. A failed fetch is now tried again
    no sooner than ``FAILED_RETRY_S``; meanwhile the keys last fetched verify tokens for up to ``STALE_GRACE_S``
    past their expiry, and with none the answer is 503 at once."""
    clock = [1000.0]
    down = [False]
    fetches: list[float] = []

    def fetch(url: str) -> tuple[bytes, int]:
        fetches.append(clock[0])
        if down[0]:
            raise OSError("googleapis.com did not answer")
        return _certificates({"k1": keys["k1"]}), 3600

    verify = IdTokenVerifier(PROJECT_ID, GoogleKeys(fetch=fetch, clock=lambda: clock[0])).verify
    assert verify(signed(keys["k1"])).uid == "uid-123"
    down[0] = True
    clock[0] += 3600.0  # the cache expired while Google is away
    for _ in range(20):
        assert verify(signed(keys["k1"])).uid == "uid-123"  # the last keys still verify
        clock[0] += 0.25
    assert len(fetches) == 2  # one try in those 5 s, not one a request
    clock[0] += id_tokens.FAILED_RETRY_S
    assert verify(signed(keys["k1"])).uid == "uid-123" and len(fetches) == 3
    clock[0] += id_tokens.STALE_GRACE_S  # too long past their expiry: refused, without waiting for a try each
    with pytest.raises(errors.Unavailable):
        verify(signed(keys["k1"]))
    down[0] = False
    clock[0] += id_tokens.FAILED_RETRY_S
    assert verify(signed(keys["k1"])).uid == "uid-123"  # back


def _certificate_of_an_unknown_curve() -> str:
    """A certificate (PEM) whose key is on a curve the library does not know (prime239v1): it loads, and its key
    raises ``UnsupportedAlgorithm``, no ``ValueError`` (attack run 58's kind)."""
    der = _self_signed(ec.generate_private_key(ec.SECP256R1())).public_bytes(serialization.Encoding.DER)
    odd = der.replace(bytes.fromhex("06082a8648ce3d030107"), bytes.fromhex("06082a8648ce3d030104"))
    return "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(odd).decode() + "-----END CERTIFICATE-----\n"


def test_a_key_of_a_type_the_library_does_not_know_is_skipped_and_the_others_verify(
    keys: dict[str, rsa.RSAPrivateKey],
) -> None:
    """It was a 500 for every request (attack run 58's kind), then a failed fetch that dropped the good keys beside
    it (a review)."""
    published = json.loads(_certificates({"k1": keys["k1"]}))
    body = json.dumps({**published, "k9": _certificate_of_an_unknown_curve()}).encode()
    verify = IdTokenVerifier(PROJECT_ID, GoogleKeys(fetch=lambda url: (body, 3600))).verify
    assert verify(signed(keys["k1"])).uid == "uid-123"
    with pytest.raises(errors.Unauthenticated):
        verify(signed(keys["k2"], kid="k9"))


@pytest.mark.parametrize(
    "failure",
    [
        b"<html>not the certificates</html>",
        b"[]",
        b'{"k1": 1}',
        http.client.IncompleteRead(b"{"),
        http.client.BadStatusLine("nonsense"),
    ],
    ids=["html", "list", "number", "cut_off", "bad_status"],
)
def test_with_no_keys_ever_fetched_a_failure_is_503_and_tried_again_after_a_pause(
    keys: dict[str, rsa.RSAPrivateKey], failure: bytes | Exception
) -> None:
    """Attack run 36: a fetch cut off mid-body or answered in nonsense (http.client's errors are no OSError), or a
    body of JSON that is not ``{key id: certificate}``, was a 500, and every verification fetched again."""
    clock = [1000.0]
    fetches: list[float] = []

    def fetch(url: str) -> tuple[bytes, int]:
        fetches.append(clock[0])
        if isinstance(failure, Exception):
            raise failure
        return failure, 3600

    verify = IdTokenVerifier(PROJECT_ID, GoogleKeys(fetch=fetch, clock=lambda: clock[0])).verify
    for _ in range(5):
        with pytest.raises(errors.Unavailable):
            verify(signed(keys["k1"]))
    assert len(fetches) == 1


def test_a_verification_whose_key_is_at_hand_never_waits_for_a_fetch(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    """Attack run 96: the fetch of Google's keys held the lock every verification takes, so a token with a made-up
    key id, sent by anyone once a minute, held each signed-in user's request on the instance for as long as Google
    took to answer (1.9 s behind a 2 s fetch), and so did every expiry of the cache. A token whose key the keys at
    hand hold (within their grace) is verified meanwhile; one whose key they lack waits for the fetch, and finds a
    key Google has just published."""
    published = {"k1": keys["k1"]}
    clock = [1000.0]
    fetching, answer = threading.Event(), threading.Event()

    def fetch(url: str) -> tuple[bytes, int]:
        fetching.set()
        answer.wait(10)  # Google slow to answer, until the test lets it
        return _certificates(published), 3600

    verify = IdTokenVerifier(PROJECT_ID, GoogleKeys(fetch=fetch, clock=lambda: clock[0])).verify
    answer.set()
    assert verify(signed(keys["k1"])).uid == "uid-123"
    outcomes: list[object] = []
    for moved, kid, new in ((61.0, "made-up", "new-1"), (3600.0, "k1", "new-2")):  # a key id unknown, then expiry
        clock[0] += moved
        fetching.clear()
        answer.clear()
        published[new] = keys["k2"]  # Google begins signing with a new key
        outcomes.clear()

        def fetches(kid: str = kid) -> None:
            try:
                outcomes.append(verify(signed(keys["k2"] if kid == "made-up" else keys["k1"], kid=kid)).uid)
            except errors.Unauthenticated as exc:
                outcomes.append(exc.code)

        fetcher = threading.Thread(target=fetches)
        fetcher.start()
        assert fetching.wait(5)
        started = time.monotonic()
        assert verify(signed(keys["k1"])).uid == "uid-123"  # the key at hand: no wait for Google
        assert time.monotonic() - started < 2.0, "a verification with its key at hand waited for the fetch"
        waiter = threading.Thread(target=lambda new=new: outcomes.append(verify(signed(keys["k2"], kid=new)).uid))
        waiter.start()
        time.sleep(0.2)
        assert waiter.is_alive(), "a token whose key the keys at hand lack did not wait for the fetch"
        answer.set()
        fetcher.join(5)
        waiter.join(5)
        assert sorted(map(str, outcomes)) == sorted([("invalid_token" if kid == "made-up" else "uid-123"), "uid-123"])
