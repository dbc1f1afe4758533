"""A replay's path, simulated: a recording played through a loudspeaker into a room and heard by the lock's microphone.

Each stage is one function of a numpy waveform, so tests and the replay evaluation compose the same channel:
resampling to the loudspeaker's and the microphone's rates (with a clock that runs slightly off), a loudspeaker's
band (high-pass and low-pass), a room (direct path plus an exponentially decaying diffuse tail with a given RT60,
Polack's model), additive noise at a given SNR, gain with clipping, and a start that does not fall on the original's
first sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.voice.model.resample import resample

F32 = npt.NDArray[np.float32]


def band(x: F32, rate: int, low_hz: float, high_hz: float) -> F32:
    """Keep ``low_hz``-``high_hz`` with 2nd-order-like slopes (a small loudspeaker), in the frequency domain."""
    spectrum = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / rate)
    gain = 1 / np.sqrt(1 + (low_hz / np.maximum(f, 1e-3)) ** 4) / np.sqrt(1 + (f / high_hz) ** 4)
    return np.fft.irfft(spectrum * gain, n=len(x)).astype(np.float32)


def room(x: F32, rate: int, rt60_s: float, rng: np.random.Generator, direct_to_reverb_db: float = 0.0) -> F32:
    """Convolve with a synthetic room response: a direct path and a diffuse tail decaying 60 dB in ``rt60_s``."""
    n = int(rate * rt60_s)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * 10 ** (-3 * t / rt60_s)
    tail[: int(0.003 * rate)] = 0  # first reflections arrive after a few ms
    tail *= 10 ** (-direct_to_reverb_db / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    size = len(x) + n - 1
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(tail, size), n=size)[: len(x)]
    out: F32 = (wet / max(1e-9, float(np.max(np.abs(wet)))) * float(np.max(np.abs(x)))).astype(np.float32)
    return out


def noise(x: F32, snr_db: float, rng: np.random.Generator) -> F32:
    """Add white noise ``snr_db`` below the clip's speech power (power of its louder half)."""
    power = float(np.sort(x.astype(np.float64) ** 2)[len(x) // 2 :].mean())
    out: F32 = (x + rng.standard_normal(len(x)) * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)
    return out


def gain(x: F32, factor: float) -> F32:
    out: F32 = np.clip(x * factor, -1.0, 1.0).astype(np.float32)
    return out


@dataclass(frozen=True)
class Channel:
    """One replay condition. ``clock`` is the playback speed (1.005: the player's clock 0.5% fast)."""

    name: str
    rate_out: int = 44_100
    low_hz: float = 200.0
    high_hz: float = 3_600.0
    rt60_s: float = 0.3
    snr_db: float = 20.0
    gain: float = 0.7
    clock: float = 1.0
    skip_s: float = 0.137

    def __call__(self, x: npt.NDArray[np.floating[Any]], rate: int, rng: np.random.Generator) -> F32:
        """``x`` at ``rate`` as the lock records it at ``rate_out``."""
        y = np.asarray(x, dtype=np.float32)
        played_rate = int(round(rate * self.clock))
        y = resample(y, played_rate, 48_000)  # the player's clock: the clip comes out faster or slower
        y = band(y, 48_000, self.low_hz, self.high_hz)
        if self.rt60_s > 0:
            y = room(y, 48_000, self.rt60_s, rng)
        y = resample(y, 48_000, self.rate_out)
        y = y[int(self.skip_s * self.rate_out) :]
        y = noise(y, self.snr_db, rng)
        return gain(y / max(1e-9, float(np.max(np.abs(y)))), self.gain)


CONDITIONS = (
    Channel("speaker + small room, 20 dB SNR"),
    Channel("dry, phone band, 30 dB SNR", low_hz=300, high_hz=3_400, rt60_s=0.0, snr_db=30),
    Channel("reverberant room (RT60 0.6 s)", rt60_s=0.6),
    Channel("noisy (10 dB SNR)", snr_db=10),
    Channel("loud, some clipping (gain 1.5)", gain=1.5),
    Channel("quiet (gain 0.05)", gain=0.05),
    Channel("player clock 0.5% fast", clock=1.005),
    Channel("worst: RT60 0.6 s, 10 dB SNR, clock 0.5% slow", rt60_s=0.6, snr_db=10, clock=0.995),
)
