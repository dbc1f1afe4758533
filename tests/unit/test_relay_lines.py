"""The relay's waiting events: one line per lock, served in turn, each bounded (no services needed)."""

from __future__ import annotations

import threading

from mqtt_relay.lines import Lines


def test_a_flooding_lock_gets_its_turn_and_no_more() -> None:
    """Attack run: 100,000 messages of one lock stood in front of another lock's ack, past its command's expiry."""
    lines: Lines[str] = Lines(per_lock=500)
    queued = sum(lines.put("flooder", f"f{i}") for i in range(10_000))
    assert queued == 500 and lines.qsize() == 500  # the rest refused: the caller drops them, counted
    assert lines.put("victim", "ack")
    first = lines.take(100, timeout_s=0)
    assert "ack" in first[:2] and len(first) == 100  # in the first batch, at its turn
    assert lines.take(1000, timeout_s=0) == [f"f{i}" for i in range(99, 500)]  # a lock's order kept
    assert lines.empty()


def test_locks_are_served_in_turn_in_their_own_order() -> None:
    lines: Lines[str] = Lines(per_lock=10)
    for lock, n in (("a", 3), ("b", 1), ("c", 2)):
        for i in range(n):
            assert lines.put(lock, f"{lock}{i}")
    assert lines.take(4, timeout_s=0) == ["a0", "b0", "c0", "a1"]
    assert lines.take(10, timeout_s=0) == ["c1", "a2"]
    assert lines.take(10, timeout_s=0.01) == []


def test_a_waiting_taker_wakes_when_an_event_comes() -> None:
    lines: Lines[str] = Lines(per_lock=10)
    got: list[list[str]] = []
    taker = threading.Thread(target=lambda: got.append(lines.take(5, timeout_s=5)))
    taker.start()
    lines.put("a", "late")
    taker.join(5)
    assert got == [["late"]]
