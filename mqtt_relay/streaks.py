"""A failure that repeats each round while what a loop needs is away (the database, mostly): its first is logged
with its traceback, then one line a minute with how many and for how long, and its end once a round succeeds.

While the database was down, the relay's delivery round logged a traceback every second and its LISTEN a warning
every second: a ten-minute outage wrote 1,200 lines, each round's the same (attack run 114's leftover)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: how often a streak that goes on says so
REMIND_EVERY_S = 60.0


class FailureStreak:
    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.ERROR,
        every_s: float = REMIND_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.what, self.level, self.every_s, self.clock = logger, what, level, every_s, clock
        self.failures = 0
        self._began = self._told = 0.0
        self._kinds: set[str] = set()  # the exceptions' types the streak has logged a traceback of

    def failed(self, exc: BaseException) -> None:
        """One more failure (``exc``, the one being handled): logged with its traceback when it begins the streak or
        is of a type the streak has not had yet, and at most once every ``every_s`` after. Its start's alone, a
        streak begun by the database going away and kept going by another failure once it was back (a bug meeting
        a row, each round) never showed that failure's traceback, only its type's name once a minute (attack run
        122); a type is a handful of lines a streak, not one a round."""
        now = self.clock()
        self.failures += 1
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        if self.failures == 1:
            self._began, self._kinds = now, set()
        if kind not in self._kinds:
            said = "failed" if not self._kinds else "failing another way"  # one start a streak: the e2e counts them
            self._kinds.add(kind)
            self._told = now
            self.log.log(self.level, f"{self.what} {said}; retrying", exc_info=exc)
        elif now - self._told >= self.every_s:
            self._told = now
            fields = {"failures": self.failures, "for_s": round(now - self._began, 1), "error": type(exc).__name__}
            self.log.log(self.level, f"{self.what} still failing; retrying", extra={"fields": fields})

    def succeeded(self) -> None:
        """A round went through: a streak before it ends, said once."""
        if self.failures:
            fields = {"failures": self.failures, "for_s": round(self.clock() - self._began, 1)}
            self.log.info(f"{self.what} works again", extra={"fields": fields})
            self.failures = 0
