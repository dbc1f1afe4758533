"""The broker's message expiry of each command is its time left at its own wave of a round, not at the round's start
(the note of stop 65: a round's later waves, up to ``ROUND_BUDGET_S`` on, gave the broker a command's expiry as it
was when the round began). A fast check of the waves; the relay's rounds run against real PostgreSQL and Mosquitto
in ``tests/integration/test_command_delivery.py`` and ``tests/e2e/test_relay.py``."""

from __future__ import annotations

import time

import pytest

from mqtt_relay import outbox
from mqtt_relay.outbox import Delivery


class Broker:
    """Takes every message; each wave (one broker round trip) takes ``wave_s`` of a clock the test moves."""

    def __init__(self, clock: list[float], wave_s: float) -> None:
        self.clock, self.wave_s = clock, wave_s
        self.waves: list[list[tuple[str, int]]] = []

    def __call__(self, messages: list[tuple[str, str, int]]) -> list[bool]:
        self.waves.append([(payload, expires_in_s) for _, payload, expires_in_s in messages])
        self.clock[0] += self.wave_s
        return [True] * len(messages)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def test_each_wave_gives_the_broker_the_time_left_then(clock: list[float]) -> None:
    broker = Broker(clock, wave_s=1.5)
    due = [
        (Delivery("a1", "A", "lock-a"), "a1", 10.4),
        (Delivery("a2", "A", "lock-a"), "a2", 10.4),
        (Delivery("a3", "A", "lock-a"), "a3", 10.4),
        (Delivery("b1", "B", "lock-b"), "b1", 30.0),
    ]
    published = outbox._in_waves(broker, due, read_at=clock[0] - 0.2)  # read 0.2 s before the first wave
    assert broker.waves == [[("a1", 10), ("b1", 29)], [("a2", 8)], [("a3", 7)]]
    assert [(d.command_id, ok) for d, ok in published] == [("a1", True), ("b1", True), ("a2", True), ("a3", True)]


def test_a_command_whose_time_runs_out_before_its_wave_is_not_published_nor_any_later_one_of_its_lock(
    clock: list[float],
) -> None:
    broker = Broker(clock, wave_s=2.0)
    due = [
        (Delivery("a1", "A", "lock-a"), "a1", 1.5),
        (Delivery("a2", "A", "lock-a"), "a2", 1.5),  # out of time at its wave, 2 s on
        (Delivery("a3", "A", "lock-a"), "a3", 60.0),
        (Delivery("b1", "B", "lock-b"), "b1", 0.4),  # its last second: goes out, with the broker's least expiry
        (Delivery("c1", "C", "lock-c"), "c1", 9.0),
        (Delivery("c2", "C", "lock-c"), "c2", 9.0),
    ]
    published = outbox._in_waves(broker, due, read_at=clock[0])
    assert broker.waves == [[("a1", 1), ("b1", 1), ("c1", 9)], [("c2", 7)]]
    assert [d.command_id for d, _ in published] == ["a1", "b1", "c1", "c2"]
