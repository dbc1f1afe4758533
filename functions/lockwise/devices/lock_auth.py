"""Requests signed by a lock with its own Ed25519 key (the lock generated it; only the public half is stored).

Headers::

    X-LockWise-Lock:       <lock id>
    X-LockWise-Timestamp:  <unix seconds>
    X-LockWise-Nonce:      <16-64 chars of [A-Za-z0-9_-]>
    X-LockWise-Signature:  base64(Ed25519(key, "LOCKWISE-V1\\n" METHOD "\\n" PATH[?QUERY] "\\n" TIMESTAMP "\\n"
                                            NONCE "\\n" CONTENT-TYPE "\\n" X-SAMPLE-RATE "\\n" hex(SHA-256(body))))

Everything that changes how the body is read (query, content type, sample-rate header) is signed with it.

The server refuses an unknown lock, a bad signature, a timestamp outside the allowed clock skew, and a nonce it has
already seen (replay). Nonces are kept for twice the skew and the clocks' margin (``nonces_kept_s``; then deleted
by the relay's flush: ``lockwise.core.retention``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from typing import TYPE_CHECKING, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lockwise.core import errors, inputs
from lockwise.core.config import Settings
from lockwise.core.db import Connection, Database
from lockwise.devices import sliding_window

if TYPE_CHECKING:
    from werkzeug.datastructures import Headers

PREFIX = "LOCKWISE-V1"
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
#: unix seconds as the firmware contract gives them: digits only (``int()`` also takes a sign, spaces and "_")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


def message(
    method: str,
    target: str,
    timestamp: str,
    nonce: str,
    body: bytes,
    content_type: str = "",
    sample_rate: str = "",
    *,
    body_sha256: str | None = None,
) -> bytes:
    """The string a lock signs; ``body_sha256``: the body's SHA-256 (hex) when the caller has it already."""
    digest = hashlib.sha256(body).hexdigest() if body_sha256 is None else body_sha256
    return "\n".join([PREFIX, method.upper(), target, timestamp, nonce, content_type, sample_rate, digest]).encode()


#: the keys a lock's request is checked against: its active key and its most recent revoked ones
KEYS_KEPT = 4
#: the key a request's signature is also checked against for each of those its lock id lacks (one no lock holds: the
#: public half of a key made at start-up), so that every request costs the same checks: a lock id's answer took
#: ~165 µs more per key it held (752 µs unknown, 917 µs paired, 1,256 µs with four keys), telling a prober which
#: ids were paired, and how often (attack run 75)
_NOBODYS_KEY = Ed25519PrivateKey.generate().public_key().public_bytes_raw()


def _verifies(public_key: bytes, signature: bytes, signed: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signed)
    except InvalidSignature:
        return False
    return True


def sign_headers(
    key: Ed25519PrivateKey,
    lock_id: str,
    method: str,
    target: str,
    body: bytes,
    *,
    content_type: str = "",
    sample_rate: str = "",
    now: float | None = None,
) -> dict[str, str]:
    """What a lock sends with a request (used by the simulated lock and the tests); ``target`` is path[?query]."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(18)
    signature = key.sign(message(method, target, timestamp, nonce, body, content_type, sample_rate))
    headers = {
        "X-LockWise-Lock": lock_id,
        "X-LockWise-Timestamp": timestamp,
        "X-LockWise-Nonce": nonce,
        "X-LockWise-Signature": base64.b64encode(signature).decode(),
    }
    if content_type:
        headers["Content-Type"] = content_type
    if sample_rate:
        headers["X-Sample-Rate"] = sample_rate
    return headers


#: the most a function instance's clock may be off the database's: a request's timestamp is judged on the instance's,
#: its nonce kept and pruned on the database's (NTP keeps them milliseconds apart; this is the margin for worse)
CLOCKS_APART_S = 30


def nonces_kept_s(settings: Settings) -> int:
    """How long a lock's request nonces are kept: so that a request replayed within its accepted window always meets
    its nonce, twice the skew and the most two instances' clocks may differ (``CLOCKS_APART_S`` each way): kept just
    twice the skew, a nonce taken by an instance 2 s ahead was pruned while its timestamp was still inside the window
    of one on the database's clock, which took the replay (attack run 69)."""
    return 2 * (settings.lock_request_skew_s + CLOCKS_APART_S)


class Signer(NamedTuple):
    """Who signed a lock's request: the lock, and its credential (the device paired with it) whose key signed.

    What the request does is done for that device, and only while its credential is the lock's live one
    (``hold``, or the same condition in the caller's own statement): checked once, at the signature, a request
    of the replaced device that a re-pairing overtook was carried out as the new device's (attack run 50: a voice
    heard by a stolen device as the owner paired its replacement was granted, and its unlock went to the new
    device; its certificate renewal was issued for the new device's broker identity, which then took the new
    device's session and commands; its config was the new device's)."""

    lock_id: str
    credential_id: str


def signed_by(
    db: Database,
    headers: Headers,
    method: str,
    target: str,
    body: bytes,
    settings: Settings,
    *,
    body_sha256: str | None = None,
) -> Signer:
    """Who signed this request (``authenticate`` with the function's skew and per-minute limit). Its nonce and its
    count of the minute commit at once, on a connection of their own: a refusal after this (bad audio, a bad CSR, a
    renewal limit) still counts the request, and no transaction is held while the caller works."""
    with db.connection() as con:
        return authenticate(
            con,
            headers,
            method,
            target,
            body,
            skew_s=settings.lock_request_skew_s,
            per_minute=settings.lock_requests_per_minute,
            body_sha256=body_sha256,
            restore_pending=settings.restore_pending,
        )


def restored_pending() -> errors.Unavailable:
    """While what a database restore took back is not yet done again (``lockwise.devices.restored``): the revocations
    since the restore point, a member's removal among them, are not in the database (attack run 85)."""
    return errors.Unavailable(
        "the back-end is being brought back from a restored database; try again shortly",
        code="restore_in_progress",
        retry_after_s=30,
    )


def deleted_lock() -> errors.Unauthenticated:
    """What a lock hears when it was deleted (or its key revoked) after ``authenticate`` passed its request: the
    answer a deleted lock gets (401 ``unknown_lock``), not the foreign key its request's rows would meet."""
    return errors.Unauthenticated("unknown lock", code="unknown_lock")


def live_sql(alias: str) -> str:
    """SQL that holds while the ``lock_credentials`` row ``alias`` is the signer's (parameters ``:c``, ``:l``) and
    the lock's live one."""
    return f"{alias}.id = CAST(:c AS uuid) AND {alias}.lock_id = CAST(:l AS uuid) AND {alias}.revoked_at IS NULL"


def hold(con: Connection, signer: Signer) -> None:
    """Hold the signer's lock (its row ``FOR KEY SHARE``, as a row of the lock's would hold it) and its credential
    until the transaction ends, or 401 ``unknown_lock`` when the credential is no longer the lock's live one (the
    lock deleted, or paired again since the signature was checked). A re-pairing, which revokes it, waits for the
    transaction: what the request does is then done while its device is the lock's, and the pairing that follows
    sees it (its open commands failed "paired again"). The lock's row first, as a deletion takes it before its
    credentials (the credential first deadlocked with a deletion: attack run 51)."""
    if not con.run("SELECT 1 FROM locks WHERE id = CAST(:l AS uuid) FOR KEY SHARE", l=signer.lock_id):
        raise deleted_lock()
    live = f"SELECT 1 FROM lock_credentials c WHERE {live_sql('c')} FOR SHARE"
    if not con.run(live, c=signer.credential_id, l=signer.lock_id):
        raise deleted_lock()


def authenticate(
    con: Connection,
    headers: Headers,
    method: str,
    target: str,
    body: bytes,
    *,
    skew_s: int,
    per_minute: int,
    now: float | None = None,
    body_sha256: str | None = None,
    restore_pending: bool = False,
) -> Signer:
    """Who signed this request (``Signer``); records its nonce. Raises ``Unauthenticated`` otherwise, and
    ``RateLimited`` (429 ``lock_rate_limited``) past ``per_minute`` signed requests of the lock in any 60 s
    (the nonce is recorded, so the caller authenticates outside any transaction its later errors roll back): a door
    hears a few people a minute, and a lock (or its stolen key) sending 150 a second filled the attempt log
    and the app's feed (attack run)."""
    now = time.time() if now is None else now
    lock_id = headers.get("X-LockWise-Lock", "")
    timestamp = headers.get("X-LockWise-Timestamp", "")
    nonce = headers.get("X-LockWise-Nonce", "")
    signature_b64 = headers.get("X-LockWise-Signature", "")
    if not (lock_id and timestamp and nonce and signature_b64):
        raise errors.Unauthenticated("request is not signed by a lock", code="missing_lock_signature")
    if inputs.canonical_uuid(lock_id) != lock_id:  # the canonical form, lower case (what the signature covers)
        raise errors.Unauthenticated("malformed lock id", code="bad_lock_signature")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise errors.Unauthenticated("malformed timestamp", code="bad_lock_signature")
    ts = int(timestamp)
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise errors.Unauthenticated("malformed lock signature headers", code="bad_lock_signature") from exc
    if not _NONCE_RE.fullmatch(nonce):
        raise errors.Unauthenticated("malformed nonce", code="bad_lock_signature")
    if abs(now - ts) > skew_s:
        raise errors.Unauthenticated("request timestamp outside the allowed clock skew", code="stale_request")
    signed = message(
        method,
        target,
        timestamp,
        nonce,
        body,
        headers.get("Content-Type", ""),
        headers.get("X-Sample-Rate", ""),
        body_sha256=body_sha256,
    )
    # the active key first, then the most recent revoked ones: a lock id with no credential and a wrong key answer
    # alike (the API does not tell a prober which lock ids exist); only a lock that proves it held a revoked key
    # learns it must pair again
    # and the latest restore's fence (``lockwise.devices.restored``): a request dated before it may have had its
    # nonce taken back with the restore (one captured in its last minute was taken again: attack run 83)
    keys = con.run(
        "SELECT id::text, signing_public_key, revoked_at IS NULL,"
        " (SELECT CAST(EXTRACT(EPOCH FROM max(fenced_at)) AS float8) FROM database_restores),"
        " EXISTS (SELECT 1 FROM database_restores WHERE done_at IS NULL)"
        " FROM lock_credentials WHERE lock_id = CAST(:l AS uuid)"
        " ORDER BY revoked_at IS NULL DESC, revoked_at DESC LIMIT :k",
        l=lock_id,
        k=KEYS_KEPT,
    )
    checked = [(c, active, _verifies(bytes(key), signature, signed)) for c, key, active, _, _ in keys]  # all
    for _ in range(KEYS_KEPT - len(keys)):
        _verifies(_NOBODYS_KEY, signature, signed)
    verified = next(((c, active) for c, active, good in checked if good), None)
    if verified is None:
        raise errors.Unauthenticated("bad lock signature", code="bad_lock_signature")
    credential_id, active = verified
    if not active:
        raise errors.Unauthenticated("this lock's key was revoked: pair it again", code="unknown_lock")
    fenced_at, restoring = keys[0][3], keys[0][4]
    if fenced_at is not None and ts < int(fenced_at):  # a lock's time is in whole seconds
        raise errors.Unauthenticated("request dated before the database was restored", code="stale_request")
    if restoring or restore_pending:  # a member removed since the restore point would be let in by voice (run 85)
        raise restored_pending()
    # the minute's count raised with the nonce, in the nonce's round trip; a nonce already seen counts nothing (one
    # captured request replayed 120 times filled its lock's minute: attack run 20). Every part reads the snapshot
    # from before the statement, so ``seen`` is the nonce's state before this request. The last 60 s are counted as
    # this clock minute's requests and the previous minute's in the share of it still within them (a sliding
    # window): counted per clock minute, twice the limit passed in a few seconds across a minute's turn (attack run
    # 41).
    seen, counted, inserted, current, previous, elapsed = con.run(
        "WITH seen AS (SELECT 1 FROM lock_request_nonces WHERE lock_id = CAST(:l AS uuid) AND nonce = :n),"
        " span AS (SELECT coalesce(sum(n) FILTER (WHERE minute = date_trunc('minute', now())), 0) AS current,"
        " coalesce(sum(n) FILTER (WHERE minute < date_trunc('minute', now())), 0) AS previous,"
        " EXTRACT(EPOCH FROM now() - date_trunc('minute', now())) AS elapsed FROM lock_request_counts"
        " WHERE lock_id = CAST(:l AS uuid) AND minute >= date_trunc('minute', now()) - interval '1 minute'),"
        " carried AS (SELECT previous * (1 - elapsed / 60) AS n FROM span),"
        " slot AS (INSERT INTO lock_request_counts (lock_id, minute)"
        " SELECT CAST(:l AS uuid), date_trunc('minute', now()) WHERE NOT EXISTS (SELECT 1 FROM seen)"
        " AND (SELECT n FROM carried) + 1 <= :most"
        " ON CONFLICT (lock_id, minute) DO UPDATE SET n = lock_request_counts.n + 1"
        " WHERE lock_request_counts.n + 1 + (SELECT n FROM carried) <= :most RETURNING n),"
        " fresh AS (INSERT INTO lock_request_nonces (lock_id, nonce) SELECT CAST(:l AS uuid), :n FROM slot"
        " ON CONFLICT DO NOTHING RETURNING 1)"
        " SELECT (SELECT count(*) FROM seen), (SELECT count(*) FROM slot), (SELECT count(*) FROM fresh), current,"
        " previous, CAST(elapsed AS float8) FROM span",
        l=lock_id,
        n=nonce,
        most=per_minute,
    )[0]
    if seen:
        raise errors.Unauthenticated("replayed request", code="replayed_request")
    if not counted:  # the lock's last 60 s are full: nothing recorded (atomic, so a parallel burst gets no more)
        raise errors.RateLimited(
            f"this lock sent {per_minute} signed requests in the last minute; try again shortly",
            retry_after_s=sliding_window.wait_s(int(current), int(previous), float(elapsed), per_minute),
            code="lock_rate_limited",
        )
    if not inserted:
        raise errors.Unauthenticated("replayed request", code="replayed_request")
    return Signer(lock_id, str(credential_id))
