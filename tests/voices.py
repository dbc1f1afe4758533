"""Audio for the tests: real speech from the corpus (``spoken``), and synthetic speech-like signals.

``spoken`` gives recordings of one real speaker (Debian's Asterisk prompts, ``infra.voice.corpus``) at the lock's
44.1 kHz: what enrollment takes, since it refuses samples in which its voice activity model hears no voice.

``speech_like`` is a voiced-looking signal (harmonics of a wavering fundamental under a 4 Hz syllable envelope, with a
little noise): loud enough, long enough and unclipped, so it passes intake's checks, which are about level. The voice
activity model hears little or no voice in it (README "Audio intake"), so it serves the tests of decoding, intake
and the door's plumbing, never an enrollment's.
"""

from __future__ import annotations

import base64
import functools
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lockwise.voice import audio
from lockwise.voice.audio import Clip, to_wav
from lockwise.voice.model.resample import resample

LOCK_RATE = audio.DEFAULT_RATE  # what a lock sends
CORPUS_CACHE = Path(os.environ.get("LOCKWISE_CORPUS_CACHE", Path.home() / ".cache" / "lockwise" / "corpus"))


@functools.cache
def corpus_dir() -> Path:
    """The real-speech corpus, one folder per speaker (built on first use, then cached with its .debs in
    ``CORPUS_CACHE``; ``./dev setup`` builds it)."""
    from infra.voice import corpus as corpus_builder

    return corpus_builder.build(CORPUS_CACHE / "asterisk", CORPUS_CACHE / "debs")


@functools.cache
def wideband_dir() -> Path:
    """Four of the corpus's voices recorded at 16 kHz (the G.722 packages; ``infra.voice.corpus --wideband``): the
    band a lock's microphone hears. Built on first use and cached beside the corpus."""
    from infra.voice import corpus as corpus_builder

    return corpus_builder.build_wideband(CORPUS_CACHE / "wideband", CORPUS_CACHE / "debs")


@functools.cache
def spoken(speaker: str = "allison", n: int = 5, start: int = 0) -> tuple[npt.NDArray[np.float32], ...]:
    """``n`` recordings of one real ``speaker``, each of 3-12 s holding at least 2.5 s of speech (enough for any
    encoder's enrollment floor), the ``start``-th such clip of theirs first, resampled to 44.1 kHz."""
    found: list[npt.NDArray[np.float32]] = []
    for path in sorted((corpus_dir() / speaker).glob("*.wav")):
        clip = audio.parse_wav(path.read_bytes())
        if 3.0 <= clip.seconds <= 12.0 and audio.speech_seconds(clip.samples, clip.rate) >= 2.5:
            take = resample(clip.samples, clip.rate, LOCK_RATE)
            take.flags.writeable = False  # cached and shared between tests
            found.append(take)
        if len(found) == start + n:
            return tuple(found[start:])
    raise LookupError(f"the corpus has {len(found)} usable clips of {speaker!r}, not {start + n}")


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


def pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def wav(samples: npt.NDArray[np.float32], rate: int = 44100) -> bytes:
    return to_wav(Clip(samples, rate))


def pcm_json(samples: npt.NDArray[np.float32], rate: int = 44100) -> dict[str, object]:
    return {"pcm_base64": base64.b64encode(pcm16(samples)).decode(), "sample_rate": rate}


def noises(seconds: float = 4.0, rate: int = LOCK_RATE, seed: int = 0) -> dict[str, npt.NDArray[np.float32]]:
    """Sounds that are not a voice, each loud for most of its length (intake's level checks and its energy measure
    of speech pass them all) and at a 0.3 peak: broadband noises, a fan, mains hum, tones, rain, noise swelling at a
    syllable's rate, a buzz, a chirp."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    bins = np.arange(n // 2 + 1, dtype=np.float64)
    white = rng.standard_normal(n)
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.maximum(1.0, bins)), n)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(rate // 10) / (rate // 10), "same")
    fan = np.fft.irfft(np.fft.rfft(white) / np.maximum(1.0, bins / 30.0), n) + 0.3 * np.sin(2 * np.pi * 50 * t)
    sounds = {
        "white": white,
        "pink": pink,
        "brown": brown,
        "fan": fan * np.std(white) / np.std(fan),
        "hum": sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((100, 200, 300, 400, 500), 1)) + 0.05 * white,
        "tone": np.sin(2 * np.pi * 440 * t),
        "chord": sum(np.sin(2 * np.pi * f * t) for f in (150, 300, 450)),
        "rain": white * (rng.random(n) < 0.01) * 5 + 0.3 * white,
        "swelling noise": pink * (1.2 + np.sin(2 * np.pi * 4 * t)),
        "buzz": ((t * 120) % 1 - 0.5) * (1.2 + np.sin(2 * np.pi * 5 * t)),
        "chirp": np.sin(2 * np.pi * (200 + 300 * t) * t),
    }
    return {name: np.asarray(0.3 * x / np.abs(x).max(), dtype=np.float32) for name, x in sounds.items()}
