"""What a lock keeps until the back-end's receipt names it, and when it sends it again (docs/FIRMWARE.md, "Receipts").

The firmware's rules without a clock, a timer or an MQTT client of their own (the caller gives the time and
publishes), so they can be tested alone:

* each state report and ack is kept until a receipt names it, at most ``KEEP_AT_MOST`` of each topic (the oldest of
  that topic goes first: reports sent at every connection the broker turned away never push out an ack) and at most
  ``KEEP_FOR_S``;
* ``wait_s`` after a connection's CONNACK, each message kept from before it is sent again: a broker killed after its
  PUBACK lost it, and a crash always ends the connection;
* while connected, a kept message is sent again only once a receipt named a message whose last sending came after
  its own last sending (the relay took a later one, so this one went astray: a receipt lost, a flood's drop), at
  least ``wait_s`` after its last sending, the wait doubling up to ``RESEND_MAX_S``. With the back-end down, no
  receipt comes and nothing is sent again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lockwise.devices import receipts

#: the wait before sending again (after a CONNACK, or after the last sending), doubling to ``RESEND_MAX_S``
RECEIPT_WAIT_S, RESEND_MAX_S = 10.0, 300.0
#: the most messages kept per topic (state reports, acks), and the longest (the server ignores an ack a day late)
KEEP_AT_MOST, KEEP_FOR_S = 32, 86_400.0


@dataclass
class Kept:
    topic: str
    payload: bytes  # the bytes as published: sent again unchanged
    sent: int  # its place among the lock's sendings, at its last one
    due: float  # not sent again before this time
    wait: float  # the wait after its next sending
    first_sent: float  # when it was first published (kept ``KEEP_FOR_S`` at most)


class Unconfirmed:
    def __init__(self, wait_s: float = RECEIPT_WAIT_S) -> None:
        self.wait_s = wait_s
        self.kept: dict[str, Kept] = {}  # by digest, oldest first
        self._sends = 0  # sendings so far
        self._named = 0  # the latest sending a receipt named
        self._connected = 0  # the sendings made before the current connection's CONNACK
        self.receipted = 0  # kept messages a receipt named
        self.sent_again = 0

    def sent(self, topic: str, payload: bytes, now: float) -> None:
        """A new message was published: keep it (past ``KEEP_AT_MOST`` of its topic, the oldest of them goes)."""
        self._sends += 1
        name = receipts.digest(payload)
        self.kept.pop(name, None)  # the same bytes again (an ack repeated): kept as the newest
        self.kept[name] = Kept(topic, payload, self._sends, now + self.wait_s, self.wait_s, now)
        same = [old for old, kept in self.kept.items() if kept.topic == topic]
        for old in same[:-KEEP_AT_MOST]:
            del self.kept[old]
        self._forget_old(now)

    def connected(self, now: float) -> None:
        """A CONNACK: what is kept from before it is sent again ``wait_s`` from now, unless named meanwhile."""
        self._connected = self._sends
        for kept in self.kept.values():
            kept.due = now + self.wait_s

    def named(self, names: Iterable[str]) -> None:
        """A receipt: forget what it names."""
        for name in names:
            kept = self.kept.pop(name, None)
            if kept is not None:
                self.receipted += 1
                self._named = max(self._named, kept.sent)

    def next_due(self) -> float | None:
        """When the next message may be sent again, or None while nothing says one went astray."""
        times = [kept.due for kept in self.kept.values() if self._astray(kept)]
        return min(times, default=None)

    def due(self, now: float) -> list[Kept]:
        """The messages to send again now, each then counted as sent now and its wait doubled."""
        self._forget_old(now)
        again = [kept for kept in self.kept.values() if kept.due <= now and self._astray(kept)]
        for kept in again:
            self._sends += 1
            kept.sent, kept.wait = self._sends, min(kept.wait * 2, RESEND_MAX_S)
            kept.due = now + kept.wait
        self.sent_again += len(again)
        return again

    def _forget_old(self, now: float) -> None:
        for name in [name for name, kept in self.kept.items() if now - kept.first_sent > KEEP_FOR_S]:
            del self.kept[name]

    def _astray(self, kept: Kept) -> bool:
        """Sent before the current connection, or before a message a receipt named since."""
        return kept.sent <= self._connected or kept.sent < self._named
