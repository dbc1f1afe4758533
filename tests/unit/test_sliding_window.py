"""The wait a client is told once a sliding window is full (``sliding_window.wait_s``): a lock's signed requests
in a sliding minute."""

from __future__ import annotations

import pytest

from lockwise.devices.sliding_window import wait_s


@pytest.mark.parametrize(
    ("current", "previous", "elapsed", "most", "wait"),
    [
        (0, 10_000, 10.0, 10, 50),  # the previous minute's share must shrink to 9: 59.946 s into this one
        (9, 1, 30.0, 10, 30),  # room for the 10th once the previous minute has left the window
        (10, 0, 30.0, 10, 36),  # this minute full: 6 s into the next, its share of this one leaves room
        (120, 0, 0.5, 120, 60),
        (0, 0, 0.0, 10, 1),  # nothing counted (a parallel burst took the room): ask again at once
    ],
)
def test_the_wait_is_until_one_more_request_fits_the_last_60_s(
    current: int, previous: int, elapsed: float, most: int, wait: int
) -> None:
    assert wait_s(current, previous, elapsed, most) == wait
