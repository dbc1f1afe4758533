"""The relay's side of the commands outbox in PostgreSQL.

``deliver_due`` claims due rows with ``FOR UPDATE SKIP LOCKED`` and keeps them locked while it publishes, so two relay
replicas never deliver the same command and an ack cannot be overwritten by a late ``sent``. Expired rows are
marked ``expired`` and never published. A ``sent`` row that is not acknowledged is published again every
``resend_after_s`` until it expires (the lock acts on a nonce once and re-acknowledges repeats), and only to the
identity it was published to (``commands.sent_to``, recorded whether the broker acknowledged it or not): one
published to a lock's device before it was paired again fails ``paired again`` instead of reaching the new device,
which would act on it a second time (attack runs 48, 49 and a review).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockwise.core.db import Connection, Database, rows_as_dicts
from lockwise.devices import command_outcomes, members, topics

log = logging.getLogger("mqtt_relay.outbox")

#: publish([(topic, payload, expires_in_s), ...]) -> for each, True once the broker acknowledged it (PUBACK); the
#: messages are in flight together, so a round costs about one broker round trip, not one per command. The broker
#: delivers no message past ``expires_in_s`` (MQTT 5's message expiry), but Mosquitto 2.0 drops an expired one only
#: as it would deliver it: a session away keeps them all (``UNANSWERED``)
Publish = Callable[[list[tuple[str, str, int]]], list[bool]]


@dataclass(frozen=True)
class Delivery:
    command_id: str
    lock_id: str
    identity: str  # the broker identity it went to (``commands.sent_to``)

    @property
    def topic(self) -> str:
        return topics.commands(self.identity)


#: messages the relay may publish to a lock (first sendings and re-sends) since it was last heard from (any event of
#: its device: a state report, a status, an ack; ``lockwise.devices.lock_events.heard_from``) before it publishes it
#: nothing more until it is: a lock that ended its connection cleanly, without its ``offline``, is taken for online,
#: and Mosquitto kept every command published into its away session, expired ones too (they are dropped only when
#: delivered): an owner's loop of 30 commands a minute grew the broker's memory and persistence file by ~0.5 KB
#: each, for good (attack run 54). Held, they stay ``pending`` and expire unsent. Counted per lock in
#: ``lock_unanswered`` (migration 0065), filtered before the round's claim: counted per command from its history,
#: in the claim's rows, a lock's held commands took every round's 500 places and the count's scans ran past the
#: statement limit, every lock's commands waiting (attack run 55)
UNANSWERED = 5


def _within_unanswered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` but those past what their lock may still be sent before it is heard from (``UNANSWERED``, less what
    it was sent since: ``unanswered``), first come first kept."""
    used: Counter[str] = Counter()
    kept = []
    for row in rows:
        if int(row["unanswered"]) + used[row["lock_id"]] < UNANSWERED:
            used[row["lock_id"]] += 1
            kept.append(row)
    return kept


def _count_sent(db: Database, delivered: list[Delivery]) -> None:
    """Add what each lock was published to its count since it was last heard from: a transaction of its own, after
    the round's (holding the claimed commands while it waited for a batch of events holding the count, which waits
    for the commands its acks settle, was a deadlock), in lock id order. A lock being deleted is waited for and
    passed over (its row held first: the insert's own check of it failed the whole round's count once the deletion
    committed, attack run 56). A failure is logged, not raised: the round is committed, and a count lost lets a
    silent lock a few more messages."""
    sent = Counter(delivery.lock_id for delivery in delivered)
    try:
        with db.transaction() as con:
            standing = [
                str(row[0])
                for row in con.run(
                    "SELECT id::text FROM locks WHERE id = ANY(CAST(:l AS uuid[])) ORDER BY id FOR KEY SHARE",
                    l=sorted(sent),
                )
            ]
            con.run(
                "INSERT INTO lock_unanswered (lock_id, sent) SELECT d.lock_id, d.n FROM unnest(CAST(:l AS uuid[]),"
                " CAST(:n AS integer[])) AS d(lock_id, n) ORDER BY d.lock_id"
                " ON CONFLICT (lock_id) DO UPDATE SET sent = lock_unanswered.sent + EXCLUDED.sent",
                l=standing,
                n=[sent[lock] for lock in standing],
            )
    except Exception:  # noqa: BLE001 - the round's publishes stand; its count is advisory
        log.exception("the messages a round published were not counted", extra={"fields": {"locks": len(sent)}})


def expire(con: Connection) -> int:
    """Mark the open commands past their expiry expired; one another transaction holds (a batch of the locks' acks
    settling it, its lock's deletion) is passed over, not waited for: the round held every row it marked through
    its publishes, and a batch acknowledging two of them late, in the other order, was a deadlock (attack run 28).
    One passed over reads as expired all the same (``lockwise.devices.commands.present``) and is marked next round."""
    rows = con.run(
        "UPDATE commands SET status = 'expired' WHERE id IN (SELECT id FROM commands"
        " WHERE status IN ('pending', 'sent') AND expires_at <= now() FOR UPDATE SKIP LOCKED) RETURNING 1"
    )
    return len(rows)


def _fail(con: Connection, command_ids: list[str], why: str) -> None:
    if command_ids:
        con.run(
            "UPDATE commands SET status = 'failed', last_error = :e WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=command_ids,
            e=why,
        )


def _behind_another_relay(con: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """The claimed commands that wait this round: an older command to the same lock, not yet sent, is claimed by
    another relay replica (``SKIP LOCKED`` passed over it). Published side by side by two replicas, a lock's
    "unlock, then lock" could reach it as lock, then unlock; each lock's commands now go out in the order made."""
    oldest_elsewhere = dict(
        con.run(
            "SELECT lock_id::text, min(created_at) FROM commands WHERE lock_id = ANY(CAST(:l AS uuid[]))"
            " AND status = 'pending' AND expires_at > now() AND NOT (id = ANY(CAST(:mine AS uuid[]))) GROUP BY lock_id",
            l=sorted({r["lock_id"] for r in rows}),
            mine=[r["id"] for r in rows],
        )
    )
    return {
        r["id"] for r in rows if r["lock_id"] in oldest_elsewhere and oldest_elsewhere[r["lock_id"]] < r["created_at"]
    }


#: a round starts no new wave after this long (each wave may wait a broker timeout, holding the round's claims)
ROUND_BUDGET_S = 5.0


def _in_waves(publish: Publish, due: list[tuple[Delivery, str, float]], read_at: float) -> list[tuple[Delivery, bool]]:
    """Publish ``due`` (in the order made) so that each lock gets its commands one after another: a wave holds the
    next command of every lock whose earlier ones the broker took, and a lock whose command was not taken gets no
    later one this round (published together, a later command acknowledged while an earlier one timed out reached the
    lock first, and the earlier one came after it next round). One wave is one broker round trip; a lock rarely has
    two commands due at once. Returns each command published and whether the broker took it (one it did not
    acknowledge may have reached the lock all the same).

    Each command's time left (seconds, as read at ``read_at``, ``time.monotonic()``) is what is left at its own wave:
    it was the round's start's, so the broker could hand a command on up to a round's budget past its expiry. One
    whose time ran out before its wave is not published (the next round marks it expired), nor is any later one of
    its lock this round; one in its last second is published with an expiry of 1 s."""
    queues: dict[str, list[tuple[Delivery, str, float]]] = {}
    for item in due:
        queues.setdefault(item[0].lock_id, []).append(item)
    published: list[tuple[Delivery, bool]] = []
    deadline = time.monotonic() + ROUND_BUDGET_S
    while queues and time.monotonic() < deadline:  # the first wave always goes
        elapsed = time.monotonic() - read_at
        for lock_id in [lock for lock, queue in queues.items() if queue[0][2] - elapsed <= 0]:
            del queues[lock_id]
        if not queues:
            break
        wave = [queue[0] for queue in queues.values()]
        # the broker's expiry counts whole seconds, 1 at least: a command's last second goes out (not publishing it
        # lost an unlock made while the broker was down, delivered in its last second before: the note of stop 66);
        # the lock refuses it past its signed expiry all the same
        taken = publish([(d.topic, payload, max(1, math.floor(left - elapsed))) for d, payload, left in wave])
        for (delivery, _, _), ok in zip(wave, taken, strict=True):
            published.append((delivery, ok))
            if ok:
                queues[delivery.lock_id].pop(0)
                if not queues[delivery.lock_id]:
                    del queues[delivery.lock_id]
            else:
                del queues[delivery.lock_id]
    return published


def deliver_due(db: Database, publish: Publish, *, resend_after_s: int, limit: int = 500) -> list[Delivery]:
    """Publish what is due now; returns what was delivered to the broker."""
    delivered: list[Delivery] = []
    with db.transaction() as con:
        expired = expire(con)
        if expired:
            log.info("expired commands", extra={"fields": {"count": expired}})
        # a re-send waits for nothing newer to its lock (a lost unlock re-sent after a later lock left the door
        # unlocked: attack run), and for an issuer still a member whose commands were not withdrawn since (a removed
        # member's unlock was re-sent; one claimed but not published as a guest's window moved went out after it)
        read_at = time.monotonic()  # (each command's time left is read as the statement runs)
        rows = rows_as_dicts(
            con,
            "SELECT c.id::text AS id, c.lock_id::text AS lock_id, c.payload, cr.mqtt_username AS identity, c.status,"
            " c.created_at, EXTRACT(EPOCH FROM c.expires_at - clock_timestamp())::float8 AS ttl, "
            + members.issuer_gone_sql("c")  # nor for an account found disabled or deleted since
            # made for another device (one made before migration 0061: published to another), NULL (false) if not
            + " AS issuer_gone, coalesce(c.made_for <> cr.id, c.sent_to <> cr.mqtt_username) AS paired_since,"
            " coalesce(q.sent, 0) AS unanswered"
            " FROM commands c"
            " LEFT JOIN lock_credentials cr ON cr.lock_id = c.lock_id AND cr.revoked_at IS NULL"
            " LEFT JOIN lock_unanswered q ON q.lock_id = c.lock_id"
            " WHERE c.expires_at > now()"
            # not to a lock known offline: the broker would keep it in the lock's session, out of reach, and a member
            # removed meanwhile had their unlock carried out when the lock came back (attack run 14: 8 s after the
            # removal was answered); held here it stays ``pending``, withdrawn by a removal, sent once the lock reports
            # itself again (a lock never heard from is sent to, as before)
            " AND NOT EXISTS (SELECT 1 FROM lock_state s WHERE s.lock_id = c.lock_id AND NOT s.online"
            "   AND s.last_seen IS NOT NULL)"
            # nor to one sent ``UNANSWERED`` messages since it was last heard from
            " AND coalesce(q.sent, 0) < :unanswered"
            " AND (c.status = 'pending'"
            "   OR (c.status = 'sent' AND c.sent_at < now() - make_interval(secs => :resend)"
            "     AND NOT EXISTS (SELECT 1 FROM commands n WHERE n.lock_id = c.lock_id"
            "       AND n.created_at > c.created_at AND (n.status IN ('pending', 'sent', 'acked')"
            # one the lock tried and could not carry out: it recorded its time first and refuses older ones
            "         OR (n.status = 'failed' AND starts_with(n.last_error, :tried))))))"
            " ORDER BY c.created_at LIMIT :n FOR UPDATE OF c SKIP LOCKED",
            resend=resend_after_s,
            tried=command_outcomes.TRIED,
            n=limit,
            unanswered=UNANSWERED,
        )
        _fail(con, [r["id"] for r in rows if r["identity"] is None], "lock has no active credentials")
        # never sent: failed; sent: not sent again, and its ack still taken (the lock may have acted on it)
        withdrawn = [r["id"] for r in rows if r["issuer_gone"] and r["status"] == "pending"]
        _fail(con, withdrawn, command_outcomes.WITHDRAWN)
        # made for the device the lock had before it was paired again (one the pairing passed over, held here; one
        # published to it, taken by the broker or not, may have reached the lock): never sent to the new one (attack
        # runs 48, 49 and 51, and a review: an unlock sent to the old device was sent again to the new; one a relay
        # held unpublished as the lock was paired again went to the new one)
        _fail(con, [r["id"] for r in rows if r["paired_since"]], command_outcomes.PAIRED_AGAIN)
        behind = _behind_another_relay(con, rows)
        sendable = [
            r
            for r in rows
            if r["identity"] is not None and not r["issuer_gone"] and not r["paired_since"] and r["id"] not in behind
        ]
        due = [
            (Delivery(r["id"], r["lock_id"], str(r["identity"])), str(r["payload"]), float(r["ttl"]))
            for r in _within_unanswered(sendable)
        ]
        if not due:
            return delivered
        published = _in_waves(publish, due, read_at)  # the rest: next round
        # each published one records where it went, taken by the broker or not (sent again only there); taken, sent
        con.run(
            "UPDATE commands c SET sent_to = d.identity,"
            " status = CASE WHEN d.taken THEN 'sent' ELSE c.status END,"
            " sent_at = CASE WHEN d.taken THEN now() ELSE c.sent_at END,"
            " send_count = c.send_count + CASE WHEN d.taken THEN 1 ELSE 0 END"
            " FROM unnest(CAST(:ids AS uuid[]), CAST(:to AS text[]), CAST(:taken AS boolean[]))"
            " AS d(id, identity, taken) WHERE c.id = d.id",
            ids=[d.command_id for d, _ in published],
            to=[d.identity for d, _ in published],
            taken=[ok for _, ok in published],
        )
        delivered = [d for d, ok in published if ok]
    if delivered:
        _count_sent(db, delivered)
    return delivered


def lag(db: Database) -> dict[str, float | int]:
    """Outbox lag for health: open commands and the age of the oldest pending one."""
    with db.connection() as con:
        pending, oldest = con.run(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) FROM commands"
            " WHERE status = 'pending' AND expires_at > now()"
        )[0]
    return {"pending": int(pending), "oldest_pending_s": round(float(oldest), 3)}
