"""Firebase ID tokens for app users, verified with PyJWT against Google's published securetoken keys (RS256).

Checks audience, issuer, expiry, issue time and subject as Firebase documents. The Auth emulator issues unsigned
tokens; they are accepted only when ``FIREBASE_AUTH_EMULATOR_HOST`` is set, which the settings refuse in production
mode. Its own module because PyJWT and the x509 parser cost ~0.06 s to import: a function that serves only locks and
trusted callers (verify) never loads them; one that serves the app loads them on its first app request.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509 import load_pem_x509_certificate

from lockwise.core import errors, google_api, inputs
from lockwise.core.auth import OPERATOR_CLAIM, User

log = logging.getLogger("lockwise.core.id_tokens")

GOOGLE_CERTS_URL = "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
LEEWAY_S = 5
#: a key id the cached certificates do not name fetches them again at most this often (``GoogleKeys``)
UNKNOWN_KEY_REFETCH_S = 60.0
#: after a failed fetch of them, the next is tried no sooner than this (``GoogleKeys``)
FAILED_RETRY_S = 10.0
#: keys past their cache's expiry still verify tokens this long while they cannot be fetched again
STALE_GRACE_S = 3600.0


#: the claims the service reads, each of the one JSON type Firebase gives it: one of another type is 401
#: ``invalid_claim`` (``IdTokenVerifier``). A custom claim set with the Admin SDK, or a custom token's developer claim,
#: of one of these names collides with it: it was read as if absent (attack run 121)
CLAIM_TYPES: Mapping[str, tuple[type, str]] = {
    "email": (str, "a string"),
    "email_verified": (bool, "true or false"),
    OPERATOR_CLAIM: (bool, "true or false"),
    "firebase": (dict, "an object"),
}
#: the same for the ``firebase`` object's
FIREBASE_CLAIM_TYPES: Mapping[str, tuple[type, str]] = {"sign_in_provider": (str, "a string")}


def _check_types(claims: Mapping[str, Any], types: Mapping[str, tuple[type, str]], prefix: str = "") -> None:
    """401 ``invalid_claim`` naming the first of ``types``'s claims ``claims`` holds of another type (null: absent)."""
    for name, (kind, described) in types.items():
        value = claims.get(name)
        if value is not None and not isinstance(value, kind):
            raise errors.Unauthenticated(
                f"ID token's claim '{prefix}{name}' is not {described}: a custom claim of that name, set with the"
                " Admin SDK or in a custom token, is not the service's",
                code="invalid_claim",
            )


class KeySource(Protocol):
    def key_for(self, kid: str) -> RSAPublicKey | None: ...


class StaticKeys:
    """Fixed ``{kid: public key}``: for tests and for operators who pin keys."""

    def __init__(self, keys: Mapping[str, RSAPublicKey]) -> None:
        self._keys = dict(keys)

    def key_for(self, kid: str) -> RSAPublicKey | None:
        return self._keys.get(kid)


class GoogleKeys:
    """Google's securetoken x509 certificates, cached for as long as their ``Cache-Control`` allows.

    A token naming a key the cache does not hold makes it fetch them again at most once in ``UNKNOWN_KEY_REFETCH_S``
    (a key Google has just begun signing with is published hours before it is used); otherwise it is refused at
    once. Before, each one fetched them, one at a time under the lock every verification takes: tokens with made-up
    key ids, sent by anyone without an account, made each instance call googleapis.com once a request while
    signed-in users waited behind those calls (attack run 35: 41 fetches for 40 tokens).

    A fetch that fails is not tried again for ``FAILED_RETRY_S``; meanwhile, and for up to ``STALE_GRACE_S`` past
    their expiry, the keys last fetched still verify tokens (a key stays published for days after Google stops
    signing with it), and without any the answer is 503 ``auth_keys_unavailable`` at once: every verification had
    waited for its own fetch's 5 s timeout, one at a time, while googleapis.com did not answer (a review)."""

    def __init__(
        self,
        url: str = GOOGLE_CERTS_URL,
        fetch: Callable[[str], tuple[bytes, int]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._fetch = fetch or _fetch_with_max_age
        self._clock = clock
        self._keys: dict[str, RSAPublicKey] = {}
        self._expires = 0.0  # the cache's end: after it the next verification fetches (the others: ``key_for``)
        self._fetched = -UNKNOWN_KEY_REFETCH_S  # the last fetch's start
        self._failed = -FAILED_RETRY_S  # the last failed fetch's start
        self._lock = threading.Lock()  # the state above: held for no I/O
        self._fetching = threading.Lock()  # one fetch at a time

    def key_for(self, kid: str) -> RSAPublicKey | None:
        """The key ``kid`` names (None: none), fetched again when due. A fetch is one thread's: a verification whose
        key the keys at hand hold (within ``STALE_GRACE_S`` of their expiry) never waits for it, one without does.
        The fetch held the lock every verification takes: a token with a made-up key id, sent by anyone once a
        minute, held every signed-in user's request of the instance for as long as Google took to answer, up to its
        timeout (attack run 96: 1.9 s behind a 2 s fetch), and so did each expiry of the cache."""
        at_hand = self._at_hand(kid)
        # one whose key is not at hand waits for a fetch under way too: it may bring a key Google has just published
        wanted = self._due(kid) or (not at_hand and self._fetching.locked())
        if wanted and self._fetching.acquire(blocking=not at_hand):
            try:
                if self._due(kid):  # not fetched while this one waited
                    self._fetch_now()
            finally:
                self._fetching.release()
        with self._lock:
            now = self._clock()
            if now >= self._expires + STALE_GRACE_S or (now >= self._expires and not self._keys):
                raise errors.Unavailable("token keys unavailable", code="auth_keys_unavailable")
            return self._keys.get(kid)

    def _due(self, kid: str) -> bool:
        """Whether the keys are to be fetched for ``kid`` now: expired, or not naming it and not fetched for a minute,
        and no fetch failed in the last ``FAILED_RETRY_S``."""
        with self._lock:
            now = self._clock()
            due = now >= self._expires or (kid not in self._keys and now >= self._fetched + UNKNOWN_KEY_REFETCH_S)
            return due and now >= self._failed + FAILED_RETRY_S

    def _at_hand(self, kid: str) -> bool:
        """Whether the keys at hand verify ``kid``'s tokens without a fetch (they name it, within their grace)."""
        with self._lock:
            return kid in self._keys and self._clock() < self._expires + STALE_GRACE_S

    def _fetch_now(self) -> None:
        """Fetch the keys (outside ``_lock``: verifications with a key at hand go on meanwhile)."""
        with self._lock:
            now = self._fetched = self._clock()
        try:
            keys, expires = self._fetched_keys(now)
        except (OSError, ValueError, RecursionError, http.client.HTTPException) as exc:  # unreachable, cut off, or
            # not the certificates' JSON (nested past the parser's depth too: attack run 92): each a failed fetch,
            # paced (attack run 36: http.client's own errors and JSON of another shape were 500s, and every
            # verification fetched again), from when it ended: a slow one's waiters fetched again each, one after
            # another (attack run 92: 3 verifications, 12, 24 and 36 s)
            with self._lock:
                self._failed = self._clock()
            log.warning("Google's token keys could not be fetched", extra={"fields": {"error": repr(exc)}})
            return
        with self._lock:
            self._keys, self._expires = keys, expires

    def _fetched_keys(self, now: float) -> tuple[dict[str, RSAPublicKey], float]:
        body, max_age = self._fetch(self._url)
        published = json.loads(body)
        if not isinstance(published, dict) or not all(isinstance(pem, str) for pem in published.values()):
            raise ValueError("not a {key id: certificate} object")
        keys = {}
        for key_id, pem in published.items():
            try:
                public = load_pem_x509_certificate(pem.encode()).public_key()
            except UnsupportedAlgorithm:  # a key of a type the library does not know: not one we verify with, and
                # the others still are (it failed the whole fetch: a review)
                continue
            if isinstance(public, RSAPublicKey):
                keys[key_id] = public
        return keys, now + max(60, max_age)


#: how long fetching Google's token keys may take, whole (each socket read: ``FETCH_TIMEOUT_S`` too)
FETCH_TIMEOUT_S = 5.0
#: the most of the keys' answer read (a few kilobytes: a handful of certificates)
MAX_KEYS_BYTES = 1024 * 1024


def _fetch_with_max_age(url: str) -> tuple[bytes, int]:
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as resp:
        match = re.search(r"max-age=(\d+)", resp.headers.get("Cache-Control", ""))
        return google_api.read_answer(resp, deadline, MAX_KEYS_BYTES), int(match.group(1)) if match else 3600


class IdTokenVerifier:
    """Verifies Firebase ID tokens for one project."""

    def __init__(
        self,
        project_id: str,
        keys: KeySource | None,
        *,
        emulator: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keys is None and not emulator:
            raise ValueError("a key source is required outside emulator mode")
        self.project_id = project_id
        self.keys = keys
        self.emulator = emulator
        self.clock = clock

    def verify(self, token: str) -> User:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise errors.Unauthenticated("malformed ID token", code="invalid_token") from exc
        alg = header.get("alg")
        try:
            if self.emulator and alg == "none":
                claims = jwt.decode(token, options={"verify_signature": False})
                self._check_times(claims)
            else:
                claims = self._decode_signed(token, header)
        except jwt.ExpiredSignatureError as exc:
            raise errors.Unauthenticated("ID token has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise errors.Unauthenticated(f"ID token rejected: {exc}", code="invalid_token") from exc
        self._check_claims(claims)
        return User(
            uid=str(claims["sub"]),
            email=inputs.email_key(claims.get("email")),  # lower-cased; not an address: as if it had none
            # only a JSON true: a string "no" was read as verified (the emulator signs no token: attack run 58)
            email_verified=claims.get("email_verified") is True,
            claims=claims,
        )

    def _decode_signed(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        if header.get("alg") != "RS256":
            raise jwt.InvalidAlgorithmError("ID tokens must be RS256-signed")
        kid = header.get("kid")
        key = self.keys.key_for(str(kid)) if (self.keys is not None and kid) else None
        if key is None:
            raise jwt.InvalidKeyError("ID token signed with an unknown key")
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=["RS256"],
            audience=self.project_id,
            issuer=f"https://securetoken.google.com/{self.project_id}",
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp + LEEWAY_S < now:
            raise jwt.ExpiredSignatureError("expired")

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        if claims.get("aud") != self.project_id:
            raise errors.Unauthenticated("ID token is for another project", code="wrong_audience")
        if claims.get("iss") != f"https://securetoken.google.com/{self.project_id}":
            raise errors.Unauthenticated("ID token has the wrong issuer", code="invalid_token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= 128 or not inputs.is_text(sub):
            raise errors.Unauthenticated("ID token has no valid subject", code="invalid_token")
        if not inputs.is_document_id(sub):  # the uid names the user's Firestore documents: it must name only those
            raise errors.Unauthenticated(
                "ID token's subject cannot name an account here (a '/', '.', '..' or '__name__')", code="invalid_token"
            )
        now = self.clock()
        iat, auth_time = claims.get("iat"), claims.get("auth_time", claims.get("iat"))
        if not isinstance(iat, int | float) or iat > now + LEEWAY_S:
            raise errors.Unauthenticated("ID token issued in the future", code="invalid_token")
        if not isinstance(auth_time, int | float) or auth_time > now + LEEWAY_S:
            raise errors.Unauthenticated("ID token authenticated in the future", code="invalid_token")
        if auth_time < inputs.EARLIEST.timestamp():  # -1e20 was taken as a sign-in time (attack run 58)
            raise errors.Unauthenticated("ID token authenticated before 2000", code="invalid_token")
        # of another type, each was read as if absent: an address as none, a flag as false, ``firebase`` as {} (its
        # tenant and provider unchecked) (attack run 121)
        _check_types(claims, CLAIM_TYPES)
        firebase = claims.get("firebase") or {}
        _check_types(firebase, FIREBASE_CLAIM_TYPES, "firebase.")
        # an Identity Platform tenant's user: accepted, then not found by the project's account check (which marked
        # it gone and ended its locks), and a tenant's admins could grant it the operator's claim (attack run 73)
        if firebase.get("tenant") is not None:
            raise errors.Unauthenticated(
                "ID token of a tenant's account: this service serves none", code="wrong_tenant"
            )
        # an anonymous account has nothing to sign in with again: a lock it owned, or an admin's place, was held by
        # an account nobody could ever use or recover (attack run 73)
        if firebase.get("sign_in_provider") == "anonymous":
            raise errors.Unauthenticated(
                "anonymous accounts cannot use locks: sign in with an address or a provider", code="anonymous_account"
            )
        # the app signs in with an address or a provider, never a custom token: one minted for any uid (by whatever
        # holds a key that signs for the project's Admin SDK) was that account, owner of its locks, with nothing
        # changed on the account to show it (attack run 121)
        if firebase.get("sign_in_provider") == "custom":
            raise errors.Unauthenticated(
                "sessions made from custom tokens are not this service's: sign in with an address or a provider",
                code="custom_token_session",
            )


def verifier_for(project_id: str, auth_emulator_host: str | None) -> IdTokenVerifier:
    if auth_emulator_host:
        return IdTokenVerifier(project_id, None, emulator=True)
    return IdTokenVerifier(project_id, GoogleKeys())
