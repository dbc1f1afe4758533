"""Enrolling a voice: the samples' checks, the voiceprint and the fingerprints of its takes, stored together.

The embed function's handler parses the request into clips (``lockwise.voice.audio``) and calls ``enroll``; everything
that decides whether a set of samples makes a voiceprint lives here: enough speech in every sample (the encoder's
floor), samples that agree with each other, and no collision with the voice of someone who shares a lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lockwise.core import errors
from lockwise.core.config import Settings
from lockwise.core.db import Connection, Database
from lockwise.voice import audio, known_recordings, scoring, voiceprints
from lockwise.voice.model import fingerprint
from lockwise.voice.model.encoder import Encoder, Scorer, policy


def enroll(
    db: Database, uid: str, clips: Sequence[audio.Clip], encoder: Encoder, scorer: Scorer, settings: Settings
) -> dict[str, Any]:
    """Make ``uid``'s voiceprint from ``clips`` (validated audio) and store it with its takes' fingerprints,
    replacing any earlier one; return the enrollment status and the samples' lowest agreement.

    Raises ``InvalidAudio`` (422) naming the sample with too little speech or the one least like the others, and
    ``Conflict`` (409) when the voice would pass as someone who shares a lock with ``uid``.
    """
    rules = policy(settings, encoder)
    for i, clip in enumerate(clips):
        speech = audio.speech_seconds(clip.samples, clip.rate)
        if speech < rules.enroll_min_speech_s:
            raise errors.InvalidAudio(
                f"sample {i}: only {speech:.2f} s of speech; enrollment needs {rules.enroll_min_speech_s:g} s",
                code="too_little_speech",
                details={"sample": i, "speech_s": round(speech, 2), "required_s": rules.enroll_min_speech_s},
            )
    embeddings = np.stack([encoder.embed(c.samples, c.rate) for c in clips])
    lowest, outlier = scoring.agreement(embeddings)
    if lowest < rules.agreement:
        raise errors.InvalidAudio(
            f"sample {outlier} does not sound like the others; record it again",
            code="samples_disagree",
            details={"sample": outlier, "lowest_agreement": round(lowest, 4), "required": rules.agreement},
        )
    takes = [fingerprint.landmarks(c.samples, c.rate) for c in clips]  # to refuse their replay at the door
    with db.transaction() as con:
        refuse_a_neighbours_voice(con, uid, scoring.voiceprint(embeddings), encoder, scorer, settings)
        voiceprints.store(con, uid, encoder.model_id, embeddings)
        known_recordings.replace_enrollment(con, uid, takes)
        status = voiceprints.status(con, uid, encoder.model_id)
    return {**status, "agreement": round(lowest, 4)}


def refuse_a_neighbours_voice(
    con: Connection, uid: str, voiceprint: scoring.Vector, encoder: Encoder, scorer: Scorer, settings: Settings
) -> None:
    """409 when the new voiceprint would pass as someone who shares a lock with ``uid``, at that lock's threshold:
    enrolling another member's recordings would otherwise make their own voice ambiguous (and lock them out)."""
    neighbours = voiceprints.co_members(con, uid, encoder.model_id, encoder.dim)
    raw, scores = scorer.scores(voiceprint, neighbours.prints)  # as verify would score this voice against them
    for cosine, score, lock_threshold in zip(raw, scores, neighbours.lock_thresholds, strict=True):
        rules = policy(settings, encoder, lock_threshold, normalised=scorer.normalised)
        if score >= rules.threshold and (rules.raw_gate is None or cosine >= rules.raw_gate):
            raise errors.Conflict(
                "this voice already belongs to someone who shares a lock with you; enroll your own voice",
                code="voice_matches_member",
            )
