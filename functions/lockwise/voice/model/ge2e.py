"""GE2E speaker embeddings (Resemblyzer's pretrained weights), run with numpy alone.

The network is Resemblyzer 0.1.4's ``VoiceEncoder``: 40-band mel power spectrogram (25 ms Hann window, 10 ms step,
16 kHz) -> 3-layer LSTM (256 units) -> linear 256 -> ReLU -> L2 norm, applied to 1.6 s partial utterances (160
frames, 1.3 partials a second) whose embeddings are averaged and normalised. Its weights ship inside the PyPI wheel
(``resemblyzer/pretrained.pt``); ``infra.model.ge2e_export`` converts them once, at build time, into ``ge2e.npz``
plus ``manifest.json`` and checks this module against Resemblyzer's own torch forward pass. The npz also holds the
mel filterbank, computed at export by librosa (``librosa.filters.mel``, what Resemblyzer uses), so serving needs
neither torch nor librosa: the STFT and the LSTM are written here.

Preprocessing is the product's, not Resemblyzer's: resampling to 16 kHz with :mod:`lockwise.voice.model.resample`,
loudness raised (never lowered) to -30 dBFS as Resemblyzer does, and long pauses shortened with the energy speech
detector of :mod:`lockwise.voice.audio` instead of webrtcvad. Thresholds are calibrated on this exact pipeline.

The model identity is ``"ge2e-"`` + the first 16 hex digits of the SHA-256 of the original ``pretrained.pt``, so an
export of the same weights is the same model wherever it was made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.core import log as lwlog
from lockwise.voice.audio import speech_frames
from lockwise.voice.model import blas, model_files
from lockwise.voice.model.model_files import ModelError, file_sha256
from lockwise.voice.model.resample import resample
from lockwise.voice.model.samples import at_least_40ms, mono_float32
from lockwise.voice.model.samples import sample_rate as checked_rate

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

MANIFEST = "manifest.json"
WEIGHTS = "ge2e.npz"
FORMAT = 2  # 1: no mel filterbank in the npz (re-export: ./dev does)
SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s
PARTIALS_PER_S = 1.3
MIN_COVERAGE = 0.75
TARGET_DBFS = -30.0
PAUSE_FRAMES = 6  # a pause longer than this many 30 ms frames is shortened (Resemblyzer's vad_max_silence_length)
SMOOTH_FRAMES = 8  # moving average over the speech flags (Resemblyzer's vad_moving_average_width)
VAD_FRAME = 480  # 30 ms at 16 kHz
N_BINS = N_FFT // 2 + 1
MEL_FILTERBANK = "mel_filterbank"  # (N_MELS, N_BINS) float32 in ge2e.npz, from librosa at export
LAYERS = 3
HIDDEN = 256
WEIGHT_NAMES = tuple(
    f"lstm.{kind}_l{layer}" for layer in range(LAYERS) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
) + ("linear.weight", "linear.bias")


# ------------------------------------------------------------------------------------------------ features


@lru_cache(maxsize=1)
def _window() -> F32:
    """Periodic Hann window of N_FFT samples (scipy ``get_window("hann", 400)``, what librosa uses)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def mel_spectrogram(wav: F32, filterbank: F32) -> F32:
    """(n,) float32 at 16 kHz -> (1 + n // 160, 40) float32 mel power spectrogram (librosa's, not log);
    ``filterbank``: the (40, 201) mel matrix stored with the weights."""
    padded = np.pad(wav.astype(np.float32, copy=False), N_FFT // 2)  # center=True, zero padding
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _window(), axis=1)).astype(np.float32) ** 2
    mel: F32 = (power @ filterbank.T).astype(np.float32)
    return mel


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame ranges of the 1.6 s partial utterances (Resemblyzer's ``compute_partial_slices``)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SAMPLE_RATE / PARTIALS_PER_S) / HOP))
    steps = max(1, n_frames - PARTIAL_FRAMES + step + 1)
    slices = [slice(i, i + PARTIAL_FRAMES) for i in range(0, steps, step)]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(slices) > 1:
        slices = slices[:-1]
    return slices


# ------------------------------------------------------------------------------------------------ preprocessing


def raise_volume(wav: F32) -> F32:
    """Scale up to -30 dBFS RMS; louder audio is left alone (Resemblyzer's ``normalize_volume(increase_only)``)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    if rms <= 0:
        return wav
    change_db = TARGET_DBFS - 20 * np.log10(rms)
    return wav if change_db < 0 else (wav * np.float32(10 ** (change_db / 20))).astype(np.float32)


def _preprocessed(wav16k: F32) -> F32:
    """Resemblyzer's ``preprocess_wav`` after its resampling, written once for ``embed`` (serving) and ``embed_many``
    (calibration, the cohort): two copies could drift, and calibration then measure another model than the one
    served (a review)."""
    return shorten_pauses(raise_volume(at_least_40ms(wav16k)))


def shorten_pauses(wav: F32) -> F32:
    """Drop pauses longer than 180 ms, keeping speech and the short gaps around it (Resemblyzer's
    ``trim_long_silences``, with the product's energy speech detector in place of webrtcvad)."""
    usable = len(wav) - len(wav) % VAD_FRAME
    if usable < VAD_FRAME:
        return wav
    flags = speech_frames(wav[:usable], VAD_FRAME).astype(np.float64)
    width = SMOOTH_FRAMES
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    sums = np.cumsum(padded)
    sums[width:] = sums[width:] - sums[:-width]
    smooth = np.round(sums[width - 1 :] / width).astype(bool)
    # dilation: keep every frame within PAUSE_FRAMES // 2 of speech (scipy binary_dilation, ones(PAUSE_FRAMES + 1))
    keep = np.convolve(smooth.astype(np.float64), np.ones(PAUSE_FRAMES + 1), mode="same") > 0.5
    if not keep.any():
        return wav[:usable]
    return wav[:usable][np.repeat(keep, VAD_FRAME)]


# ------------------------------------------------------------------------------------------------ network


#: partial windows in one forward pass from which BLAS may use every core (a 3 s clip has about 3)
THREADED_BATCH = 64


class Ge2eNetwork:
    """The LSTM + linear + ReLU forward pass on a batch of partial mel spectrograms, in float32 numpy (made by
    ``Ge2eEncoder``, which has numpy's BLAS run on one thread: ``lockwise.voice.model.blas``)."""

    def __init__(self, weights: dict[str, F32]) -> None:
        self.layers = [
            _gates_for_tanh(
                weights[f"lstm.weight_ih_l{i}"].T,
                weights[f"lstm.weight_hh_l{i}"].T,
                weights[f"lstm.bias_ih_l{i}"] + weights[f"lstm.bias_hh_l{i}"],
            )
            for i in range(LAYERS)
        ]
        self.linear_t = np.ascontiguousarray(weights["linear.weight"].T)
        self.linear_b = weights["linear.bias"]

    def __call__(self, mels: F32) -> F32:
        """(batch, frames, 40) -> (batch, 256) unit-norm partial embeddings.

        A clip or a few run on the process's one BLAS thread: the 480 small recurrent products are ~10x slower when
        BLAS threads contend with other work on a 2-core instance (measured 1.3 s vs 0.13 s for a 3 s clip). A large
        batch (calibration's ``embed_many``) has products big enough to share: every core (64 clips: 3.0-4.1 s on
        one thread, 2.0-2.1 s on two)."""
        if len(mels) < THREADED_BATCH:
            return self._forward(mels)
        with blas.every_core():
            return self._forward(mels)

    def _forward(self, mels: F32) -> F32:
        x = mels
        batch, frames, _ = mels.shape
        h = np.zeros((batch, HIDDEN), np.float32)
        gates = np.empty((batch, 4 * HIDDEN), np.float32)
        ifo = np.empty((batch, 3 * HIDDEN), np.float32)
        new_c = np.empty((batch, HIDDEN), np.float32)
        for w_ih, w_hh, bias in self.layers:
            inputs = x @ w_ih + bias  # (batch, frames, 4H), gates i, f, o (halved) then g: see _gates_for_tanh
            h = np.zeros((batch, HIDDEN), np.float32)
            c = np.zeros((batch, HIDDEN), np.float32)
            outputs = np.empty((batch, frames, HIDDEN), np.float32)
            for t in range(frames):
                np.matmul(h, w_hh, out=gates)
                gates += inputs[:, t]
                np.tanh(gates, out=gates)  # tanh(g) for g; tanh(z / 2) for i, f, o
                np.multiply(gates[:, : 3 * HIDDEN], 0.5, out=ifo)
                ifo += 0.5  # sigmoid(z) = (tanh(z / 2) + 1) / 2
                np.multiply(ifo[:, :HIDDEN], gates[:, 3 * HIDDEN :], out=new_c)  # i * g
                c *= ifo[:, HIDDEN : 2 * HIDDEN]  # f * c
                c += new_c
                h = outputs[:, t]
                np.tanh(c, out=h)
                h *= ifo[:, 2 * HIDDEN :]  # o * tanh(c)
            x = outputs
        raw = np.maximum(h @ self.linear_t + self.linear_b, 0)
        norm = np.linalg.norm(raw, axis=1, keepdims=True)
        out: F32 = (raw / np.maximum(norm, 1e-12)).astype(np.float32)
        return out


def _gates_for_tanh(w_ih: F32, w_hh: F32, bias: F32) -> tuple[F32, F32, F32]:
    """torch's LSTM weights (gate columns i, f, g, o) reordered to i, f, o, g with the i, f, o columns halved, so that
    one tanh over all four gives tanh(g) and the sigmoids as (tanh(z / 2) + 1) / 2 (halving is exact in float32)."""

    def reorder(m: F32) -> F32:
        i, f, g, o = np.split(np.asarray(m, np.float32), 4, axis=-1)
        out: F32 = np.ascontiguousarray(np.concatenate((i / 2, f / 2, o / 2, g), axis=-1), dtype=np.float32)
        return out

    return reorder(w_ih), reorder(w_hh), reorder(bias)


# ------------------------------------------------------------------------------------------------ encoder


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The GE2E directory's manifest; ``ModelError`` when it is missing, unreadable or not a GE2E one."""
    manifest = model_files.read_manifest(Path(model_dir) / MANIFEST, "GE2E manifest", "./dev setup exports it")
    if manifest.get("format") != FORMAT or manifest.get("encoder") != "ge2e":
        raise ModelError(f"GE2E model directory {model_dir}: {MANIFEST} is not a format-{FORMAT} GE2E manifest")
    return manifest


class Ge2eEncoder:
    """Speaker embedding model: mono audio at any rate -> unit-length float32 vector of shape (256,).

    Arguments
    ---------
    model_dir : Path
        A directory written by ``python -m infra.model.ge2e_export``: ``manifest.json`` and ``ge2e.npz``.

    Raises
    ------
    ModelError
        A file is missing, its checksum differs from the manifest, or the weights have the wrong shapes.
    """

    name: str = "ge2e"
    dim: int = 256
    sample_rate: int = SAMPLE_RATE

    def __init__(self, model_dir: Path) -> None:
        started = time.perf_counter()
        self.model_dir = Path(model_dir).absolute()
        blas.one_thread()  # as beside onnxruntime: a clip's small products; a large batch takes every core
        manifest = read_manifest(self.model_dir)
        weights_file = self.model_dir / WEIGHTS
        if file_sha256(weights_file) != manifest.get("sha256"):
            raise ModelError(f"GE2E model directory {self.model_dir}: {WEIGHTS} does not match {MANIFEST} (sha256)")
        self.model_id: str = str(manifest["model_id"])
        with np.load(weights_file) as archive:
            weights = {name: archive[name].astype(np.float32) for name in archive.files}
        missing = [n for n in (*WEIGHT_NAMES, MEL_FILTERBANK) if n not in weights]
        if missing:
            raise ModelError(f"GE2E model directory {self.model_dir}: {WEIGHTS} lacks {missing[:3]}")
        self._filterbank = weights.pop(MEL_FILTERBANK)
        if self._filterbank.shape != (N_MELS, N_BINS):
            raise ModelError(
                f"GE2E model directory {self.model_dir}: {WEIGHTS} {MEL_FILTERBANK} has shape "
                f"{self._filterbank.shape}, expected {(N_MELS, N_BINS)}"
            )
        self._net = Ge2eNetwork(weights)
        probe = self.embed_16k(np.sin(np.arange(SAMPLE_RATE, dtype=np.float32) * 0.05) * np.float32(0.1))
        lwlog.event(
            logger,
            "ge2e model loaded",
            model_id=self.model_id,
            model_dir=str(self.model_dir),
            seconds=round(time.perf_counter() - started, 3),
            dim=int(probe.shape[0]),
        )

    def embed(self, samples: npt.NDArray[np.floating[Any]], sample_rate: int) -> F32:
        """Embed one mono clip: (n,) float in [-1, 1] at ``sample_rate`` -> (256,) float32, unit L2 norm.

        Raises ``InvalidAudio`` for non-1-D or non-float input, non-finite values, or under 40 ms of audio.
        """
        return self.embed_16k(resample(mono_float32(samples), checked_rate(sample_rate), SAMPLE_RATE))

    def embed_16k(self, samples16k: npt.NDArray[np.floating[Any]]) -> F32:
        return self.embed_preprocessed(_preprocessed(mono_float32(samples16k)))

    def embed_preprocessed(self, wav: F32) -> F32:
        """Resemblyzer's ``embed_utterance`` on an already preprocessed 16 kHz clip (used by the parity check)."""
        return _utterance(self._net(self._partial_mels(wav)))

    def embed_many(self, clips: Sequence[tuple[npt.NDArray[np.floating[Any]], int]]) -> F32:
        """Embed several ``(samples, sample_rate)`` clips in one batched pass of the network: row k is ``embed`` of
        clip k (to float rounding), several times faster for many clips (calibration). Shape (len(clips), 256)."""
        stacks = [
            self._partial_mels(_preprocessed(resample(mono_float32(s), checked_rate(r), SAMPLE_RATE))) for s, r in clips
        ]
        partials = self._net(np.concatenate(stacks))
        ends = np.cumsum([len(stack) for stack in stacks])
        return np.stack([_utterance(p) for p in np.split(partials, ends[:-1])])

    def mel_spectrogram(self, wav: F32) -> F32:
        """``mel_spectrogram`` with this model's filterbank (the parity check compares it with librosa's)."""
        return mel_spectrogram(wav, self._filterbank)

    def _partial_mels(self, wav: F32) -> F32:
        """The (partials, 160, 40) mel windows Resemblyzer's ``embed_utterance`` feeds the network for one clip."""
        slices = partial_slices(len(wav))
        needed = slices[-1].stop * HOP
        if needed >= len(wav):
            wav = np.pad(wav, (0, needed - len(wav)))
        mel = self.mel_spectrogram(wav)
        return np.stack([mel[s] for s in slices])


def _utterance(partials: F32) -> F32:
    """The utterance embedding: the mean of its partial embeddings, unit length."""
    mean = partials.mean(axis=0)
    out: F32 = (mean / np.linalg.norm(mean)).astype(np.float32)
    return out
