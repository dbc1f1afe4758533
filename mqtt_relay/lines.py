"""Lock events waiting to be forwarded: one line per lock, served in turn, each line bounded.

One queue for every lock let one lock's flood stand in front of everyone's events (attack run: 100,000 tiny
messages from one paired lock held another lock's ack past its command's expiry, and the app read "expired" for a
door that had opened). Here each batch takes from every waiting lock in turn, so a lock's event waits behind at most
one event of each other lock per batch, however many one of them has sent; and a lock with ``per_lock`` events
already waiting has its next ones refused (the caller drops them, counted): a lock reports a few times an hour, so
only a flood fills its line. A lock's own events keep their order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Lines(Generic[T]):
    def __init__(self, per_lock: int) -> None:
        self.per_lock = per_lock
        self._lines: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0
        self._ready = threading.Condition()

    def put(self, lock: str, item: T) -> bool:
        """Queue ``item`` at the end of ``lock``'s line; False (not queued) when that line is full."""
        with self._ready:
            line = self._lines.setdefault(lock, deque())
            if len(line) >= self.per_lock:
                return False
            line.append(item)
            self._size += 1
            self._ready.notify()
            return True

    def take(self, most: int, timeout_s: float) -> list[T]:
        """Up to ``most`` items, one from each waiting line in turn (waits up to ``timeout_s`` for the first)."""
        with self._ready:
            if not self._size and not self._ready.wait_for(lambda: self._size > 0, timeout_s):
                return []
            taken: list[T] = []
            while self._lines and len(taken) < most:
                lock, line = next(iter(self._lines.items()))
                taken.append(line.popleft())
                if line:
                    self._lines.move_to_end(lock)
                else:
                    del self._lines[lock]
            self._size -= len(taken)
            return taken

    def qsize(self) -> int:
        with self._ready:
            return self._size

    def empty(self) -> bool:
        return self.qsize() == 0
