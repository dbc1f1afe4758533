"""The shipped decision on voices the project never heard, sent at 44.1 kHz as a lock sends them:
``python -m infra.voice.unseen [--draws N]`` prints one table (about a minute here; 40 MB fetched once).

The calibration, its score cohort and every test voice are Debian's Asterisk prompts (README "Calibration on real
speech"). This measures the door's decision on other people, recorded through other microphones: KDE's KLettres
letter and syllable recordings (Debian ``klettres-data``, GPL-2+, one native speaker per language, 44.1 kHz). Each
language's recordings are trimmed of their silences, mixed to mono and joined in random order with 0.15 s gaps into
clips of at least 6 s (the letters of one clip are never in another); a voice needs 5 clips enrollment takes (its
speech floor, and voice heard in them by its voice activity model) and 8 in all. Each draw enrolls a voiceprint of 5
of a voice's clips as enrollment does (the samples must agree), then scores the voice's other clips (owners) and
every clip of the other voices (strangers) on one utterance, with the door's decision (``verification.decide`` with
the product's ``policy``): with no raw gate, with the gate the product uses (the encoder's floor) and with a gate at
the raw threshold. The strangers speak other languages than the owners: an easier test than a household's, so read
its strangers' row as a lower bound on what passes.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from infra.voice import bandwidth, channel, corpus
from lockwise.core.config import Settings
from lockwise.voice import audio, scoring, verification
from lockwise.voice.audio import DEFAULT_RATE as LOCK_RATE
from lockwise.voice.model.encoder import CALIBRATIONS, Encoder, Policy, open_encoder
from lockwise.voice.model.voice_activity import DEFAULT_DIR as VAD_DIR
from lockwise.voice.model.voice_activity import VoiceActivity

F32 = npt.NDArray[np.float32]
PACKAGE = "klettres-data"
LICENCE = "License: GPL-2+"
GAP_S = 0.15
CLIP_S = 6.0
SAMPLES = 5  # enrollment samples per voiceprint, as the product enrolls
MIN_CLIPS = 8


def read_ogg(path: Path) -> F32:
    """One recording, decoded by sox to mono 44.1 kHz float32 (sox mixes the channels and resamples)."""
    raw = subprocess.run(
        ["sox", str(path), "-t", "raw", "-e", "signed", "-b", "16", "-L", "-c", "1", "-r", str(LOCK_RATE), "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def trimmed(x: F32, rate: int = LOCK_RATE) -> F32:
    """``x`` without its leading and trailing silence (under 2 % of its peak), 45 ms of margin kept."""
    level = np.abs(x)
    loud = np.flatnonzero(level > 0.02 * level.max()) if level.size and level.max() > 0 else np.array([], int)
    if not loud.size:
        return x[:0]
    margin = int(0.045 * rate)
    return x[max(0, loud[0] - margin) : loud[-1] + margin]


def joined(recordings: list[F32], rng: np.random.Generator) -> list[F32]:
    """The recordings in random order, joined into clips of at least ``CLIP_S`` (the leftover is dropped),
    each scaled to a peak of 0.5."""
    gap = np.zeros(int(GAP_S * LOCK_RATE), np.float32)
    clips: list[F32] = []
    current: list[F32] = []
    for i in rng.permutation(len(recordings)):
        current += [recordings[i], gap]
        if sum(len(part) for part in current) >= CLIP_S * LOCK_RATE:
            clip = np.concatenate(current)
            clips.append((0.5 * clip / np.abs(clip).max()).astype(np.float32))
            current = []
    return clips


@dataclass(frozen=True)
class Voice:
    name: str
    embedded: F32  # (clips, dim)
    enrollable: npt.NDArray[np.bool_]  # which clips enrollment takes (its speech floor and its voice check)
    heard: F32 | None = None  # (clips, dim): the same clips as the lock hears them at its door (``Door``), if asked

    @property
    def probes(self) -> F32:
        return self.embedded if self.heard is None else self.heard


@dataclass(frozen=True)
class Door:
    """Where the lock hears its probes (``--door``): a room (``channel.room``: its RT60 and the direct sound's level
    over the reverberation's) and white noise at an SNR, applied at 44.1 kHz before the encoder. Enrollment stays
    the app's: clean clips."""

    rt60_s: float
    snr_db: float
    direct_to_reverb_db: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Door:
        """``"RT60,SNR"`` or ``"RT60,SNR,DRR"`` (seconds, dB, dB); RT60 0 is no room."""
        parts = [float(part) for part in text.split(",")]
        if len(parts) not in (2, 3) or not (parts[0] == 0 or 0.05 <= parts[0] <= 5):  # a shorter tail is no room
            raise argparse.ArgumentTypeError(f"--door wants RT60,SNR[,DRR], got {text!r}")
        return cls(*parts)

    def hear(self, clip: F32, seed: list[int]) -> F32:
        rng = np.random.default_rng(seed)
        roomed = channel.room(clip, LOCK_RATE, self.rt60_s, rng, self.direct_to_reverb_db) if self.rt60_s else clip
        return channel.noise(roomed, self.snr_db, rng)


def voices(deb: Path, encoder: Encoder, rng: np.random.Generator, door: Door | None = None) -> list[Voice]:
    """Every language of the package with enough clips, embedded by ``encoder`` at 44.1 kHz (and as heard at
    ``door``, each clip with a noise and room of its own)."""
    settings = Settings.from_env({"LOCKWISE_MODE": "local"}, component="embed")
    floor = CALIBRATIONS["ge2e"].enroll_min_speech_s
    limits = audio.Limits()
    voice = VoiceActivity(VAD_DIR)
    found: list[Voice] = []
    with tempfile.TemporaryDirectory(prefix="unseen-deb-") as tmp:
        subprocess.run(["dpkg", "-x", str(deb), tmp], check=True, capture_output=True)
        root = Path(tmp) / "usr/share/klettres"
        stated = (Path(tmp) / "usr/share/doc" / PACKAGE / "copyright").read_text(errors="replace")
        if LICENCE not in stated:
            raise corpus.CorpusError(f"{deb.name}: its copyright file no longer states GPL-2+; review the licence")
        for language in sorted(p for p in root.iterdir() if p.is_dir()):
            recordings = [trimmed(read_ogg(f)) for f in sorted(language.rglob("*.ogg"))]
            clips = joined([r for r in recordings if r.size], rng)
            speech = [audio.speech_seconds(c, LOCK_RATE) for c in clips]
            kept = [(c, s) for c, s in zip(clips, speech, strict=True) if s >= limits.min_speech_seconds]
            enrollable = np.array(
                [s >= floor and voice.voiced_seconds(c, LOCK_RATE) >= settings.enroll_min_voice_s for c, s in kept],
                dtype=bool,
            )
            if len(kept) < MIN_CLIPS or enrollable.sum() < SAMPLES:
                continue
            embedded = np.stack([encoder.embed(c, LOCK_RATE) for c, _ in kept])
            heard = None
            if door is not None:
                at = len(found)
                heard = np.stack([encoder.embed(door.hear(c, [at, k]), LOCK_RATE) for k, (c, _) in enumerate(kept)])
            found.append(Voice(language.name, embedded, enrollable, heard))
    return found


@dataclass(frozen=True)
class Result:
    voices: int
    owners: int
    strangers: int
    #: per gate (none, floor, raw threshold): (owners refused, strangers accepted)
    gates: dict[str, tuple[int, int]]
    #: per voice, with the product's gate: (owner trials, refused)
    per_voice: dict[str, tuple[int, int]]
    strangers_raw_max: float
    #: (voiceprint's voice, stranger's voice) of each stranger the product's gate let through
    passed: list[tuple[str, str]]

    def voice_mean(self) -> float:
        """Owners refused with the product's gate, the mean over voices (each voice counts once, however many
        clips it has)."""
        return float(np.mean([refused / trials for trials, refused in self.per_voice.values() if trials]))


def measure(found: list[Voice], encoder: Encoder, draws: int, rng: np.random.Generator) -> Result:
    """Owners refused and strangers accepted over ``draws`` voiceprints per voice, per raw gate."""
    scorer, rules = bandwidth.gated(encoder)
    tally = _Tally(rules, {voice.name: [0, 0] for voice in found})
    for voice in found:
        pool = np.flatnonzero(voice.enrollable)
        for _ in range(draws):
            pick = rng.choice(pool, SAMPLES, replace=False)
            if scoring.agreement(voice.embedded[pick])[0] < rules["floor"].agreement:
                continue  # enrollment would refuse these samples
            voiceprint = scoring.voiceprint(voice.embedded[pick])[np.newaxis, :]
            for other in found:
                probes = np.delete(other.probes, pick, axis=0) if other is voice else other.probes
                for probe in probes:
                    tally.add(voice.name, other.name, *scorer.scores(probe, voiceprint))
    return tally.result(len(found))


@dataclass
class _Tally:
    """The counts ``measure`` keeps, one trial at a time."""

    rules: dict[str, Policy]
    per_voice: dict[str, list[int]]  # with the product's gate: [owner trials, refused]
    owners: int = 0
    strangers: int = 0
    stranger_max: float = -1.0
    counts: dict[str, list[int]] = field(default_factory=dict)  # per gate: [owners refused, strangers accepted]
    passed: list[tuple[str, str]] = field(default_factory=list)

    def add(self, owner: str, speaker: str, raw: F32, normalised: F32) -> None:
        """One probe of ``speaker`` against a voiceprint of ``owner``, decided under each gate."""
        own = owner == speaker
        self.owners, self.strangers = self.owners + own, self.strangers + (not own)
        if not own:
            self.stranger_max = max(self.stranger_max, float(raw[0]))
        wrong = {
            gate: verification.decide(raw, normalised, rules).accepted is not own for gate, rules in self.rules.items()
        }
        for gate, was_wrong in wrong.items():
            self.counts.setdefault(gate, [0, 0])[0 if own else 1] += int(was_wrong)
        if own:
            self.per_voice[owner][0] += 1
            self.per_voice[owner][1] += int(wrong["floor"])
        elif wrong["floor"]:
            self.passed.append((owner, speaker))

    def result(self, voices: int) -> Result:
        return Result(
            voices,
            self.owners,
            self.strangers,
            {gate: (refused, accepted) for gate, (refused, accepted) in self.counts.items()},
            {name: (trials, refused) for name, (trials, refused) in self.per_voice.items()},
            self.stranger_max,
            self.passed,
        )


def table(result: Result) -> str:
    ge2e = CALIBRATIONS["ge2e"]
    names = {
        "none": "no raw gate",
        "floor": f"gate {ge2e.floor} (the floor, shipped)",
        "raw threshold": f"gate {ge2e.threshold} (the raw threshold)",
    }
    lines = [
        f"{result.voices} voices never heard, 44.1 kHz, one utterance, normalised threshold {ge2e.norm_threshold}: "
        f"{result.owners} owner / {result.strangers} stranger trials",
        f"{'decision':40} | {'owners refused':>16} | {'strangers accepted':>20}",
    ]
    for gate, (refused, accepted) in result.gates.items():
        lines.append(
            f"{names[gate]:40} | {100 * refused / max(result.owners, 1):15.1f}% | "
            f"{accepted:>6} ({100 * accepted / max(result.strangers, 1):.3f} %)"
        )
    lines.append(f"owners refused with the floor, the mean over voices: {100 * result.voice_mean():.1f} %")
    lines.append(f"strangers' highest raw cosine: {result.strangers_raw_max:.3f}")
    if result.passed:
        pairs = sorted(set(result.passed))
        lines.append(
            "strangers through with the floor (voiceprint <- stranger): " + ", ".join(f"{a} <- {b}" for a, b in pairs)
        )
    lines.append(
        "owners refused per voice (shipped): "
        + ", ".join(f"{name} {refused}/{trials}" for name, (trials, refused) in result.per_voice.items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    cache = Path.home() / ".cache" / "lockwise" / "corpus"
    parser.add_argument("--debs", type=Path, default=cache / "debs", help="where the .deb is kept")
    parser.add_argument("--draws", type=int, default=10, help="voiceprints drawn per voice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--door",
        type=Door.parse,
        help="probes as the lock hears them at its door: RT60,SNR[,DRR] (a room and white noise; enrollment clean)",
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    encoder = open_encoder("ge2e", None)
    found = voices(corpus.fetch(PACKAGE, args.debs), encoder, rng, args.door)
    if args.door is not None:
        print(f"probes heard at the door: {args.door}")  # noqa: T201
    print(table(measure(found, encoder, args.draws, rng)))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
