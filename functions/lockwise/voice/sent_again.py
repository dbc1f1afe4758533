"""A clip a lock sends again: the same recording, signed anew, after its first sending's answer never came (the
lock's Wi-Fi dropped, a timeout). Decided again, it was a replay of itself (the first decision keeps its
fingerprint): rejected, counted towards the lockout and shown to the owner as a playback attack, while the first had
opened the door (attack run 39). A lock's microphone never records the same samples twice, so the same body from
the same lock, soon after, is that clip sent again, and is answered with its decision: nothing is decided, counted
or recorded again (an accepted one with its grant while its unlock still stands: no second unlock is made). One
whose unlock no longer stands (expired unexecuted while the lock was away, or its member's access ended) is refused
as ``unlock_expired``, uncounted: the person is asked to speak again, and the owner is not told of a playback."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from lockwise.core.db import Connection
from lockwise.devices import members


def identity(body_sha256: str, content_type: str, rate: int) -> bytes:
    """The clip's identity: the SHA-256 (hex) of the body as the lock signed it (its signature check computes it),
    with its content type and rate: the same recording sent again, byte for byte (a microsecond; hashing the decoded
    samples took 0.36 ms of each request)."""
    return hashlib.sha256(f"{content_type}\n{rate}\n{body_sha256}".encode()).digest()


@dataclass(frozen=True)
class Decided:
    """The decision a clip had at its first sending."""

    attempt_id: str
    outcome: str  # accepted | rejected
    reason: str
    matched_uid: str | None
    command_id: str | None  # accepted: its unlock, while that stands (``decided``)
    grant: str | None
    stands: bool = True  # False: accepted, and its unlock no longer stands (``decided``)


def decided(con: Connection, lock_id: str, device: str, clip_sha256: bytes, within_s: int) -> Decided | None:
    """The decision of the clip with ``clip_sha256`` at ``lock_id`` in the last ``within_s`` seconds (the verify
    function's ``LOCKWISE_VOICE_SENT_AGAIN_S``; a lock's timeouts and retries take seconds); None: none (or 0 s).
    One accepted whose unlock no longer stands is returned with ``stands`` False, without its unlock: failed or
    expired unexecuted, or, carried out or not, one whose member the relay would no longer send it for
    (``members.issuer_gone_sql``: removed, expired or their commands withdrawn, their account found disabled or
    deleted; attack run 40: a removed member's acked unlock was answered again, grant and all), or one made for
    another of the lock's devices than ``device``, the credential sending it again (the lock paired again since: its
    grant, carried out by the old device, was a second unlock on the new one, attack run 52). A voice's erasure
    forgets the clips scored against it (``lockwise.core.erasure``), which are then decided anew."""
    if within_s <= 0:
        return None
    rows = con.run(
        "SELECT a.id::text, a.outcome, a.reason, a.matched_uid, c.id::text, c.payload,"
        " (c.status = 'acked' OR (c.status IN ('pending', 'sent') AND c.expires_at > now()))"
        # made for the device sending it again (one made before migration 0061: for any)
        " AND coalesce(c.made_for = CAST(:d AS uuid), true) AND NOT (" + members.issuer_gone_sql("c") + ")"
        " FROM verification_attempts a LEFT JOIN commands c ON c.attempt_id = a.id"
        " WHERE a.lock_id = CAST(:l AS uuid) AND a.clip_sha256 = :h"
        " AND a.created_at > now() - make_interval(secs => :within)"
        " ORDER BY a.created_at DESC LIMIT 1",
        l=lock_id,
        d=device,
        h=clip_sha256,
        within=within_s,
    )
    if not rows:
        return None
    attempt_id, outcome, reason, matched, command_id, payload, stands = rows[0]
    if outcome == "accepted":
        if not stands:
            return Decided(attempt_id, outcome, reason, matched, None, None, stands=False)
        return Decided(attempt_id, outcome, reason, matched, command_id, payload)
    return Decided(attempt_id, outcome, reason, None, None, None)
