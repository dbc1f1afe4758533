"""Limits over a sliding window, counted in clock-aligned buckets: the current bucket's count plus the share of the
previous bucket's still within the window, as if its requests had come evenly (a sliding-window counter, two rows a
key). Counted per clock bucket alone, twice a limit passed in a few seconds across a bucket's turn (attack run 41: a
lock's signed requests a minute). Not exact: the previous bucket's requests all at its very end leave room for just
under the limit again within one window, twice the limit in the worst case, though never in seconds; a limit that
must hold in any window keeps a row a request (the pairing attempts: ``provisioning.reserve_pairing_attempt``)."""

from __future__ import annotations

import math

#: the window's length, and its buckets': a clock minute
WINDOW_S = 60


def wait_s(current: int, previous: int, elapsed: float, most: int) -> int:
    """Whole seconds until one more fits ``most`` in the sliding minute: ``current`` counted in this clock minute,
    ``elapsed`` seconds into it, and ``previous`` in the one before, of which the share still within the last 60 s
    counts."""
    if current + 1 <= most and previous:  # this minute has room: wait for the previous one's share to shrink
        return max(1, math.ceil(WINDOW_S * (1 - (most - current - 1) / previous) - elapsed))
    if current + 1 > most and current:  # the next minute, once this one's share of it leaves room for one
        return max(1, math.ceil(WINDOW_S - elapsed + WINDOW_S * max(0.0, 1 - (most - 1) / current)))
    return 1
