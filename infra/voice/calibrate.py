"""Calibrate a speaker encoder on real recordings: ``python -m infra.voice.calibrate CORPUS --out DIR``.

``CORPUS`` holds one folder per speaker with 16-bit WAV clips (``infra.voice.corpus`` builds one from Debian's
Asterisk prompts; operators point it at their own recordings). Every clip goes through the product's intake
(:func:`lockwise.voice.audio.parse_wav`, :func:`lockwise.voice.audio.validate`) and encoder, then:

* each speaker is enrolled as the product enrolls (``--voiceprints`` voiceprints per speaker and voice, each the
  normalised mean of ``--enroll-clips`` clips, 5 as the product asks) and the remaining clips are trials: genuine
  against their own voiceprints in the same voice, impostor against every other speaker's;
* EER, FMR and FNMR at candidate thresholds, and for each target FMR (NIST SP 800-63B: 1 in 1,000; its draft
  revision: 1 in 10,000) the lowest threshold that meets it on this data, its FNMR, and the 95 % upper confidence
  bound on the FMR that the number of impostor trials allows (Clopper-Pearson; with zero false matches in N trials
  that is about 3/N, so a target below that cannot be shown by this corpus and the report says so);
* the enrollment floors the product uses, read from the same data: the sample-agreement floor (lowest pairwise
  cosine of honest 3-clip enrollments, 1st percentile, and how many enrollments with one other speaker's clip it
  stops) and the minimum speech duration (FNMR at the threshold for trial clips cut to shorter lengths);
* with ``--norm-threshold`` and ``--retry-band``, the product's whole procedure on normalised scores (a second
  utterance fused when the first lands in the band), and with ``--floor`` also as the product decides it: each
  utterance it takes must reach that raw cosine too (the encoder's floor; README "Wideband speech");
* speakers recorded under several voices (folder ``allison`` holds ``en-*`` and ``es-*``: file names up to the first
  "-" name the voice) are enrolled per voice, and their trials in another voice are reported on their own: neither
  genuine (the model hears a partly different voice) nor impostor (it is the same person).

Writes ``DIR/report.json``, ``DIR/report.md`` (the tables), ``DIR/scores.npz`` (every trial score), ``DIR/det.png``
(DET curve, normal-deviate axes) and ``DIR/scores.png`` (genuine and impostor score histograms), and prints the
tables. Caveat the report repeats: trials from few speakers are not independent, so the bounds are optimistic; use
many speakers for a production threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lockwise.core import errors
from lockwise.voice import audio, scoring
from lockwise.voice.model.encoder import Encoder, embed_all, open_encoder

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
ENROLL_CLIPS = 5  # the product's default sample count (LOCKWISE_ENROLL_MIN_SAMPLES)
TARGET_FMRS = (1e-3, 1e-4)
#: An operating threshold is fitted so that the 95 % bound of its FMR on the calibration speakers meets this share of
#: the target. Leave-one-speaker-out showed why: thresholds fitted at the bound of 1 in 1,000 on six speakers let
#: 0.087-0.107 % of the seventh's impostor trials through (five enrollment draws), so a new speaker needs the margin.
FIT_MARGIN = 0.8
#: the encoder's floor on raw cosines (``Calibration.floor``): its threshold for this FMR
FLOOR_FMR = 1e-2
CUT_SECONDS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
CONFIDENCE = 0.95


@dataclass
class Clip:
    speaker: str
    voice: str  # the part of the file name before the first "-" (e.g. "en", "es")
    path: Path
    embedding: F32
    samples: F32 = field(repr=False)
    rate: int = 16000


@dataclass
class Trials:
    genuine: F64
    impostor: F64
    genuine_speaker: list[str] = field(default_factory=list)  # whose clip each genuine score is
    impostor_speaker: list[str] = field(default_factory=list)  # whose clip each impostor score is
    cross: dict[str, list[float]] = field(default_factory=dict)  # same speaker, other voice, by pair


def clopper_pearson_upper(errors: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided upper bound on an error rate after ``errors`` in ``trials`` (exact binomial)."""
    from scipy.stats import beta  # type: ignore[import-untyped]

    if trials == 0:
        return 1.0
    if errors >= trials:
        return 1.0
    return float(beta.ppf(confidence, errors + 1, trials - errors))


def rates(trials: Trials, threshold: float) -> tuple[float, float]:
    """(FMR, FNMR) when accepting scores >= threshold."""
    fmr = float(np.mean(trials.impostor >= threshold)) if len(trials.impostor) else 0.0
    fnmr = float(np.mean(trials.genuine < threshold)) if len(trials.genuine) else 0.0
    return fmr, fnmr


def det_curve(trials: Trials) -> tuple[F64, F64, F64]:
    """(thresholds, FMR, FNMR) at every distinct score, accepting scores >= threshold (sorted, O(n log n))."""
    thresholds = np.unique(np.concatenate([trials.genuine, trials.impostor]))
    impostor, genuine = np.sort(trials.impostor), np.sort(trials.genuine)
    fmr = 1.0 - np.searchsorted(impostor, thresholds, side="left") / max(len(impostor), 1)
    fnmr = np.searchsorted(genuine, thresholds, side="left") / max(len(genuine), 1)
    return thresholds, fmr, fnmr


def eer(trials: Trials) -> tuple[float, float]:
    """(equal error rate, its threshold): where FMR and FNMR cross on the sorted scores."""
    thresholds, fmr, fnmr = det_curve(trials)
    i = int(np.argmin(np.abs(fmr - fnmr)))
    return float(fmr[i] + fnmr[i]) / 2, float(thresholds[i])


def threshold_for(trials: Trials, target: float) -> dict[str, Any]:
    """For one target FMR: the lowest threshold whose measured FMR meets it, and the lowest whose 95 % upper bound
    meets it (what this data can show), each with its FNMR."""
    impostor = np.sort(trials.impostor)[::-1]
    n = len(impostor)

    def above(k: int) -> float:
        """The lowest 4-decimal threshold that lets at most k impostor scores through (accept: score >= it)."""
        exact = float(np.nextafter(impostor[k], np.inf)) if k < n else float(impostor[-1])
        return float(np.ceil(exact * 10_000) / 10_000)

    measured = above(int(np.floor(target * n)))
    k = 0
    while k < n and clopper_pearson_upper(k + 1, n) <= target:
        k += 1
    bounded = above(k) if clopper_pearson_upper(0, n) <= target else None
    fmr, fnmr = rates(trials, measured)
    return {
        "target_fmr": target,
        "threshold": measured,
        "fmr": fmr,
        "fnmr": fnmr,
        "fmr_upper_95": clopper_pearson_upper(int(np.sum(trials.impostor >= measured)), n),
        "impostor_trials": n,
        "bounded_threshold": bounded,
        "bounded_fnmr": None if bounded is None else rates(trials, bounded)[1],
        "trials_needed": int(np.ceil(3 / target)),
    }


def fitted_threshold(trials: Trials, target: float) -> float:
    """The threshold the product would ship for ``target``: the lowest whose 95 % bound meets ``FIT_MARGIN`` times
    it (the measured one when the trials are too few for a bound)."""
    fit = threshold_for(trials, target * FIT_MARGIN)
    return float(fit["bounded_threshold"] if fit["bounded_threshold"] is not None else fit["threshold"])


def load_corpus(
    corpus: Path, encoder: Encoder, max_clips: int | None, limits: audio.Limits
) -> tuple[list[Clip], dict[str, int]]:
    """Every WAV of every speaker folder through intake and the encoder; returns (clips, refusals by code)."""
    clips: list[Clip] = []
    refused: dict[str, int] = {}
    started = time.monotonic()
    for folder in sorted(p for p in Path(corpus).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(folder.glob("*.wav"))
        if not files:
            continue
        if max_clips:
            files = _spread(files, max_clips)
        so_far = time.monotonic() - started
        print(f"embedding {folder.name}: {len(files)} clips ({so_far:.0f} s so far)", file=sys.stderr)  # noqa: T201
        taken: list[tuple[Path, audio.Clip]] = []
        for path in files:
            try:
                taken.append((path, audio.validate(audio.parse_wav(path.read_bytes()), limits)))
            except errors.BadRequest as exc:  # what intake refuses never reaches the model, in the product too
                refused[exc.code] = refused.get(exc.code, 0) + 1
        embeddings = embed_all(encoder, [(clip.samples, clip.rate) for _, clip in taken])
        clips += [
            Clip(
                speaker=folder.name,
                voice=path.stem.split("-")[0],
                path=path,
                embedding=embedding,
                samples=clip.samples,
                rate=clip.rate,
            )
            for (path, clip), embedding in zip(taken, embeddings, strict=True)
        ]
    return clips, refused


def _spread(files: list[Path], limit: int) -> list[Path]:
    """At most ``limit`` files, taken evenly from every voice in the folder (so en and es both appear)."""
    by_voice: dict[str, list[Path]] = {}
    for f in files:
        by_voice.setdefault(f.stem.split("-")[0], []).append(f)
    share = max(1, limit // len(by_voice))
    return [f for group in by_voice.values() for f in group[:share]]


Key = tuple[str, str]  # (speaker, voice)


def split(
    clips: list[Clip], voiceprints: int, rng: np.random.Generator, per_print: int = ENROLL_CLIPS
) -> tuple[dict[Key, list[F32]], list[Clip]]:
    """Per speaker and voice: ``voiceprints`` enrollments of ``per_print`` clips each (the product's voiceprint),
    the rest are trial clips. A person enrolls in the voice they will use at the door, so voices are enrolled
    separately."""
    prints: dict[Key, list[F32]] = {}
    trials: list[Clip] = []
    for key in sorted({(c.speaker, c.voice) for c in clips}):
        own = [clips[i] for i in rng.permutation([i for i, c in enumerate(clips) if (c.speaker, c.voice) == key])]
        take = min(voiceprints, max(1, (len(own) - 1) // (per_print + 1)))
        enroll, rest = own[: take * per_print], own[take * per_print :]
        prints[key] = [
            scoring.voiceprint(np.stack([c.embedding for c in enroll[k : k + per_print]]))
            for k in range(0, len(enroll), per_print)
        ]
        trials.extend(rest)
    return prints, trials


def score(prints: dict[Key, list[F32]], trials: Sequence[Clip]) -> Trials:
    """Genuine: same speaker, same voice. Impostor: another speaker. Same speaker in another voice: ``cross``."""
    genuine: list[float] = []
    impostor: list[float] = []
    result = Trials(np.array([]), np.array([]))
    for clip in trials:
        for (speaker, voice), vps in prints.items():
            scores = [float(s) for s in np.stack(vps) @ clip.embedding]
            if speaker != clip.speaker:
                impostor.extend(scores)
                result.impostor_speaker.extend([clip.speaker] * len(scores))
            elif voice == clip.voice:
                genuine.extend(scores)
                result.genuine_speaker.extend([clip.speaker] * len(scores))
            else:
                result.cross.setdefault(f"{speaker}: enrolled {voice}, tried {clip.voice}", []).extend(scores)
    result.genuine, result.impostor = np.array(genuine), np.array(impostor)
    return result


def per_speaker(trials: Trials, threshold: float) -> dict[str, dict[str, float]]:
    """Each speaker's FNMR on their own voiceprints and FMR when their clips try everyone else's."""
    out = {}
    for speaker in sorted(set(trials.genuine_speaker)):
        own = trials.genuine[np.array(trials.genuine_speaker) == speaker]
        tried = trials.impostor[np.array(trials.impostor_speaker) == speaker]
        out[speaker] = {
            "fnmr": float(np.mean(own < threshold)),
            "fmr": float(np.mean(tried >= threshold)) if len(tried) else 0.0,
            "genuine_trials": len(own),
            "impostor_trials": len(tried),
        }
    return out


def agreement_floor(
    clips: list[Clip], rng: np.random.Generator, sets: int = 300, per_set: int = ENROLL_CLIPS
) -> dict[str, Any]:
    """Lowest pairwise cosine of honest ``per_set``-clip enrollments (one speaker, one voice) vs enrollments where
    one clip is another speaker's."""
    keys = sorted({(c.speaker, c.voice) for c in clips})
    honest: list[float] = []
    mixed: list[float] = []
    for key in keys:
        own = [c for c in clips if (c.speaker, c.voice) == key]
        others = [c for c in clips if c.speaker != key[0]]
        for _ in range(sets // len(keys)):
            picks = rng.choice(len(own), per_set, replace=False)
            honest.append(scoring.agreement(np.stack([own[i].embedding for i in picks]))[0])
            stranger = others[int(rng.integers(len(others)))]
            mixed_set = [own[i].embedding for i in picks[:-1]] + [stranger.embedding]
            mixed.append(scoring.agreement(np.stack(mixed_set))[0])
    floor = float(np.floor(np.percentile(honest, 1) * 100) / 100)
    return {
        "floor": floor,
        "honest_p1": float(np.percentile(honest, 1)),
        "honest_median": float(np.median(honest)),
        "mixed_median": float(np.median(mixed)),
        "honest_refused": float(np.mean(np.array(honest) < floor)),
        "mixed_stopped": float(np.mean(np.array(mixed) < floor)),
        "sets": len(honest),
        "clips_per_set": per_set,
    }


def speech_floor(
    encoder: Encoder, prints: dict[Key, list[F32]], trials: list[Clip], threshold: float, per_voice: int = 20
) -> dict[str, Any]:
    """FNMR at ``threshold`` for trial clips cut to the first 1-3 s, against their median speech seconds."""
    rows = []
    chosen = [c for key in sorted(prints) for c in [t for t in trials if (t.speaker, t.voice) == key][:per_voice]]
    for cut in CUT_SECONDS:
        genuine: list[float] = []
        speech: list[float] = []
        parts = [(clip.samples[: int(cut * clip.rate)], clip.rate) for clip in chosen]
        for clip, (part, rate), emb in zip(chosen, parts, embed_all(encoder, parts), strict=True):
            speech.append(audio.speech_seconds(part, rate))
            genuine.extend(float(s) for s in np.stack(prints[clip.speaker, clip.voice]) @ emb)
        fnmr = float(np.mean(np.array(genuine) < threshold))
        rows.append({"cut_s": cut, "median_speech_s": float(np.median(speech)), "fnmr": fnmr, "trials": len(genuine)})
    full = [float(s) for clip in chosen for s in np.stack(prints[clip.speaker, clip.voice]) @ clip.embedding]
    full_fnmr = float(np.mean(np.array(full) < threshold))
    allowed = max(2 * full_fnmr, full_fnmr + 0.02)
    ok = [r for r in rows if r["fnmr"] <= allowed]
    minimum = min((r["median_speech_s"] for r in ok), default=None)
    return {"rows": rows, "full_fnmr": full_fnmr, "allowed_fnmr": allowed, "min_speech_s": minimum}


def cross_voice(trials: Trials, threshold: float) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "trials": len(scores),
            "median": float(np.median(scores)),
            "accepted": float(np.mean(np.array(scores) >= threshold)),
        }
        for name, scores in sorted(trials.cross.items())
    }


Labels = npt.NDArray[np.str_]


def _as_norm(raw: F64, probes: F32, prints: F32, cohort: F32, top_k: int) -> F64:
    """AS-norm of the ``raw`` (t, p) score matrix against ``cohort`` (the product's formula, vectorised)."""
    from lockwise.voice.model.cohort import Cohort

    scorer = Cohort(cohort, top_k, "calibration")
    probe_mean, probe_std = scorer.stats(probes)
    print_mean, print_std = scorer.stats(prints)
    return ((raw - print_mean[None]) / print_std[None] + (raw - probe_mean[:, None]) / probe_std[:, None]) / 2


class DisjointScores(NamedTuple):
    """Every trial against every voiceprint, raw and AS-normalised against a cohort without either speaker."""

    raw: F64
    normalised: F64
    genuine: npt.NDArray[np.bool_]  # same speaker, same voice
    impostor: npt.NDArray[np.bool_]  # another speaker
    t_speaker: Labels
    t_voice: Labels
    p_speaker: Labels


def disjoint_scores(
    prints: dict[Key, list[F32]], trial_clips: Sequence[Clip], cohort_clips: Sequence[Clip], top_k: int
) -> DisjointScores:
    keys = [k for k, vps in prints.items() for _ in vps]
    p_matrix = np.stack([v for vps in prints.values() for v in vps]).astype(np.float32)
    t_matrix = np.stack([c.embedding for c in trial_clips]).astype(np.float32)
    t_speaker, t_voice = np.array([c.speaker for c in trial_clips]), np.array([c.voice for c in trial_clips])
    p_speaker, p_voice = np.array([k[0] for k in keys]), np.array([k[1] for k in keys])
    c_matrix = np.stack([c.embedding for c in cohort_clips]).astype(np.float32)
    c_speaker = np.array([c.speaker for c in cohort_clips])
    raw = (t_matrix @ p_matrix.T).astype(np.float64)
    normed = np.zeros_like(raw)
    speakers = sorted(set(t_speaker) | set(p_speaker))
    for a in speakers:  # voiceprint speaker
        for b in speakers:  # probe speaker
            rows, cols = t_speaker == b, p_speaker == a
            if rows.any() and cols.any():
                cohort = c_matrix[(c_speaker != a) & (c_speaker != b)]
                normed[np.ix_(rows, cols)] = _as_norm(
                    raw[np.ix_(rows, cols)], t_matrix[rows], p_matrix[cols], cohort, top_k
                )
    genuine = (t_speaker[:, None] == p_speaker[None]) & (t_voice[:, None] == p_voice[None])
    impostor = t_speaker[:, None] != p_speaker[None]
    return DisjointScores(raw, normed, genuine, impostor, t_speaker, t_voice, p_speaker)


def speaker_disjoint(
    prints: dict[Key, list[F32]],
    trial_clips: Sequence[Clip],
    cohort_clips: Sequence[Clip],
    top_k: int,
    operating: dict[str, float | None] | None = None,
) -> tuple[dict[str, Any], dict[str, Trials]]:
    """Raw and AS-normalised scores evaluated so that no number about a speaker was fitted on that speaker.

    Each trial is normalised against a cohort without either of its two speakers (as a user of the product is never
    in the shipped cohort). Leave one speaker out: the threshold for FMR 1 in 1,000 is fitted as the product fits
    its own (:func:`fitted_threshold`) on the trials that do not involve speaker X, then applied to X's genuine
    trials and to the impostor trials X takes part in; the rates are pooled over all speakers. Also the pooled
    (all-speaker) threshold fitted the same way: the product's operating point on that scale. Returns the report
    and the pooled trials of each scale (for the DET plot).
    """
    raw, normed, genuine, impostor, t_speaker, t_voice, p_speaker = disjoint_scores(
        prints, trial_clips, cohort_clips, top_k
    )
    speakers = sorted(set(t_speaker) | set(p_speaker))
    involves = {x: (t_speaker[:, None] == x) | (p_speaker[None] == x) for x in speakers}
    out: dict[str, Any] = {"top_k": top_k, "cohort_clips": len(cohort_clips), "speakers": speakers}
    curves: dict[str, Trials] = {}
    for name, scores in (("raw", raw), ("normalised", normed)):
        pooled = Trials(scores[genuine], scores[impostor])
        result: dict[str, Any] = {"eer": eer(pooled)[0], "targets": [threshold_for(pooled, t) for t in TARGET_FMRS]}
        chosen = (operating or {}).get(name)
        if chosen is None:
            chosen = fitted_threshold(pooled, TARGET_FMRS[0])
        fmr, fnmr = rates(pooled, chosen)
        result["operating"] = {"threshold": chosen, "fmr": fmr, "fnmr": fnmr}
        for target in TARGET_FMRS:
            misses = false_matches = n_genuine = n_impostor = 0
            per: dict[str, dict[str, float]] = {}
            for x in speakers:
                fitted = fitted_threshold(
                    Trials(scores[genuine & ~involves[x]], scores[impostor & ~involves[x]]), target
                )
                own = scores[genuine & (t_speaker[:, None] == x)]
                theirs = scores[impostor & involves[x]]
                per[x] = {
                    "threshold": fitted,
                    "fnmr": float(np.mean(own < fitted)) if len(own) else 0.0,
                    "fmr": float(np.mean(theirs >= fitted)) if len(theirs) else 0.0,
                }
                misses += int(np.sum(own < fitted))
                false_matches += int(np.sum(theirs >= fitted))
                n_genuine, n_impostor = n_genuine + len(own), n_impostor + len(theirs)
            result[f"loso_{target:g}"] = {
                "fnmr": misses / max(n_genuine, 1),
                "fnmr_upper_95": clopper_pearson_upper(misses, n_genuine),
                "fmr": false_matches / max(n_impostor, 1),
                "fmr_upper_95": clopper_pearson_upper(false_matches, n_impostor),
                "genuine_trials": n_genuine,
                "impostor_trials": n_impostor,
                "per_speaker": per,
            }
        out[name] = result
        curves[name] = pooled
    out["second_utterance"] = second_utterance(normed, raw, genuine, impostor, involves, t_speaker, t_voice, speakers)
    shipped = (operating or {}).get("normalised")
    band = (operating or {}).get("retry_band")
    if shipped is not None and band is not None:  # the product's procedure as configured, on these trials
        partner = _partners(t_speaker, t_voice)
        decided = _door(normed, raw, partner, shipped, band, -np.inf)
        out["second_utterance_operating"] = {
            "threshold": shipped,
            "band": band,
            "fnmr": float(np.mean(~decided[genuine])),
            "fmr": float(np.mean(decided[impostor])),
        }
        floor = (operating or {}).get("floor")
        if floor is not None:  # and each utterance the door takes must reach the floor on its raw cosine
            floored = _door(normed, raw, partner, shipped, band, floor)
            out["second_utterance_operating"] |= {
                "floor": floor,
                "floored_fnmr": float(np.mean(~floored[genuine])),
                "floored_fmr": float(np.mean(floored[impostor])),
            }
    return out, curves


RETRY_BANDS = (0.5, 1.0, 2.0)
NOISY_SNRS_DB = (40.0, 30.0, 20.0)


def noisy_probes(
    encoder: Encoder,
    prints: dict[Key, list[F32]],
    trial_clips: Sequence[Clip],
    cohort_clips: Sequence[Clip],
    top_k: int,
    operating: dict[str, float],
    clips: int = 300,
) -> list[dict[str, Any]]:
    """One utterance, normalised as in :func:`speaker_disjoint`, at the normalised operating threshold, for up to
    ``clips`` trial clips (evenly spaced) with white noise at each of ``NOISY_SNRS_DB``: how noise at the door moves
    false rejections and false matches (a noisy probe must not match strangers more often than a clean one)."""
    from infra.voice.channel import noise

    chosen = list(trial_clips)[:: max(1, len(trial_clips) // clips)][:clips]
    rows: list[dict[str, Any]] = []
    for snr in (None, *NOISY_SNRS_DB):
        rng = np.random.default_rng(11)
        if snr is None:
            probes = chosen  # the clean clips, already embedded
        else:
            parts = [(noise(c.samples, snr, rng), c.rate) for c in chosen]
            probes = [
                Clip(c.speaker, c.voice, c.path, e, p, c.rate)
                for c, (p, _), e in zip(chosen, parts, embed_all(encoder, parts), strict=True)
            ]
        scored = disjoint_scores(prints, probes, cohort_clips, top_k)
        genuine, impostor = scored.normalised[scored.genuine], scored.normalised[scored.impostor]
        rows.append(  # snr_db None: the clean clips
            {
                "snr_db": snr,
                "fnmr": float(np.mean(genuine < operating["threshold"])),
                "fmr": float(np.mean(impostor >= operating["threshold"])),
                "genuine_trials": len(genuine),
                "impostor_trials": len(impostor),
                "impostor_p99": float(np.percentile(impostor, 99)),
                "impostor_mean": float(np.mean(impostor)),
            }
        )
    return rows


def _partners(t_speaker: Labels, t_voice: Labels) -> npt.NDArray[np.intp]:
    """Each trial clip's second utterance: another trial clip of the same speaker and voice (a fixed pairing, so
    every run pairs alike)."""
    rng = np.random.default_rng(7)
    partner = np.arange(len(t_speaker))
    for key in sorted(set(zip(t_speaker.tolist(), t_voice.tolist(), strict=True))):
        idx = np.where((t_speaker == key[0]) & (t_voice == key[1]))[0]
        if len(idx) > 1:
            partner[idx] = np.roll(rng.permutation(idx), 1)
    return partner


def _door(
    normed: F64, raw: F64, partner: npt.NDArray[np.intp], threshold: float, band: float, floor: float
) -> npt.NDArray[np.bool_]:
    """Each trial as ``lockwise.voice.verification`` decides it: accepted on its normalised score with its cosine at
    ``floor``, or, landing within ``band`` under the threshold, asked again and accepted on the mean with its second
    utterance's (``_partners``), whose cosine must reach ``floor`` itself."""
    first = (normed >= threshold) & (raw >= floor)
    asked = (normed >= threshold - band) & (normed < threshold)
    return first | (asked & ((normed + normed[partner]) / 2 >= threshold) & (raw[partner] >= floor))


def second_utterance(
    scores: F64,
    raw: F64,
    genuine: npt.NDArray[np.bool_],
    impostor: npt.NDArray[np.bool_],
    involves: dict[str, npt.NDArray[np.bool_]],
    t_speaker: Labels,
    t_voice: Labels,
    speakers: list[str],
    target: float = 1e-3,
) -> list[dict[str, Any]]:
    """The "say it again" procedure on normalised ``scores``: accept when the first utterance reaches the threshold,
    or when it lands within ``band`` under it and the mean of its score and a second utterance's (another clip of the
    same speaker and voice; an impostor tries again with their own voice) reaches it. Per band: the pooled threshold
    whose 95 % bound on the procedure's FMR meets ``FIT_MARGIN`` times ``target`` (as :func:`fitted_threshold`), and
    leave-one-speaker-out FNMR/FMR per attempt with each fold's threshold fitted the same way without the speaker.

    Also the product's whole door (:func:`_door`) speaker-disjoint, on the trials' ``raw`` cosines: each fold's floor
    is its raw threshold for FMR ``FLOOR_FMR`` without the speaker (as the shipped floor was set on all of them), and
    every utterance the door takes must reach it; once with each fold's threshold fitted without the floor (as the
    shipped one was: ``loso_floored_*``), once fitted on the door with its floor (``loso_refit_*``, and the pooled
    threshold fitted that way too)."""
    partner = _partners(t_speaker, t_voice)

    def accepted(threshold: float, band: float, floor: float = -np.inf) -> npt.NDArray[np.bool_]:
        return _door(scores, raw, partner, threshold, band, floor)

    def fitted(band: float, mask: npt.NDArray[np.bool_], floor: float = -np.inf) -> float:
        n, goal = int(mask.sum()), target * FIT_MARGIN
        lo, hi = float(scores.min()), float(scores.max()) + 1
        for _ in range(40):
            mid = (lo + hi) / 2
            matches = int(accepted(mid, band, floor)[mask].sum())
            ok = clopper_pearson_upper(matches, n) <= goal
            lo, hi = (lo, mid) if ok else (mid, hi)
        return float(np.ceil(hi * 1000) / 1000)

    def floor_of(mask: npt.NDArray[np.bool_]) -> float:
        return float(threshold_for(Trials(raw[genuine & mask], raw[impostor & mask]), FLOOR_FMR)["threshold"])

    floors = {x: floor_of(~involves[x]) for x in speakers}
    pooled_floor = floor_of(np.ones_like(genuine))
    rows = []
    for band in RETRY_BANDS:
        counts = {prefix: [0, 0, 0, 0] for prefix in ("loso", "loso_floored", "loso_refit")}  # misses, FMs, n, n
        for x in speakers:
            threshold = fitted(band, impostor & ~involves[x])
            refit = fitted(band, impostor & ~involves[x], floors[x])
            for prefix, at, floor in (
                ("loso", threshold, -np.inf),
                ("loso_floored", threshold, floors[x]),
                ("loso_refit", refit, floors[x]),
            ):
                decided = accepted(at, band, floor)
                own = decided[genuine & (t_speaker[:, None] == x)]
                theirs = decided[impostor & involves[x]]
                tally = counts[prefix]
                tally[0], tally[1] = tally[0] + int((~own).sum()), tally[1] + int(theirs.sum())
                tally[2], tally[3] = tally[2] + len(own), tally[3] + len(theirs)
        pooled = fitted(band, impostor)
        decided = accepted(pooled, band)
        refit_pooled = fitted(band, impostor, pooled_floor)
        refit_decided = accepted(refit_pooled, band, pooled_floor)
        row: dict[str, Any] = {
            "band": band,
            "pooled_threshold": pooled,
            "pooled_fnmr": float(np.mean(~decided[genuine])),
            "pooled_fmr": float(np.mean(decided[impostor])),
            "asked_again": float(np.mean(((scores < pooled) & (scores >= pooled - band))[genuine])),
            "floors": [min(floors.values()), max(floors.values())],
            "pooled_floor": pooled_floor,
            "refit_pooled_threshold": refit_pooled,
            "refit_pooled_fnmr": float(np.mean(~refit_decided[genuine])),
            "refit_pooled_fmr": float(np.mean(refit_decided[impostor])),
        }
        for prefix, (misses, false_matches, n_genuine, n_impostor) in counts.items():
            row |= {
                f"{prefix}_fnmr": misses / max(n_genuine, 1),
                f"{prefix}_fnmr_upper_95": clopper_pearson_upper(misses, n_genuine),
                f"{prefix}_fmr": false_matches / max(n_impostor, 1),
                f"{prefix}_fmr_upper_95": clopper_pearson_upper(false_matches, n_impostor),
            }
        rows.append(row)
    return rows


def calibrate(
    corpus: Path,
    encoder: Encoder,
    out: Path,
    *,
    voiceprints: int = 8,
    enroll_clips: int = ENROLL_CLIPS,
    max_clips: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    norm_threshold: float | None = None,
    retry_band: float | None = None,
    floor: float | None = None,
    cohort_per_voice: int = 80,
    top_k: int = 100,
    noisy_clips: int = 300,
    speech_per_voice: int = 20,
) -> dict[str, Any]:
    """Run the whole calibration; writes the report files to ``out`` and returns the report."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    clips, refused = load_corpus(corpus, encoder, max_clips, audio.Limits())
    speakers = sorted({c.speaker for c in clips})
    if len(speakers) < 2:
        raise SystemExit(f"{corpus}: need at least two speaker folders with usable clips, found {speakers}")
    prints, trial_clips = split(clips, voiceprints, rng, enroll_clips)
    trials = score(prints, trial_clips)
    cohort_clips = cohort_of(clips, cohort_per_voice, encoder)
    disjoint, curves = speaker_disjoint(
        prints,
        trial_clips,
        cohort_clips,
        top_k,
        {"raw": threshold, "normalised": norm_threshold, "retry_band": retry_band, "floor": floor},
    )
    operating_norm = disjoint["normalised"]["operating"]
    noisy = noisy_probes(encoder, prints, trial_clips, cohort_clips, top_k, operating_norm, noisy_clips)
    equal, eer_t = eer(trials)
    targets = [threshold_for(trials, t) for t in TARGET_FMRS]
    operating = threshold if threshold is not None else fitted_threshold(trials, TARGET_FMRS[0])
    candidates = sorted({round(float(x), 2) for x in np.linspace(eer_t - 0.1, eer_t + 0.15, 6)} | {operating})
    table = []
    for t in candidates:
        fmr, fnmr = rates(trials, t)
        table.append({"threshold": t, "fmr": fmr, "fnmr": fnmr})
    report: dict[str, Any] = {
        "encoder": encoder.name,
        "model_id": encoder.model_id,
        "corpus": str(corpus),
        "speakers": {s: sum(c.speaker == s for c in clips) for s in speakers},
        "refused_at_intake": refused,
        "voiceprints_per_speaker": voiceprints,
        "clips_per_voiceprint": enroll_clips,
        "fit_margin": FIT_MARGIN,
        "genuine_trials": len(trials.genuine),
        "impostor_trials": len(trials.impostor),
        "eer": equal,
        "eer_threshold": round(eer_t, 4),
        "genuine_scores": _summary(trials.genuine),
        "impostor_scores": _summary(trials.impostor),
        "operating_threshold": operating,
        "operating": dict(zip(("fmr", "fnmr"), rates(trials, operating), strict=True)),
        "operating_fmr_upper_95": clopper_pearson_upper(
            int(np.sum(trials.impostor >= operating)), len(trials.impostor)
        ),
        "operating_fnmr_upper_95": clopper_pearson_upper(int(np.sum(trials.genuine < operating)), len(trials.genuine)),
        "targets": targets,
        "thresholds": table,
        "per_speaker": per_speaker(trials, operating),
        "agreement": agreement_floor(clips, rng, per_set=enroll_clips),
        "speech": speech_floor(encoder, prints, trial_clips, operating, speech_per_voice),
        "cross_voice": cross_voice(trials, operating),
        "disjoint": disjoint,
        "noisy_probes": noisy,
        "seconds": 0.0,
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report) + "\n")
    np.savez_compressed(out / "scores.npz", genuine=trials.genuine, impostor=trials.impostor)
    plot(trials, report, out)
    plot_det(curves, disjoint, out / "det-disjoint.png")
    return report


def cohort_of(clips: Sequence[Clip], per_voice: int, encoder: Encoder) -> list[Clip]:
    """The cohort the product's builder would make from these clips: its pick (``infra.voice.cohort.evenly``), and
    each picked clip's noisy copy (``infra.voice.cohort.noisy_copy``) embedded by ``encoder``."""
    from infra.voice.cohort import clip_name, evenly, noisy_copy

    chosen = set(evenly((c.path for c in clips), per_voice))
    picked = [c for c in clips if c.path in chosen]
    copies = [(noisy_copy(c.samples, clip_name(c.path)), c.rate) for c in picked]
    return picked + [
        Clip(c.speaker, c.voice, c.path, embedding, samples, c.rate)
        for c, (samples, _), embedding in zip(picked, copies, embed_all(encoder, copies), strict=True)
    ]


def plot_det(curves: dict[str, Trials], disjoint: dict[str, Any], path: Path) -> None:
    """Raw and normalised DET curves on one plot, each with its pooled operating point at FMR 1 in 1,000."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    clip = (1e-5, 1 - 1e-5)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, trials in curves.items():
        _, fmr, fnmr = det_curve(trials)
        loso = disjoint[name]["loso_0.001"]
        ax.plot(
            norm.ppf(np.clip(fmr, *clip)),
            norm.ppf(np.clip(fnmr, *clip)),
            label=f"{name}: EER {disjoint[name]['eer']:.2%}",
        )
        ax.plot(
            norm.ppf(np.clip(loso["fmr"], *clip)),
            norm.ppf(np.clip(loso["fnmr"], *clip)),
            "o",
            label=f"{name}, speaker-disjoint at 1e-3: FNMR {loso['fnmr']:.1%}",
        )
    ticks = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_xlim(norm.ppf(5e-5), norm.ppf(0.6))
    ax.set_ylim(norm.ppf(5e-3), norm.ppf(0.6))
    ax.set_xlabel("false match rate")
    ax.set_ylabel("false non-match rate")
    ax.set_title("DET, raw vs AS-norm (cohort without the trial's speakers)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(x: F64) -> dict[str, float]:
    return {k: float(f(x)) for k, f in (("min", np.min), ("median", np.median), ("max", np.max))}


def markdown(r: dict[str, Any]) -> str:
    speakers = ", ".join(f"{s} ({n})" for s, n in r["speakers"].items())
    lines = [
        f"Encoder `{r['encoder']}` (`{r['model_id']}`), corpus {speakers} clips; "
        f"{r['genuine_trials']} genuine and {r['impostor_trials']} impostor trials; "
        f"refused at intake: {r['refused_at_intake'] or 'none'}.",
        "",
        f"EER **{r['eer']:.2%}** at threshold {r['eer_threshold']:.3f}. "
        f"Operating threshold {r['operating_threshold']:.3f}: FMR {r['operating']['fmr']:.4%} "
        f"(95% upper {r['operating_fmr_upper_95']:.3%}), FNMR {r['operating']['fnmr']:.2%} "
        f"(95% upper {r['operating_fnmr_upper_95']:.2%}).",
        "",
        "| target FMR | threshold (measured FMR meets it) | measured FMR | FNMR | FMR 95% upper bound "
        "| threshold (95% bound meets it) | its FNMR |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in r["targets"]:
        bounded = (
            f"{t['bounded_threshold']:.3f} | {t['bounded_fnmr']:.2%}"
            if t["bounded_threshold"] is not None
            else f"not shown: needs >= {t['trials_needed']:,} impostor trials | -"
        )
        lines.append(
            f"| 1 in {round(1 / t['target_fmr']):,} | {t['threshold']:.3f} | {t['fmr']:.4%} | {t['fnmr']:.2%} | "
            f"{t['fmr_upper_95']:.3%} | {bounded} |"
        )
    lines += [
        "",
        f"The bounds treat the {r['impostor_trials']:,} impostor trials as independent; they come from "
        f"{len(r['speakers'])} speakers, so they are optimistic: set a production threshold from many speakers.",
    ]
    d = r["disjoint"]
    lines += [
        "",
        f"**Speaker-disjoint** (leave one speaker out; AS-norm with top-{d['top_k']} of a {d['cohort_clips']}-clip "
        "cohort that never holds the trial's speakers):",
        "",
        "| scores | EER | FNMR at FMR 1e-3 (95% upper) | its FMR (95% upper) | FNMR at FMR 1e-4 | its FMR "
        "| pooled threshold (95% bound meets 0.8e-3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("raw", "normalised"):
        x, lo3, lo4 = d[name], d[name]["loso_0.001"], d[name]["loso_0.0001"]
        lines.append(
            f"| {name} | {x['eer']:.2%} | {lo3['fnmr']:.2%} ({lo3['fnmr_upper_95']:.2%}) | {lo3['fmr']:.4%} "
            f"({lo3['fmr_upper_95']:.3%}) | {lo4['fnmr']:.2%} | {lo4['fmr']:.4%} | {x['operating']['threshold']:.4f} |"
        )
    lines += [
        "",
        "Normalised, with a second utterance when the first lands within the band under the threshold (fused: the "
        "mean of the two scores), per attempt:",
        "",
        "| band | pooled threshold (95% bound meets 0.8e-3) | its FNMR | asked again (genuine) | speaker-disjoint FNMR "
        "(95% upper) | its FMR (95% upper) | with each fold's floor: FNMR (95% upper) | its FMR (95% upper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in d["second_utterance"]:
        floored = (
            f"{row['loso_floored_fnmr']:.2%} ({row['loso_floored_fnmr_upper_95']:.2%}) | "
            f"{row['loso_floored_fmr']:.4%} ({row['loso_floored_fmr_upper_95']:.3%})"
        )
        lines.append(
            f"| {row['band']:g} | {row['pooled_threshold']:.3f} | {row['pooled_fnmr']:.2%} | {row['asked_again']:.1%} "
            f"| {row['loso_fnmr']:.2%} ({row['loso_fnmr_upper_95']:.2%}) | {row['loso_fmr']:.4%} "
            f"({row['loso_fmr_upper_95']:.3%}) | {floored} |"
        )
    floors = d["second_utterance"][0]["floors"]
    lines += [
        "",
        f"Each fold's floor is its raw threshold for FMR {FLOOR_FMR:g} without the held-out speaker "
        f"({floors[0]:.4f}-{floors[1]:.4f}); every utterance the door takes must reach it, as the product decides.",
        "With the threshold fitted on that whole door, floor included (the same 95 % bound rule):",
        "",
        "| band | floor (all speakers) | pooled threshold | its FNMR | its FMR | speaker-disjoint FNMR (95% upper) "
        "| its FMR (95% upper) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in d["second_utterance"]:
        lines.append(
            f"| {row['band']:g} | {row['pooled_floor']:.4f} | {row['refit_pooled_threshold']:.3f} "
            f"| {row['refit_pooled_fnmr']:.2%} | {row['refit_pooled_fmr']:.4%} "
            f"| {row['loso_refit_fnmr']:.2%} ({row['loso_refit_fnmr_upper_95']:.2%}) "
            f"| {row['loso_refit_fmr']:.4%} ({row['loso_refit_fmr_upper_95']:.3%}) |"
        )
    if "second_utterance_operating" in d:
        op = d["second_utterance_operating"]
        lines += [
            "",
            f"As configured (threshold {op['threshold']:g}, band {op['band']:g}): FNMR {op['fnmr']:.2%} per attempt, "
            f"FMR {op['fmr']:.4%}.",
        ]
        if "floor" in op:
            lines[-1] += (
                f" With each utterance's raw cosine at least {op['floor']:g} (the product's floor): FNMR "
                f"{op['floored_fnmr']:.2%}, FMR {op['floored_fmr']:.4%}."
            )
    lines += ["", "| speaker | raw FNMR / FMR | normalised FNMR / FMR (speaker-disjoint, 1e-3) |", "|---|---|---|"]
    for s in d["speakers"]:
        rw, nm = d["raw"]["loso_0.001"]["per_speaker"][s], d["normalised"]["loso_0.001"]["per_speaker"][s]
        lines.append(f"| {s} | {rw['fnmr']:.2%} / {rw['fmr']:.4%} | {nm['fnmr']:.2%} / {nm['fmr']:.4%} |")
    lines += ["", "| speaker | FNMR | FMR of their clips against others |", "|---|---|---|"]
    lines += [f"| {s} | {v['fnmr']:.2%} | {v['fmr']:.4%} |" for s, v in r["per_speaker"].items()]
    lines += ["", "| threshold | FMR | FNMR |", "|---|---|---|"]
    lines += [f"| {row['threshold']:.3f} | {row['fmr']:.4%} | {row['fnmr']:.2%} |" for row in r["thresholds"]]
    lines += ["", "One utterance at the normalised operating threshold, trial clips with white noise added:", ""]
    lines += ["| SNR | FNMR | FMR |", "|---|---|---|"]
    for x in r["noisy_probes"]:
        snr = "clean" if x["snr_db"] is None else f"{x['snr_db']:g} dB"
        lines.append(f"| {snr} | {x['fnmr']:.1%} | {x['fmr']:.4%} |")
    a = r["agreement"]
    lines += [
        "",
        f"Enrollment agreement floor **{a['floor']:.2f}** (1st percentile of {a['sets']} honest "
        f"{a['clips_per_set']}-clip enrollments; "
        f"median honest {a['honest_median']:.3f}, with one other speaker's clip {a['mixed_median']:.3f}): refuses "
        f"{a['honest_refused']:.1%} of honest enrollments and stops {a['mixed_stopped']:.1%} of mixed ones.",
        "",
        "| clip cut to | median speech | FNMR at the operating threshold |",
        "|---|---|---|",
    ]
    s = r["speech"]
    lines += [f"| {row['cut_s']:.1f} s | {row['median_speech_s']:.2f} s | {row['fnmr']:.2%} |" for row in s["rows"]]
    lines.append(f"| full clip | | {s['full_fnmr']:.2%} |")
    lines += ["", f"Minimum speech keeping FNMR within {s['allowed_fnmr']:.2%}: **{s['min_speech_s']} s**."]
    for name, c in r["cross_voice"].items():
        lines.append(
            f"\nSame person, other voice ({name}): median score {c['median']:.3f}, {c['accepted']:.1%} of "
            f"{c['trials']} trials accepted at the operating threshold."
        )
    return "\n".join(lines)


def plot(trials: Trials, r: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    _, fmr, fnmr = det_curve(trials)
    clip = (1e-5, 1 - 1e-5)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(norm.ppf(np.clip(fmr, *clip)), norm.ppf(np.clip(fnmr, *clip)), label=f"{r['encoder']}")
    ticks = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_xlim(norm.ppf(5e-5), norm.ppf(0.6))
    ax.set_ylim(norm.ppf(5e-5), norm.ppf(0.6))
    op_fmr, op_fnmr = r["operating"]["fmr"], r["operating"]["fnmr"]
    ax.plot(
        norm.ppf(np.clip(op_fmr, *clip)),
        norm.ppf(np.clip(op_fnmr, *clip)),
        "o",
        label=f"threshold {r['operating_threshold']:.3f}",
    )
    ax.axvline(norm.ppf(r["operating_fmr_upper_95"]), ls=":", c="grey", label="FMR 95% upper bound")
    ax.set_xlabel("false match rate")
    ax.set_ylabel("false non-match rate")
    ax.set_title(f"DET: {r['encoder']}, EER {r['eer']:.2%}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "det.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    bins = [float(b) for b in np.linspace(min(trials.impostor.min(), trials.genuine.min()), 1.0, 80)]
    ax.hist(trials.impostor, bins=bins, alpha=0.6, density=True, label=f"impostor ({len(trials.impostor)})")
    ax.hist(trials.genuine, bins=bins, alpha=0.6, density=True, label=f"genuine ({len(trials.genuine)})")
    ax.axvline(r["operating_threshold"], c="k", ls="--", label=f"threshold {r['operating_threshold']:.3f}")
    ax.set_xlabel("cosine score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("corpus", type=Path, help="one folder per speaker of 16-bit WAV clips")
    parser.add_argument("--out", type=Path, default=Path("calibration"))
    parser.add_argument("--encoder", choices=("ge2e", "ecapa"), default="ge2e")
    parser.add_argument("--model-dir", help="the encoder's model directory (GE2E: the default export if omitted)")
    parser.add_argument("--voiceprints", type=int, default=8, help="voiceprints per speaker and voice")
    parser.add_argument(
        "--enroll-clips", type=int, default=ENROLL_CLIPS, help="clips per voiceprint (the product's sample count)"
    )
    parser.add_argument("--max-clips", type=int, help="at most this many clips per speaker")
    parser.add_argument(
        "--threshold", type=float, help="operating threshold (default: fitted so its 95%% bound meets 0.8 in 1,000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cohort-per-voice", type=int, default=80, help="cohort clips per speaker and voice (with their noisy copies)"
    )
    parser.add_argument("--noisy-clips", type=int, default=300, help="trial clips the noise table uses")
    parser.add_argument("--speech-per-voice", type=int, default=20, help="trial clips per voice the speech floor cuts")
    parser.add_argument("--norm-threshold", type=float, help="the normalised threshold to report the procedure at")
    parser.add_argument("--retry-band", type=float, help="the say-again band to report the procedure at")
    parser.add_argument("--floor", type=float, help="the raw cosine each accepted utterance must also reach")
    parser.add_argument(
        "--write-cohort",
        type=Path,
        metavar="MODEL_DIR",
        help="also write the score cohort built from these recordings beside the model (an ECAPA deployment's)",
    )
    args = parser.parse_args(argv)
    encoder = open_encoder(args.encoder, args.model_dir)
    report = calibrate(
        args.corpus,
        encoder,
        args.out,
        voiceprints=args.voiceprints,
        enroll_clips=args.enroll_clips,
        max_clips=args.max_clips,
        seed=args.seed,
        threshold=args.threshold,
        norm_threshold=args.norm_threshold,
        retry_band=args.retry_band,
        floor=args.floor,
        cohort_per_voice=args.cohort_per_voice,
        noisy_clips=args.noisy_clips,
        speech_per_voice=args.speech_per_voice,
    )
    print((args.out / "report.md").read_text())  # noqa: T201
    if args.write_cohort:
        from infra.voice.cohort import build as build_cohort

        # the operator's recordings: every speaker
        build_cohort(args.write_cohort, args.corpus, per_voice=args.cohort_per_voice, held_out=())
        print(f"wrote the score cohort into {args.write_cohort}")  # noqa: T201
        print(  # noqa: T201
            "the functions refuse to start on it without the decision on its scale: set LOCKWISE_VOICE_THRESHOLD from"
            " the report's normalised operating point, and LOCKWISE_VOICE_MARGIN on that scale (GE2E's is 1.0 where"
            " its threshold is 4.775; the raw margin, 0.05, there let a voice within a hair of someone not allowed in"
            " in as the member it passed as too)"
        )
    print(f"wrote {args.out}/report.json, report.md, det.png, scores.png in {report['seconds']} s")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
