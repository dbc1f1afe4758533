"""Percentile and median without numpy's own (whose first call imports numpy.ma): equal to numpy's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lockwise.voice import order_statistics


@pytest.mark.parametrize("n", [1, 2, 7, 150, 751])
def test_percentile_is_numpys(n: int) -> None:
    values = np.random.default_rng(n).normal(-30.0, 12.0, n)
    for q in (0, 5, 50, 95, 99.9, 100):
        want = float(np.percentile(values, q))
        assert order_statistics.percentile(values, q) == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("shape", [(7, 5), (8, 6), (1, 4), (2, 1)])
@pytest.mark.parametrize("axis", [0, 1])
def test_the_median_is_numpys(shape: tuple[int, int], axis: int) -> None:
    x = np.random.default_rng(sum(shape) + axis).normal(0, 20, shape).astype(np.float32)
    x[0, 0] = x[-1, -1]  # ties
    ours = order_statistics.median(x, axis=axis)
    theirs = np.median(x, axis=axis, keepdims=True)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


def test_checking_and_fingerprinting_a_clip_do_not_import_numpy_ma() -> None:
    """np.median's and np.percentile's first calls import numpy.ma (~10 ms each cold start): a verify request checks
    its clip's speech level, then fingerprints it beside its first forward pass."""
    script = (
        "import sys, numpy as np\n"
        "from lockwise.voice import audio\n"
        "from lockwise.voice.model import fingerprint\n"
        "clip = np.random.default_rng(0).normal(0, 0.1, 44100 * 2).astype(np.float32)\n"
        "audio.speech_seconds(clip, 44100)\n"
        "fingerprint.landmarks(clip, 44100)\n"
        "print('numpy.ma' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
