"""The relay's side of the commands outbox in PostgreSQL.

``deliver_due`` claims due rows with ``FOR UPDATE SKIP LOCKED`` and keeps them locked while it publishes, so two relay
replicas never deliver the same command and an ack cannot be overwritten by a late ``sent``. Expired rows are
marked ``expired`` and never published. A ``sent`` row that is not acknowledged is published again every
``resend_after_s`` until it expires (the lock acts on a nonce once and re-acknowledges repeats).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from lockwise.core.db import Connection, Database
from lockwise.devices import topics

log = logging.getLogger("mqtt_relay.outbox")

#: publish([(topic, payload), ...]) -> for each, True once the broker acknowledged it (PUBACK); the messages are in
#: flight together, so a round costs about one broker round trip, not one per command
Publish = Callable[[list[tuple[str, str]]], list[bool]]


@dataclass(frozen=True)
class Delivery:
    command_id: str
    lock_id: str
    topic: str


def expire(con: Connection) -> int:
    rows = con.run(
        "UPDATE commands SET status = 'expired' WHERE status IN ('pending', 'sent') AND expires_at <= now() RETURNING 1"
    )
    return len(rows)


def deliver_due(db: Database, publish: Publish, *, resend_after_s: int, limit: int = 500) -> list[Delivery]:
    """Publish what is due now; returns what was delivered to the broker."""
    delivered: list[Delivery] = []
    with db.transaction() as con:
        expired = expire(con)
        if expired:
            log.info("expired commands", extra={"fields": {"count": expired}})
        rows = con.run(
            "SELECT c.id::text, c.lock_id::text, c.payload, cr.mqtt_username FROM commands c"
            " LEFT JOIN lock_credentials cr ON cr.lock_id = c.lock_id AND cr.revoked_at IS NULL"
            " WHERE c.expires_at > now() AND (c.status = 'pending'"
            "   OR (c.status = 'sent' AND c.sent_at < now() - make_interval(secs => :resend)))"
            " ORDER BY c.created_at LIMIT :n FOR UPDATE OF c SKIP LOCKED",
            resend=resend_after_s,
            n=limit,
        )
        orphans = [str(command_id) for command_id, _, _, username in rows if username is None]
        if orphans:
            con.run(
                "UPDATE commands SET status = 'failed', last_error = 'lock has no active credentials'"
                " WHERE id = ANY(CAST(:ids AS uuid[]))",
                ids=orphans,
            )
        due = [
            Delivery(str(command_id), str(lock_id), topics.commands(str(username)))
            for command_id, lock_id, _, username in rows
            if username is not None
        ]
        payloads = [str(payload) for _, _, payload, username in rows if username is not None]
        if not due:
            return delivered
        published = publish([(d.topic, payload) for d, payload in zip(due, payloads, strict=True)])
        delivered = [d for d, ok in zip(due, published, strict=True) if ok]  # the rest: next round
        if delivered:
            con.run(
                "UPDATE commands SET status = 'sent', sent_at = now(), send_count = send_count + 1"
                " WHERE id = ANY(CAST(:ids AS uuid[]))",
                ids=[d.command_id for d in delivered],
            )
    return delivered


def lag(db: Database) -> dict[str, float | int]:
    """Outbox lag for health: open commands and the age of the oldest pending one."""
    with db.connection() as con:
        pending, oldest = con.run(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) FROM commands"
            " WHERE status = 'pending' AND expires_at > now()"
        )[0]
    return {"pending": int(pending), "oldest_pending_s": round(float(oldest), 3)}
