"""An instance's clock set by the database's (``lockwise.core.db_clock``, ``Runtime.now``): a fast check of its
readings beside the real one in ``tests/integration/test_command_delivery.py`` (instances 50 s ahead and behind a
real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from lockwise.core import db_clock, errors
from lockwise.core.config import Settings
from lockwise.core.runtime import Runtime

START = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


class Database:
    """A pool whose one connection answers the database's clock, ``ahead`` of the instance's. ``refusing``: the
    error a borrow meets (``database_busy``: every connection lent; ``database_unavailable``: it does not answer);
    ``silent``: the pool last found the server not answering; ``round_trip_s``: the instance's clock moves that much
    while the statement runs."""

    def __init__(self, ahead: dt.timedelta, now: list[dt.datetime]) -> None:
        self.ahead, self.now = ahead, now
        self.refusing: str | None = None
        self.silent = False
        self.round_trip_s = 0.0
        self.read = 0
        self.own_connections = 0
        self.refusing_own: str | None = None
        self.slot_waits: list[float] = []

    @contextmanager
    def connection(self, slot_wait_s: float = 30.0) -> Iterator[Any]:
        self.slot_waits.append(slot_wait_s)
        if self.refusing is not None:
            raise errors.Unavailable("refused", code=self.refusing)
        yield self

    def connect(self, timeout_s: float | None = None) -> Any:
        """A connection of its own, outside the pool (``refusing_own``: the error making one meets)."""
        self.own_connections += 1
        if self.refusing_own is not None:
            raise errors.Unavailable("refused", code=self.refusing_own)
        return self

    def close(self) -> None:
        pass

    def run(self, sql: str, **params: Any) -> Any:
        assert sql == "SELECT clock_timestamp()"
        self.read += 1
        answer = self.now[0] + dt.timedelta(seconds=self.round_trip_s / 2) + self.ahead  # (read half way)
        self.now[0] += dt.timedelta(seconds=self.round_trip_s)
        return [[answer]]


def held_reading(db: Database) -> tuple[threading.Event, threading.Event]:
    """Hold ``db``'s next readings inside their round trip: (one is inside, let them go)."""
    inside, go = threading.Event(), threading.Event()
    run = db.run

    def held(sql: str, **params: Any) -> Any:
        inside.set()
        assert go.wait(10)
        return run(sql, **params)

    db.run = held  # type: ignore[method-assign]
    return inside, go


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.monotonic``, moved by the test."""
    at = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: at[0])
    return at


def instance(ahead_s: float) -> tuple[Runtime, Database]:
    now = [START]
    rt = Runtime(Settings.from_env({}, component="devices"), clock=lambda: now[0])
    db = Database(dt.timedelta(seconds=ahead_s), now)
    rt.__dict__["db"] = db  # the cached property, made
    return rt, db


def test_now_is_the_instance_clock_moved_to_the_databases_and_read_once_a_minute(ticks: list[float]) -> None:
    rt, db = instance(-50.0)
    assert rt.now() == START - dt.timedelta(seconds=50)
    assert rt.now() == START - dt.timedelta(seconds=50)
    assert db.read == 1
    assert db.slot_waits == [db_clock.FIRST_SLOT_WAIT_S]  # the first: a moment for a connection
    db.ahead = dt.timedelta(seconds=2)  # the instance's clock stepped
    ticks[0] += db_clock.READ_EVERY_S + 1
    assert rt.now() == START + dt.timedelta(seconds=2)
    assert db.read == 2
    assert db.slot_waits[1:] == [0.0]  # later ones never wait for a slot: their caller may hold the others


def test_a_busy_pool_leaves_the_last_reading_and_is_asked_again_after_a_while(ticks: list[float]) -> None:
    rt, db = instance(30.0)
    db.refusing, db.refusing_own = "database_busy", "database_unavailable"
    with pytest.raises(errors.Unavailable):  # never read: not the instance's own clock (attack run 92)
        rt.now()
    db.refusing, db.silent = None, True  # nor while the pool finds the server silent
    with pytest.raises(errors.Unavailable, match="unavailable"):
        rt.now()
    db.silent, db.refusing, db.refusing_own = False, "database_busy", None
    assert rt.now() == START + dt.timedelta(seconds=30)  # the first, read past a busy pool on a connection of its own
    assert (db.own_connections, db.read) == (2, 1)
    rt.database_clock.forget()
    db.read = 0
    assert rt.now() == START + dt.timedelta(seconds=30)  # none kept yet: asked again at once (attack run 77)
    ticks[0] += db_clock.READ_EVERY_S
    db.refusing, db.ahead = "database_busy", dt.timedelta(seconds=31)
    assert rt.now() == START + dt.timedelta(seconds=30)
    db.refusing = None
    assert rt.now() == START + dt.timedelta(seconds=30)  # one kept: asked again 5 s on, not at once
    ticks[0] += db_clock.RETRY_AFTER_S
    assert rt.now() == START + dt.timedelta(seconds=31)
    assert db.read == 2


def test_a_database_that_does_not_answer_is_waited_for_once_not_by_every_request(ticks: list[float]) -> None:
    """Attack run 76: each ``now`` asked a database that did not answer again, each waiting its timeout, and the
    request's own statements waited again after."""
    rt, db = instance(30.0)
    assert rt.now() == START + dt.timedelta(seconds=30)
    ticks[0] += db_clock.READ_EVERY_S
    db.refusing = "database_unavailable"
    with pytest.raises(errors.Unavailable):  # the request is answered 503 at once
        rt.now()
    assert rt.now() == START + dt.timedelta(seconds=30)  # the next ones go by the last reading, not asking
    assert len(db.slot_waits) == 2
    ticks[0] += db_clock.RETRY_AFTER_S
    db.refusing, db.silent = None, True  # the pool found the server silent since: it finds out for itself
    assert rt.now() == START + dt.timedelta(seconds=30)
    assert len(db.slot_waits) == 2


def test_a_reading_is_taken_at_its_round_trips_middle_however_slow() -> None:
    """Attack run 77: readings whose round trip took over 0.2 s were not kept, and an instance 50 s off a steadily
    slow database went uncorrected."""
    rt, db = instance(30.0)
    db.round_trip_s = 0.5
    rt.now()
    assert rt.database_clock.offset == dt.timedelta(seconds=30)


def test_a_request_beside_a_reading_under_way_waits_for_it() -> None:
    """Attack run 77: a request that came while the boot's reading was under way went by the instance's own clock."""
    rt, db = instance(30.0)
    inside, go = held_reading(db)
    booting = threading.Thread(target=rt.now)
    booting.start()
    assert inside.wait(10)
    answered: list[dt.datetime] = []
    request = threading.Thread(target=lambda: answered.append(rt.now()))
    request.start()
    request.join(0.2)
    assert answered == []  # waiting for the reading under way
    go.set()
    booting.join(10)
    request.join(10)
    assert answered == [START + dt.timedelta(seconds=30)] and db.read == 1


def test_a_test_that_replaces_the_clock_moves_time_by_it_alone() -> None:
    """Attack run 76: a reading taken after a test moved the runtime's clock undid the move."""
    rt, db = instance(30.0)
    moved = START + dt.timedelta(days=8)
    rt.clock = lambda: moved
    assert rt.now() == moved and db.read == 0


def test_an_instance_far_off_the_database_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "lockwise.core.db_clock")
    rt, _ = instance(0.5)
    rt.now()
    assert caplog.records == []
    rt, _ = instance(-3.0)
    rt.now()
    [record] = caplog.records
    assert record.fields == {"database_ahead_s": -3.0}  # type: ignore[attr-defined]


def test_with_a_reading_standing_a_request_never_waits_for_another_requests_reading(ticks: list[float]) -> None:
    """Attack run 79: a database that hung held every request behind the one reading for its timeouts (~5 s each)."""
    rt, db = instance(30.0)
    assert rt.now() == START + dt.timedelta(seconds=30)
    ticks[0] += db_clock.READ_EVERY_S
    db.ahead = dt.timedelta(seconds=31)
    inside, go = held_reading(db)
    reading = threading.Thread(target=rt.now)
    reading.start()
    assert inside.wait(10)
    assert rt.now() == START + dt.timedelta(seconds=30)  # at once, by the last reading
    go.set()
    reading.join(10)
    assert rt.now() == START + dt.timedelta(seconds=31)


def test_the_first_reading_waits_a_moment_for_a_connection() -> None:
    rt, db = instance(30.0)
    rt.now()
    assert db.slot_waits == [db_clock.FIRST_SLOT_WAIT_S]
