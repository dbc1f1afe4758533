"""Clearing what the broker keeps for broker identities no lock uses any more (``retired_broker_identities``,
migration 0085).

A lock retains its presence on ``lockwise/<identity>/status``; paired again or deleted, its identity's presence stayed
retained for good, one per pairing, handed to every relay subscription anew after a broker restart, and each posted
to the devices function and refused as an unknown or revoked lock (attack run 127's leftover, attack run 131). An
identity is listed as its credential is revoked or deleted (a trigger), or as an event comes from one no live
credential holds (``lockwise.devices.lock_events``); ``clear_due`` publishes an empty retained message to each of its
event topics (a state or an ack may be kept from before attack runs 78 and 127) and deletes its row once the broker
acknowledged all three. The rows are claimed ``FOR UPDATE SKIP LOCKED``: two replicas clear an identity once, and one
not cleared (the broker away, no PUBACK) waits for the next round, whatever restarts meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lockwise.core.db import Database
from lockwise.devices import topics

log = logging.getLogger("mqtt_relay.retired")

#: clear([topic, ...]) -> for each, True once the broker acknowledged its empty retained message (PUBACK)
Clear = Callable[[list[str]], list[bool]]

#: identities cleared a round at most (three messages each, in flight together)
PER_ROUND = 100


def publishable(identity: str) -> bool:
    """Whether ``identity`` names one topic level a message can be published to (no wildcard, no separator): a
    certificate's identity always does; a row that does not is deleted unpublished."""
    return bool(identity) and not any(c in identity for c in "/+#\x00")


def topics_of(identity: str) -> list[str]:
    """What a lock identity may have left retained: its event topics (the broker keeps its presence alone now)."""
    return [topics.status(identity), topics.state(identity), topics.acks(identity)]


def clear_due(db: Database, clear: Clear, *, limit: int = PER_ROUND) -> int:
    """Clear the retained messages of up to ``limit`` retired identities; returns how many were cleared."""
    with db.transaction() as con:
        rows = con.run(
            "SELECT identity FROM retired_broker_identities ORDER BY retired_at, identity LIMIT :n"
            " FOR UPDATE SKIP LOCKED",
            n=limit,
        )
        identities = [str(row[0]) for row in rows if publishable(str(row[0]))]
        unpublishable = [str(row[0]) for row in rows if not publishable(str(row[0]))]
        if not rows:
            return 0
        results = clear([topic for identity in identities for topic in topics_of(identity)]) if identities else []
        width = len(topics_of("x"))
        cleared = [identity for i, identity in enumerate(identities) if all(results[i * width : (i + 1) * width])]
        if cleared or unpublishable:
            con.run(
                "DELETE FROM retired_broker_identities WHERE identity = ANY(CAST(:i AS text[]))",
                i=cleared + unpublishable,
            )
            log.info("cleared retired identities' retained messages", extra={"fields": {"count": len(cleared)}})
    return len(cleared)
