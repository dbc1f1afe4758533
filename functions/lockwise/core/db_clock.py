"""An instance's clock set by the database's: verify decides by the database's clock and commands are made by it
(``db.clock``), so every other time an instance decides by (whose access stands, a window's edges, an invitation's
or a transfer offer's expiry) is its own clock moved by how far the database's is from it, read once a minute. An
instance whose clock ran 50 s behind let a member whose access had ended 10 s before make an unlock, which was
delivered (the note of stop 65)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from lockwise.core import errors, log
from lockwise.core.db import Database, clock

_log = logging.getLogger("lockwise.core.db_clock")

#: how long an instance goes by its last reading (a round trip each time)
READ_EVERY_S = 60.0
#: the wait before asking again after a reading that could not be taken (the pool busy, the database not answering)
#: or was not kept: each request asked while the database did not answer, each waiting its timeout (attack run 76)
RETRY_AFTER_S = 5.0
#: a reading whose round trip took longer is not kept (it is the middle of the round trip, within half of it)
SLOWEST_READ_S = 0.2
#: an instance whose clock is further than this from the database's says so in a warning at each reading
OFF_WARN_S = 1.0


class DatabaseClock:
    """How far the database's clock is from an instance's (``offset``: the database's less the instance's)."""

    def __init__(self, db: Callable[[], Database]) -> None:
        self._db = db
        self.offset = dt.timedelta(0)
        self._read_at: float | None = None  # the last reading kept (``time.monotonic()``)
        self._tried_at: float | None = None  # the last reading asked for

    def forget(self) -> None:
        """Read again at the next ``offset_now`` (an instance whose clock is off since it started, in a test)."""
        self.offset, self._read_at, self._tried_at = dt.timedelta(0), None, None

    def offset_now(self, instance_clock: Callable[[], dt.datetime]) -> dt.timedelta:
        """The offset, read again (one round trip, on a pooled connection only if one is free at once: its caller
        may hold the others) once ``READ_EVERY_S`` has passed since the last reading kept and ``RETRY_AFTER_S`` since
        the last asked for; the last reading (none: 0) until then, and while the pool is busy or the database is known
        not to answer (the request finds that out for itself). A database that does not answer the reading is 503
        ``database_unavailable`` at once, for the request would wait for it again."""
        at = time.monotonic()
        if self._read_at is not None and at - self._read_at < READ_EVERY_S:
            return self.offset
        if self._tried_at is not None and at - self._tried_at < RETRY_AFTER_S:
            return self.offset
        db = self._db()
        if db.silent:
            return self.offset
        self._tried_at = at
        try:
            with db.connection(slot_wait_s=0.0) as con:
                before = instance_clock()
                moment = clock(con)
                after = instance_clock()
        except errors.Unavailable as exc:
            if exc.code == "database_busy":  # every connection lent: the last reading stands
                return self.offset
            raise
        if (after - before).total_seconds() > SLOWEST_READ_S:
            return self.offset
        self.offset, self._read_at = moment - (before + (after - before) / 2), at
        if abs(self.offset.total_seconds()) > OFF_WARN_S:
            log.event(
                _log,
                "this instance's clock is off the database's: its decisions go by the database's",
                level=logging.WARNING,
                database_ahead_s=round(self.offset.total_seconds(), 3),
            )
        return self.offset
