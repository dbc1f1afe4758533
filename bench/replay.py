"""What replay detection adds at the door: ``./dev bench replay``.

In process, on real speech from the corpus (``./dev setup`` builds it): the time to fingerprint a 3 s clip at the
lock's 44.1 kHz and to match it against 3, 30 and 300 stored recordings (a member's enrollment samples; a busy
lock's week of attempts), and, for a voice verify would let in, the altered search (the clip played faster, slower
or backwards: ``fingerprint.altered``; retimed: ``retimed.tempo_scores``) against 3, 30 and 100 of that voice's
recordings (``known_recordings.ALTERED_COMPARED``), beside the plain path it sits next to, the GE2E forward pass on
the same clip.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.common import machine, out, pct, table
from lockwise.voice import audio, known_recordings
from lockwise.voice.model import fingerprint, retimed
from lockwise.voice.model.encoder import open_encoder
from lockwise.voice.model.resample import resample

CORPUS = Path.home() / ".cache" / "lockwise" / "corpus" / "asterisk"


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args(argv)
    files = sorted((args.corpus / "allison").glob("*.wav"))
    if len(files) < 300:
        raise SystemExit(f"no corpus in {args.corpus}: run ./dev setup (it builds it)")
    clips = [audio.parse_wav(p.read_bytes()) for p in files[:301]]
    probe = clips[0]
    wave = resample(probe.samples[: 3 * probe.rate], probe.rate, 44_100)  # 3 s as a lock sends it
    stored = [fingerprint.landmarks(c.samples, c.rate) for c in clips[1:]]
    heard = fingerprint.landmarks(wave, 44_100)
    encoder = open_encoder("ge2e", None)
    forward = timed(lambda: encoder.embed(wave, 44_100), args.rounds)
    rows: list[list[object]] = [["GE2E forward pass (the plain path)", pct(forward, 50), pct(forward, 99), "1.00x"]]

    def row(step: str, call: Callable[[], object]) -> None:
        ms = timed(call, args.rounds)
        rows.append([step, pct(ms, 50), pct(ms, 99), f"{pct(ms, 50) / pct(forward, 50):.2f}x"])

    row("fingerprint the clip", lambda: fingerprint.landmarks(wave, 44_100))
    for n in (3, 30, 300):
        row(f"match against {n} recordings", partial(fingerprint.match_scores, heard, stored[:n]))
    found = fingerprint.peaks(wave, 44_100)
    variants, tempos = fingerprint.altered(found), retimed.retimed(found)
    row(f"altered search: the clip's {len(variants)} variants", lambda: fingerprint.altered(found))
    for n in (3, 30, known_recordings.ALTERED_COMPARED):
        row(f"altered search against {n} recordings", partial(fingerprint.altered_scores, variants, stored[:n]))
    row("tempo search: the clip's triplets, as heard and backwards", lambda: retimed.retimed(found))
    for n in (3, 30, known_recordings.ALTERED_COMPARED):
        row(f"tempo search against {n} recordings", partial(retimed.tempo_scores, tempos, stored[:n]))
    out(
        table(
            f"Replay detection for 3 s at 44.1 kHz, real speech ({args.rounds} rounds; {machine()})",
            ["step", "p50 ms", "p99 ms", "vs forward pass"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
