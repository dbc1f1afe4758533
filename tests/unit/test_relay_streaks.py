"""A failure repeated each round is logged at its start, once a minute while it lasts, and at its end."""

from __future__ import annotations

import logging

import pytest

from mqtt_relay.streaks import FailureStreak


def test_a_failure_repeated_every_second_for_ten_minutes_is_a_dozen_lines_not_six_hundred(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    streak = FailureStreak(logging.getLogger("test.streak"), "delivery round", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.streak")
    for _ in range(600):
        try:
            raise ConnectionRefusedError("database away")
        except ConnectionRefusedError as exc:
            streak.failed(exc)
        now[0] += 1.0
    streak.succeeded()
    streak.succeeded()  # a round after: nothing more to say
    lines = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines[0] == (logging.ERROR, "delivery round failed; retrying", True)  # its first, with the traceback
    reminders = lines[1:-1]
    assert len(reminders) == 9 and all(
        r == (logging.ERROR, "delivery round still failing; retrying", False) for r in reminders
    )
    assert lines[-1] == (logging.INFO, "delivery round works again", False)
    assert caplog.records[-1].fields == {"failures": 600, "for_s": 600.0}  # type: ignore[attr-defined]
    # and a new streak starts again with its traceback
    try:
        raise TimeoutError("again")
    except TimeoutError as exc:
        streak.failed(exc)
    assert (
        caplog.records[-1].exc_info is not None and caplog.records[-1].getMessage() == "delivery round failed; retrying"
    )


def test_a_failure_of_another_kind_within_a_streak_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Attack run 122: a streak begun by the database going away and kept going by another failure once it was back
    (a bug meeting a row, each round) showed only the first failure's traceback, the other's type's name once a
    minute. Each type's first in a streak is logged with its traceback, each type once."""
    now = [0.0]
    streak = FailureStreak(logging.getLogger("test.streak"), "delivery round", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.streak")
    for second in range(600):
        try:
            if second < 30:
                raise ConnectionRefusedError("database away")
            raise KeyError("a bug meeting a row") if second % 2 else ValueError("another")
        except (ConnectionRefusedError, KeyError, ValueError) as exc:
            streak.failed(exc)
        now[0] += 1.0
    tracebacks = [(r.exc_info[0], r.getMessage()) for r in caplog.records if r.exc_info is not None]
    assert tracebacks == [
        (ConnectionRefusedError, "delivery round failed; retrying"),
        (ValueError, "delivery round failing another way; retrying"),
        (KeyError, "delivery round failing another way; retrying"),
    ]
    assert len(caplog.records) <= 3 + 10
