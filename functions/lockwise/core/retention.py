"""Rows kept for a limited time and deleted once it has passed, by the relay's periodic flush
(``POST /devices/relay/flush``, every ``LOCKWISE_RELAY_FLUSH_EVERY_S``, 10 s by default): how long they outlive
their expiry depends on that clock, not on how busy a door is, and no request pays for the deletes.

Readers skip expired rows themselves (``expires_at > now()``), so a late prune never lets one count.
"""

from __future__ import annotations

import logging
import time

from lockwise.core import config, log, mirror
from lockwise.core.db import Connection

logger = logging.getLogger(__name__)

#: tables whose rows carry an ``expires_at`` (NULL: kept until their owner goes): attempts' fingerprints (kept
#: ``LOCKWISE_REPLAY_MEMORY_HOURS``), say-again attempts' per-member scores (kept 30 s for the second utterance),
#: enrollments compared with co-members' voices (counted for a day) and the lock certificates issued (kept until
#: they expire, to be revoked with their credential), lock events refused (kept a week for an operator), the
#: daily quotas' rows (enrollment requests and those that reached the model, pairing codes: a day), lapsed
#: transfer offers and ended pairing codes
EXPIRING = (
    "voice_fingerprints",
    "verify_follow_ups",
    "enrollment_comparisons",
    "enrollment_runs",
    "enrollment_requests",
    "pairing_issues",
    "lock_certificates",
    "lock_event_rejects",
    "lock_transfer_offers",
    "journal_entries",  # the keys of the restore journal's entries, two days past Firestore's (migration 0071)
    # pairing codes once ended (used, replaced, or expired: none pairs then): kept as long as their lock, 50 a day an
    # owner (attack run 102; migration 0075 indexes them for this)
    "provisioning_codes",
)


#: mirror writes Firestore refused (set aside by ``lockwise.core.mirror``) are kept this long for an operator, then
#: deleted (they were kept for ever)
REFUSED_MIRROR_WRITES_KEPT_DAYS = 30
#: days a revoked lock certificate stays in the CRL past its own end: a broker whose clock runs behind the
#: database's still takes it as valid for that lag, and it was left out of the list at once (attack run 80); the
#: flush then deletes its row
EXPIRED_REVOCATIONS_LISTED_DAYS = 1
#: days a command is kept after it expired (acknowledged, failed or never carried out: it is no longer sent once its
#: expiry has passed); then ``GET .../commands/{id}`` is a 404. They were kept as long as their lock: a member may add
#: 30 a minute at one lock, 43,200 a day (attack run 32)
COMMANDS_KEPT_DAYS = 30
#: days a voice attempt at a door is kept in the attempts log (as long as its feed entry in the app's live view:
#: ``lockwise.core.mirror``'s TTL); its fingerprint and say-again scores, kept shorter, go with it. A lock may post
#: 120 a minute (attack run 32: 172,800 rows a day, kept as long as the lock). Longer than a command is kept: a
#: voice command's attempt is never deleted before it; nor before its fingerprint expires
#: (``LOCKWISE_REPLAY_MEMORY_HOURS`` set longer: they were deleted with it, attack run 33)
ATTEMPTS_KEPT_DAYS = mirror.FEED_KEPT.days
#: days a refused attempt listed in no feed (past its lock's or its owner's budget of listed refusals:
#: ``lockwise.voice.verification``, its ``refusal_listed`` false) is kept: the feed says only that more came, and an
#: account's 100 locks, made and paired for free, each posting junk at its 120 signed requests a minute, kept 17M
#: rows a day for 90 days, 1.5 billion (attack run 130, denial of wallet); two days are an operator's look at a flood
UNLISTED_REFUSALS_KEPT_DAYS = 2
#: days an invitation is kept once it ended (accepted, declined, withdrawn, closed by a removal, or expired): an
#: owner inviting and withdrawing in a loop added a row a request, kept as long as the lock (attack run 32)
INVITATIONS_KEPT_DAYS = 30
#: days an audit row is kept: a year's review of the log finds every row of that year. It was kept for good
#: (attack run 54: a row for every command and membership change, naming an account and a lock, those of deleted
#: accounts and locks too); the database refuses to delete a row under a year old (migration 0066)
AUDIT_KEPT_DAYS = 400
#: refused requests' counts per minute (``lockwise.core.audit.record_denied``; the first few are in the audit log,
#: whose rows point to them): as long as those rows. They were kept 90 days, and a year's review of the log found
#: rows pointing to counts that were gone (attack run 120's leftover)
DENIAL_COUNTS_KEPT_DAYS = AUDIT_KEPT_DAYS

#: rows deleted per table and flush, at most: one statement stays well inside the request path's statement limit
#: (``db.STATEMENT_TIMEOUT_S``) however large a backlog grew while the flush did not run (a relay outage, a longer
#: retention made shorter); a backlog then drains flush by flush (10 s apart: up to 500 rows/s a table) instead of
#: failing the whole flush, and the mirror's writes with it, every time
PRUNE_BATCH = 5000
#: rows can come faster than one batch a flush deletes (a lock at its request limit adds 2 nonces a second: 250 such
#: locks fill a batch every 10 s flush; an account's 50 locks each posting 120 clips a minute add 100 attempts a
#: second, and three such accounts outran one batch a table for good: attack run 54), so each table's prune repeats
#: while its batches come back full, all of them within this long a flush (each table has its first batch)
BUSY_PRUNE_S = 2.0


def prune_expired(con: Connection, nonces_kept_s: int) -> dict[str, int]:
    """Delete expired rows, ``PRUNE_BATCH`` at a time (each table's once, then again while full within
    ``BUSY_PRUNE_S`` in all), of each table in ``EXPIRING``, of the mirror writes Firestore
    refused kept past ``REFUSED_MIRROR_WRITES_KEPT_DAYS``, of the locks' request nonces seen over ``nonces_kept_s``
    ago (twice the clock skew a signed request may have: an older one is refused for its timestamp) and of their
    per-minute counts of past minutes, refused requests' counts past ``DENIAL_COUNTS_KEPT_DAYS``, and the commands,
    voice attempts and invitations kept past ``COMMANDS_KEPT_DAYS``, ``ATTEMPTS_KEPT_DAYS`` (refusals listed in no
    feed: ``UNLISTED_REFUSALS_KEPT_DAYS``) and ``INVITATIONS_KEPT_DAYS``, and audit rows past ``AUDIT_KEPT_DAYS``;
    return how many a table. (The nonces and counts were deleted by one signed request in 50, all at once: a request
    paid for every lock's.)"""
    deadline = time.monotonic() + BUSY_PRUNE_S

    def prune(table: str, condition: str, **params: object) -> int:
        return _prune_while_full(con, table, condition, deadline, **params)

    pruned = {  # first: the fastest to come
        "lock_request_nonces": prune(
            "lock_request_nonces", "seen_at < now() - make_interval(secs => :s)", s=nonces_kept_s
        ),
        "lock_request_counts": prune("lock_request_counts", "minute < now() - interval '2 minutes'"),
    }
    pruned |= {table: prune(table, "expires_at <= now()") for table in EXPIRING}
    pruned["firestore_outbox"] = prune(
        "firestore_outbox",
        "refused_at IS NOT NULL AND refused_at <= now() - make_interval(days => :d)",
        d=REFUSED_MIRROR_WRITES_KEPT_DAYS,
    )
    pruned["pairing_failures"] = prune("pairing_failures", "hour < now() - interval '1 day'")
    pruned["pairing_attempts"] = prune("pairing_attempts", "at < now() - interval '1 day'")
    # a revoked certificate past the CRL's listing of it: the broker refuses an expired one anyway (they were kept
    # for ever: a row for each re-pairing and deletion, attack run 46)
    pruned["revoked_lock_certificates"] = prune(
        "revoked_lock_certificates",
        "not_after < now() - make_interval(days => :d)",
        d=EXPIRED_REVOCATIONS_LISTED_DAYS,
    )
    pruned["audit_denial_counts"] = prune(
        "audit_denial_counts", "minute <= now() - make_interval(days => :d)", d=DENIAL_COUNTS_KEPT_DAYS
    )
    pruned["commands"] = prune("commands", "expires_at <= now() - make_interval(days => :d)", d=COMMANDS_KEPT_DAYS)
    pruned["verification_attempts"] = prune(
        "verification_attempts",
        "created_at <= now() - make_interval(days => :d) AND NOT EXISTS (SELECT 1 FROM commands c"
        " WHERE c.attempt_id = verification_attempts.id)"  # a kept command's attempt stays (none: kept shorter)
        " AND NOT EXISTS (SELECT 1 FROM voice_fingerprints f WHERE f.attempt_id = verification_attempts.id"
        " AND f.expires_at > now())",  # nor one whose fingerprint a longer replay memory keeps (attack run 33)
        d=ATTEMPTS_KEPT_DAYS,
    )
    # through migration 0084's partial index (those refused attempts alone), kept as the others while a command or a
    # fingerprint names one
    pruned["verification_attempts"] += prune(
        "verification_attempts",
        "NOT refusal_listed AND created_at <= now() - make_interval(days => :d) AND NOT EXISTS (SELECT 1 FROM"
        " commands c WHERE c.attempt_id = verification_attempts.id) AND NOT EXISTS (SELECT 1 FROM voice_fingerprints f"
        " WHERE f.attempt_id = verification_attempts.id AND f.expires_at > now())",
        d=UNLISTED_REFUSALS_KEPT_DAYS,
    )
    pruned["invitations"] = prune(
        "invitations",
        "LEAST(expires_at, accepted_at, closed_at) <= now() - make_interval(days => :d)",
        d=INVITATIONS_KEPT_DAYS,
    )
    # the oldest rows by id (the log's order), through its primary key: by its time, an index on it would be built in
    # the migration over the whole log, and a block range index widens as pruned pages are written again, until
    # every flush read most of the log (a review)
    pruned["audit_log"] = prune(
        "audit_log",
        "id IN (SELECT id FROM audit_log ORDER BY id LIMIT :n) AND at <= now() - make_interval(days => :d)",
        d=AUDIT_KEPT_DAYS,
    )
    if any(pruned.values()):
        log.event(logger, "expired rows deleted", **pruned)
    return pruned


def _prune_while_full(con: Connection, table: str, condition: str, deadline: float, **params: object) -> int:
    """``_prune`` once, then again while its batches come back full until ``deadline``: how many rows in all."""
    total = 0
    while True:
        deleted = _prune(con, table, condition, **params)
        total += deleted
        if deleted < PRUNE_BATCH or time.monotonic() >= deadline:
            return total


#: a decided clip's identity is cleared this long after its decision: the longest a clip sent again is answered with
#: it (``config.VOICE_SENT_AGAIN_MAX_S``), and 5 minutes for the decisions whose transactions began before it
CLIP_IDENTITIES_KEPT_S = config.VOICE_SENT_AGAIN_MAX_S + 300


def forget_clip_identities(con: Connection) -> int:
    """Clear, up to ``PRUNE_BATCH`` at a time, the clip identities of attempts past ``CLIP_IDENTITIES_KEPT_S``:
    needed minutes, they were kept with the attempt, 90 days (attack run 46). Its own short transaction, skipping
    an attempt another holds (an erasure scrubbing it: never waited for). How many."""
    rows = con.run(
        "WITH gone AS (UPDATE verification_attempts SET clip_sha256 = NULL WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM verification_attempts WHERE clip_sha256 IS NOT NULL"
        " AND created_at < now() - make_interval(secs => :s) LIMIT :n FOR UPDATE SKIP LOCKED)) RETURNING 1)"
        " SELECT count(*) FROM gone",
        s=CLIP_IDENTITIES_KEPT_S,
        n=PRUNE_BATCH,
    )
    return int(rows[0][0])


def _prune(con: Connection, table: str, condition: str, **params: object) -> int:
    """Delete up to ``PRUNE_BATCH`` rows of ``table`` meeting ``condition``; how many."""
    rows = con.run(
        f"WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
        f" WHERE {condition} LIMIT :n)) RETURNING 1) SELECT count(*) FROM gone",
        n=PRUNE_BATCH,
        **params,
    )
    return int(rows[0][0])
