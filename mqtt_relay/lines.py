"""Lock events waiting to be forwarded: one line per lock, served in turn, each line bounded.

One queue for every lock let one lock's flood stand in front of everyone's events (attack run: 100,000 tiny
messages from one paired lock held another lock's ack past its command's expiry, and the app read "expired" for a
door that had opened). Here each batch takes from every waiting lock in turn, so a lock's event waits behind at most
one event of each other lock per batch, however many one of them has sent; and a lock with ``per_lock`` events, or
``per_lock_bytes`` of them, already waiting has its next ones refused (the caller drops them, counted): a lock
reports a few times an hour, a few hundred bytes each, so only a flood fills its line. Bounded in bytes too, since
the events a relay holds are what the broker waits on: twelve locks' bursts of 500 messages of 16 KiB each filled
the broker's queue for the relay, which dropped another lock's report (attack run). A lock's own events keep their
order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class _Line(Generic[T]):
    def __init__(self) -> None:
        self.items: deque[tuple[T, int]] = deque()
        self.size = 0  # bytes


class Lines(Generic[T]):
    def __init__(self, per_lock: int, per_lock_bytes: int) -> None:
        self.per_lock, self.per_lock_bytes = per_lock, per_lock_bytes
        self._lines: OrderedDict[str, _Line[T]] = OrderedDict()
        self._count = 0
        self._out = 0  # taken and not yet ``done``
        self._ready = threading.Condition()

    def put(self, lock: str, item: T, size: int) -> bool:
        """Queue ``item`` (``size`` bytes) at the end of ``lock``'s line; False (not queued) when that line is full
        (an item larger than a whole line's bytes is refused too)."""
        with self._ready:
            line = self._lines.get(lock) or _Line()
            if len(line.items) >= self.per_lock or line.size + size > self.per_lock_bytes:
                return False
            line.items.append((item, size))
            line.size += size
            self._lines.setdefault(lock, line)
            self._count += 1
            self._ready.notify()
            return True

    def take(self, most: int, timeout_s: float) -> list[T]:
        """Up to ``most`` items, one from each waiting line in turn (waits up to ``timeout_s`` for the first)."""
        with self._ready:
            if not self._count and not self._ready.wait_for(lambda: self._count > 0, timeout_s):
                return []
            taken: list[T] = []
            while self._lines and len(taken) < most:
                lock, line = next(iter(self._lines.items()))
                item, size = line.items.popleft()
                line.size -= size
                taken.append(item)
                if line.items:
                    self._lines.move_to_end(lock)
                else:
                    del self._lines[lock]
            self._count -= len(taken)
            self._out += len(taken)
            return taken

    def done(self, taken: int) -> None:
        """``taken`` items the taker has finished with (forwarded, dropped, or given up at a stop)."""
        with self._ready:
            self._out -= taken

    def idle(self) -> bool:
        """Nothing waits and nothing taken is unfinished: checked under the lock ``take`` holds, so there is no
        moment between a take and its taker's count when both look empty (a stop then ended a batch unposted)."""
        with self._ready:
            return self._count == 0 and self._out == 0

    def qsize(self) -> int:
        with self._ready:
            return self._count

    def empty(self) -> bool:
        return self.qsize() == 0
