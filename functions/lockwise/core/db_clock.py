"""An instance's clock set by the database's: verify decides by the database's clock and commands are made by it
(``db.clock``), so every other time an instance decides by (whose access stands, a window's edges, an invitation's
or a transfer offer's expiry) is its own clock moved by how far the database's is from it, read once a minute. An
instance whose clock ran 50 s behind let a member whose access had ended 10 s before make an unlock, which was
delivered (the note of stop 65)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from lockwise.core import errors, log
from lockwise.core.db import Connection, Database, clock

_log = logging.getLogger("lockwise.core.db_clock")

#: how long an instance goes by its last reading (a round trip each time)
READ_EVERY_S = 60.0
#: the wait before asking again after a reading that could not be taken (the pool busy, the database not answering)
#: while an earlier one stands: each request asked while the database did not answer, each waiting its timeout
#: (attack run 76). With none yet, every request asks (one at a time, the others waiting for it).
RETRY_AFTER_S = 5.0
#: the wait for a free connection of an instance's first reading (later ones take one only if one is free at once)
FIRST_SLOT_WAIT_S = 1.0
#: an instance whose clock is further than this from the database's says so in a warning at each reading
OFF_WARN_S = 1.0


class DatabaseClock:
    """How far the database's clock is from an instance's (``offset``: the database's less the instance's)."""

    def __init__(self, db: Callable[[], Database]) -> None:
        self._db = db
        self.offset = dt.timedelta(0)
        self._read_at: float | None = None  # the last reading kept (``time.monotonic()``)
        self._failed_at: float | None = None  # the last reading that could not be taken since
        self._reading = threading.Lock()  # one reading at a time

    def forget(self) -> None:
        """Read again at the next ``offset_now`` (an instance whose clock is off since it started, in a test)."""
        with self._reading:
            self.offset, self._read_at, self._failed_at = dt.timedelta(0), None, None

    def _fresh(self) -> bool:
        return self._read_at is not None and time.monotonic() - self._read_at < READ_EVERY_S

    def offset_now(self, instance_clock: Callable[[], dt.datetime]) -> dt.timedelta:
        """The offset, read again (one round trip, on a pooled connection only if one is free at once, but for the
        first reading: its caller may hold the others) once ``READ_EVERY_S`` has passed since the last reading kept.
        Until the first is kept, a request that comes while another reads waits for that reading (a request beside
        the boot's reading went by the instance's own clock: attack run 77); after, it takes the last. After a
        reading that could not be taken, the last one stands for ``RETRY_AFTER_S``;
        while the pool is busy, or the database is known not to answer, it stands too (the request finds that out
        for itself). A database that does not answer the reading is 503 ``database_unavailable`` at once, for the
        request would wait for it again. The reading is taken at the round trip's middle: its error is within half
        the round trip, whatever that is (a slow database's readings were once not kept, and a skewed instance went
        uncorrected for as long as it was slow: attack run 77). Before the first reading is kept, a busy pool is
        read past on a connection of its own, and a database known not to answer is a 503 too: there is no reading
        to stand (attack run 92)."""
        if self._fresh():
            return self.offset
        first = self._read_at is None
        # with a reading standing, a request never waits for another's: a database that hangs held every request
        # behind the one reading for its timeouts, ~5 s each (attack run 79); before the first, each waits for it
        if not self._reading.acquire(blocking=first):
            return self.offset
        try:
            if self._fresh():  # read while this one waited
                return self.offset
            at = time.monotonic()
            if not first and self._failed_at is not None and at - self._failed_at < RETRY_AFTER_S:
                return self.offset
            db = self._db()
            if db.silent:
                if first:  # no reading to stand: the instance's own clock is no answer (attack run 92)
                    raise errors.Unavailable("database is unavailable", code="database_unavailable")
                return self.offset
            try:  # the first reading waits a moment for a connection (it went by the instance's own clock)
                with db.connection(slot_wait_s=FIRST_SLOT_WAIT_S if first else 0.0) as con:
                    before, moment, after = _read(con, instance_clock)
            except errors.Unavailable as exc:
                if not (first and exc.code == "database_busy"):
                    self._failed_at = at
                    if exc.code == "database_busy":  # every connection lent: the last reading stands
                        return self.offset
                    raise
                # the first, every pooled connection lent (to requests waiting for this reading, perhaps): on a
                # connection of its own. It went by the instance's own clock, and one 50 s behind took a transfer
                # offer ended 10 s before (attack run 92); refusing instead failed a fresh instance's first burst
                try:
                    before, moment, after = _read_on_its_own(db, instance_clock)
                except errors.Unavailable:
                    self._failed_at = at
                    raise
            self.offset, self._read_at, self._failed_at = moment - (before + (after - before) / 2), at, None
        finally:
            self._reading.release()
        if abs(self.offset.total_seconds()) > OFF_WARN_S:
            log.event(
                _log,
                "this instance's clock is off the database's: its decisions go by the database's",
                level=logging.WARNING,
                database_ahead_s=round(self.offset.total_seconds(), 3),
            )
        return self.offset


def _read(con: Connection, instance_clock: Callable[[], dt.datetime]) -> tuple[dt.datetime, dt.datetime, dt.datetime]:
    """(the instance's clock before, the database's, the instance's after) on ``con``."""
    before = instance_clock()
    moment = clock(con)
    return before, moment, instance_clock()


def _read_on_its_own(
    db: Database, instance_clock: Callable[[], dt.datetime]
) -> tuple[dt.datetime, dt.datetime, dt.datetime]:
    """``_read`` on a new connection outside the pool, closed after; 503 ``database_unavailable`` when it fails."""
    con = db.connect(timeout_s=FIRST_SLOT_WAIT_S)
    try:
        return _read(con, instance_clock)
    except errors.Unavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - pg8000's own errors: the database did not answer the reading
        raise errors.Unavailable("database is unavailable", code="database_unavailable") from exc
    finally:
        con.close()
