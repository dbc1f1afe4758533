"""What every encoder checks of the audio it is handed (torch-free): mono float samples, finite, a sane rate."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.core.errors import InvalidAudio
from lockwise.voice.model.model_files import MIN_SAMPLES_16K


def mono_float32(samples: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Mono float samples of shape (n,) -> contiguous float32 of shape (n,); ``InvalidAudio`` otherwise."""
    array = np.asarray(samples)
    if array.ndim != 1:
        raise InvalidAudio(f"expected mono samples of shape (n,), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidAudio(f"expected float samples in [-1, 1], got {array.dtype}")
    wave = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise InvalidAudio("audio holds NaN or infinite samples")
    return wave


def at_least_40ms(wave16k: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``wave16k`` itself if it holds at least 40 ms at 16 kHz (``MIN_SAMPLES_16K``); ``InvalidAudio`` if not."""
    if wave16k.shape[0] < MIN_SAMPLES_16K:
        raise InvalidAudio(f"audio too short: {wave16k.shape[0] / 16:.0f} ms, need at least 40 ms")
    return wave16k


def sample_rate(value: object) -> int:
    """A positive integer rate in Hz; ``InvalidAudio`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise InvalidAudio(f"sample rate must be a positive integer, not {value!r}")
    return int(value)
