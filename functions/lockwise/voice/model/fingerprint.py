"""Audio fingerprints that recognise a recording played back through a loudspeaker, a room and a microphone.

Speaker embeddings cannot tell a replay from a new utterance (two distinct recordings of one speaker reach cosine
0.99 in GE2E), so known recordings are recognised by what one take itself is: the constellation of its spectral
peaks. This is the landmark method of Wang (2003, "An industrial-strength audio search algorithm", the Shazam
paper) as D. Ellis's ``audfprint`` implements it, fitted to short speech (Chromaprint, the maintained library,
fingerprints chroma, built for music and for clips of tens of seconds; speech at the door lasts 2-8 s):

* audio is resampled to 8 kHz and only 300-3400 Hz is used (the band every loudspeaker and microphone pass); each
  frequency row of the log spectrogram (64 ms frames every 16 ms) has its median removed, which takes out a
  channel's fixed colouring;
* a peak is the largest value within +-48 ms and +-94 Hz, stands 6 dB over its frame's median and 12 dB over its
  frequency's median, and lies within 40 dB of the clip's loudest point (silence and hiss give none);
* each peak is paired with the next ten peaks in a zone 16-768 ms ahead and +-984 Hz; each pair is hashed as
  ``(f1, f2 - f1, t2 - t1)``, which gain, a shift in time and noise that leaves the peaks alone do not change;
* a probe matches a reference when many hashes agree **at one time offset**, each allowed one bin and one frame of
  slack (a replay's peaks move a little); the count at the best offset is compared with what chance gives at any
  offset between these two clips (``z = (best - chance) / sqrt(chance + 1)``), so a long, dense clip does not look
  like a replay only because it has more peaks.

Distinct takes of one speaker share hashes only by chance, scattered over offsets. The threshold ``REPLAY_Z`` and
what it detects through a simulated channel are measured on the corpus (``python -m infra.voice.replay``; README
"Known recordings"). A fingerprint holds hashes and frame indices, never audio, and cannot be turned back into
speech; it is still derived from a voice, so it is kept only as long as needed and deleted with the voice data.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> take = rng.standard_normal(8000 * 4).astype(np.float32) * np.repeat(rng.random(200) > 0.5, 160)
>>> replayed = 0.3 * take[800:] + 0.01 * rng.standard_normal(len(take) - 800).astype(np.float32)
>>> bool(match_scores(landmarks(replayed, 8000), [landmarks(take, 8000)])[0] >= REPLAY_Z)
True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lockwise.voice import order_statistics
from lockwise.voice.model.resample import resample

RATE = 8000
N_FFT = 512  # 64 ms
HOP = 128  # 16 ms
LOW_BIN = 19  # 297 Hz
HIGH_BIN = 218  # 3406 Hz
PEAK_FRAMES = 3  # a peak is the largest within +-3 frames (48 ms) ...
PEAK_BINS = 6  # ... and +-6 bins (94 Hz),
PEAK_OVER_MEDIAN_DB = 6.0  # stands this far above its frame's median,
FLOOR_DB = 40.0  # is within this of the loudest point of the clip
PEAK_OVER_BIN_MEDIAN_DB = 12.0  # and stands this far above its frequency's median (noise gives few such peaks)
FAN_OUT = 10  # pairs per anchor peak
PAIR_FRAMES = 48  # target zone: 1-48 frames (16-768 ms) after the anchor ...
PAIR_BINS = 63  # ... and within +-63 bins (984 Hz)
REPLAY_Z = 105.0  # a probe this far above chance at one offset is a replay (README "Known recordings")
#: the most (probe hash, equal reference hash) pairs one pass of a match holds (~60 bytes each): references past it
#: are matched in several passes, each reference's score the same as in one
MAX_PAIRS = 2_000_000
#: past ``MAX_PAIRS``, a reference sharing more pairs than this with the probe is scored as replayed, unmatched. Speech
#: shares a few hundred to a few thousand with a recording (corpus clips of 3-8 s: median 165, most 697; joined 15 s
#: stretches of one voice: most 4,539); sounds built to repeat the same hashes (bursts of tones) shared ~1M with each
#: recording made of them, and matching 75 held a door decision for seconds (past the limit an owner's removal waits
#: within) and 1,000 would have held ~60 GB (attack run 36). A first version refused a probe over 2M pairs with all
#: references together, which honest 15 s phrases reach at a busy door (a review: 1.7-3.9M at 1,300 recordings)
MAX_REFERENCE_PAIRS = 100_000
#: past this many pairs with the references under ``MAX_REFERENCE_PAIRS`` together, the probe is scored as replayed
#: by each: a door's most recordings (~1,800) of 15 s of one voice share at most ~8M with a 15 s probe of it, and
#: recordings built to share just under the cap each would otherwise make a decision match for many seconds
MAX_TOTAL_PAIRS = 10_000_000
#: the speeds an altered replay is searched at (``altered``): a take played up to 17.6 % fast or slow, in steps of
#: 1.6 % (the hashes' one bin of slack holds a speed 0.8 % off up to ~2 kHz). GE2E still let in distinct takes of an
#: owner played 12 % fast (4 of 15) and 16 % (2 of 15), none at 20 % (README "Known recordings")
ALTERED_SPEEDS = tuple(1 + 0.016 * k for k in range(-11, 12) if k)
#: a probe with more landmarks than this in a variant is taken as an altered replay of every recording, unmatched:
#: 15 s of speech has ~4,200, and a grid of tone bursts built to share hashes ~65,000 (attack run 67: 51 million
#: pairs with 100 recordings, 7 s and 2.3 GB before the search's bound was reached)
ALTERED_PROBE_LANDMARKS = 16_000
#: the most (probe hash, equal reference hash) pairs the altered search matches, over all its variants and
#: recordings: an owner's 15 s take against 100 of her 15 s recordings shares 4.4 million. Past it the recordings
#: sharing the most are left out (unsearched, scored 0) until the rest fit, one sharing over ``MAX_PAIRS`` alone
#: always: not a replay, as the plain check takes such a recording, because the recordings searched are the voice's
#: rejected attempts too, which anyone at the door makes, and recordings planted dense with tones then refused the
#: owner's every take (attack run 67)
ALTERED_MAX_PAIRS = 6_000_000

_F1_SHIFT, _DF_SHIFT = 13, 6  # hash = f1 << 13 | (df + 63) << 6 | dt
_SLACK = np.array(
    [a * (1 << _F1_SHIFT) + b * (1 << _DF_SHIFT) + c for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)],
    dtype=np.int32,
)
_SPAN = 1 << 20  # more frames than any clip has (15 s are ~940)
_HASHES = (HIGH_BIN - LOW_BIN) << _F1_SHIFT  # more than any hash
_MARGIN = 1 << _F1_SHIFT  # more than any slack takes a hash below 0 or past ``_HASHES``
_LOOKUPS = threading.local()  # per thread: each hash's place among a match's references (``_lookup``)

Landmarks = npt.NDArray[np.int32]  # shape (n, 2): hash, anchor frame; sorted by hash


@dataclass(frozen=True)
class Peaks:
    """A clip's spectral peaks in time order: frame indices and frequency bins (counted from ``LOW_BIN``)."""

    times: npt.NDArray[np.int64]
    bins: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Fingerprint:
    """A clip's peaks and their landmarks."""

    peaks: Peaks
    landmarks: Landmarks


def of(samples: npt.NDArray[np.floating[Any]], rate: int) -> Fingerprint:
    """The peaks and landmarks of a mono clip."""
    found = peaks(samples, rate)
    return Fingerprint(found, hashed(found))


def landmarks(samples: npt.NDArray[np.floating[Any]], rate: int) -> Landmarks:
    """The landmark hashes of a mono clip: ``(n, 2)`` int32 rows of (hash, anchor frame), sorted by hash."""
    return hashed(peaks(samples, rate))


def peaks(samples: npt.NDArray[np.floating[Any]], rate: int) -> Peaks:
    """The spectral peaks of a mono clip, the landmarks' constellation (``hashed`` pairs them)."""
    wave = np.asarray(samples, dtype=np.float32)
    if rate != RATE:
        wave = resample(wave, rate, RATE)
    if len(wave) < N_FFT:
        return Peaks(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    frames = np.lib.stride_tricks.sliding_window_view(wave, N_FFT)[::HOP]
    # the FFT in float64 (numpy's float32 FFT is ~4x slower: 1.5 vs 0.35 ms for 3 s), the rest in float32; dB from
    # the natural log (float32 ``log`` is ~4x ``log10``'s speed)
    windowed = (frames * np.hanning(N_FFT).astype(np.float32)).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(windowed, axis=1)[:, LOW_BIN:HIGH_BIN]).astype(np.float32)
    db = np.float32(20 / np.log(10)) * np.log(spectrum + np.float32(1e-9))
    loud = db > db.max() - FLOOR_DB
    db = db - order_statistics.median(db, axis=0)  # a channel's fixed colouring out
    local_max = _max_filter(_max_filter(db, PEAK_FRAMES, axis=0), PEAK_BINS, axis=1)
    found = (
        (db == local_max)
        & loud
        & (db > order_statistics.median(db, axis=1) + PEAK_OVER_MEDIAN_DB)
        & (db > PEAK_OVER_BIN_MEDIAN_DB)
    )
    times, bins = np.nonzero(found)  # in time order
    return Peaks(times.astype(np.int64), bins.astype(np.int64))


def hashed(found: Peaks) -> Landmarks:
    """The landmarks of ``found`` (in time order, each frame's by bin): each peak paired with the next ones ahead."""
    times, bins = found.times, found.bins
    if not len(times):
        return np.zeros((0, 2), dtype=np.int32)
    anchor, target = targets(found, FAN_OUT, PAIR_FRAMES)  # the order the hashes are sorted stably from
    dt, df = times[target] - times[anchor], bins[target] - bins[anchor]
    hashes = (bins[anchor] << _F1_SHIFT) | ((df + PAIR_BINS) << _DF_SHIFT) | dt
    out = np.stack([hashes, times[anchor]], axis=1).astype(np.int32)
    return out[np.argsort(out[:, 0], kind="stable")]


def targets(found: Peaks, fan: int, zone: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each peak's first ``fan`` peaks ahead within ``zone`` frames and ``PAIR_BINS`` bins, among the ``8 * fan``
    after it: (anchor, target) indices of ``found``, by anchor, then in time order."""
    times, bins = found.times, found.bins
    ahead = np.arange(len(times))[:, np.newaxis] + np.arange(1, 8 * fan + 1)
    exists = ahead < len(times)
    ahead = np.minimum(ahead, max(len(times) - 1, 0))
    dt = times[ahead] - times[:, np.newaxis]
    df = bins[ahead] - bins[:, np.newaxis]
    keep = exists & (dt >= 1) & (dt <= zone) & (np.abs(df) <= PAIR_BINS)
    keep &= np.cumsum(keep, axis=1) <= fan
    anchor, nth = np.nonzero(keep)
    return anchor, ahead[anchor, nth]


def altered(found: Peaks) -> list[Landmarks]:
    """The landmarks of the clip whose peaks are ``found`` as they would be with each alteration undone: each speed
    of ``ALTERED_SPEEDS``, forwards and backwards (played ``s`` times fast, its frequencies are ``s`` times higher
    and its times ``s`` times shorter), and each of them as a pitch shift alone (its frequencies only: a voice
    changer, or sox's ``pitch``, keeps the tempo). Its peaks are moved back (``LOW_BIN`` is not 0 Hz) and paired
    again; played backwards, its times are turned round. Moving peaks, not re-fingerprinting the audio, costs ~0.3 ms
    a variant instead of ~3; it recognises a take played 20 % fast as it does one played as it was, and one shifted
    three semitones (README "Known recordings")."""
    out: list[Landmarks] = []
    if not len(found.times):
        return out
    last = int(found.times.max())
    for reverse in (False, True):
        times = last - found.times if reverse else found.times
        for speed in ALTERED_SPEEDS if not reverse else (1.0, *ALTERED_SPEEDS):
            out.append(_moved(times, found.bins, speed, speed))
    for pitch in ALTERED_SPEEDS:  # the tempo kept: its times as heard (attack run 67: a semitone, 1 of 5 recognised)
        out.append(_moved(found.times, found.bins, 1.0, pitch))
    return out


def _moved(times: npt.NDArray[np.int64], bins: npt.NDArray[np.int64], speed: float, pitch: float) -> Landmarks:
    """The landmarks of peaks at ``times`` and ``bins`` with their times ``speed`` times longer and their
    frequencies ``pitch`` times lower (about 0 Hz): an alteration undone."""
    moved_times = np.rint(times * speed).astype(np.int64)
    moved_bins = np.rint((bins + LOW_BIN) / pitch).astype(np.int64) - LOW_BIN
    inside = (moved_bins >= 0) & (moved_bins < HIGH_BIN - LOW_BIN)
    order = np.lexsort((moved_bins[inside], moved_times[inside]))
    return hashed(Peaks(moved_times[inside][order], moved_bins[inside][order]))


def _max_filter(x: npt.NDArray[np.float32], radius: int, axis: int) -> npt.NDArray[np.float32]:
    """The largest value within ``radius`` of each element along ``axis`` (the edges see only what is there)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(x, pad, constant_values=-np.inf)
    length = x.shape[axis]

    def shifted(shift: int) -> npt.NDArray[np.float32]:  # a view of ``padded``, ``shift`` along ``axis``
        index = [slice(None), slice(None)]
        index[axis] = slice(shift, shift + length)
        return padded[tuple(index)]

    out = shifted(0).copy()
    for shift in range(1, 2 * radius + 1):
        np.maximum(out, shifted(shift), out=out)
    return out


def match_scores(probe: Landmarks, references: Sequence[Landmarks]) -> npt.NDArray[np.float64]:
    """For each reference, how far above chance the probe's hashes agree with it at their best common offset (a
    z-score; compare with ``REPLAY_Z``). One vectorised pass over all references while their pairs with the probe fit
    ``MAX_PAIRS``; past it several, and one sharing more than ``MAX_REFERENCE_PAIRS`` is infinite, not matched."""
    out = np.zeros(len(references), dtype=np.float64)
    if len(probe) == 0 or not references or not any(len(r) for r in references):
        return out
    ref, owner = _together(references)
    query = _with_slack(probe)
    lo = np.searchsorted(ref[:, 0], query[:, 0], side="left")
    counts = np.searchsorted(ref[:, 0], query[:, 0], side="right") - lo
    pairs = int(counts.sum())
    if pairs > MAX_PAIRS and len(references) > 1:
        return _in_passes(probe, references, query, ref, owner)
    if pairs > max(MAX_PAIRS, MAX_REFERENCE_PAIRS):  # one reference, past both: as in passes, unmatched (a review:
        out[:] = np.inf  # a 15 s clip of tones shared 2.9M with one, matched in 0.45 s and 136 MB)
        return out
    scores: npt.NDArray[np.float64] = _matched(
        [probe], np.zeros(len(query), np.int64), references, query, ref, owner, lo, counts
    )[0]
    return scores


def altered_scores(variants: Sequence[Landmarks], references: Sequence[Landmarks]) -> npt.NDArray[np.float64]:
    """For each reference, the highest ``match_scores`` any of ``variants`` (``altered``) has with it, the same for
    each variant as alone; the references sorted and looked up once for all (67 variants against 100 recordings:
    one sort, and a table lookup instead of a binary search for each hash), matched in one pass while their pairs
    fit ``MAX_PAIRS``, past it in passes of references; a probe past ``ALTERED_PROBE_LANDMARKS`` is infinite, and
    references past ``ALTERED_MAX_PAIRS`` are left out (0)."""
    out = np.zeros(len(references), dtype=np.float64)
    variants = [v for v in variants if len(v)]
    if not variants or not references or not any(len(r) for r in references):
        return out
    if max(len(v) for v in variants) > ALTERED_PROBE_LANDMARKS:
        out[:] = np.inf
        return out
    ref, owner = _together(references)
    found = _lookup(ref, variants, MAX_PAIRS)
    if found is not None:  # the usual: every variant and reference in one pass
        best: npt.NDArray[np.float64] = _matched(variants, found[1], references, found[0], ref, owner, *found[2:]).max(
            axis=0
        )
        return best
    each = _shared(ref, owner, len(references), variants)
    kept = lightest(np.where(each <= MAX_PAIRS, each, ALTERED_MAX_PAIRS + 1), ALTERED_MAX_PAIRS)
    for group in _passes(each, kept):
        part, part_owner = _entries_of(ref, owner, group)
        query, which, lo, counts = _lookup(part, variants, None) or _NOTHING
        out[group] = _matched(variants, which, references, query, part, part_owner, lo, counts).max(axis=0)[group]
    return out


def _together(references: Sequence[Landmarks]) -> tuple[Landmarks, npt.NDArray[np.int64]]:
    """All of ``references``' entries sorted by hash, and each entry's reference."""
    ref = np.concatenate(list(references))
    owner = np.repeat(np.arange(len(references)), [len(r) for r in references])
    order = np.argsort(ref[:, 0], kind="stable")
    return ref[order], owner[order]


def _with_slack(probe: Landmarks) -> Landmarks:
    """The probe's entries with every hash one bin, one bin of difference and one frame off (27 an entry)."""
    return (probe[None, :, :] + np.stack([_SLACK, np.zeros_like(_SLACK)], axis=1)[:, None, :]).reshape(-1, 2)


_Found = tuple[Landmarks, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]
_NOTHING: _Found = (
    np.zeros((0, 2), dtype=np.int32),
    np.zeros(0, dtype=np.int64),
    np.zeros(0, dtype=np.int64),
    np.zeros(0, dtype=np.int64),
)


def _lookup(ref: Landmarks, probes: Sequence[Landmarks], limit: int | None) -> _Found | None:
    """The entries of all ``probes`` with slack (``_with_slack``) that have an equal hash in ``ref`` (sorted by hash):
    those entries, each one's probe, and its first equal entry in ``ref`` and how many there are
    (``np.searchsorted``'s answers), from a table of every hash this thread keeps (6.5 MB): a binary search of
    every entry of a probe's 67 variants took ~25 ms, and most find nothing. None once they make more than ``limit``
    pairs (a probe at a time, so what is held stays within it)."""
    found: list[_Found] = []
    total = 0
    with _table(ref) as (at_hash, starts, sizes):
        for index, probe in enumerate(probes):
            at = at_hash(probe)
            hit = np.flatnonzero(at)
            place = at[hit] - 1
            counts = sizes[place].astype(np.int64)
            total += int(counts.sum())
            if limit is not None and total > limit:
                return None
            entry, slack = hit % len(probe), hit // len(probe)  # ``_with_slack``'s rows, only those that hit
            query = probe[entry] + np.stack([_SLACK[slack], np.zeros_like(slack, dtype=np.int32)], axis=1)
            found.append((query, np.full(len(hit), index, dtype=np.int64), starts[place].astype(np.int64), counts))
    if not found:
        return _NOTHING
    query, which, lo, counts = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return query, which, lo, counts


def _shared(ref: Landmarks, owner: npt.NDArray[np.int64], n: int, probes: Sequence[Landmarks]) -> npt.NDArray[np.int64]:
    """How many pairs each of ``n`` references (``owner``: each entry's, ``ref`` sorted by hash) shares with all
    ``probes`` with slack together, counted without making a pair: each distinct hash's hits times its entries."""
    with _table(ref) as (at_hash, starts, _sizes):
        hits = np.zeros(len(starts), dtype=np.int64)
        for probe in probes:
            at = at_hash(probe)
            hits += np.bincount(at[at > 0] - 1, minlength=len(starts))
    distinct = np.cumsum(np.r_[True, ref[1:, 0] != ref[:-1, 0]]) - 1  # each entry's distinct hash
    return np.bincount(owner, weights=hits[distinct], minlength=n).astype(np.int64)


@contextmanager
def _table(
    ref: Landmarks,
) -> Iterator[tuple[Callable[[Landmarks], npt.NDArray[np.int32]], npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """This thread's table of ``ref``'s distinct hashes (sorted by hash), cleared after: a lookup of a probe's
    entries with slack (each hash's place among the distinct ones, from 1; 0: none), and each distinct hash's first
    entry and count."""
    table = getattr(_LOOKUPS, "table", None)
    if table is None:
        table = _LOOKUPS.table = np.zeros(_HASHES + 2 * _MARGIN, dtype=np.int32)
    hashes = ref[:, 0]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    sizes = np.diff(np.r_[starts, len(hashes)])

    def at_hash(probe: Landmarks) -> npt.NDArray[np.int32]:
        looked_up: npt.NDArray[np.int32] = table[(probe[:, 0][None, :] + (_SLACK + _MARGIN)[:, None]).ravel()]
        return looked_up

    table[hashes[starts] + _MARGIN] = np.arange(1, len(starts) + 1, dtype=np.int32)
    try:
        yield at_hash, starts, sizes
    finally:
        table[hashes[starts] + _MARGIN] = 0


def _matched(
    probes: Sequence[Landmarks],
    which: npt.NDArray[np.int64],
    references: Sequence[Landmarks],
    query: Landmarks,
    ref: Landmarks,
    owner: npt.NDArray[np.int64],
    lo: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    """The scores ``(len(probes), len(references))`` of the references whose entries are in ``ref`` (sorted by hash;
    ``owner``: each entry's reference), with the probes whose entries are ``query`` (``which``: each one's probe),
    the pairs found (``lo``, ``counts``: each query entry's first equal entry and how many); 0 for the others."""
    out = np.zeros((len(probes), len(references)), dtype=np.float64)
    pairs = int(counts.sum())
    if not pairs:
        return out
    # every (probe hash, equal reference hash) pair: its probe and reference, and its time offset
    query_idx = np.repeat(np.arange(len(query)), counts)
    ref_idx = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(pairs)
    offsets = ref[ref_idx, 1].astype(np.int64) - query[query_idx, 1]
    cells = which[query_idx] * len(references) + owner[ref_idx]  # one cell per (probe, reference)
    keys = cells * _SPAN + offsets + _SPAN // 2  # one bin per (probe, reference, offset)
    unique, tally = np.unique(keys, return_counts=True)
    near = tally.copy()  # +-1 frame of slack: the keys are sorted and distinct, so an offset's neighbour is next
    beside = np.flatnonzero(np.diff(unique) == 1)
    near[beside] += tally[beside + 1]
    near[beside + 1] += tally[beside]
    best = np.zeros(out.size, dtype=np.int64)
    np.maximum.at(best, unique // _SPAN, near)
    # chance: all of a pair of clips' agreeing hashes spread over every offset the two clips could have
    total = np.bincount(unique // _SPAN, weights=tally, minlength=out.size)
    spans = np.add.outer(
        np.array([_frames(p) for p in probes], dtype=np.float64),
        np.array([_frames(r) for r in references], dtype=np.float64),
    ).reshape(-1)
    chance = 3 * total / np.maximum(spans, 1)
    return ((best - chance) / np.sqrt(chance + 1)).reshape(out.shape)


def _in_passes(
    probe: Landmarks,
    references: Sequence[Landmarks],
    query: Landmarks,
    ref: Landmarks,
    owner: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    """``match_scores`` for references whose pairs with the probe are more than ``MAX_PAIRS`` together: each
    reference's own count (each of its hashes, times the probe's equal ones: one lookup a reference hash, no pair
    made), those over ``MAX_REFERENCE_PAIRS`` scored as replayed, the rest matched in passes of at most ``MAX_PAIRS``
    (a reference's score depends on it alone; each pass takes its references' entries from the sorted whole),
    unless they are more than ``MAX_TOTAL_PAIRS`` together."""
    out = np.zeros(len(references), dtype=np.float64)
    hashes = np.sort(query[:, 0])
    equal = np.searchsorted(hashes, ref[:, 0], side="right") - np.searchsorted(hashes, ref[:, 0], side="left")
    each = np.bincount(owner, weights=equal, minlength=len(references)).astype(np.int64)
    out[each > MAX_REFERENCE_PAIRS] = np.inf
    if int(each[each <= MAX_REFERENCE_PAIRS].sum()) > MAX_TOTAL_PAIRS:
        out[:] = np.inf
        return out
    zero = np.zeros(len(query), dtype=np.int64)
    for batch in _passes(each, (each > 0) & (each <= MAX_REFERENCE_PAIRS)):
        part, part_owner = _entries_of(ref, owner, batch)
        lo = np.searchsorted(part[:, 0], query[:, 0], side="left")
        counts = np.searchsorted(part[:, 0], query[:, 0], side="right") - lo
        out[batch] = _matched([probe], zero, references, query, part, part_owner, lo, counts)[0][batch]
    return out


def lightest(each: npt.NDArray[np.int64], limit: int) -> npt.NDArray[np.bool_]:
    """Which of the references sharing ``each`` pairs are kept when those sharing the most are left out until the
    rest share at most ``limit`` together."""
    order = np.argsort(each, kind="stable")
    kept = np.zeros(len(each), dtype=np.bool_)
    kept[order[np.cumsum(each[order]) <= limit]] = True
    return kept


def _passes(each: npt.NDArray[np.int64], chosen: npt.NDArray[np.bool_]) -> list[list[int]]:
    """The ``chosen`` references in passes of at most ``MAX_PAIRS`` pairs (``each``: each one's), in order."""
    passes: list[list[int]] = []
    held = 0
    for index in np.flatnonzero(chosen).tolist():
        if not passes or held + int(each[index]) > MAX_PAIRS:
            passes.append([])
            held = 0
        passes[-1].append(index)
        held += int(each[index])
    return passes


def _entries_of(
    ref: Landmarks, owner: npt.NDArray[np.int64], group: list[int]
) -> tuple[Landmarks, npt.NDArray[np.int64]]:
    """The entries of ``ref`` (and their owners) that belong to the references of ``group``, in ``ref``'s order."""
    mine = np.isin(owner, group)
    return ref[mine], owner[mine]


def _frames(fp: Landmarks) -> int:
    return int(fp[:, 1].max()) + 1 if len(fp) else 0


def to_bytes(fp: Landmarks) -> bytes:
    return np.ascontiguousarray(fp, dtype="<i4").tobytes()


def from_bytes(blob: bytes) -> Landmarks:
    return np.frombuffer(blob, dtype="<i4").reshape(-1, 2).astype(np.int32)
