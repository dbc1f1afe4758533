"""How much of a clip is a human voice: Silero VAD (MIT) from its 16 kHz *sequence* graph, with onnxruntime only.

The intake's speech measure (``lockwise.voice.audio.speech_seconds``) counts loud frames: a fan, rain or a hum is
loud for its whole length and reads as 3 s of "speech", so on that measure alone a voiceprint could be enrolled from
noise. This one asks a model trained to tell voice from everything else. The graph is copied at build time from the
``silero-vad`` wheel by ``python -m infra.model.vad_export`` into the embed bundle's ``models/vad``::

    manifest.json                   {"format": 1, "detector": "silero-vad", "file": ..., "sha256": ...,
                                     "sample_rate": 16000, "frame": 512, "context": 64, "source": {...}}
    silero_vad_16k_sequence.onnx    frames (n, 64 + 512) float32 with the LSTM state (h, c) -> a voice
                                    probability per 32 ms frame; one onnxruntime call for a whole clip
    LICENSE                         Silero VAD's MIT licence

A clip is resampled to 16 kHz and scaled to a fixed peak first: the model reads quiet speech as no voice
(measured: without it, quiet corpus clips read 0 s). Measured (README "Audio intake"): at most 0.19 s of voice in each
of the noises tried, at least 0.96 s in each of 172 clean corpus clips; 6-15 ms a 3-8 s clip at 44.1 kHz, on one
thread.

Sessions do not cross gunicorn's fork: the manifest and the file's SHA-256 are checked at construction, and each
process makes its own (one-thread, ~10 ms) session on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.voice.model.model_files import ModelError, file_sha256, read_manifest
from lockwise.voice.model.onnx_runtime import ort
from lockwise.voice.model.resample import resample
from lockwise.voice.model.samples import mono_float32
from lockwise.voice.model.samples import sample_rate as checked_rate

MANIFEST = "manifest.json"
FORMAT = 1
DETECTOR = "silero-vad"
SAMPLE_RATE = 16_000
FRAME = 512  # samples a frame (32 ms at 16 kHz)
CONTEXT = 64  # samples of the frame before, prefixed to each frame as the streaming model does
STATE_SHAPE = (1, 1, 128)
MAX_FRAMES = 512  # frames an onnxruntime call (16.4 s): a clip past intake's 15 s limit takes more calls
PEAK = 0.5  # a clip is scaled to this peak before it is read
VOICED = 0.5  # a frame is voice when its probability is above this (Silero's own default)

#: where the build puts the graph (the bundle root's ``models/vad``; ``functions/models/vad`` in a checkout, written
#: by ``./dev setup``)
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "models" / "vad"

F32 = npt.NDArray[np.float32]


class VoiceActivity:
    """Seconds of voice in a clip.

    Raises ``ModelError`` at construction when ``folder`` holds no usable export (missing, unreadable manifest, a
    graph whose SHA-256 is not the manifest's), and at first use when onnxruntime cannot load the graph or it has
    not the expected inputs and outputs.
    """

    def __init__(self, folder: Path = DEFAULT_DIR) -> None:
        self.folder = Path(folder).absolute()
        manifest = _manifest(self.folder)
        self.path = self.folder / manifest["file"]
        actual = file_sha256(self.path)
        if actual != manifest["sha256"]:
            raise ModelError(f"voice activity graph {self.path}: SHA-256 {actual} is not the manifest's")
        self.version = str(manifest.get("source", {}).get("package", DETECTOR))
        self._session: Any = None
        self._pid = -1

    def describe(self) -> dict[str, str]:
        """A health probe: this process's session made (or made already), and what it serves."""
        self._serving()
        return {"detector": DETECTOR, "package": self.version}

    def voiced_seconds(self, samples: npt.NDArray[np.floating[Any]], rate: int) -> float:
        """Seconds of the clip (mono, any rate, values in [-1, 1]) the model hears as voice (32 ms frames)."""
        return float(np.count_nonzero(self.probabilities(samples, rate) > VOICED)) * FRAME / SAMPLE_RATE

    def probabilities(self, samples: npt.NDArray[np.floating[Any]], rate: int) -> F32:
        """A voice probability per 32 ms frame of the clip, resampled to 16 kHz and scaled to ``PEAK``."""
        wave = mono_float32(samples)
        rate = checked_rate(rate)
        if rate != SAMPLE_RATE:
            wave = resample(wave, rate, SAMPLE_RATE)
        peak = float(np.abs(wave).max()) if len(wave) else 0.0
        if peak < 1e-6:  # digital silence (intake refuses it sooner): nothing to scale
            return np.zeros(0, np.float32)
        wave = (wave * np.float32(PEAK / peak)).astype(np.float32)
        session = self._serving()
        h, c = np.zeros(STATE_SHAPE, np.float32), np.zeros(STATE_SHAPE, np.float32)
        found = []
        for block in frame_blocks(wave):
            probs, h, c = session.run(["speech_probs", "hn", "cn"], {"input": block, "h": h, "c": c})
            found.append(np.asarray(probs, np.float32).reshape(-1))
        return np.concatenate(found)

    def _serving(self) -> Any:
        if self._session is None or self._pid != os.getpid():
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            try:
                session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for any unusable graph
                raise ModelError(f"voice activity graph {self.path} cannot be loaded ({exc})") from exc
            inputs = [i.name for i in session.get_inputs()]
            outputs = [o.name for o in session.get_outputs()]
            if inputs != ["input", "h", "c"] or outputs != ["speech_probs", "hn", "cn"]:
                raise ModelError(f"voice activity graph {self.path}: inputs {inputs}, outputs {outputs}")
            self._session, self._pid = session, os.getpid()
        return self._session


def frame_blocks(wave: F32) -> list[F32]:
    """``wave`` (16 kHz) as blocks of at most ``MAX_FRAMES`` rows of ``CONTEXT + FRAME`` samples: each frame behind
    the last ``CONTEXT`` samples of the one before (zeros for the first), the last frame padded with zeros (as
    ``silero_vad.sequence_vad.frame_blocks``)."""
    count = -(-len(wave) // FRAME)
    frames = np.zeros((count, FRAME), np.float32)
    frames.reshape(-1)[: len(wave)] = wave
    contexts = np.zeros((count, CONTEXT), np.float32)
    contexts[1:] = frames[:-1, -CONTEXT:]
    rows = np.concatenate((contexts, frames), axis=1)
    return [rows[i : i + MAX_FRAMES] for i in range(0, count, MAX_FRAMES)]


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    manifest = read_manifest(path, "voice activity manifest", f"python -m infra.model.vad_export {folder}")
    expected = {"format": FORMAT, "detector": DETECTOR, "sample_rate": SAMPLE_RATE, "frame": FRAME, "context": CONTEXT}
    if any(manifest.get(k) != v for k, v in expected.items()):
        raise ModelError(f"voice activity manifest {path} is not a format-{FORMAT} {DETECTOR} manifest")
    name, sha = manifest.get("file"), manifest.get("sha256")
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or not isinstance(sha, str):
        raise ModelError(f"voice activity manifest {path} must name a file in its directory and its sha256")
    return manifest
