"""The speaker-encoder interface, the encoders' calibrated defaults, and choosing one from the settings.

Every encoder maps mono float32 audio at any supported rate to a unit-norm float32 embedding of ``dim`` values and
has a ``model_id`` (a hash of its weights): voiceprints are only ever compared with probes of the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from lockwise.config import Settings


class Encoder(Protocol):
    name: str
    model_id: str
    dim: int

    def embed(self, samples: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float32]:
        """(n,) float32 in [-1, 1] at ``sample_rate`` -> (dim,) float32, unit L2 norm."""
        ...


def describe(encoder: Encoder) -> Callable[[], dict[str, object]]:
    """A health probe naming the loaded model (it was checked at start-up; an instance without one never starts)."""
    return lambda: {"encoder": encoder.name, "model_id": encoder.model_id, "dim": encoder.dim}


@dataclass(frozen=True)
class Calibration:
    """Decision defaults of one encoder; ``source`` says where the numbers come from."""

    threshold: float  # accept when the best cosine reaches this ...
    margin: float  # ... and beats the runner-up by this much
    agreement: float  # enrollment samples must agree pairwise at least this much
    source: str


CALIBRATIONS: dict[str, Calibration] = {
    # ECAPA-TDNN (speechbrain/spkrec-ecapa-voxceleb): published VoxCeleb1-O score distributions put the EER
    # threshold near 0.25-0.30 cosine; 0.45 trades a higher false-reject rate for a false-match rate well under
    # 1 in 1,000. Not measured here (the weights cannot be fetched on this machine): operators run
    # `calibrate` on their own recordings with the production weights and set LOCKWISE_VOICE_THRESHOLD.
    "ecapa-tdnn": Calibration(threshold=0.45, margin=0.05, agreement=0.40, source="literature (VoxCeleb1-O)"),
}


@dataclass(frozen=True)
class Policy:
    threshold: float
    margin: float
    agreement: float
    source: str


def policy(settings: Settings, encoder: Encoder, lock_threshold: float | None = None) -> Policy:
    """The encoder's calibration, overridden by settings, and a lock's own threshold above all."""
    base = CALIBRATIONS.get(encoder.name, Calibration(0.5, 0.05, 0.4, "fallback default"))
    threshold = settings.voice_threshold if settings.voice_threshold is not None else base.threshold
    if lock_threshold is not None:
        threshold = lock_threshold
    return Policy(
        threshold=threshold,
        margin=settings.voice_margin if settings.voice_margin is not None else base.margin,
        agreement=settings.enroll_agreement if settings.enroll_agreement is not None else base.agreement,
        source=base.source,
    )


def load_encoder(settings: Settings) -> Encoder:
    """The configured encoder, loaded now (at instance start); raises ``ModelError`` with the reason.

    Loaded once per process and configuration (a function instance loads it once; tests reuse it).
    """
    return _load(settings.encoder, settings.model_dir)


@lru_cache(maxsize=4)
def _load(kind: str, model_dir: str | None) -> Encoder:
    from lockwise.voice.ecapa import EcapaEncoder, ModelError

    if kind in ("ecapa", "auto") and model_dir:
        return EcapaEncoder(Path(model_dir))
    if kind == "ecapa":
        raise ModelError(
            "LOCKWISE_ENCODER=ecapa needs LOCKWISE_MODEL_DIR (the speechbrain/spkrec-ecapa-voxceleb files)"
        )
    raise ModelError("no speaker encoder configured: set LOCKWISE_MODEL_DIR to an ECAPA-TDNN model directory")
