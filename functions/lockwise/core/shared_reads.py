"""One read at a time, shared by the callers that asked while it was waiting to start.

A public endpoint whose every request runs the same query (the lock CA's revocation list asks which revocations stand,
reading all of them) lets anyone run that query as often as they send requests. ``SharedRead`` runs it once at a time
per instance: a caller takes the answer of a read begun after it asked (never an older one: nothing it could have
seen committed is missed), and the callers arriving while one read runs share the next. However many ask at once,
an instance runs at most one read and has one waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRead(Generic[T]):
    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._changed = threading.Condition()
        self._started = 0  # reads begun
        self._finished = 0  # reads ended (their answer, or what they raised, below)
        self._running = False
        self._answer: tuple[T | None, BaseException | None] = (None, None)

    def get(self) -> T:
        """The answer of a read begun after this call (run by this caller, or by another asking meanwhile); what
        that read raised is raised to each caller sharing it."""
        with self._changed:
            wanted = self._started + 1
            while self._finished < wanted:
                if not self._running:
                    self._started += 1
                    self._running = True
                    mine = self._started
                    break
                self._changed.wait()
            else:
                return self._given()
        answer: tuple[T | None, BaseException | None]
        try:
            answer = (self._read(), None)
        except BaseException as exc:  # noqa: BLE001 - handed to each caller sharing this read, raised to all
            answer = (None, exc)
        with self._changed:
            self._answer, self._finished, self._running = answer, mine, False
            self._changed.notify_all()
            return self._given()

    def _given(self) -> T:
        value, error = self._answer
        if error is not None:
            raise error
        return value  # type: ignore[return-value]  # a read's answer: None only if the read gave None
