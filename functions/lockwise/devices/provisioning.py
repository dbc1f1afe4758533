"""Pairing: a one-time, short-lived code the owner's app hands to the lock, redeemed once for the lock's credentials.

The lock sends the public half of an Ed25519 key it generated (it signs the lock's HTTP requests) and a CSR for an EC
P-256 key it generated (its TLS key towards the broker); the server answers with a new broker identity and a client
certificate for it (``lockwise.devices.lock_certs``). PostgreSQL keeps only public keys and the certificate's
serial, so a dump lets nobody impersonate the lock. Redeeming a new code revokes the lock's previous credentials:
their identity's topics go dead and their certificate cannot be renewed. ``renew`` issues a new certificate for the
active identity (before expiry, and once for credentials paired with a broker password, which the broker no longer
accepts).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lockwise.core import audit, errors, mirror, quotas, retention, users
from lockwise.core.auth import User
from lockwise.core.db import Connection, Database, clock
from lockwise.devices import command_outcomes, ed25519_points, lock_auth, lock_certs, topics, transfer_offers

log = logging.getLogger("lockwise.devices.provisioning")

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O/1/I
CODE_LENGTH = 24  # ~120 bits


def new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def _hash(code: str) -> bytes:
    normalised = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(normalised.encode()).digest()


def issue(con: Connection, lock_id: str, owner: User, ttl_s: int, per_day: int) -> tuple[str, dt.datetime]:
    """A fresh one-time code for ``lock_id``; earlier unredeemed codes of the lock stop working. Its ``owner`` (the
    caller: ``users.hold_caller``) gets at most
    ``per_day`` in any 24 hours, over all their locks, deleted ones too (then 429 ``pairing_limit``): each pairing
    and each deletion of a paired lock revokes a credential, an entry in the public revocation list (attack run: an
    owner re-pairing in a loop listed 1,630 in 20 s)."""
    users.hold_caller(con, owner)
    uid = owner.uid
    quotas.take(
        con,
        "pairing_issues",
        uid,
        per_day,
        message=f"you were given {per_day} pairing codes in the last 24 hours; pair again later",
        code="pairing_limit",
    )
    close_codes(con, lock_id)
    code = new_code()
    rows = con.run(
        "INSERT INTO provisioning_codes (code_hash, lock_id, created_by, expires_at, issuer_signed_in_at)"
        " VALUES (:h, CAST(:l AS uuid), :u, now() + make_interval(secs => :ttl), :session) RETURNING expires_at",
        h=_hash(code),
        l=lock_id,
        u=uid,
        ttl=ttl_s,
        session=users.signed_in_at(owner),
    )
    audit.record(con, audit.user_actor(uid), "provisioning.issue", "ok", lock_id=lock_id)
    return code, rows[0][0]


def codes_left(con: Connection, owner: User, per_day: int) -> bool:
    """Whether ``owner`` (the caller, whose row is held: ``users.hold_caller``) may be given one more code now
    (``issue`` counts it)."""
    return quotas.day_wait(con, "pairing_issues", "user_uid", owner.uid, per_day) == 0


def close_codes(con: Connection, lock_id: str) -> None:
    """End the lock's unredeemed codes now (a new code is issued, or the lock changes owner)."""
    # the statement's time, not the transaction's: a code issued by a request that began after this one but held the
    # owner's row first is younger than this transaction's now() (its expiry may not precede its creation)
    con.run(
        "UPDATE provisioning_codes SET expires_at = greatest(statement_timestamp(), created_at + interval '1 ms')"
        " WHERE lock_id = CAST(:l AS uuid) AND redeemed_at IS NULL AND expires_at > statement_timestamp()",
        l=lock_id,
    )


@dataclass(frozen=True)
class Certificate:
    """A lock's broker certificate and where to use it."""

    identity: str  # the certificate's common name: the MQTT username and client id
    pem: str
    ca_pem: str  # the lock CA's certificate (the chain up to what the broker trusts)
    not_after: dt.datetime
    issued_at: dt.datetime  # on the database's clock (``_certify``)

    def public(self) -> dict[str, Any]:
        return {
            "certificate": self.pem,
            "ca_certificate": self.ca_pem,
            "expires_at": self.not_after.isoformat(),
            # renew once half the lifetime is gone: a lock that is offline for a while still has time
            "renew_after": (self.issued_at + (self.not_after - self.issued_at) / 2).isoformat(),
        }


@dataclass(frozen=True)
class Credentials:
    lock_id: str
    certificate: Certificate

    def public(self, host: str, port: int, server_public_key: str, command_ttl_s: int) -> dict[str, Any]:
        identity = self.certificate.identity
        return {
            "lock_id": self.lock_id,
            "mqtt": {
                "host": host,
                "port": port,
                "tls": True,
                "client_id": identity,
                "topics": lock_topics(identity),
                **self.certificate.public(),
            },
            "server_public_key": server_public_key,
            "command_ttl_s": command_ttl_s,
        }


def lock_topics(identity: str) -> dict[str, str]:
    return {
        "commands": topics.commands(identity),
        "state": topics.state(identity),
        "acks": topics.acks(identity),
        "status": topics.status(identity),
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
    # OpenSSL verifies with any 32 bytes: the identity's encoding takes one signature for every message (attack run)
    if not ed25519_points.usable_public_key(raw):
        raise errors.BadRequest(
            "public_key is not a point of the curve, or one of small order", code="invalid_public_key"
        )
    return raw


@dataclass(frozen=True)
class Reserved:
    """A pairing attempt as ``reserve_pairing_attempt`` found its source: counted (its row, ``attempt_id``), or, the
    source's hour full, not counted and answered ``past_limit`` unless its code pairs."""

    attempt_id: int | None
    past_limit: errors.RateLimited | None = None


def reserve_pairing_attempt(con: Connection, source: str, limit: int) -> Reserved:
    """Count a pairing attempt from ``source`` before its code is tried (its row's id); when ``limit`` were counted
    in the last hour nothing is counted, and the attempt is answered 429 ``too_many_pairing_attempts``
    (``Retry-After``: until the oldest of them leaves it) unless its code pairs (``pair``). Counting first makes the
    limit exact under a parallel burst (checking, then counting the failure after the code was tried, let 22 wrong
    codes through a limit of 20); the source's attempts are counted one request at a time (an advisory lock on it,
    until the caller's transaction ends). A wrong code leaves it counted; any other outcome gives it back
    (``release_pairing_attempt``). One row an attempt: counted per clock hour, 40 passed in seconds across the
    hour's turn, and as this hour's count and a share of the last one's, 39 in one 60 minutes (attack run 45)."""
    con.run("SELECT pg_advisory_xact_lock(hashtextextended('pairing attempts from ' || :s, 0))", s=source)
    ((counted, wait),) = con.run(
        "WITH recent AS (SELECT at FROM pairing_attempts WHERE source = :s AND at > now() - interval '1 hour'"
        " ORDER BY at DESC LIMIT :n)"
        " SELECT count(*), CAST(ceil(EXTRACT(EPOCH FROM min(at) + interval '1 hour' - now())) AS int) FROM recent",
        s=source,
        n=limit,
    )
    if int(counted) >= limit:
        return Reserved(
            None,
            errors.RateLimited(
                "too many wrong pairing codes from this address; try later",
                retry_after_s=max(1, int(wait)),
                code="too_many_pairing_attempts",
            ),
        )
    ((attempt_id,),) = con.run("INSERT INTO pairing_attempts (source) VALUES (:s) RETURNING id", s=source)
    return Reserved(int(attempt_id))


def release_pairing_attempt(con: Connection, attempt_id: int) -> None:
    """Give back an attempt counted by ``reserve_pairing_attempt`` whose code was not wrong (paired, or refused for
    another reason, such as a bad CSR)."""
    con.run("DELETE FROM pairing_attempts WHERE id = :i", i=attempt_id)


def pair(
    db: Database,
    source: str,
    body: dict[str, Any],
    issuing: lock_certs.Issuing,
    failures_per_hour: int,
) -> Credentials:
    """A lock at ``source`` (its address's block, ``http.Ctx.client_network``) pairs with the code, key and CSR of
    ``body``: a wrong code counts against the block, and so does a signing key another lock holds (409
    ``public_key_in_use``, which no lock making its own key meets: uncounted, one valid code told whether any number
    of known public keys were some lock's live one, a former device's still paired, say: attack run 86); any other
    outcome gives its attempt back. Past ``failures_per_hour`` in any hour both are 429
    ``too_many_pairing_attempts``, counted no more, and a code that pairs still pairs: a block is an address many
    locks may share (a carrier's NAT; every lock reaching the production base URL through one node of Firebase
    Hosting's CDN, with one proxy hop trusted), and its 20 wrong codes an hour, anyone's, kept each of those locks
    from pairing with its owner's right code (attack run 100). A code is about 120 bits: stopping the guesses at 20
    an hour was no defence a guess needed. Past the limit a valid code that meets another lock's key is spent, in
    the transaction that found the key (``_redeem``'s ``spend_on_key_in_use``): the probes of keys stay bounded, by the
    codes an account is given a day. The counts are pruned by the relay's flush (``lockwise.core.retention``), not by
    one request in 50 as before. A pairing sent again (``redeem``) is issued its certificate within the renewals'
    daily count (``issuing.per_day``)."""
    public_key = parse_public_key(body.get("public_key"))
    with db.transaction() as con:
        reserved = reserve_pairing_attempt(con, source, failures_per_hour)
    try:
        with db.transaction() as con:
            credentials = _redeem(
                con,
                body.get("code"),
                public_key,
                body.get("csr"),
                issuing,
                spend_on_key_in_use=reserved.past_limit is not None,
            )
            if reserved.attempt_id is not None and credentials is not None:
                release_pairing_attempt(con, reserved.attempt_id)  # paired: not a failure
    except Exception as exc:
        if reserved.past_limit is not None:  # nothing counted: a wrong code is the 429
            if _counted(exc):
                raise reserved.past_limit from None
            raise
        if reserved.attempt_id is not None and not _counted(exc):
            try:
                with db.transaction() as con:
                    release_pairing_attempt(con, reserved.attempt_id)
            except errors.Unavailable:  # the database away: what the pairing met says more (``commit_unconfirmed``)
                log.warning("a pairing's attempt was not given back: the database is unavailable")
        raise
    if credentials is None:  # another lock's key past the limit: the code was spent (``_redeem``)
        raise reserved.past_limit or errors.Conflict("another lock's key", code=KEY_IN_USE)
    return credentials


def _counted(exc: Exception) -> bool:
    """Whether a pairing that failed with ``exc`` keeps its attempt counted: a wrong code, or another lock's key."""
    return isinstance(exc, errors.Unauthenticated) or (isinstance(exc, errors.Conflict) and exc.code == KEY_IN_USE)


def redeem(
    con: Connection,
    code: Any,
    public_key: bytes,
    csr: Any,
    issuing: lock_certs.Issuing,
) -> Credentials:
    """Exchange a valid code for new credentials (once); the lock's old credentials are revoked. The same pairing
    sent again, its answer lost, is answered with the credentials it made (``_paired_again``). A signing key another
    lock holds is 409 ``public_key_in_use``, the code left as it was."""
    credentials = _redeem(con, code, public_key, csr, issuing, spend_on_key_in_use=False)
    if credentials is None:
        raise RuntimeError("a redemption that spends no code spent one")
    return credentials


def _redeem(
    con: Connection,
    code: Any,
    public_key: bytes,
    csr: Any,
    issuing: lock_certs.Issuing,
    *,
    spend_on_key_in_use: bool,
) -> Credentials | None:
    """``redeem``; with ``spend_on_key_in_use`` (past the address's limit: ``pair``) a valid code that meets another
    lock's key is spent instead, unused, and None returned, for the caller to commit. Spent by a later transaction
    (attack run 104), every pairing of a burst sent with the code at once had its key checked, the code's row passed
    from one to the next before the first one's spending could take it: an answer a key, unbounded by the codes an
    account is given."""
    if not isinstance(code, str) or not 4 <= len(code) <= 64:
        raise errors.BadRequest("code must be a string", code="invalid_code_format")
    request = lock_certs.parse_csr(csr)  # before the code is used: a bad CSR leaves the code valid
    # a code is good only while whoever issued it still owns the lock (attack run: an owner's code, issued before
    # they gave the lock away and were removed from it, still paired the lock to a device of theirs), and while their
    # account and the session that asked for it stand (``users.vouches_sql``: attack run 47, a stolen phone's code
    # paired the thief's device once the account was disabled, deleted or signed out everywhere)
    # the lock's row first, as a transfer or a deletion takes it before the codes (the code's row first deadlocked
    # with them): one committed while this waited is then seen by the next statement, in the owner and in the code's
    # end, judged on the statement's clock (this transaction's began earlier: attack run)
    con.run(
        "SELECT 1 FROM locks WHERE id = (SELECT lock_id FROM provisioning_codes WHERE code_hash = :h) FOR KEY SHARE",
        h=_hash(code),
    )
    rows = con.run(
        "SELECT c.lock_id::text, c.redeemed_at IS NOT NULL, c.expires_at <= statement_timestamp(),"
        " l.owner_uid IS DISTINCT FROM c.created_by OR NOT "
        + users.vouches_sql("c.created_by", "c.issuer_signed_in_at")
        + ","
        " GREATEST(1, ceil(extract(epoch FROM c.expires_at - statement_timestamp())))::int,"  # the code's life left
        " c.created_by, c.issuer_signed_in_at"  # whose code, from which session: the pairing's audit row says so
        " FROM provisioning_codes c JOIN locks l ON l.id = c.lock_id WHERE c.code_hash = :h FOR UPDATE OF c",
        h=_hash(code),
    )
    if not rows or rows[0][2]:
        raise _invalid_code()
    lock_id = str(rows[0][0])
    if rows[0][1]:  # used: the lock that used it sending its pairing again, or anyone else (401). Whoever owns the
        # lock now: the pairing was made while the code stood, and its lock is answered as a renewal would answer it
        # (it was 401 once the owner had handed the lock over, its credential live: attack run 108)
        code_left_s = int(rows[0][4])
        return _paired_again(con, code, lock_id, public_key, request, code_left_s, issuing)
    if rows[0][3]:
        raise _invalid_code()
    issued_by = {
        "code_issued_by": rows[0][5],
        **({} if rows[0][6] is None else {"code_signed_in_at": rows[0][6].isoformat()}),
    }
    try:  # before anything is written: a code spent here is all this transaction commits
        refuse_a_shared_signing_key(con, public_key, lock_id)
    except errors.Conflict:
        if not spend_on_key_in_use:
            raise
        # spent as a used code is (no credential was paired with it: 401 to whoever sends it again), not by its
        # expiry alone: a pairing of the burst waiting for the code's row judges the expiry on its statement's clock,
        # which began before this one's, and found the code valid still
        con.run(
            "UPDATE provisioning_codes SET redeemed_at = now(), expires_at = LEAST(expires_at, statement_timestamp())"
            " WHERE code_hash = :h",
            h=_hash(code),
        )
        return None
    con.run("UPDATE provisioning_codes SET redeemed_at = now() WHERE code_hash = :h", h=_hash(code))
    revoked = con.run(
        "UPDATE lock_credentials SET revoked_at = now() WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL"
        " RETURNING id",
        l=lock_id,
    )
    transfer_offers.end_for_lock(con, lock_id)  # an offer was made for the device the lock had
    identity = str(uuid.uuid4())  # a new broker identity per pairing: the old one's topics go dead with it
    certificate = _certify(con, issuing, request, identity)
    con.run(
        "INSERT INTO lock_credentials (lock_id, mqtt_username, signing_public_key, cert_serial, cert_not_after,"
        " paired_with, csr_key_sha256) VALUES (CAST(:l AS uuid), :u, :k, :s, :n, :h, :c)",
        l=lock_id,
        u=identity,
        k=public_key,
        s=certificate[1],
        n=certificate[0].not_after,
        h=_hash(code),
        c=lock_certs.key_sha256(request),
    )
    # the lock's revoked credentials past those its signed requests are checked against (``lock_auth.KEYS_KEPT``:
    # the live one and the newest revoked) go: each pairing kept one for as long as its lock, 50 a day at most, read
    # and sorted by every signed request of the lock (attack run 102). Their certificates stay listed until they
    # expire (listed as they were revoked; deleting a credential lists any left: migration 0013)
    con.run(
        "DELETE FROM lock_credentials WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NOT NULL"
        " AND id NOT IN (SELECT id FROM lock_credentials WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NOT NULL"
        " ORDER BY revoked_at DESC LIMIT :k)",
        l=lock_id,
        k=lock_auth.KEYS_KEPT - 1,
    )
    # a new pairing numbers its connections afresh (a counter from zero, a factory reset), and its reports' times
    # start again: the old device's numbers, which it could push as far ahead as it liked, and its last report's
    # time, up to 5 min ahead of the clock, no longer order the new device's reports (attack run: a stolen device's
    # last report left the replacement's reports stale for minutes); and the lock is shown as not yet heard from:
    # the replaced device's state, battery, firmware and "online" were shown as the new one's, for ever if it never
    # connected (its last will refused with its identity: attack run 47), and commands were sent as to a lock online;
    # the feed's budget for its reports starts afresh (the replaced device's last minute of reports left the new one's
    # first out of the feed, and its count of unlisted ones was shown on the new device's: attack run 50)
    con.run(
        "INSERT INTO lock_state (lock_id) VALUES (CAST(:l AS uuid)) ON CONFLICT (lock_id) DO UPDATE"
        " SET status_order = NULL, reported_at = NULL, recent_reports = '{}', state = 'unknown', battery_pct = NULL,"
        " online = false, firmware = NULL, last_seen = NULL, connected_at = NULL, connected_run = NULL,"
        " feed_window_start = NULL, feed_entries = 0, feed_unlisted = 0, doc_behind = false, updated_at = now()",
        l=lock_id,
    )
    # nor is the new device held back by what the replaced one left unanswered (``mqtt_relay.outbox.UNANSWERED``)
    con.run("DELETE FROM lock_unanswered WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
    # the open commands were made for the device replaced: one it was sent may have been carried out, and none goes
    # to the new one (one a relay holds now is passed over: its outbox sends a command published once only to the
    # identity it went to, ``commands.sent_to``)
    con.run(
        "UPDATE commands SET status = 'failed', last_error = :paired WHERE id IN (SELECT id FROM commands"
        " WHERE lock_id = CAST(:l AS uuid) AND status IN ('pending', 'sent') FOR UPDATE SKIP LOCKED)",
        l=lock_id,
        paired=command_outcomes.PAIRED_AGAIN,
    )
    not_heard = {"state": "unknown", "battery_pct": None, "firmware": None, "online": False, "last_seen": None}
    mirror.enqueue(con, mirror.lock_doc(lock_id), "merge", {**not_heard, "reported_at": None})
    audit.record(
        con,
        audit.lock_actor(lock_id),
        "credentials.provision",
        "ok",
        lock_id=lock_id,
        # whose code paired it, and their session: the lock is the actor, and a re-pairing named nobody who let the
        # new device in (the code goes 30 days after it ends: attack run 99)
        details={"revoked_previous": len(revoked), **issued_by},
    )
    mirror.activity(con, lock_id, "provisioned", replaced_credentials=bool(revoked))
    return Credentials(lock_id=lock_id, certificate=certificate[0])


def _invalid_code() -> errors.Unauthenticated:
    # one message for unknown, used and expired codes: the caller learns nothing about which
    return errors.Unauthenticated("provisioning code is invalid, used or expired", code="invalid_provisioning_code")


def _paired_again(
    con: Connection,
    code: str,
    lock_id: str,
    public_key: bytes,
    request: Any,
    code_left_s: int,
    issuing: lock_certs.Issuing,
) -> Credentials:
    """A used code sent again by the lock whose pairing used it (its answer lost: its Wi-Fi dropped, or a 503): the
    credential that pairing made, live, with the same signing key and the same TLS key (its CSR's), while the code
    would still be valid; answered with it and a new certificate for that key, counted with the renewals (past
    ``issuing.per_day``: 429 ``pairing_retry_limit``, its ``Retry-After`` the code's end: the lock needs a new
    code). Nothing is revoked, no identity changes. Anyone else gets the used code's 401: the certificate is for a
    key only that lock holds."""
    rows = con.run(
        "SELECT id::text, mqtt_username FROM lock_credentials WHERE lock_id = CAST(:l AS uuid) AND revoked_at IS NULL"
        " AND paired_with = :h AND signing_public_key = :k AND csr_key_sha256 = :c FOR UPDATE",
        h=_hash(code),
        l=lock_id,
        k=public_key,
        c=lock_certs.key_sha256(request),
    )
    if not rows:
        raise _invalid_code()
    credential_id, identity = str(rows[0][0]), str(rows[0][1])
    try:
        certificate, serial = _reissue(con, credential_id, identity, request, issuing)
    except errors.RateLimited as exc:  # the renewals' wait (a day) would outlive the code
        raise errors.RateLimited(
            "this pairing was answered again as often as a day allows; pair the lock with a new code",
            retry_after_s=code_left_s,
            code="pairing_retry_limit",
        ) from exc
    audit.record(
        con,
        audit.lock_actor(lock_id),
        "credentials.provision_repeated",
        "ok",
        lock_id=lock_id,
        details={"serial": serial},
    )
    return Credentials(lock_id=lock_id, certificate=certificate)


#: the refusal of a signing key another lock's live credential holds
KEY_IN_USE = "public_key_in_use"


def refuse_a_shared_signing_key(con: Connection, public_key: bytes, lock_id: str) -> None:
    """409 when a lock other than ``lock_id`` (the one pairing: its own live key is revoked by the pairing) has this
    signing key on a live credential. A lock's signed request names its lock in a header the signature does not
    cover (the firmware contract), so two locks with one key could have each other's requests replayed within the
    skew window (nonces are per lock). Pairings with one key are decided one at a time (a transaction-scoped advisory
    lock on the key), so two at once cannot both pass."""
    key_lock = int.from_bytes(hashlib.sha256(b"lockwise signing key " + public_key).digest()[:8], "big", signed=True)
    con.run("SELECT pg_advisory_xact_lock(:k)", k=key_lock)
    if con.run(
        "SELECT 1 FROM lock_credentials WHERE signing_public_key = :k AND revoked_at IS NULL"
        " AND lock_id <> CAST(:l AS uuid)",
        k=public_key,
        l=lock_id,
    ):
        raise errors.Conflict("this signing key belongs to another lock; every lock makes its own key", code=KEY_IN_USE)


def renew(con: Connection, signer: lock_auth.Signer, csr: Any, issuing: lock_certs.Issuing) -> Certificate:
    """A new certificate for the identity of the device that signed the request (``signer``), while it is the lock's
    live one (401 ``unknown_lock`` once paired again: the lock's live credential, whichever it was, gave the replaced
    device a certificate for the new device's identity, and its session: attack run 50); at most ``issuing.per_day``
    issued to the credential in any 24 hours, pairing's included (then 429 ``renewal_limit``)."""
    request = lock_certs.parse_csr(csr)
    lock_id = signer.lock_id
    rows = con.run(
        f"SELECT c.id::text, c.mqtt_username FROM lock_credentials c WHERE {lock_auth.live_sql('c')}"
        " FOR UPDATE",  # renewals of one lock one at a time (the count below is exact), and a re-pairing waits
        c=signer.credential_id,
        l=lock_id,
    )
    if not rows:
        raise lock_auth.deleted_lock()
    credential_id, identity = str(rows[0][0]), str(rows[0][1])
    certificate, serial = _reissue(con, credential_id, identity, request, issuing)
    audit.record(con, audit.lock_actor(lock_id), "credentials.renew", "ok", lock_id=lock_id, details={"serial": serial})
    return certificate


def _reissue(
    con: Connection,
    credential_id: str,
    identity: str,
    request: Any,
    issuing: lock_certs.Issuing,
) -> tuple[Certificate, str]:
    """A new certificate for a live credential (held ``FOR UPDATE`` by the caller, so the count is exact), and its
    serial: at most ``issuing.per_day`` issued to it in any 24 hours, pairing's included (then 429
    ``renewal_limit``)."""
    per_day = issuing.per_day
    quotas.refuse_when_full(
        quotas.day_wait(
            con, "lock_certificates", "credential_id", credential_id, per_day, since_column="issued_at", key_type="uuid"
        ),
        f"this lock was issued {per_day} certificates in the last 24 hours; it renews again later",
        "renewal_limit",
    )
    certificate, serial = _certify(con, issuing, request, identity)
    con.run(  # a credential paired with a broker password moves to its certificate here for good
        "UPDATE lock_credentials SET cert_serial = :s, cert_not_after = :n, mqtt_password_hash = NULL"
        " WHERE id = CAST(:i AS uuid)",
        s=serial,
        n=certificate.not_after,
        i=credential_id,
    )
    return certificate, serial


def _certify(con: Connection, issuing: lock_certs.Issuing, request: Any, identity: str) -> tuple[Certificate, str]:
    """A certificate for ``identity`` valid from the database's clock now (the instance's may be off: a start in
    the broker's future, past ``lock_certs.BACKDATE``, is refused by it), and its serial."""
    now = clock(con)
    issued = lock_certs.issue(issuing.ca, request, identity, issuing.ttl_s, now)
    return Certificate(identity, issued.pem, issuing.ca.cert_pem(), issued.not_after, now), issued.serial


def revocations_version(con: Connection) -> tuple[int, int]:
    """What changes whenever the revocation list does: how many unexpired entries, and a digest of their serials as
    a set. It was the count and the latest ``revoked_at``: a revocation whose transaction began before another's and
    committed after it (a re-pairing waiting on a voice decision) brought an older time, an entry expiring meanwhile
    kept the count, and the list served left the revocation out for up to ``lock_certs.CRL_REUSE`` (attack run 57)."""
    ((count, digest),) = con.run(
        "SELECT count(*), coalesce(bit_xor(hashtextextended(serial, 0)), 0) FROM revoked_lock_certificates"
        " WHERE not_after > now() - make_interval(days => :d)",
        d=retention.EXPIRED_REVOCATIONS_LISTED_DAYS,
    )
    return int(count), int(digest)


def revoked_certificates(con: Connection) -> tuple[list[tuple[str, dt.datetime]], dt.datetime]:
    """``(serial, revoked_at)`` of every revoked lock certificate not expired a day ago (the CRL's entries:
    ``retention.EXPIRED_REVOCATIONS_LISTED_DAYS``), and
    when they were read: the statement's start on the database's clock, the list's time and so its number
    (``lock_certs.crl_number``). On each instance's own clock, read after the statement, a list read before a
    revocation committed could be numbered above one read after it, and the broker host kept the older (a review)."""
    ((as_of, serials, times),) = con.run(  # listed by a trigger on lock_credentials (migration 0013's), deleted
        # locks' included
        "SELECT statement_timestamp(), coalesce(array_agg(serial ORDER BY revoked_at), '{}'),"
        " coalesce(array_agg(revoked_at ORDER BY revoked_at), '{}') FROM revoked_lock_certificates"
        " WHERE not_after > now() - make_interval(days => :d)",
        d=retention.EXPIRED_REVOCATIONS_LISTED_DAYS,
    )
    return [(str(serial), when) for serial, when in zip(serials, times, strict=True)], as_of
