"""Percentile and median as numpy computes them, for the start-up path: the first call of ``np.percentile`` or
``np.median`` imports ``numpy.ma`` (~10 ms), which a cold instance would pay in its first request (the speech-level
check of every clip, the replay fingerprint beside the first forward pass)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def percentile(values: npt.NDArray[np.float64], q: float) -> float:
    """``np.percentile(values, q)`` (numpy's default, linear interpolation between the two nearest ranks) for a
    non-empty 1-D array."""
    ordered = np.sort(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def median(x: npt.NDArray[np.float32], axis: int) -> npt.NDArray[np.float32]:
    """``np.median(x, axis, keepdims=True)`` for finite float32 values (the mean of the two middle values when their
    count is even)."""
    n = x.shape[axis]
    half = n // 2
    part = np.partition(x, [half - 1, half] if n % 2 == 0 else half, axis=axis)
    upper = np.take(part, [half], axis=axis)
    if n % 2:
        return upper
    return ((np.take(part, [half - 1], axis=axis) + upper) / 2).astype(np.float32, copy=False)
