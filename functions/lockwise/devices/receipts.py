"""Receipts: the relay tells a lock which of its events the back-end holds (docs/FIRMWARE.md, "Receipts").

A broker acknowledges a lock's message (its PUBACK) as it takes it, and Mosquitto saves what it holds on a timer: a
broker killed (kill -9, out of memory, a host lost) loses what it acknowledged in its last second (attack run 29: 20
of 20 reports). So a lock keeps each state report and ack until a receipt names it: a message on its command topic,
``{"receipt": ["<digest>", ...]}``, that the relay publishes once the devices function has committed the batch the
events came in (or refused them for good). A digest names a message by its payload's bytes as published: the first
``DIGEST_BYTES`` of their SHA-256, in unpadded base64url. A receipt is not signed: whoever could forge one (write to a
lock's command topic: the broker or a relay) could as well drop the lock's events.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable

from lockwise.devices import topics

#: how much of a payload's SHA-256 names it (22 characters of base64url)
DIGEST_BYTES = 16
#: the most digests in one receipt: under 1 KB, one read of esp-mqtt's default buffer
PER_RECEIPT = 32
#: the member that makes a message on a command topic a receipt (a command has ``cmd`` and ``sig``)
MEMBER = "receipt"


def names(topic: str) -> bool:
    """Whether a lock's message on ``topic`` is named in receipts: its state reports and acks (its ``status`` is
    not: the next connection's ``online`` says what a lost one said)."""
    lock = topics.lock_of(topic)
    return lock is not None and topic in (topics.state(lock), topics.acks(lock))


def digest(payload: bytes) -> str:
    """The name of a lock's message in a receipt."""
    return base64.urlsafe_b64encode(hashlib.sha256(payload).digest()[:DIGEST_BYTES]).rstrip(b"=").decode()


def messages(digests: Iterable[str]) -> list[bytes]:
    """The receipts naming ``digests`` (in their order, each once), ``PER_RECEIPT`` a message."""
    names = list(dict.fromkeys(digests))
    return [
        json.dumps({MEMBER: names[i : i + PER_RECEIPT]}, separators=(",", ":")).encode()
        for i in range(0, len(names), PER_RECEIPT)
    ]


def read(payload: bytes) -> list[str] | None:
    """A receipt's digests, or None when ``payload`` is not a receipt (a command, or anything else)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or "cmd" in body or not isinstance(body.get(MEMBER), list):
        return None
    return [name for name in body[MEMBER] if isinstance(name, str)]
