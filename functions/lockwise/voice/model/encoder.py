"""The speaker-encoder interface, the encoders' calibrated defaults, and choosing one from the settings.

Every encoder maps mono float32 audio at any supported rate to a unit-norm float32 embedding of ``dim`` values and
has a ``model_id`` (a hash of its weights): voiceprints are only ever compared with probes of the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from lockwise.core.config import Settings
from lockwise.voice.model import cohort
from lockwise.voice.model.cohort import Cohort
from lockwise.voice.model.model_files import ModelError

F32 = npt.NDArray[np.float32]


class Encoder(Protocol):
    name: str
    model_id: str
    dim: int

    def embed(self, samples: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float32]:
        """(n,) float32 in [-1, 1] at ``sample_rate`` -> (dim,) float32, unit L2 norm."""
        ...


#: clips per batched pass of an encoder that embeds many at once (GE2E: ~100 MB of activations at this size)
EMBED_BATCH = 32


def embed_all(
    encoder: Encoder,
    clips: Sequence[tuple[npt.NDArray[np.float32], int]],
    done: Callable[[int], None] | None = None,
) -> list[npt.NDArray[np.float32]]:
    """Each ``(samples, sample_rate)`` clip's embedding, for tools that embed many (calibration, the cohort):
    batched when the encoder can (GE2E's ``embed_many``), one by one otherwise; the same vectors either way (to float
    rounding). ``done`` is told how many clips are embedded so far, after each batch."""
    many = getattr(encoder, "embed_many", None)
    out: list[npt.NDArray[np.float32]] = []
    step = EMBED_BATCH if many is not None else 1
    for k in range(0, len(clips), step):
        part = clips[k : k + step]
        out += list(many(part)) if many is not None else [encoder.embed(samples, rate) for samples, rate in part]
        if done is not None:
            done(len(out))
    return out


def describe(encoder: Encoder) -> Callable[[], dict[str, object]]:
    """A health probe naming the loaded model (it was checked at start-up; an instance without one never starts)."""
    return lambda: {"encoder": encoder.name, "model_id": encoder.model_id, "dim": encoder.dim}


@dataclass(frozen=True)
class Calibration:
    """Decision defaults of one encoder; ``source`` says where the numbers come from."""

    threshold: float  # accept when the best cosine reaches this ...
    margin: float  # ... and beats the runner-up by this much
    agreement: float  # enrollment samples must agree pairwise at least this much
    enroll_min_speech_s: (
        float  # each enrollment sample must hold this much speech (lockwise.voice.audio.speech_seconds)
    )
    source: str
    # what the calibration measured at ``threshold`` (95 % upper bounds); None where nothing was measured
    fmr_upper: float | None = None
    fnmr_upper: float | None = None
    #: the lowest threshold a lock may set: the encoder's threshold for a false-match rate of 1 in 100
    floor: float = 0.5
    #: the decision on AS-normalised scores (lockwise.voice.model.cohort), used when the encoder ships a cohort:
    #: threshold and margin on that scale, and what the speaker-disjoint calibration measured there (95 % upper bounds)
    norm_threshold: float | None = None
    norm_margin: float | None = None
    norm_fmr_upper: float | None = None
    norm_fnmr_upper: float | None = None
    #: a first utterance scoring within this much under the normalised threshold gets "say it again"; the second is
    #: fused with it (the mean of the two normalised scores) and decided on the same threshold
    norm_retry_band: float | None = None
    #: the lowest cosine between the voiceprints of two groups (of two or more) an enrollment's samples split into
    #: (``lockwise.voice.scoring.split_agreement``): two people's takes make one voiceprint that opens for both
    #: (attack run 123). None: not measured for this encoder, not checked
    split_agreement: float | None = None


#: an encoder without a calibration of its own decides on these
FALLBACK = Calibration(0.5, 0.05, 0.4, 2.4, "fallback default")

CALIBRATIONS: dict[str, Calibration] = {
    # GE2E (resemblyzer 0.1.4 weights), measured by `./dev calibrate` on the Asterisk corpus (7 speakers, 8 kHz
    # studio prompts, voiceprints of 5 clips as the product enrolls; docs/calibration/ge2e-asterisk). Every operating
    # threshold is fitted so its 95 % bound meets 0.8 in 1,000 (calibrate.FIT_MARGIN: leave-one-speaker-out showed a
    # new speaker's FMR up to 7 % above what a fit at 1 in 1,000 promised). Raw cosine (no cohort) over 82,904
    # impostor trials: FMR 0.063 %, FNMR 22.7 %, EER 3.5 %; its floor is the threshold at FMR 1 in 100.
    # AS-normalised (the cohort ./dev builds, clean and noisy copies) with "say it again" when the first utterance
    # lands within 2.0 under the threshold (the two scores averaged): 4.775 (FMR 0.063 %, FNMR 6.5 % per attempt,
    # 10 % of owners asked again); speaker-disjoint FNMR 6.6 % (bound 6.9 %) at FMR 0.069 % (bound 0.080 %) (one
    # utterance: 13.0 %; raw cosine: 23.0 % at 0.19 %). The margin is the raw 0.05 over the cohort's typical
    # deviation (0.043). The agreement floor is the 1st percentile of honest 5-clip enrollments; 2.4 s is the least
    # speech whose false-rejection rate stays within about twice the full clips'.
    "ge2e": Calibration(
        threshold=0.877,
        margin=0.05,
        agreement=0.63,
        enroll_min_speech_s=2.4,
        source="measured: Asterisk corpus, 7 speakers, 82,904 impostor trials",
        fmr_upper=0.0008,
        fnmr_upper=0.2336,
        floor=0.846,
        norm_threshold=4.775,
        norm_margin=1.0,
        norm_fmr_upper=0.0008,
        norm_fnmr_upper=0.0689,  # per attempt, a second utterance included
        norm_retry_band=2.0,
        # measured on 5-clip enrollments (attack run 123): it refuses 0.25 % of honest ones at a phone's band (the
        # corpus's wideband voices sent at 44.1 kHz), 0.38 % over KLettres' voices with the agreement floor, 0.48 %
        # at 8 kHz (one voice of seven 3.3 %), and takes none of the wideband enrollments of three takes of one voice
        # and two of another (their split at most 0.79); 0.82 refused 11.7 % of that one 8 kHz voice's (README "Enroll")
        split_agreement=0.80,
    ),
    # ECAPA-TDNN (speechbrain/spkrec-ecapa-voxceleb): published VoxCeleb1-O score distributions put the EER
    # threshold near 0.25-0.30 cosine; 0.45 trades a higher false-reject rate for a false-match rate well under
    # 1 in 1,000. Not measured here (the weights cannot be fetched on this machine): operators run
    # `calibrate` on their own recordings with the production weights and set LOCKWISE_VOICE_THRESHOLD.
    # The enrollment speech floor is GE2E's measured one, pending an ECAPA calibration.
    # Its floor is the published EER point (about 1 % FMR on VoxCeleb1-O).
    "ecapa-tdnn": Calibration(
        threshold=0.45,
        margin=0.05,
        agreement=0.40,
        enroll_min_speech_s=2.4,
        source="literature (VoxCeleb1-O)",
        floor=0.25,
    ),
}


@dataclass(frozen=True)
class Policy:
    threshold: float  # on the decision score: the AS-normalised score when the encoder has a cohort, else cosine
    margin: float
    agreement: float
    enroll_min_speech_s: float
    source: str
    #: with normalised scores, a cosine the best voiceprint must also reach: the encoder's floor (its cosine at a
    #: false-match rate of 1 in 100; a cohort recorded through another channel than the probe's inflates normalised
    #: scores, see ``policy``), or a lock's own threshold above it (it can only make that door stricter)
    raw_gate: float | None = None
    #: how far under the threshold a first utterance may land and still be asked again (None: never)
    retry_band: float | None = None
    #: enrollment: two groups of the samples must agree at least this much (None: not checked)
    split_agreement: float | None = None

    def passing(self, raw: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """Where the decision scores ``scores`` reach the threshold and their cosines ``raw`` (same shape) the raw
        gate: which voiceprints an utterance passes as, or, scored pairwise, which pass as each other."""
        passing: npt.NDArray[np.bool_] = scores >= self.threshold
        if self.raw_gate is not None:
            passing &= raw >= self.raw_gate
        return passing


@dataclass(frozen=True)
class Scorer:
    """How a probe is scored against voiceprints: raw cosines, or those normalised against the encoder's cohort."""

    cohort: Cohort | None = None

    @property
    def normalised(self) -> bool:
        return self.cohort is not None

    def scores(self, probe: npt.NDArray[np.float32], prints: npt.NDArray[np.float32]) -> tuple[F32, F32]:
        """(raw cosines, decision scores) of ``probe`` (d,) with each row of ``prints`` (k, d)."""
        from lockwise.voice import scoring

        raw = scoring.cosine_scores(probe, prints)
        if self.cohort is None:
            return raw, raw
        return raw, self.cohort.normalise(raw, scoring.normalise(probe), scoring.normalise(prints))

    def pairwise(self, prints: npt.NDArray[np.float32]) -> tuple[F32, F32]:
        """(raw cosines, decision scores) of each row of ``prints`` (k, d) with each, (k, k): row ``i`` is
        ``scores(prints[i], prints)``, in one product (each row's cohort statistics taken once, not k times)."""
        from lockwise.voice import scoring

        unit = scoring.normalise(prints)
        raw: F32 = np.clip(unit @ unit.T, -1.0, 1.0).astype(np.float32)
        if self.cohort is None:
            return raw, raw
        return raw, self.cohort.normalise_pairs(raw, unit)


#: the lowest threshold an operator may set on AS-normalised scores: an impostor's normalised score is about a
#: standard normal one (the cohort's mean and deviation take it there), so below 2.33 roughly 1 in 100 impostor
#: trials would pass, the raw floor's rate; a raw cosine (0.877, say) set on this scale was taken for a z-score
NORM_FLOOR = 2.33


def check_operator_threshold(settings: Settings, encoder: Encoder, *, normalised: bool) -> None:
    """``ModelError`` at start for an operator's ``LOCKWISE_VOICE_THRESHOLD`` under the scale's floor: the encoder's
    raw floor (its false-match rate of 1 in 100, below which no lock's own threshold goes either), or
    ``NORM_FLOOR`` on normalised scores. A typo (0.045 for 0.45, 0, -1) or a raw cosine set on the normalised scale
    opened every door without its own threshold to nearly any voice (attack run 89)."""
    if settings.voice_threshold is None:
        return
    floor = NORM_FLOOR if normalised else CALIBRATIONS.get(encoder.name, FALLBACK).floor
    if settings.voice_threshold < floor:
        scale = "normalised (AS-norm) scores" if normalised else f"{encoder.name}'s raw cosines"
        raise ModelError(
            f"LOCKWISE_VOICE_THRESHOLD {settings.voice_threshold} is below the floor of {scale} ({floor}): "
            "set it from calibrate's report, on the scale the decision uses"
        )


def load_scorer(settings: Settings, encoder: Encoder) -> Scorer:
    """The encoder's scorer: AS-norm when its files carry a cohort (checked against its model id), else raw; an
    operator's threshold under its scale's floor refused (``check_operator_threshold``)."""
    folder = Path(settings.model_dir) if settings.model_dir else DEFAULT_GE2E_DIR
    found = cohort.load(folder, encoder.model_id, encoder.dim)
    check_operator_threshold(settings, encoder, normalised=found is not None)
    if found is not None:
        base = CALIBRATIONS.get(encoder.name)
        if settings.voice_threshold is None and (base is None or base.norm_threshold is None):
            raise ModelError(
                f"{folder} has a score cohort but {encoder.name} has no calibrated threshold on normalised scores: "
                "set LOCKWISE_VOICE_THRESHOLD from calibrate's report"
            )
        # the raw margin (0.05 cosine) on a scale whose thresholds are 3-8 let a voice 0.3 under a guest outside
        # her window in as the member it also passed as (attack run 43): the margin is on the same scale
        if settings.voice_margin is None and (base is None or base.norm_margin is None):
            raise ModelError(
                f"{folder} has a score cohort but {encoder.name} has no calibrated margin on normalised scores: "
                "set LOCKWISE_VOICE_MARGIN on that scale (GE2E's: 1.0, its raw margin over the cohort's typical "
                "deviation of the top scores)"
            )
    return Scorer(found)


def policy(
    settings: Settings, encoder: Encoder, lock_threshold: float | None = None, *, normalised: bool = False
) -> Policy:
    """The encoder's calibration (raw or normalised), overridden by settings (the operator's), and a lock's own
    threshold: on raw cosines it replaces the threshold but never goes below the encoder's floor (a lock owner
    cannot make their door open to anyone); on normalised scores it is an extra gate on the cosine."""
    base = CALIBRATIONS.get(encoder.name, FALLBACK)
    raw_gate = retry_band = None
    threshold, margin = base.threshold, base.margin
    if normalised:  # a cohort without a calibrated normalised threshold needs the operator's (load_scorer)
        threshold = base.norm_threshold if base.norm_threshold is not None else threshold
        margin = base.norm_margin if base.norm_margin is not None else margin
        # AS-norm is as good as its cohort's match with the probe's channel: GE2E's cohort is 8 kHz telephone
        # speech, and on wideband speech (a lock records 44.1 kHz) every normalised score rises: measured, another
        # woman's voice passed as Allison's (and hers as June's) in 101 of 800 trials at 44.1 kHz (0 of 800 at
        # 8 kHz), at raw cosines of 0.73-0.81. The floor bounds what any channel passes on the raw cosine (README
        # "Wideband speech").
        raw_gate = max(base.floor, lock_threshold) if lock_threshold is not None else base.floor
        retry_band = settings.voice_retry_band if settings.voice_retry_band is not None else base.norm_retry_band
        retry_band = retry_band or None  # 0: never ask again
    threshold = settings.voice_threshold if settings.voice_threshold is not None else threshold
    if lock_threshold is not None and not normalised:
        threshold = max(lock_threshold, base.floor)
    return Policy(
        threshold=threshold,
        raw_gate=raw_gate,
        retry_band=retry_band,
        margin=settings.voice_margin if settings.voice_margin is not None else margin,
        agreement=settings.enroll_agreement if settings.enroll_agreement is not None else base.agreement,
        split_agreement=_split_agreement(settings, base),
        enroll_min_speech_s=(
            settings.enroll_min_speech_s if settings.enroll_min_speech_s is not None else base.enroll_min_speech_s
        ),
        source=base.source,
    )


def _split_agreement(settings: Settings, base: Calibration) -> float | None:
    """The operator's ``LOCKWISE_ENROLL_SPLIT_AGREEMENT`` (-1: not checked), else the encoder's."""
    if settings.enroll_split_agreement is None:
        return base.split_agreement
    return None if settings.enroll_split_agreement <= -1 else settings.enroll_split_agreement


#: where the build puts the GE2E export (the bundle root's ``models/ge2e``; ``functions/models/ge2e`` in a checkout,
#: written by ``./dev``): the encoder used when no model directory is configured
DEFAULT_GE2E_DIR = Path(__file__).resolve().parents[3] / "models" / "ge2e"


def load_encoder(settings: Settings, *, exported: bool = False) -> Encoder:
    """The configured encoder, loaded now (at instance start); raises ``ModelError`` with the reason.

    ``exported``: serve ECAPA-TDNN from its ONNX export (no torch; the verify function) instead of SpeechBrain.
    Loaded once per process and configuration (a function instance loads it once; tests reuse it).
    """
    return open_encoder(settings.encoder, settings.model_dir, exported=exported)


@lru_cache(maxsize=8)
def open_encoder(kind: str, model_dir: str | None, *, exported: bool = False) -> Encoder:
    """``kind`` ecapa | ge2e | auto (what ``model_dir`` holds; GE2E when there is none)."""

    if kind == "auto":
        kind = _kind_of(Path(model_dir)) if model_dir else "ge2e"
    if kind == "ge2e":
        from lockwise.voice.model.ge2e import Ge2eEncoder

        folder = Path(model_dir) if model_dir else DEFAULT_GE2E_DIR
        if not (folder / "manifest.json").is_file():
            raise ModelError(
                f"no GE2E model in {folder}: build it with `python -m infra.model.ge2e_export {folder}` "
                "(./dev does this), or set LOCKWISE_MODEL_DIR to an ECAPA-TDNN model directory"
            )
        return Ge2eEncoder(folder)
    if kind != "ecapa":
        raise ModelError(f"unknown encoder {kind!r}: use ecapa, ge2e or auto")
    if not model_dir:
        raise ModelError(
            "LOCKWISE_ENCODER=ecapa needs LOCKWISE_MODEL_DIR (the speechbrain/spkrec-ecapa-voxceleb files)"
        )
    if exported:
        from lockwise.voice.model.onnx_ecapa import OnnxEcapaEncoder

        return OnnxEcapaEncoder(onnx_dir(Path(model_dir)))
    try:
        from lockwise.voice.model.ecapa import EcapaEncoder
    except ImportError as exc:  # the verify bundle ships onnxruntime, not torch
        raise ModelError(
            f"serving ECAPA through SpeechBrain needs torch and speechbrain ({exc}); the verify function serves its "
            "ONNX export (LOCKWISE_VERIFY_RUNTIME=onnx, the default)"
        ) from exc
    return EcapaEncoder(Path(model_dir))


def onnx_dir(model_dir: Path) -> Path:
    """Where ECAPA's ONNX export is: ``model_dir`` itself when it is an export (the verify bundle's), else its
    ``onnx/`` folder (a SpeechBrain model directory with its export beside it, as the local stack and tests keep)."""
    return model_dir if (model_dir / "manifest.json").is_file() else model_dir / "onnx"


def _kind_of(model_dir: Path) -> str:
    """ge2e when the directory holds a GE2E export, else ecapa (SpeechBrain files, maybe with their ONNX export)."""
    import json

    try:
        manifest = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return "ecapa"
    return "ge2e" if isinstance(manifest, dict) and manifest.get("encoder") == "ge2e" else "ecapa"
