"""The relay's waiting events: one line per lock, served in turn, each bounded (no services needed)."""

from __future__ import annotations

import threading

from mqtt_relay.lines import Lines


def test_a_flooding_lock_gets_its_turn_and_no_more() -> None:
    """Attack run: 100,000 messages of one lock stood in front of another lock's ack, past its command's expiry."""
    lines: Lines[str] = Lines(per_lock=500, per_lock_bytes=10**9)
    queued = sum(lines.put("flooder", f"f{i}", 1) for i in range(10_000))
    assert queued == 500 and lines.qsize() == 500  # the rest refused: the caller drops them, counted
    assert lines.put("victim", "ack", 1)
    first = lines.take(100, timeout_s=0)
    assert "ack" in first[:2] and len(first) == 100  # in the first batch, at its turn
    assert lines.take(1000, timeout_s=0) == [f"f{i}" for i in range(99, 500)]  # a lock's order kept
    assert lines.empty()


def test_locks_are_served_in_turn_in_their_own_order() -> None:
    lines: Lines[str] = Lines(per_lock=10, per_lock_bytes=10**9)
    for lock, n in (("a", 3), ("b", 1), ("c", 2)):
        for i in range(n):
            assert lines.put(lock, f"{lock}{i}", 1)
    assert lines.take(4, timeout_s=0) == ["a0", "b0", "c0", "a1"]
    assert lines.take(10, timeout_s=0) == ["c1", "a2"]
    assert lines.take(10, timeout_s=0.01) == []


def test_a_waiting_taker_wakes_when_an_event_comes() -> None:
    lines: Lines[str] = Lines(per_lock=10, per_lock_bytes=10**9)
    got: list[list[str]] = []
    taker = threading.Thread(target=lambda: got.append(lines.take(5, timeout_s=5)))
    taker.start()
    lines.put("a", "late", 1)
    taker.join(5)
    assert got == [["late"]]


def test_a_line_is_bounded_in_bytes_too() -> None:
    """Attack run: twelve locks' bursts of 16 KiB messages, each within the count, filled the broker's queue for the
    relay, which dropped another lock's report. A line holds at most ``per_lock_bytes``; past it the lock's next
    events are refused at once, however few."""
    lines: Lines[str] = Lines(per_lock=500, per_lock_bytes=64 * 1024)
    queued = sum(lines.put("big", f"b{i}", 16 * 1024) for i in range(100))
    assert queued == 4 and lines.put("small", "s", 200)
    assert not lines.put("small", "huge", 64 * 1024)  # over what the rest of its line may hold
    assert lines.take(10, timeout_s=0) == ["b0", "s", "b1", "b2", "b3"]
    assert lines.put("big", "again", 16 * 1024)  # room once its line moved
