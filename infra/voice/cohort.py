"""Build an encoder's score cohort from recorded speakers: ``python -m infra.voice.cohort MODEL_DIR CORPUS``.

Takes up to ``--per-voice`` clips (80) of every speaker and voice in ``CORPUS`` but the held-out ones (the layout
``infra.voice.corpus`` writes: one folder per speaker, ``<voice>-<n>.wav``), spread evenly over each voice's
clips, through the product's intake and the encoder in ``MODEL_DIR`` (GE2E when it holds a GE2E export), each
clip also once with white noise at 15-35 dB SNR (see ``NOISE_SNR_DB``), and writes ``cohort.npz`` and
``cohort.json`` (model id, ``top_k``, the corpus's packages and checksums, the noise) beside the model. ``./dev``
builds GE2E's this way; ``lockwise.voice.model.cohort`` explains what the functions do with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from infra.voice import channel
from lockwise.core import errors
from lockwise.voice import audio
from lockwise.voice.model import cohort
from lockwise.voice.model.encoder import Encoder, embed_all, open_encoder

PER_VOICE = 80
TOP_K = 100
#: left out of the shipped cohort: the speakers the tests and the demo enroll (a user is never in the cohort, and a
#: voiceprint normalised against clips of its own speaker would be judged against itself)
HELD_OUT = ("allison", "june")
#: every cohort clip is also in the cohort once with white noise at an SNR drawn from this range (seeded by the
#: clip's name). Measured (GE2E, 420 trial clips): with a clean cohort, probes with white noise at 30 dB SNR were
#: falsely matched 0.26 % of the time against 0.067 % clean (a noisy probe scores low against every clean cohort
#: clip, so its normalised scores inflate): noise raised an impostor's chances fourfold. With the noisy copies:
#: 0.018 % on those clips (an earlier draw of the noise); in the shipped calibration (300 clips, this seeding)
#: 0.031 % at 30 dB against 0.025 % clean, and clean speaker-disjoint FNMR 7.1 -> 6.6 % at the same FMR.
NOISE_SNR_DB = (15.0, 35.0)


def noisy_copy(samples: npt.NDArray[np.float32], name: str) -> npt.NDArray[np.float32]:
    """``samples`` with white noise at an SNR in ``NOISE_SNR_DB``, the same every time for the same ``name``."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))
    return channel.noise(samples, float(rng.uniform(*NOISE_SNR_DB)), rng)


def clip_name(path: Path) -> str:
    """What seeds a clip's noisy copy: speaker folder and file name."""
    return f"{path.parent.name}/{path.name}"


def evenly(paths: Iterable[Path], per_voice: int) -> list[Path]:
    """Up to ``per_voice`` clips of each speaker's voice (folder, and file name up to the first "-"), evenly spaced
    through its sorted files: the cohort's pick, also what ``calibrate`` normalises its trials against."""
    by_voice: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(paths):
        by_voice.setdefault((path.parent.name, path.stem.split("-")[0]), []).append(path)
    return [p for files in by_voice.values() for p in files[:: max(1, len(files) // per_voice)][:per_voice]]


def select(corpus: Path, per_voice: int, held_out: tuple[str, ...] = HELD_OUT) -> list[Path]:
    """The cohort's clips in ``corpus``: ``evenly`` over every speaker but the held-out ones."""
    folders = [p for p in corpus.iterdir() if p.is_dir() and p.name not in ("licences", *held_out)]
    return evenly((path for folder in folders for path in folder.glob("*.wav")), per_voice)


def embed_clips(
    paths: list[Path], encoder: Encoder, label: str = "embedding", *, noisy: bool = False
) -> tuple[np.ndarray, list[Path]]:
    """Each clip through intake and the encoder, with a progress line on stderr; clips intake refuses are left out.
    ``noisy``: also each clip's :func:`noisy_copy`, after all the clean ones (the paths returned name each row)."""
    limits = audio.Limits()
    taken: list[tuple[Path, audio.Clip]] = []
    for path in paths:
        try:
            taken.append((path, audio.validate(audio.parse_wav(path.read_bytes()), limits)))
        except errors.BadRequest:
            continue
    started = time.monotonic()

    def progress(done: int) -> None:
        elapsed = time.monotonic() - started
        print(f"\r{label}: {done}/{len(taken)} clips, {elapsed:.0f} s", end="", file=sys.stderr, flush=True)  # noqa: T201

    if noisy:
        taken += [(path, audio.Clip(noisy_copy(clip.samples, clip_name(path)), clip.rate)) for path, clip in taken]
    vectors = embed_all(encoder, [(clip.samples, clip.rate) for _, clip in taken], progress)
    kept = [path for path, _ in taken]
    print(file=sys.stderr)  # noqa: T201
    return np.stack(vectors).astype(np.float32), kept


def build(
    model_dir: Path,
    corpus: Path,
    per_voice: int = PER_VOICE,
    top_k: int = TOP_K,
    held_out: tuple[str, ...] = HELD_OUT,
) -> Path:
    encoder = open_encoder("auto", str(model_dir))
    embeddings, kept = embed_clips(select(corpus, per_voice, held_out), encoder, "cohort", noisy=True)
    sources_file = corpus / "SOURCES.json"
    corpus_sources = json.loads(sources_file.read_text()) if sources_file.is_file() else {}
    speakers = sorted({p.parent.name for p in kept})
    sources = {
        "corpus": corpus_sources.get("description", str(corpus)),
        "packages": {
            name: {k: v for k, v in info.items() if k in ("version", "sha256", "licence")}
            for name, info in corpus_sources.get("packages", {}).items()
        },
        "speakers": {s: sum(p.parent.name == s for p in set(kept)) for s in speakers},
        "per_voice": per_voice,
        "noise_snr_db": list(NOISE_SNR_DB),  # each clip once clean, once with white noise in this range
        "held_out": list(held_out),
    }
    return cohort.save(model_dir, embeddings, top_k, encoder.model_id, sources)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--per-voice", type=int, default=PER_VOICE)
    parser.add_argument("--top-k", type=int, default=TOP_K)
    parser.add_argument("--hold-out", nargs="*", default=list(HELD_OUT), help="speakers left out of the cohort")
    args = parser.parse_args(argv)
    folder = build(args.model_dir, args.corpus, args.per_voice, args.top_k, tuple(args.hold_out))
    manifest = json.loads((folder / cohort.COHORT_MANIFEST).read_text())
    print(f"cohort: {manifest['clips']} clips of {len(manifest['sources']['speakers'])} speakers -> {folder}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
