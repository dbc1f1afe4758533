"""Turn Resemblyzer's bundled GE2E weights into the torch-free serving files, checked against Resemblyzer itself:
``python -m infra.model.ge2e_export OUT [--weights PRETRAINED_PT] [--tolerance T]``.

Build-time only (needs torch and the ``resemblyzer`` wheel, which carries ``pretrained.pt``; nothing is downloaded).
Writes ``OUT/ge2e.npz`` (the LSTM and linear weights and librosa's mel filterbank, float32) and ``OUT/manifest.json``
(model identity, checksums, source package and licence, parity report). Parity: for a fixed set of clips of varied
length the embedding of :class:`lockwise.voice.model.ge2e.Ge2eEncoder` must match Resemblyzer's
``VoiceEncoder.embed_utterance`` on the same preprocessed audio within ``tolerance`` (max abs difference), and the mel
spectrogram must match librosa's; otherwise nothing is left in ``OUT`` and the command exits 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from infra.model.clips import speech_like_clip
from infra.staging import staged_dir
from lockwise.voice.model import ge2e
from lockwise.voice.model.model_files import file_sha256

# resemblyzer 0.1.4's pretrained.pt: the export refuses any other file unless --weights names one explicitly
PINNED_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
LICENCE = "Apache-2.0 (resemblyzer 0.1.4, https://github.com/resemble-ai/Resemblyzer)"
PARITY_SECONDS = (0.5, 1.0, 1.7, 3.0, 5.0, 9.0)


class ParityError(RuntimeError):
    """The numpy GE2E does not reproduce Resemblyzer's embeddings within the tolerance."""


@dataclass
class ParityReport:
    tolerance: float
    clips: list[dict[str, float]] = field(default_factory=list)
    mel_max_rel: float = 0.0

    @property
    def max_abs(self) -> float:
        return max(c["max_abs"] for c in self.clips)

    @property
    def min_cosine(self) -> float:
        return min(c["cosine"] for c in self.clips)

    def table(self) -> str:
        rows = [f"{'clip s':>7} {'max |diff|':>11} {'cosine':>10}"]
        rows += [f"{c['seconds']:7.1f} {c['max_abs']:11.2e} {c['cosine']:10.7f}" for c in self.clips]
        rows.append(f"{'all':>7} {self.max_abs:11.2e} {self.min_cosine:10.7f}  (tolerance {self.tolerance:g})")
        rows.append(f"mel spectrogram vs librosa: max relative difference {self.mel_max_rel:.2e}")
        return "\n".join(rows)


def bundled_weights() -> Path:
    """``pretrained.pt`` inside the installed resemblyzer package (found without importing it)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("resemblyzer is not installed: pip install resemblyzer==0.1.4 (it carries the GE2E weights)")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def parity_clips(seed: int = 2000) -> list[npt.NDArray[np.float32]]:
    """The fixed clips of the parity check, at 16 kHz, one per length in ``PARITY_SECONDS``."""
    return [speech_like_clip(ge2e.SAMPLE_RATE, s, seed + i) for i, s in enumerate(PARITY_SECONDS)]


def export(
    out_dir: Path,
    weights: Path | None = None,
    *,
    tolerance: float = 1e-4,
    _tamper: Callable[[dict[str, npt.NDArray[np.float32]]], None] | None = None,
) -> ParityReport:
    """Write ``out_dir`` (replacing it) from ``weights`` (default: resemblyzer's bundled file); returns the parity.

    ``_tamper`` (tests only) changes the converted weights before they are written, to prove the check fails.
    """
    import torch
    from resemblyzer import VoiceEncoder  # type: ignore[import-untyped]

    source = Path(weights) if weights else bundled_weights()
    source_sha = file_sha256(source)
    if weights is None and source_sha != PINNED_SHA256:
        raise SystemExit(f"{source}: SHA-256 {source_sha} is not resemblyzer 0.1.4's ({PINNED_SHA256})")
    state = torch.load(source, map_location="cpu", weights_only=False)["model_state"]
    arrays = {name: state[name].numpy().astype(np.float32) for name in ge2e.WEIGHT_NAMES}
    arrays[ge2e.MEL_FILTERBANK] = mel_filterbank()
    if _tamper is not None:
        _tamper(arrays)

    with staged_dir(out_dir) as staging:
        np.savez(staging / ge2e.WEIGHTS, **arrays)
        manifest = {
            "format": ge2e.FORMAT,
            "encoder": "ge2e",
            "model_id": f"ge2e-{source_sha[:16]}",  # what lockwise.voice.model.model_files.file_identity gives
            "dim": ge2e.Ge2eEncoder.dim,
            "sample_rate": ge2e.SAMPLE_RATE,
            "sha256": file_sha256(staging / ge2e.WEIGHTS),
            "source": {
                "file": "resemblyzer/pretrained.pt",
                "sha256": source_sha,
                "package": f"resemblyzer {importlib.metadata.version('resemblyzer')}",
                "licence": LICENCE,
            },
        }
        (staging / ge2e.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        report = check_parity(staging, VoiceEncoder(device="cpu", verbose=False, weights_fpath=source), tolerance)
        manifest["parity"] = {**asdict(report), "max_abs": report.max_abs, "min_cosine": report.min_cosine}
        (staging / ge2e.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return report


def mel_filterbank() -> npt.NDArray[np.float32]:
    """Resemblyzer's mel matrix, from librosa (Slaney scale and norm), stored with the weights: (40, 201)."""
    import librosa

    basis = librosa.filters.mel(sr=ge2e.SAMPLE_RATE, n_fft=ge2e.N_FFT, n_mels=ge2e.N_MELS)
    return np.asarray(basis, dtype=np.float32)


def check_parity(model_dir: Path, reference: object, tolerance: float) -> ParityReport:
    """Ours vs Resemblyzer's on the same preprocessed audio; raises ``ParityError`` above ``tolerance``."""
    import librosa

    ours = ge2e.Ge2eEncoder(model_dir)
    report = ParityReport(tolerance=tolerance)
    for clip in parity_clips():
        wav = ge2e.shorten_pauses(ge2e.raise_volume(clip))
        want = np.asarray(reference.embed_utterance(wav), dtype=np.float32)  # type: ignore[attr-defined]
        got = ours.embed_preprocessed(wav)
        report.clips.append(
            {
                "seconds": round(len(clip) / ge2e.SAMPLE_RATE, 2),
                "max_abs": float(np.abs(got - want).max()),
                "cosine": float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))),
            }
        )
        mel_ref = librosa.feature.melspectrogram(
            y=wav, sr=ge2e.SAMPLE_RATE, n_fft=ge2e.N_FFT, hop_length=ge2e.HOP, n_mels=ge2e.N_MELS
        ).T
        mel = ours.mel_spectrogram(wav)
        rel = float(np.abs(mel - mel_ref).max() / max(float(np.abs(mel_ref).max()), 1e-12))
        report.mel_max_rel = max(report.mel_max_rel, rel)
    if report.max_abs > tolerance or report.mel_max_rel > tolerance:
        raise ParityError(f"GE2E export does not match Resemblyzer:\n{report.table()}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", type=Path, help="a GE2E pretrained.pt (default: resemblyzer's bundled file)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    try:
        report = export(args.out, args.weights, tolerance=args.tolerance)
    except ParityError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return 1
    print(f"wrote {args.out}\n{report.table()}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
