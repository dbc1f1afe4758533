"""``lockwise.core.shared_reads``: one read at a time, shared by the callers that asked meanwhile, never older than
the call."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lockwise.core.shared_reads import SharedRead


def _waiting(shared: SharedRead[int], n: int, timeout_s: float = 10.0) -> None:
    """Until ``n`` callers wait on ``shared`` (its condition's waiters: the callers that asked while a read ran)."""
    deadline = time.monotonic() + timeout_s
    while len(shared._changed._waiters) < n:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the callers never waited"
        time.sleep(0.01)


def test_callers_asking_during_a_read_share_the_next_one() -> None:
    reads: list[int] = []
    first_may_end = threading.Event()

    def read() -> int:
        reads.append(len(reads) + 1)
        if len(reads) == 1:
            assert first_may_end.wait(10)
        return len(reads)

    shared = SharedRead(read)
    with ThreadPoolExecutor(21) as pool:
        first = pool.submit(shared.get)
        while not reads:
            time.sleep(0.01)
        later = [pool.submit(shared.get) for _ in range(20)]
        _waiting(shared, 20)
        first_may_end.set()
        assert first.result(10) == 1
        answers = [f.result(10) for f in later]
    assert reads == [1, 2]  # twenty callers, one read begun after they asked
    assert answers == [2] * 20  # none given the read that began before it asked


def test_a_caller_after_a_read_ended_gets_a_new_one() -> None:
    count = iter(range(1, 100))
    shared = SharedRead(lambda: next(count))
    assert [shared.get(), shared.get(), shared.get()] == [1, 2, 3]


def test_what_a_shared_read_raised_is_raised_to_each_caller_and_the_next_read_runs() -> None:
    reads = 0
    first_may_end = threading.Event()

    def read() -> int:
        nonlocal reads
        reads += 1
        if reads == 1:
            assert first_may_end.wait(10)
            return 1
        if reads == 2:
            raise ConnectionError("database away")
        return reads

    shared = SharedRead(read)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(shared.get)
        while not reads:
            time.sleep(0.01)
        later = [pool.submit(shared.get) for _ in range(3)]
        _waiting(shared, 3)
        first_may_end.set()
        assert first.result(10) == 1
        for f in later:
            with pytest.raises(ConnectionError, match="database away"):
                f.result(10)
    assert shared.get() == 3
