"""Synthetic speech-like audio for the plumbing tests (real speech comes from the corpus tests).

A voiced signal: harmonics of a wavering fundamental under a 4 Hz syllable envelope, with a little noise. It is loud
enough, long enough and unclipped, so it passes intake; ``f0`` and ``seed`` make different "voices".
"""

from __future__ import annotations

import base64

import numpy as np
import numpy.typing as npt

from lockwise.voice.audio import Clip, to_wav


def speech_like(
    seconds: float = 3.0,
    rate: int = 44100,
    f0: float = 140.0,
    seed: int = 0,
    vibrato_hz: float = 0.7,
    syllables_hz: float = 4.0,
) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * vibrato_hz * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum((0.6 / k) * np.sin(k * phase + rng.uniform(0, 6)) for k in range(1, 12))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * syllables_hz * t + rng.uniform(0, 6))
    signal = 0.25 * voice * envelope + 0.005 * rng.standard_normal(len(t))
    return np.asarray(signal / max(1.0, float(np.abs(signal).max()) / 0.8), dtype=np.float32)


def takes(n: int = 5, f0: float = 140.0, seed: int = 1) -> list[npt.NDArray[np.float32]]:
    """``n`` takes of one synthetic voice (``f0``), each a recording of its own: enrollment refuses copies of one
    recording, at any gain (their replay fingerprints match), and takes differing in their random phases only match
    too (z 80-145 against a replay threshold of 105), so each also speaks a little higher, with its own vibrato and
    syllable rate (z 4-37). The first is ``speech_like(f0=f0, seed=seed)``."""
    return [
        speech_like(
            3.0, f0=f0 * (1 + 0.02 * k), seed=seed + 1000 * k, vibrato_hz=0.7 + 0.15 * k, syllables_hz=4 + 0.5 * k
        )
        for k in range(n)
    ]


def pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def wav(samples: npt.NDArray[np.float32], rate: int = 44100) -> bytes:
    return to_wav(Clip(samples, rate))


def pcm_json(samples: npt.NDArray[np.float32], rate: int = 44100) -> dict[str, object]:
    return {"pcm_base64": base64.b64encode(pcm16(samples)).decode(), "sample_rate": rate}
