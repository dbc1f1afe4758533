"""An instance's clock set by the database's (``Runtime.now``): a fast check of its reading beside the real one in
``tests/integration/test_command_delivery.py`` (instances 50 s ahead and behind a real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from lockwise.core import errors
from lockwise.core import runtime as runtime_module
from lockwise.core.config import Settings
from lockwise.core.runtime import Runtime

START = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


class Database:
    """A pool whose one connection answers the database's clock, ``ahead`` of the instance's; ``busy``: no connection
    free (503 ``database_busy``, as the pool answers when every slot is lent)."""

    def __init__(self, ahead: dt.timedelta) -> None:
        self.ahead = ahead
        self.busy = False
        self.read = 0
        self.slot_waits: list[float] = []

    @contextmanager
    def connection(self, slot_wait_s: float = 30.0) -> Iterator[Any]:
        self.slot_waits.append(slot_wait_s)
        if self.busy:
            raise errors.Unavailable("database pool exhausted", code="database_busy")
        yield self

    def run(self, sql: str, **params: Any) -> Any:
        assert sql == "SELECT clock_timestamp()"
        self.read += 1
        return [[START + self.ahead]]


def instance(ahead_s: float) -> tuple[Runtime, Database]:
    rt = Runtime(Settings.from_env({}, component="devices"), clock=lambda: START)
    db = Database(dt.timedelta(seconds=ahead_s))
    rt.__dict__["db"] = db  # the cached property, made
    return rt, db


def test_now_is_the_instance_clock_moved_to_the_databases_and_read_once_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: ticks[0])
    rt, db = instance(-50.0)
    assert rt.now() == START - dt.timedelta(seconds=50)
    assert rt.now() == START - dt.timedelta(seconds=50)
    assert db.read == 1
    assert db.slot_waits == [0.0]  # never waits for a slot: its caller may hold the others
    db.ahead = dt.timedelta(seconds=2)  # the instance's clock stepped
    ticks[0] += runtime_module.CLOCK_READ_TTL_S + 1
    assert rt.now() == START + dt.timedelta(seconds=2)
    assert db.read == 2


def test_a_database_that_cannot_be_asked_leaves_the_last_reading_and_is_asked_again_next_time() -> None:
    rt, db = instance(30.0)
    db.busy = True
    assert rt.now() == START  # never read: the instance's own
    db.busy = False
    assert rt.now() == START + dt.timedelta(seconds=30)
    assert db.read == 1


def test_an_instance_far_off_the_database_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "lockwise.core.runtime")
    rt, _ = instance(0.5)
    rt.now()
    assert caplog.records == []
    rt, _ = instance(-3.0)
    rt.now()
    [record] = caplog.records
    assert record.fields == {"database_ahead_s": -3.0}  # type: ignore[attr-defined]
