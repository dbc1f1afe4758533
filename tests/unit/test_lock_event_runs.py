"""A broker run a lock chose (its last will's, which the broker plugin does not tag) is not taken, and not written to
the log once per event."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from lockwise.core import log as lwlog
from lockwise.devices import lock_events


def test_runs_not_taken_are_counted_not_logged_one_by_one(capsys: pytest.CaptureFixture[str]) -> None:
    """A lock's last will keeps the user properties the lock chose, a broker run among them; one far ahead was a
    WARNING line of its own per event, and a lock reconnecting in a loop has its will sent at its allowance's pace, 20
    a second: 1.7M lines a day (attack run 120). Written to stdout as the function writes it."""
    now = dt.datetime.now(dt.UTC)
    ahead = int((now + dt.timedelta(days=365)).timestamp() * 1_000_000)
    lwlog.configure("unit-test")
    try:
        taken = [lock_events.taken_run(ahead, now) for _ in range(2_001)]
        taken.append(lock_events.taken_run(ahead - 365 * 86_400 * 1_000_000, now))  # a run of now: taken
        out = capsys.readouterr().out
    finally:
        logging.getLogger().handlers.clear()
    assert taken[:-1] == [None] * 2_001 and taken[-1] is not None
    lines = [line for line in out.splitlines() if "broker run not taken" in line]
    assert 1 <= len(lines) <= 3, len(lines)
    assert len(out.encode()) < 2_000
