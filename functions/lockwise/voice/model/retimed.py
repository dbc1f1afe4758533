"""Recognising a known recording whose tempo was changed with its pitch kept (a time stretch), or that is played
backwards.

The landmark hashes of ``fingerprint`` hold time gaps, and a time stretch changes every one of them and spreads the
matches over offsets: a take played at 1.1x tempo was recognised 1 time in 20, and GE2E still lets in takes at
0.6-1.5x (attack run 64 opened the door 20 of 20 at 1.1x). Here a hash is a **triplet** of peaks, an anchor and two
of the ``FAN`` peaks after it in its target zone: their frequencies (which a time stretch keeps) and the ratio of
their time gaps ``(t2 - t1) / (t3 - t1)`` in ``RATIO_LEVELS`` steps (which it keeps too), the idea of Sonnleitner and
Widmer's quad fingerprints (2016) for time-scaled audio, on the same spectral peaks. Equal triplets of a probe and a
recording then lie on one line ``t_probe = a * t_recording + c``: each match's third gap gives the stretch ``a``
within a frame (``SCALES`` are tried), and the score is the most matches on one line against what chance gives, as
``fingerprint.match_scores`` counts them at one offset.

A recording's triplets are rebuilt from its stored landmarks (every peak that can be in a triplet is an anchor or a
target there: a triplet takes two of its anchor's first ``FAN`` peaks ahead, which are among its first
``fingerprint.FAN_OUT``), so nothing new is stored. Distinct takes of one speaker score at most ~47 over the whole
corpus (``TEMPO_Z`` is 60); README "Known recordings".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lockwise.voice.model import fingerprint

FAN = 4  # an anchor's first peaks ahead in its zone, two at a time: 6 triplets an anchor
RATIO_LEVELS = 16  # the gap ratio's steps
#: the stretches tried: a probe's times ``a`` times its recording's, from 0.6 (played 1.67x as fast) to 1.7
SCALES = np.exp(np.linspace(np.log(0.6), np.log(1.7), 110))
_LOG_FIRST, _LOG_STEP = float(np.log(SCALES[0])), float(np.log(SCALES[1] / SCALES[0]))
#: a triplet's zone on the probe's clock: wide enough for a take slowed to 1.7x its length
PROBE_ZONE = int(fingerprint.PAIR_FRAMES * 1.7)
#: a probe this far above chance on one line is a retimed replay (the highest distinct pair of the corpus: ~47)
TEMPO_Z = 60.0
#: a probe with more triplets than this (as heard or backwards) is taken as a retimed replay of every recording,
#: unmatched: 15 s of speech makes ~6,000
MAX_PROBE_TRIPLETS = 24_000
#: the most (probe triplet, equal recording triplet) pairs a probe is matched with: each is tried at up to 110
#: stretches (~40 bytes each; 489,000 pairs held 2.1 GB: attack run 67), and an owner's 15 s take makes ~5,600
#: with 100 of her recordings. Past it the recordings sharing the most are left out (scored 0) until the rest fit:
#: not replays, because the recordings searched are the voice's rejected attempts too, which anyone at the door makes
MAX_PAIRS = 30_000

Triplets = npt.NDArray[np.int64]  # shape (n, 3): hash, anchor frame, the anchor's gap to the third peak

_F1, _DF2, _DF3 = 19, 12, 5  # hash = f1 << 19 | (f2 - f1 + 63) << 12 | (f3 - f1 + 63) << 5 | ratio
_SLACK = np.array(
    [
        a * (1 << _F1) + b * (1 << _DF2) + c * (1 << _DF3) + d
        for a in (-1, 0, 1)
        for b in (-1, 0, 1)
        for c in (-1, 0, 1)
        for d in (-1, 0, 1)
    ],
    dtype=np.int64,
)
_APART = 1 << 16  # frames between recordings laid end to end (more than any clip and zone)
_OFFSETS = 1 << 18  # offsets of one (recording, stretch) cell


def triplets(found: fingerprint.Peaks, zone: int = fingerprint.PAIR_FRAMES) -> Triplets:
    """The triplets of ``found``: each peak with two of its first ``FAN`` peaks ahead within ``zone`` frames and
    ``fingerprint.PAIR_BINS`` bins, among the ``8 * FAN`` after it (the landmarks' rule, for ``FAN``)."""
    times, bins = found.times, found.bins
    n = len(times)
    if n < 3:
        return np.zeros((0, 3), dtype=np.int64)
    anchor, peak = fingerprint.targets(found, FAN, zone)
    first = np.searchsorted(anchor, np.arange(n))
    many = np.searchsorted(anchor, np.arange(n), side="right") - first
    rows = []
    for j in range(FAN):
        for k in range(j + 1, FAN):
            at = np.flatnonzero(many > k)
            second, third = peak[first[at] + j], peak[first[at] + k]
            gap2, gap3 = times[second] - times[at], times[third] - times[at]
            ratio = np.minimum(gap2 * RATIO_LEVELS // gap3, RATIO_LEVELS - 1)
            hashes = (
                (bins[at] << _F1)
                | ((bins[second] - bins[at] + fingerprint.PAIR_BINS) << _DF2)
                | ((bins[third] - bins[at] + fingerprint.PAIR_BINS) << _DF3)
                | ratio
            )
            rows.append(np.stack([hashes, times[at], gap3], axis=1))
    return np.concatenate(rows).astype(np.int64)


def retimed(found: fingerprint.Peaks) -> list[Triplets]:
    """A probe's triplets as heard and backwards (a stretch of a reversed take is one of the reversal)."""
    if not len(found.times):
        return []
    last = int(found.times.max())
    back = np.lexsort((found.bins, last - found.times))
    reversed_peaks = fingerprint.Peaks((last - found.times)[back], found.bins[back])
    return [triplets(found, PROBE_ZONE), triplets(reversed_peaks, PROBE_ZONE)]


def of_recordings(references: Sequence[fingerprint.Landmarks]) -> tuple[Triplets, npt.NDArray[np.int64]]:
    """The triplets of stored recordings, rebuilt from their landmarks in one pass (laid end to end, ``_APART``
    frames apart, so no triplet spans two), and each one's recording."""
    times, bins = [], []
    for index, landmarks in enumerate(references):
        hashes, anchors = landmarks[:, 0].astype(np.int64), landmarks[:, 1].astype(np.int64)
        f1 = hashes >> 13
        keys = np.unique(
            np.r_[anchors, anchors + (hashes & 63)] * 1024 + np.r_[f1, f1 + ((hashes >> 6) & 127) - 63]
        )  # every peak once, in time order, each frame's by bin
        times.append(keys // 1024 + index * _APART)
        bins.append(keys % 1024)
    if not times:
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64)
    found = triplets(fingerprint.Peaks(np.concatenate(times), np.concatenate(bins)))
    owner = found[:, 1] // _APART
    found[:, 1] -= owner * _APART
    return found, owner


def tempo_scores(probes: Sequence[Triplets], references: Sequence[fingerprint.Landmarks]) -> npt.NDArray[np.float64]:
    """For each reference, how far above chance any of ``probes`` (``retimed``) agrees with it on one line
    ``t_probe = a * t_reference + c`` (a z-score; compare with ``TEMPO_Z``): each equal triplet (one step of slack
    in each frequency and the ratio) counted at every stretch of ``SCALES`` its third gap allows within 1.5 frames,
    at its offset there (+-1 frame); chance as ``fingerprint.match_scores`` takes it."""
    out = np.zeros(len(references), dtype=np.float64)
    probes = [p for p in probes if len(p)]
    if not probes or not references:
        return out
    if max(len(p) for p in probes) > MAX_PROBE_TRIPLETS:
        out[:] = np.inf
        return out
    ref, owner = of_recordings(references)
    if not len(ref):
        return out
    order = np.argsort(ref[:, 0], kind="stable")
    ref, owner = ref[order], owner[order]
    spans = np.array([int(r[:, 1].max()) + 1 if len(r) else 0 for r in references], dtype=np.float64)
    for probe in probes:
        probe = probe[np.argsort(probe[:, 0], kind="stable")]  # the queries in 81 ascending runs: a quicker search
        query = (probe[:, 0][np.newaxis, :] + _SLACK[:, np.newaxis]).ravel()
        mine, mine_owner = ref, owner
        distinct, at, found, lo, counts = _equal(mine, query)
        if int(counts.sum()) > MAX_PAIRS:  # the recordings sharing the most left out, counted without a pair made
            hits = np.bincount(at[found], minlength=len(distinct))
            each = np.bincount(
                owner, weights=hits[np.cumsum(np.r_[True, np.diff(ref[:, 0]) != 0]) - 1], minlength=len(references)
            )
            keep = fingerprint.lightest(each.astype(np.int64), MAX_PAIRS)[owner]
            mine, mine_owner = ref[keep], owner[keep]
            if not len(mine):
                continue
            distinct, at, found, lo, counts = _equal(mine, query)
        pairs = int(counts.sum())
        if not pairs:
            continue
        entry = np.repeat(np.tile(np.arange(len(probe)), len(_SLACK)), counts)
        other = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(pairs)
        gap_p, gap_r = probe[entry, 2].astype(np.float64), mine[other, 2].astype(np.float64)
        # the stretches within 1.5 frames of the gaps' ratio: SCALES is evenly spaced in log, so an index range
        low = np.ceil((np.log(np.maximum(gap_p - 1.5, 0.5) / gap_r) - _LOG_FIRST) / _LOG_STEP).astype(np.int64)
        high = np.floor((np.log((gap_p + 1.5) / gap_r) - _LOG_FIRST) / _LOG_STEP).astype(np.int64)
        low, high = np.maximum(low, 0), np.minimum(high, len(SCALES) - 1)
        tried = np.maximum(high - low + 1, 0)
        pair = np.repeat(np.arange(pairs), tried)
        scale = np.repeat(low - np.cumsum(tried) + tried, tried) + np.arange(int(tried.sum()))
        offsets = np.rint(probe[entry[pair], 1] - SCALES[scale] * mine[other[pair], 1]).astype(np.int64)
        cells = mine_owner[other[pair]] * len(SCALES) + scale
        keys = cells * _OFFSETS + offsets + _OFFSETS // 2
        unique, tally = np.unique(keys, return_counts=True)
        near = tally.copy()
        beside = np.flatnonzero(np.diff(unique) == 1)
        near[beside] += tally[beside + 1]
        near[beside + 1] += tally[beside]
        best = np.zeros(len(references) * len(SCALES), dtype=np.int64)
        np.maximum.at(best, unique // _OFFSETS, near)
        total = np.bincount(mine_owner[other], minlength=len(references)).astype(np.float64)
        chance = 3 * total / np.maximum(spans + int(probe[:, 1].max()) + 1, 1)
        z = (best.reshape(len(references), len(SCALES)).max(axis=1) - chance) / np.sqrt(chance + 1)
        out = np.maximum(out, z)
    return out


def _equal(
    ref: Triplets, query: npt.NDArray[np.int64]
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.bool_],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
]:
    """``ref``'s distinct hashes (it is sorted by hash), and for each query hash: where it would be among them,
    whether it is there, and its first equal entry and how many there are (0, 0 if none)."""
    hashes = np.ascontiguousarray(ref[:, 0])
    firsts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    distinct, sizes = hashes[firsts], np.diff(np.r_[firsts, len(hashes)])
    at = np.minimum(np.searchsorted(distinct, query), len(distinct) - 1)
    found = distinct[at] == query
    return distinct, at, found, np.where(found, firsts[at], 0), np.where(found, sizes[at], 0)
