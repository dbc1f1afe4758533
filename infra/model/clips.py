"""Deterministic voiced-sounding test clips for the exports' parity checks (numpy only)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def speech_like_clip(rate: int, seconds: float, seed: int) -> npt.NDArray[np.float32]:
    """A deterministic voiced-sounding clip computed at ``rate``: shape (round(rate * seconds),), float32, peak 0.5.

    Harmonics of a wobbling 85-255 Hz fundamental up to 7 kHz under a 2-5 Hz syllable envelope, plus white noise.
    Odd seeds gate everything to digital silence between syllables (exercising the top_db floor); even seeds keep a
    noise floor. The same seed gives the same sound at every rate (noise aside, which is drawn per sample).
    """
    rs = np.random.RandomState(seed)
    t = np.arange(round(rate * seconds)) / rate
    f0, vibrato, syllables = rs.uniform(85, 255), rs.uniform(2, 6), rs.uniform(2, 5)
    voiced = np.zeros_like(t)
    for k in range(1, 80):
        if f0 * k > 7000:
            break
        phase = 2 * np.pi * f0 * k * (t + 0.03 * np.sin(2 * np.pi * vibrato * t) / (2 * np.pi * vibrato))
        voiced += rs.uniform(0.2, 1.0) / k * np.sin(phase + rs.uniform(0, 2 * np.pi))
    envelope = np.sin(2 * np.pi * syllables * t + rs.uniform(0, 2 * np.pi))
    noise = rs.standard_normal(t.shape[0]) * rs.uniform(0.01, 0.1)
    if seed % 2:
        signal = np.maximum(envelope, 0.0) ** 1.5 * (voiced / (np.abs(voiced).max() + 1e-9) + noise)
    else:
        signal = 0.5 * (1 + envelope) * voiced / (np.abs(voiced).max() + 1e-9) + noise
    clip: npt.NDArray[np.float32] = (0.5 * signal / (np.abs(signal).max() + 1e-9)).astype(np.float32)
    return clip
