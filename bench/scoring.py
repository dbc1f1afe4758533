"""What score normalisation adds at the door: ``./dev bench scoring``.

In process, with GE2E's shipped cohort (``functions/models/ge2e/cohort.npz``, built by ``./dev``) and a real probe
embedding: the time to score one probe against 1, 10 and 100 voiceprints as raw cosines (the plain path) and with
AS-norm (lockwise.voice.model.cohort), and the ratio. The embedding itself (the forward pass, about 100 ms for 3 s of
audio) is the same for both and is left out.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import machine, out, pct, table
from lockwise.voice.model import cohort
from lockwise.voice.model.encoder import DEFAULT_GE2E_DIR, Scorer, open_encoder


def timed(scorer: Scorer, probe: np.ndarray, prints: np.ndarray, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        scorer.scores(probe, prints)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    encoder = open_encoder("ge2e", None)
    loaded = cohort.load(DEFAULT_GE2E_DIR, encoder.model_id, encoder.dim)
    if loaded is None:
        raise SystemExit(f"no cohort in {DEFAULT_GE2E_DIR}: run ./dev setup (it builds one)")
    rng = np.random.default_rng(0)
    probe = encoder.embed((0.1 * rng.standard_normal(48000)).astype(np.float32), 16000)
    plain, normalised = Scorer(), Scorer(loaded)
    rows: list[list[object]] = []
    for members in (1, 10, 100):
        prints = rng.standard_normal((members, encoder.dim)).astype(np.float32)
        prints /= np.linalg.norm(prints, axis=1, keepdims=True)
        raw_ms = timed(plain, probe, prints, args.rounds)
        norm_ms = timed(normalised, probe, prints, args.rounds)
        rows.append(
            [
                members,
                pct(raw_ms, 50),
                pct(norm_ms, 50),
                pct(norm_ms, 99),
                pct(norm_ms, 50) - pct(raw_ms, 50),
                f"{pct(norm_ms, 50) / pct(raw_ms, 50):.1f}x",
            ]
        )
    out(
        table(
            f"Scoring one probe, GE2E, cohort of {loaded.embeddings.shape[0]} clips, top-{loaded.top_k} "
            f"({args.rounds} rounds; {machine()})",
            ["members", "raw p50 ms", "AS-norm p50 ms", "AS-norm p99 ms", "added ms", "ratio"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
