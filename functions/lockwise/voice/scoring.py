"""Cosine scoring of embeddings and the accept/reject decision (numpy only, no model).

Embeddings are float32 vectors of the encoder's dimension (192 for ECAPA-TDNN), unit L2 norm, stored as
little-endian float32 bytes. A probe is scored against all candidate voiceprints in one matrix product.

>>> import numpy as np
>>> prints = np.eye(3, dtype=np.float32)
>>> decide(cosine_scores(np.array([1, 0, 0], np.float32), prints), threshold=0.5, margin=0.1).best_index
0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float32]


def normalise(x: npt.NDArray[np.floating]) -> Vector:
    """Unit L2 norm along the last axis (float32; the norm taken in float64, where float32's squares of values
    past ~1e19 overflow)."""
    arr = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    out: Vector = (arr / np.maximum(norm, 1e-12)).astype(np.float32)
    return out


def unusable_rows(prints: Matrix) -> list[int]:
    """The rows of ``prints`` no cosine can be taken with: a value that is not finite (NaN scored as the best of
    every list, and went out as JSON no client reads), or no direction (all zeros, or a norm that underflows)."""
    wide = prints.astype(np.float64)  # float32 squares of values near 3e38 overflow to inf
    finite = np.isfinite(wide).all(axis=-1)
    norms = np.linalg.norm(np.where(np.isfinite(wide), wide, 0.0), axis=-1)
    return [int(i) for i in np.flatnonzero(~finite | (norms < 1e-12))]


def to_bytes(x: npt.NDArray[np.floating]) -> bytes:
    return np.ascontiguousarray(x, dtype="<f4").tobytes()


def from_bytes(data: bytes, dim: int) -> Matrix:
    """Bytes of ``k * dim`` little-endian float32 -> array ``(k, dim)``."""
    arr = np.frombuffer(data, dtype="<f4")
    if dim <= 0 or arr.size % dim:
        raise ValueError(f"{len(data)} bytes are not a whole number of {dim}-dim float32 vectors")
    return arr.reshape(-1, dim).astype(np.float32)


def cosine_scores(probe: Vector, prints: Matrix) -> npt.NDArray[np.float32]:
    """Cosine of ``probe`` (d,) with each row of ``prints`` (k, d) -> (k,)."""
    if prints.ndim != 2 or prints.shape[1] != probe.shape[-1]:
        raise ValueError(f"dimension mismatch: probe {probe.shape}, prints {prints.shape}")
    # a cosine, kept within [-1, 1] where float32's rounding of two unit vectors' product strays past it
    scores: npt.NDArray[np.float32] = np.clip(normalise(prints) @ normalise(probe), -1.0, 1.0).astype(np.float32)
    return scores


@dataclass(frozen=True)
class Decision:
    accepted: bool
    best_index: int | None
    best: float | None
    runner_up: float | None
    reason: str  # accepted | no_candidates | below_threshold | ambiguous
    runner_up_index: int | None = None
    #: the best is someone not allowed in now: answered as a voice below the threshold (nothing said of them), never
    #: asked again, and logged with its scores (``lockwise.voice.first_come``)
    not_allowed: bool = False


def decide(scores: npt.NDArray[np.float32], threshold: float, margin: float) -> Decision:
    """Accept only when the best score reaches ``threshold`` and beats the runner-up by ``margin``. A score that is
    not a finite number (an encoder's NaN) counts as the lowest possible: it never opens the door (NaN compared
    with the threshold is False either way, so an unguarded NaN best score was accepted: attack run, no input found
    that makes one)."""
    if scores.size == 0:
        return Decision(False, None, None, None, "no_candidates")
    scores = np.where(np.isfinite(scores), scores, -np.inf).astype(scores.dtype)
    order = np.argsort(scores)[::-1]
    best_i = int(order[0])
    best = float(scores[best_i])
    runner_i = int(order[1]) if scores.size > 1 else None
    runner = float(scores[runner_i]) if runner_i is not None else None
    if not best >= threshold:
        return Decision(False, best_i, best, runner, "below_threshold", runner_i)
    if runner is not None and best - runner < margin:
        return Decision(False, best_i, best, runner, "ambiguous", runner_i)
    return Decision(True, best_i, best, runner, "accepted", runner_i)


def voiceprint(samples: Matrix) -> Vector:
    """The enrolled voiceprint: the normalised mean of the normalised sample embeddings ``(n, d)`` -> ``(d,)``."""
    return normalise(normalise(samples).mean(axis=0))


def agreement(samples: Matrix) -> tuple[float, int]:
    """How well enrollment samples agree: (lowest pairwise cosine, index of the sample least like the others)."""
    unit = normalise(samples)
    sims = unit @ unit.T
    n = len(unit)
    off = sims[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    return float(off.min()), int(np.argmin(off.mean(axis=1)))


def split_agreement(samples: Matrix, smallest: int = 2) -> tuple[float, list[int]]:
    """How well enrollment samples agree as one voice: over the splits of the samples ``(n, d)`` into two groups of at
    least ``smallest`` each, the lowest cosine between the two groups' voiceprints, and the smaller group of that
    split (its indices, ascending). Two people's takes (three of one, two of the other) agree pairwise as two like
    voices do, each take passing ``agreement``; their groups' voiceprints are as far apart as the two voices
    (attack run 123). ``(1.0, [])`` when ``n`` is under twice ``smallest`` (no such split).

    Up to ``_EVERY_SPLIT_UP_TO`` samples every split is weighed (16 for five samples, 2,048 for twelve: under a
    millisecond); past it (twenty took 2.5 s), the splits two-means makes from every pair of samples as its seeds."""
    unit = normalise(samples).astype(np.float64)
    n = len(unit)
    if n < 2 * smallest:
        return 1.0, []
    gram = unit @ unit.T
    second = _every_split(n) if n <= _EVERY_SPLIT_UP_TO else _seeded_splits(gram)
    sizes = second.sum(axis=1)
    second = second[(sizes >= smallest) & (n - sizes >= smallest)]
    if not len(second):
        return 1.0, []
    # the cosine of two groups' sums a and b from the samples' cosines G: a'Gb / sqrt(a'Ga b'Gb)
    b = second.astype(np.float64)
    a = 1.0 - b
    ga, gb = a @ gram, b @ gram
    within_a, within_b, across = (ga * a).sum(axis=1), (gb * b).sum(axis=1), (ga * b).sum(axis=1)
    cosines = across / np.sqrt(np.maximum(within_a * within_b, 1e-24))
    worst = int(np.argmin(cosines))
    group = second[worst] if second[worst].sum() <= n / 2 else ~second[worst]
    return float(cosines[worst]), [int(i) for i in np.flatnonzero(group)]


#: enrollments of at most this many samples have every split weighed (``split_agreement``)
_EVERY_SPLIT_UP_TO = 12


def _every_split(n: int) -> npt.NDArray[np.bool_]:
    """Each split of ``n`` samples into two groups once, as the second group's members: sample 0 is never in it."""
    codes = np.arange(2 ** (n - 1), dtype=np.int64)
    second = np.zeros((len(codes), n), bool)
    second[:, 1:] = ((codes[:, None] >> np.arange(n - 1)) & 1).astype(bool)
    return second


def _seeded_splits(gram: npt.NDArray[np.float64], rounds: int = 3) -> npt.NDArray[np.bool_]:
    """For each pair of samples as seeds, the split two-means on their cosines ``gram`` makes: each sample goes with
    the seed (then the group's mean) it is nearer, ``rounds`` times."""
    n = len(gram)
    splits = []
    for i in range(n):
        for j in range(i + 1, n):
            second = gram[:, j] > gram[:, i]
            for _ in range(rounds):
                if second.all() or not second.any():
                    break
                to_b = gram[:, second].mean(axis=1)
                to_a = gram[:, ~second].mean(axis=1)
                second = to_b > to_a
            splits.append(second if not second[0] else ~second)
    return np.array(splits, dtype=bool).reshape(-1, n)
