"""MQTT topic layout and the size of what a lock sends on them, shared by the relay, the devices function and the
simulated lock.

Every topic of a lock sits under ``lockwise/<broker username>/``; the broker's per-lock ACL lets that lock, and no
other, read its ``cmd`` and write its ``state``, ``ack`` and ``status`` (``infra/broker/acl.template``).
"""

from __future__ import annotations

import json
from typing import TypeGuard

ROOT = "lockwise"
#: the longest payload of a lock's event the devices function takes, in bytes as posted (``posted``); the
#: relay drops longer ones unsent (the broker refuses packets over 64 KiB)
MAX_PAYLOAD_BYTES = 16_384
#: the most events in one relay batch the devices function takes (``LOCKWISE_RELAY_EVENT_BATCH`` at most)
MAX_EVENTS_PER_BATCH = 500
#: the largest relay batch body (JSON, UTF-8) the devices function takes
MAX_BATCH_BYTES = 4_000_000


def commands(lock: str) -> str:
    """Server -> lock: signed commands (QoS 1, never retained)."""
    return f"{ROOT}/{lock}/cmd"


def state(lock: str) -> str:
    """Lock -> server: lock state reports (QoS 1)."""
    return f"{ROOT}/{lock}/state"


def acks(lock: str) -> str:
    """Lock -> server: command acknowledgements (QoS 1)."""
    return f"{ROOT}/{lock}/ack"


def status(lock: str) -> str:
    """Lock -> server: ``online``/``offline`` (retained; ``offline`` is the lock's last will)."""
    return f"{ROOT}/{lock}/status"


def lock_of(topic: str) -> str | None:
    """The lock a topic belongs to, or None when it is not a lock topic."""
    parts = topic.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == ROOT and parts[1] else None


def posted(payload: str) -> bytes:
    """A payload as the relay posts it: its JSON string's content (without the quotes) in UTF-8, escapes counted (a
    character the JSON escapes, a control character, costs 6 bytes; an emoji 4; a lone surrogate is "?"): its length
    is the payload's size at both ends."""
    return json.dumps(payload, ensure_ascii=False).encode(errors="replace")[1:-1]


#: the largest broker run (the broker plugin's runs are microseconds since 1970, kept in a bigint)
MAX_RUN = 2**63 - 1


def is_run(value: object) -> TypeGuard[int]:
    """Whether ``value`` can be a broker run's number (``mqtt_relay.broker_start``): a positive 64-bit integer."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_RUN
