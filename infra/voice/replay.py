"""Measure replay detection on the corpus: ``python -m infra.voice.replay CORPUS [--clips N] [--out FILE]``.

Two numbers decide whether ``lockwise.voice.model.fingerprint`` is fit for the door:

* **False alarms.** Every pair of distinct clips of one speaker (the same voice, often the same words) is scored
  as the product scores a probe against a stored recording. A pair at or over ``REPLAY_Z`` is a false alarm unless
  the two clips really share a take: Asterisk's prompts reuse edited takes ("vm-review-urgent" inside
  "vm-review-nonurgent", a digit inside a phonetic prompt). A shared take is confirmed on the waveform, not the
  fingerprint: the two clips, low-passed to 80-1000 Hz (what GSM keeps of a waveform), aligned at the
  fingerprint's offset +-1 frame, correlate at or over ``SAME_TAKE_CORRELATION`` somewhere in a 0.25 s window.
  Distinct takes of one speaker stay far below that.
* **Detection through a channel.** ``--clips`` clips, spread over every speaker, are replayed through each
  condition of ``infra.voice.channel`` (loudspeaker, room, noise, gain, player clock) and checked against (a) the
  clip itself, as an enrollment sample is stored, and (b) the lock's own recording of it (an earlier attempt: a
  different microphone channel). Replays the product's intake refuses (clipped, too little speech) are counted
  apart: they never reach a decision.
* **Altered replays.** The same clips played faster or slower (by up to the most GE2E still lets in) and backwards
  before the loudspeaker, recognised by the plain check or by the altered search
  (``fingerprint.altered_scores``, run on a voice verify would let in); and its false alarms: every same-speaker
  pair scored by the altered search, as a member's new take is against her own recordings.

Prints progress while it works (a few minutes) and a markdown report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from infra.voice import channel
from lockwise.core import errors
from lockwise.voice import audio, known_recordings
from lockwise.voice.model import fingerprint, retimed

SAME_TAKE_CORRELATION = 0.95
CLIPS = 120
#: the lock's own microphone hearing a live voice: what an earlier attempt's stored fingerprint is made from
LOCK_MIC = channel.Channel("lock microphone", low_hz=100, high_hz=4_000, rt60_s=0.2, snr_db=30, gain=0.5, skip_s=0.05)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Clip:
    speaker: str
    name: str
    samples: F32
    prints: fingerprint.Landmarks
    peaks: fingerprint.Peaks


def load(corpus: Path, limits: audio.Limits, speakers: Collection[str] | None = None) -> list[Clip]:
    """Every clip the product's intake accepts (of ``speakers`` only, when given), fingerprinted."""
    clips: list[Clip] = []
    folders = (p for p in corpus.iterdir() if p.is_dir() and p.name != "licences")
    for folder in sorted(f for f in folders if speakers is None or f.name in speakers):
        for path in sorted(folder.glob("*.wav")):
            try:
                clip = audio.validate(audio.parse_wav(path.read_bytes()), limits)
            except errors.BadRequest:
                continue
            found = fingerprint.peaks(clip.samples, clip.rate)
            clips.append(Clip(folder.name, path.stem, clip.samples, fingerprint.hashed(found), found))
    return clips


def best_offset(probe: fingerprint.Landmarks, reference: fingerprint.Landmarks) -> int:
    """The reference frame minus the probe frame where most equal hashes agree."""
    lo = np.searchsorted(reference[:, 0], probe[:, 0], side="left")
    hi = np.searchsorted(reference[:, 0], probe[:, 0], side="right")
    offsets = [int(reference[j, 1] - probe[i, 1]) for i in range(len(probe)) for j in range(lo[i], hi[i])]
    if not offsets:
        return 0
    values, counts = np.unique(offsets, return_counts=True)
    return int(values[counts.argmax()])


def _band(x: F32) -> F32:
    spectrum = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / fingerprint.RATE)
    spectrum[(f < 80) | (f > 1000)] = 0
    return np.fft.irfft(spectrum, n=len(x)).astype(np.float32)


def same_take(a: Clip, b: Clip, window: int = 2000) -> float:
    """The highest correlation of 0.25 s windows of ``a`` and ``b`` (80-1000 Hz) at the fingerprint's offset."""
    x, y = _band(a.samples), _band(b.samples)
    centre = best_offset(a.prints, b.prints) * fingerprint.HOP
    best = 0.0
    for lag in range(centre - fingerprint.HOP, centre + fingerprint.HOP + 1):
        u, v = (x, y[lag:]) if lag >= 0 else (x[-lag:], y)
        n = min(len(u), len(v))
        if n < window:
            continue
        wu = np.lib.stride_tricks.sliding_window_view(u[:n], window)[:: window // 4]
        wv = np.lib.stride_tricks.sliding_window_view(v[:n], window)[:: window // 4]
        r = (wu * wv).sum(1) / (np.sqrt((wu * wu).sum(1) * (wv * wv).sum(1)) + 1e-12)
        best = max(best, float(r.max()))
    return best


#: what ``false_alarms`` scores pairs with: the plain check, the altered search's speeds (and reversal), its tempos
SEARCHES = ("plain", "speeds", "tempos")


def _scores(search: str, probe: Clip, later: list[Clip]) -> tuple[npt.NDArray[np.float64], float]:
    """A probe's scores against ``later`` by ``search``, and that search's threshold."""
    prints = [c.prints for c in later]
    if search == "speeds":
        return fingerprint.altered_scores(fingerprint.altered(probe.peaks), prints), fingerprint.REPLAY_Z
    if search == "tempos":
        return retimed.tempo_scores(retimed.retimed(probe.peaks), prints), retimed.TEMPO_Z
    return fingerprint.match_scores(probe.prints, prints), fingerprint.REPLAY_Z


def false_alarms(clips: list[Clip], search: str = "plain") -> dict[str, Any]:
    """Every same-speaker pair scored by ``search`` (``SEARCHES``): one over its threshold is a false alarm unless
    the waveforms show one take."""
    by_speaker: dict[str, list[Clip]] = {}
    for clip in clips:
        by_speaker.setdefault(clip.speaker, []).append(clip)
    pairs = 0
    flagged: list[dict[str, Any]] = []
    highest_distinct = -np.inf
    started = time.monotonic()
    for speaker, group in by_speaker.items():
        print(f"pairs of {speaker}: {len(group)} clips ({time.monotonic() - started:.0f} s so far)", file=sys.stderr)  # noqa: T201
        for i, probe in enumerate(group[:-1]):
            z, threshold = _scores(search, probe, group[i + 1 :])
            near = 0.6 * threshold
            pairs += len(z)
            for j in np.nonzero(z >= near)[0]:  # near or over: check the waveform
                other = group[i + 1 + int(j)]
                r = same_take(probe, other)
                if r >= SAME_TAKE_CORRELATION:
                    if z[j] >= threshold:
                        flagged.append({"pair": f"{probe.name}/{other.name}", "speaker": speaker, "z": float(z[j])})
                    continue
                highest_distinct = max(highest_distinct, float(z[j]))
                if z[j] >= threshold:
                    flagged.append(
                        {"pair": f"{probe.name}/{other.name}", "speaker": speaker, "z": float(z[j]), "false": r}
                    )
            below = z[z < near]
            if len(below):
                highest_distinct = max(highest_distinct, float(below.max()))
    false = [f for f in flagged if "false" in f]
    return {
        "search": search,
        "pairs": pairs,
        "speakers": len(by_speaker),
        "shared_takes": len(flagged) - len(false),
        "false_alarms": len(false),
        "false": false,
        "highest_distinct_z": highest_distinct,
    }


def detection(
    clips: list[Clip], count: int, seed: int = 7, conditions: Sequence[channel.Channel] = channel.CONDITIONS
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    picked = [clips[int(i)] for i in np.linspace(0, len(clips) - 1, min(count, len(clips)))]
    limits = audio.Limits()
    lock_prints = [fingerprint.landmarks(LOCK_MIC(c.samples, fingerprint.RATE, rng), LOCK_MIC.rate_out) for c in picked]
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for condition in conditions:
        print(f"replaying {len(picked)} clips: {condition.name} ({time.monotonic() - started:.0f} s)", file=sys.stderr)  # noqa: T201
        refused = 0
        z_enrolled: list[float] = []
        z_attempt: list[float] = []
        for clip, lock_print in zip(picked, lock_prints, strict=True):
            heard = condition(clip.samples, fingerprint.RATE, rng)
            try:
                audio.validate(audio.Clip(heard, condition.rate_out), limits)
            except errors.BadRequest:
                refused += 1
                continue
            probe = fingerprint.landmarks(heard, condition.rate_out)
            z = fingerprint.match_scores(probe, [clip.prints, lock_print])
            z_enrolled.append(float(z[0]))
            z_attempt.append(float(z[1]))
        decided = len(z_enrolled)
        rows.append(
            {
                "condition": condition.name,
                "replays": len(picked),
                "refused_by_intake": refused,
                "detected_enrolled": int(np.sum(np.array(z_enrolled) >= fingerprint.REPLAY_Z)),
                "detected_attempt": int(np.sum(np.array(z_attempt) >= fingerprint.REPLAY_Z)),
                "decided": decided,
                "median_z": float(np.median(z_enrolled)) if decided else float("nan"),
            }
        )
    return rows


#: alterations an attacker makes to a recording before playing it (attack run 64): a speed (a factor: 1.03 is 3 %
#: fast, pitch and tempo together), whether it is played backwards, a tempo (pitch kept: sox's WSOLA ``tempo``), and
#: a pitch shift in cents (tempo kept: sox's ``pitch``, a voice changer's; the session after stop 63)
ALTERATIONS: tuple[tuple[str, float, bool, float, int], ...] = (
    ("3 % fast", 1.03, False, 1.0, 0),
    ("3 % slow", 0.97, False, 1.0, 0),
    ("8 % fast", 1.08, False, 1.0, 0),
    ("12 % slow", 0.88, False, 1.0, 0),
    ("16 % fast", 1.16, False, 1.0, 0),
    ("backwards", 1.0, True, 1.0, 0),
    ("backwards, 5 % slow", 0.95, True, 1.0, 0),
    ("tempo 1.1x, pitch kept", 1.0, False, 1.1, 0),
    ("tempo 0.7x, pitch kept", 1.0, False, 0.7, 0),
    ("tempo 1.4x, pitch kept", 1.0, False, 1.4, 0),
    ("backwards, tempo 1.2x", 1.0, True, 1.2, 0),
    ("pitch a semitone down, tempo kept", 1.0, False, 1.0, -100),
    ("pitch two semitones up, tempo kept", 1.0, False, 1.0, 200),
)
#: the channels they are measured through
ALTERED_THROUGH = (channel.CONDITIONS[1], channel.CONDITIONS[0])


def played_at(
    x: F32,
    speed: float,
    backwards: bool = False,
    tempo: float = 1.0,
    rate: int = fingerprint.RATE,
    pitch_cents: int = 0,
) -> F32:
    """``x`` (at ``rate``) played ``speed`` times as fast (pitch and tempo together, as a player's speed control or
    a resampler), backwards if asked, its tempo changed ``tempo`` times with its pitch kept (sox ``tempo``), and its
    pitch shifted ``pitch_cents`` with its tempo kept (sox ``pitch``, as a voice changer does)."""
    y = np.ascontiguousarray(x[::-1] if backwards else x, dtype=np.float32)
    if speed != 1.0:
        y = np.interp(np.arange(0, len(y) - 1, speed), np.arange(len(y)), y).astype(np.float32)
    for effect, amount, unchanged in (("tempo", tempo, 1.0), ("pitch", pitch_cents, 0)):
        if amount == unchanged:
            continue
        raw = ["-t", "raw", "-r", str(rate), "-c", "1", "-e", "floating-point", "-b", "32"]
        done = subprocess.run(
            ["sox", *raw, "-", *raw, "-", effect, str(amount)], input=y.tobytes(), capture_output=True, check=True
        )
        y = np.frombuffer(done.stdout, dtype=np.float32).copy()
    return y


def altered_detection(
    clips: list[Clip],
    count: int,
    seed: int = 11,
    alterations: Sequence[tuple[str, float, bool, float, int]] = ALTERATIONS,
    through: Sequence[channel.Channel] = ALTERED_THROUGH,
) -> list[dict[str, Any]]:
    """``count`` clips altered each way and replayed through each of ``through``: how many the plain check and the
    altered search (its speeds and its tempos) recognise against the clip itself (an enrollment sample)."""
    rng = np.random.default_rng(seed)
    picked = [clips[int(i)] for i in np.linspace(0, len(clips) - 1, min(count, len(clips)))]
    limits = audio.Limits()
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for condition in through:
        for name, speed, backwards, tempo, cents in alterations:
            took = time.monotonic() - started
            print(f"altered {len(picked)}: {name}, {condition.name} ({took:.0f} s)", file=sys.stderr)  # noqa: T201
            refused = plain = searched = 0
            for clip in picked:
                altered = played_at(clip.samples, speed, backwards, tempo, pitch_cents=cents)
                heard = condition(altered, fingerprint.RATE, rng)
                try:
                    audio.validate(audio.Clip(heard, condition.rate_out), limits)
                except errors.BadRequest:
                    refused += 1
                    continue
                found = fingerprint.peaks(heard, condition.rate_out)
                z_plain = fingerprint.match_scores(fingerprint.hashed(found), [clip.prints])[0]
                plain += bool(z_plain >= fingerprint.REPLAY_Z)
                searched += bool(
                    z_plain >= fingerprint.REPLAY_Z
                    or known_recordings.altered_replay(known_recordings.altered(found), [clip.prints])
                )
            rows.append(
                {
                    "alteration": name,
                    "condition": condition.name,
                    "replays": len(picked),
                    "refused_by_intake": refused,
                    "decided": len(picked) - refused,
                    "plain": plain,
                    "searched": searched,
                }
            )
    return rows


def altered_markdown(alarms: Sequence[dict[str, Any]], det: list[dict[str, Any]]) -> str:
    lines = [
        f"Altered search: {len(fingerprint.ALTERED_SPEEDS)} speeds "
        f"({min(fingerprint.ALTERED_SPEEDS):.3f}-{max(fingerprint.ALTERED_SPEEDS):.3f}), "
        "each also backwards and as a pitch shift alone (tempo kept), and backwards as it is "
        f"(z >= {fingerprint.REPLAY_Z:g}); tempos {retimed.SCALES[0]:.2f}-{retimed.SCALES[-1]:.2f}x the recording's "
        f"length, as heard and backwards (triplets, z >= {retimed.TEMPO_Z:g}).",
        "",
    ]
    for fa in alarms:
        lines.append(
            f"**False alarms of the {fa['search']} search:** {fa['false_alarms']} over {fa['pairs']:,} same-speaker "
            f"pairs of {fa['speakers']} speakers (highest z of a pair that is not one take: "
            f"{fa['highest_distinct_z']:.1f}); {fa['shared_takes']} pairs over the threshold share a take."
        )
        lines.append("")
    lines += [
        "| alteration | replayed through | replays | refused by intake | recognised, plain check |"
        " recognised, with the altered search |",
        "|---|---|---|---|---|---|",
    ]
    for r in det:
        d = max(1, r["decided"])
        lines.append(
            f"| {r['alteration']} | {r['condition']} | {r['replays']} | {r['refused_by_intake']} |"
            f" {r['plain']}/{r['decided']} ({r['plain'] / d:.0%}) | {r['searched']}/{r['decided']}"
            f" ({r['searched'] / d:.0%}) |"
        )
    for fa in alarms:
        for f in fa["false"]:
            lines.append(
                f"- false alarm ({fa['search']}): {f['speaker']} {f['pair']} z={f['z']:.1f} (waveform {f['false']:.2f})"
            )
    return "\n".join(lines) + "\n"


def markdown(fa: dict[str, Any], det: list[dict[str, Any]]) -> str:
    lines = [
        f"Replay threshold: z >= {fingerprint.REPLAY_Z:g}.",
        "",
        f"**False alarms:** {fa['false_alarms']} over {fa['pairs']:,} same-speaker pairs of {fa['speakers']} speakers "
        f"(highest z of a pair that is not one take: {fa['highest_distinct_z']:.1f}); {fa['shared_takes']} pairs over "
        f"the threshold share a take (waveform correlation >= {SAME_TAKE_CORRELATION}) and are rightly recognised.",
        "",
        "| replay condition | replays | refused by intake | detected vs enrollment clip | detected vs earlier attempt |"
        " median z |",
        "|---|---|---|---|---|---|",
    ]
    for r in det:
        d = max(1, r["decided"])
        lines.append(
            f"| {r['condition']} | {r['replays']} | {r['refused_by_intake']} | {r['detected_enrolled']}/{r['decided']}"
            f" ({r['detected_enrolled'] / d:.0%}) | {r['detected_attempt']}/{r['decided']}"
            f" ({r['detected_attempt'] / d:.0%}) | {r['median_z']:.0f} |"
        )
    for f in fa["false"]:
        lines.append(f"- false alarm: {f['speaker']} {f['pair']} z={f['z']:.1f} (waveform {f['false']:.2f})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--clips", type=int, default=CLIPS, help="clips replayed through each condition")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--altered", action="store_true", help="measure altered replays and the altered search")
    args = parser.parse_args(argv)
    started = time.monotonic()
    clips = load(args.corpus, audio.Limits())
    print(f"fingerprinted {len(clips)} clips in {time.monotonic() - started:.0f} s", file=sys.stderr)  # noqa: T201
    if args.altered:
        alarms = [false_alarms(clips, search) for search in ("speeds", "tempos")]
        report = altered_markdown(alarms, altered_detection(clips, args.clips))
    else:
        report = markdown(false_alarms(clips), detection(clips, args.clips))
    print(report)  # noqa: T201
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
