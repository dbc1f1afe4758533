"""Enrolling a voice: the samples' checks, the voiceprint and the fingerprints of its takes, stored together.

The embed function's handler parses the request into clips (``lockwise.voice.audio``) and calls ``enroll``; everything
that decides whether a set of samples makes a voiceprint lives here: enough speech in every sample (the encoder's
floor), samples that agree with each other, and no collision with the voice of someone who shares a lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from lockwise.core import audit, errors
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

    Raises ``InvalidAudio`` (422) naming the sample with too little speech or the one least like the others,
    ``Conflict`` (409) when the voice would pass as someone who shares a lock with ``uid`` (counted), and
    ``RateLimited`` (429) once ``uid`` has had the day's share of those answers.
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
        wait = match_refusals_wait(con, uid, settings.enroll_match_refusals)
        if wait:
            raise errors.RateLimited(
                "too many enrollments were refused as another member's voice today; try again later",
                retry_after_s=wait,
                code="enrollment_limit",
            )
        matched = matches_a_neighbour(con, uid, scoring.voiceprint(embeddings), encoder, scorer, settings)
        if matched:  # counted, and kept: the refusal is committed, the voiceprint is not stored
            con.run("INSERT INTO enrollment_refusals (user_uid) VALUES (:u)", u=uid)
            audit.record(con, audit.user_actor(uid), "voice.enroll", "denied", details={"code": "voice_matches_member"})
        else:
            voiceprints.store(con, uid, encoder.model_id, embeddings)
            known_recordings.replace_enrollment(con, uid, takes)
            status = voiceprints.status(con, uid, encoder.model_id)
    if matched:
        raise errors.Conflict(
            "this voice already belongs to someone who shares a lock with you; enroll your own voice",
            code="voice_matches_member",
        )
    return {**status, "agreement": round(lowest, 4)}


def match_refusals_wait(con: Connection, uid: str, limit: int) -> int:
    """Seconds until ``uid`` may be told again whether a voice matches a co-member (0: now). Each such answer is a
    probe of a co-member's voiceprint that the door's lockout never sees, so they are counted per user: at most
    ``limit`` in any 24 hours. Locks the user's row, so one user's enrollments are decided one at a time and a burst
    in parallel gets no more answers than one after another."""
    con.run("SELECT 1 FROM users WHERE uid = :u FOR UPDATE", u=uid)
    rows = con.run(
        "SELECT count(*), min(created_at), now() FROM enrollment_refusals WHERE user_uid = :u AND expires_at > now()",
        u=uid,
    )
    count, oldest, now = int(rows[0][0]), rows[0][1], rows[0][2]
    if count < limit or oldest is None:
        return 0
    return max(1, int((oldest + dt.timedelta(days=1) - now).total_seconds() + 0.999))


def matches_a_neighbour(
    con: Connection, uid: str, voiceprint: scoring.Vector, encoder: Encoder, scorer: Scorer, settings: Settings
) -> bool:
    """Whether the new voiceprint would pass as someone who shares a lock with ``uid``, at that lock's threshold:
    enrolling another member's recordings would otherwise make their own voice ambiguous (and lock them out)."""
    neighbours = voiceprints.co_members(con, uid, encoder.model_id, encoder.dim)
    raw, scores = scorer.scores(voiceprint, neighbours.prints)  # as verify would score this voice against them
    for cosine, score, lock_threshold in zip(raw, scores, neighbours.lock_thresholds, strict=True):
        rules = policy(settings, encoder, lock_threshold, normalised=scorer.normalised)
        if score >= rules.threshold and (rules.raw_gate is None or cosine >= rules.raw_gate):
            return True
    return False
