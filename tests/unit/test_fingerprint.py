"""Landmark fingerprints: the served, vectorised code gives exactly the hashes of the plain per-peak loop it
replaced, so fingerprints stored before the change still match (no model, no service)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from lockwise.voice.model import fingerprint as fp
from lockwise.voice.model.resample import resample
from tests.voices import speech_like


def reference_landmarks(samples: npt.NDArray[np.floating[Any]], rate: int) -> npt.NDArray[np.int32]:
    """The first implementation, kept as the definition: a sliding-window maximum and one loop per peak."""
    wave = np.asarray(samples, dtype=np.float32)
    if rate != fp.RATE:
        wave = resample(wave, rate, fp.RATE)
    if len(wave) < fp.N_FFT:
        return np.zeros((0, 2), dtype=np.int32)
    frames = np.lib.stride_tricks.sliding_window_view(wave, fp.N_FFT)[:: fp.HOP]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(fp.N_FFT).astype(np.float32), axis=1))
    db = 20 * np.log10(spectrum[:, fp.LOW_BIN : fp.HIGH_BIN] + 1e-9)
    loud = db > db.max() - fp.FLOOR_DB
    db = db - np.median(db, axis=0, keepdims=True)

    def max_filter(x: npt.NDArray[np.float32], radius: int, axis: int) -> npt.NDArray[np.float32]:
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, constant_values=-np.inf)
        out: npt.NDArray[np.float32] = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis).max(
            axis=-1
        )
        return out

    local_max = max_filter(max_filter(db, fp.PEAK_FRAMES, axis=0), fp.PEAK_BINS, axis=1)
    peaks = (
        (db == local_max)
        & loud
        & (db > np.median(db, axis=1, keepdims=True) + fp.PEAK_OVER_MEDIAN_DB)
        & (db > fp.PEAK_OVER_BIN_MEDIAN_DB)
    )
    times, bins = np.nonzero(peaks)
    rows = []
    for i in range(len(times)):
        ahead = slice(i + 1, min(len(times), i + 1 + 8 * fp.FAN_OUT))
        dt, df = times[ahead] - times[i], bins[ahead] - bins[i]
        keep = (dt >= 1) & (dt <= fp.PAIR_FRAMES) & (np.abs(df) <= fp.PAIR_BINS)
        dt, df = dt[keep][: fp.FAN_OUT], df[keep][: fp.FAN_OUT]
        if len(dt):
            hashes = (bins[i] << 13) | ((df + fp.PAIR_BINS) << 6) | dt
            rows.append(np.stack([hashes, np.full_like(hashes, times[i])], axis=1))
    if not rows:
        return np.zeros((0, 2), dtype=np.int32)
    out = np.concatenate(rows).astype(np.int32)
    return out[np.argsort(out[:, 0], kind="stable")]


CLIPS = [
    ("speech 3 s at 44.1 kHz", lambda: (speech_like(3.0, rate=44100, seed=3), 44100)),
    ("speech 15 s at 44.1 kHz", lambda: (speech_like(15.0, rate=44100, seed=4), 44100)),
    ("speech 2 s at 16 kHz", lambda: (speech_like(2.0, rate=16000, seed=5), 16000)),
    ("speech 1 s at 8 kHz", lambda: (speech_like(1.0, rate=8000, seed=6), 8000)),
    ("loud noise", lambda: (np.random.default_rng(1).standard_normal(3 * 44100).astype(np.float32) * 0.5, 44100)),
    ("faint noise", lambda: (np.random.default_rng(2).standard_normal(2 * 44100).astype(np.float32) * 1e-4, 44100)),
    ("silence", lambda: (np.zeros(44100, dtype=np.float32), 44100)),
    ("shorter than a frame", lambda: (speech_like(0.03, rate=8000, seed=7), 8000)),
]


@pytest.mark.parametrize("make", [make for _, make in CLIPS], ids=[name for name, _ in CLIPS])
def test_landmarks_equal_the_reference_loop(make: Any) -> None:
    samples, rate = make()
    served, reference = fp.landmarks(samples, rate), reference_landmarks(samples, rate)
    assert served.dtype == np.int32 and served.shape[1:] == (2,)
    np.testing.assert_array_equal(served, reference)


def test_a_clip_matches_itself_far_above_chance() -> None:
    clip = speech_like(3.0, rate=44100, seed=8)
    other = np.random.default_rng(9).standard_normal(3 * 44100).astype(np.float32) * 0.3
    scores = fp.match_scores(fp.landmarks(clip, 44100), [fp.landmarks(clip, 44100), fp.landmarks(other, 44100)])
    assert scores[0] > fp.REPLAY_Z > scores[1]
