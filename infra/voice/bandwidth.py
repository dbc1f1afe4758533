"""What the shipped decision does with speech of another band than it was calibrated on:
``python -m infra.voice.bandwidth [--draws N]`` prints one table (39 s here, the corpora built).

The GE2E calibration and its score cohort are the Asterisk corpus, telephone band (8 kHz, GSM). A lock records
44.1 kHz. Four of the corpus's voices also exist at 16 kHz (G.722, ``infra.voice.corpus --wideband``): the same
prompts, the band a microphone hears. For Allison and June (held out of the cohort, as users are) each draw enrolls
a voiceprint of 5 of their first 40 clips and scores their clips 40-80 (owners) and the other one's (strangers),
under four conditions: the telephone-band corpus; the wideband clips at 16 kHz; the same sent at 44.1 kHz, as a lock
sends; the wideband clips cut to 8 kHz. Each row gives the owners refused and the strangers accepted on one
utterance by the door's decision (``verification.decide`` with the product's ``policy``) with no raw gate, with the
one the product uses (the encoder's floor) and with a gate at the raw threshold.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from infra.voice import corpus
from lockwise.core.config import Settings
from lockwise.voice import audio, scoring, verification
from lockwise.voice.audio import DEFAULT_RATE as LOCK_RATE
from lockwise.voice.model.encoder import CALIBRATIONS, Encoder, Policy, Scorer, load_scorer, open_encoder, policy
from lockwise.voice.model.resample import resample

F32 = npt.NDArray[np.float32]
TARGETS = ("allison", "june")
Condition = Callable[[F32, int], tuple[F32, int]]
CONDITIONS: dict[str, tuple[str, Condition]] = {
    "telephone band, 8 kHz (the calibration's)": ("narrow", lambda x, r: (x, r)),
    "wideband, 16 kHz": ("wide", lambda x, r: (x, r)),
    "wideband, sent at 44.1 kHz (a lock)": ("wide", lambda x, r: (resample(x, r, LOCK_RATE), LOCK_RATE)),
    "wideband cut to 8 kHz": ("wide", lambda x, r: (resample(x, r, 8000), 8000)),
}


def clips(folder: Path, speaker: str, limit: int = 80) -> list[tuple[F32, int]]:
    """The speaker's first ``limit`` clips with enrollment's speech floor (only the language the corpus enrolls)."""
    found = []
    for path in sorted((folder / speaker).glob("*.wav")):
        if speaker == "allison" and not path.name.startswith("en-"):
            continue  # her Spanish is another voice to the model (README "Calibration on real speech")
        clip = audio.parse_wav(path.read_bytes())
        if audio.speech_seconds(clip.samples, clip.rate) >= CALIBRATIONS["ge2e"].enroll_min_speech_s:
            found.append((clip.samples, clip.rate))
        if len(found) == limit:
            break
    return found


@dataclass(frozen=True)
class Row:
    condition: str
    owners: int
    strangers: int
    #: per gate (none, floor, raw threshold): (the share of owners refused, the strangers accepted)
    gates: dict[str, tuple[float, int]]
    strangers_raw_max: float


def gated(encoder: Encoder) -> tuple[Scorer, dict[str, Policy]]:
    """The door's scorer and its policy with each raw gate compared: none, the floor (``"floor"``: the product's
    policy) and the raw threshold (also ``infra.voice.unseen``'s)."""
    settings = Settings.from_env({"LOCKWISE_MODE": "local"}, component="verify")
    scorer = load_scorer(settings, encoder)
    shipped = policy(settings, encoder, normalised=scorer.normalised)
    return scorer, {
        "none": dataclasses.replace(shipped, raw_gate=None),
        "floor": shipped,
        "raw threshold": dataclasses.replace(shipped, raw_gate=CALIBRATIONS["ge2e"].threshold),
    }


def measure(
    narrow: Path, wide: Path, encoder: Encoder, draws: int, conditions: tuple[str, ...] = tuple(CONDITIONS)
) -> list[Row]:
    """A ``Row`` per condition named (``CONDITIONS``' keys)."""
    scorer, gates = gated(encoder)
    rows = []
    for name in conditions:
        band, condition = CONDITIONS[name]
        folder = narrow if band == "narrow" else wide
        embedded = {}
        for speaker in TARGETS:
            found = clips(folder, speaker)
            if len(found) < 80:
                raise SystemExit(f"{folder / speaker}: {len(found)} clips with enough speech, 80 needed")
            embedded[speaker] = np.stack([encoder.embed(*condition(x, r)) for x, r in found])
        rng = np.random.default_rng(0)
        counts = {gate: [0, 0] for gate in gates}  # owners refused, strangers accepted
        owners = strangers = 0
        stranger_max = -1.0
        for target in TARGETS:
            for _ in range(draws):
                voiceprint = scoring.voiceprint(embedded[target][rng.choice(40, 5, replace=False)])[np.newaxis, :]
                for speaker, probes in embedded.items():
                    for probe in probes[40:80]:
                        raw, normalised = scorer.scores(probe, voiceprint)
                        own = speaker == target
                        owners, strangers = owners + own, strangers + (not own)
                        if not own:
                            stranger_max = max(stranger_max, float(raw[0]))
                        for gate, rules in gates.items():
                            accepted = verification.decide(raw, normalised, rules).accepted
                            counts[gate][0 if own else 1] += int(accepted is not own)
        rows.append(
            Row(
                name,
                owners,
                strangers,
                {gate: (refused / owners, accepted) for gate, (refused, accepted) in counts.items()},
                stranger_max,
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    ge2e = CALIBRATIONS["ge2e"]
    lines = [
        f"owners refused / strangers accepted, one utterance, normalised threshold {ge2e.norm_threshold}",
        f"{'condition':44} {'trials':>11} | {'no gate':>14} | {f'gate {ge2e.floor} (floor)':>22} | "
        f"{f'gate {ge2e.threshold}':>14} | strangers' raw max",
    ]
    for row in rows:
        cells = [f"{refused * 100:5.1f}% / {accepted:3d}" for refused, accepted in row.gates.values()]
        lines.append(
            f"{row.condition:44} {row.owners:>5}/{row.strangers:>5} | {cells[0]:>14} | {cells[1]:>22} | "
            f"{cells[2]:>14} | {row.strangers_raw_max:.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    cache = Path.home() / ".cache" / "lockwise" / "corpus"
    parser.add_argument("--corpus", type=Path, default=cache / "asterisk")
    parser.add_argument("--wideband", type=Path, default=cache / "wideband")
    parser.add_argument("--draws", type=int, default=10, help="voiceprints drawn per target voice")
    args = parser.parse_args(argv)
    narrow = corpus.build(args.corpus, cache / "debs")
    wide = corpus.build_wideband(args.wideband, cache / "debs")
    print(table(measure(narrow, wide, open_encoder("ge2e", None), args.draws)))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
