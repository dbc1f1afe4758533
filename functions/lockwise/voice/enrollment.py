"""Enrolling a voice: the samples' checks, the voiceprint and the fingerprints of its takes, stored together.

The embed function's handler parses the request into clips (``lockwise.voice.audio``) and calls ``enroll``; everything
that decides whether a set of samples makes a voiceprint lives here: enough speech in every sample (the encoder's
floor) and a voice in it (a voice activity model's: noise is loud too), samples that agree with each other as one
voice, and what a new voiceprint would lose at the locks the user shares (``lockwise.voice.first_come``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockwise.core import audit, erasure, errors, quotas, users
from lockwise.core.auth import User
from lockwise.core.config import Settings
from lockwise.core.db import Connection, Database
from lockwise.voice import audio, first_come, known_recordings, scoring, voiceprints
from lockwise.voice.model import fingerprint
from lockwise.voice.model.encoder import Encoder, Scorer, policy
from lockwise.voice.model.voice_activity import VoiceActivity


@dataclass(frozen=True)
class Enrolled:
    """An enrollment's answer: the voiceprint's status, and whether it was stored now (201) or the same samples were
    sent again and found stored (200: an app whose first answer never came)."""

    status: dict[str, Any]
    stored_now: bool


def _altered_copy_of(probe: known_recordings.Altered, earlier: list[fingerprint.Landmarks]) -> int | None:
    """The index of the first of ``earlier`` that the take ``probe`` is an altered replay of, or None: all of them
    compared at once, then one by one only to name it (five takes: ~160 ms, where one by one was ~350)."""
    if not known_recordings.altered_replay(probe, earlier):
        return None
    for j, take in enumerate(earlier):
        if known_recordings.altered_replay(probe, [take]):
            return j
    return None


def samples_identity(clips: Sequence[audio.Clip]) -> bytes:
    """The SHA-256 of an enrollment's samples as decoded (rate and samples of each, in order): the same recordings
    sent again, in either of the body's encodings (~1 ms for five 3 s samples)."""
    digest = hashlib.sha256()
    for clip in clips:
        digest.update(f"{clip.rate} {len(clip.samples)}\n".encode())
        digest.update(np.ascontiguousarray(clip.samples, dtype="<f4").tobytes())
    return digest.digest()


def enroll(
    db: Database,
    user: User,
    clips: Sequence[audio.Clip],
    encoder: Encoder,
    scorer: Scorer,
    voice: VoiceActivity,
    settings: Settings,
    now: Callable[[], dt.datetime],
) -> Enrolled:
    """Make the voiceprint of ``user`` (the caller) from ``clips`` (validated audio) and store it with its takes'
    fingerprints, replacing any earlier one; return the enrollment status and the samples' lowest agreement. The
    same samples sent again while the voiceprint they made stands (its answer was lost) are answered with it as
    stored: nothing is compared, counted or stored again, and it keeps its place at the door.

    Raises ``InvalidAudio`` (422) naming the sample with too little speech or too little voice in it (loud noise
    passes the first, not the second), one that is a copy of another (the
    replay check's fingerprints: a recording sent twice, at any gain), the one least like the others, or those
    that sound like a second voice (``_refuse_two_voices``),
    ``Conflict`` (409 ``voice_matches_member``) when their voice is scored at a lock now and the new one would
    not be (it passes as that of a co-member going before it there: enrolling again would hand a voice to a copy
    that came after it), and ``RateLimited``
    (429) once they have had the day's comparisons with co-members' voices (``comparisons_wait``) or the day's
    enrollments that reach the model (``_count_a_run``). An account found disabled, or a revoked session, stores
    nothing (``users.hold_caller``).
    """
    uid = user.uid
    samples_id = samples_identity(clips)
    # one snapshot, so that its reads agree on the voiceprint (a review); it waits for no lock: an enrollment begun
    # while a deletion waits still begins before that deletion (``_refuse_if_erased_since``)
    with db.transaction() as con:
        con.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        again = _as_stored(con, uid, samples_id, encoder, scorer, settings, now())
    if again is not None:
        return again
    rules = policy(settings, encoder)
    for i, clip in enumerate(clips):
        speech = audio.speech_seconds(clip.samples, clip.rate)
        _at_least(i, "speech_s", speech, rules.enroll_min_speech_s, "too_little_speech", "of speech")
        voiced = voice.voiced_seconds(clip.samples, clip.rate)  # only once it is loud enough: noise is loud too
        _at_least(i, "voice_s", voiced, settings.enroll_min_voice_s, "no_voice", "of voice")
    printed = [fingerprint.of(c.samples, c.rate) for c in clips]
    takes = [p.landmarks for p in printed]  # to refuse their replay at the door
    for i, take in enumerate(takes[1:], start=1):
        copied = known_recordings.replayed(take, takes[:i])
        if copied is None:  # or played again faster, slower, backwards or at another tempo (the door's altered
            # search): one clip sent five times at speeds 2 % apart enrolled as five takes
            copied = _altered_copy_of(known_recordings.altered(printed[i].peaks), takes[:i])
        if copied is not None:  # one recording sent twice (or played again): a voiceprint of fewer takes than asked
            raise errors.InvalidAudio(
                f"sample {i} is a copy of sample {copied}; record each sample separately",
                code="duplicate_samples",
                details={"sample": i, "copy_of": copied},
            )
    with db.transaction() as con:  # early: a user past the day's comparisons or runs costs no model work
        users.hold_caller(con, user)  # (a token from before the address was verified too: ``users.outdated``)
        _refuse_past_the_limit(comparisons_wait(con, uid, settings.enroll_comparisons))
        _count_a_run(con, uid, settings.enrollments_per_day)
        began = con.run("SELECT now()")[0][0]  # this transaction's start: a deletion of voice data after it wins
    embeddings = np.stack([encoder.embed(c.samples, c.rate) for c in clips])
    unusable = scoring.unusable_rows(embeddings)
    if unusable:  # a voiceprint of NaN (or of no direction) would compare as nothing and pass every check after this
        raise errors.InvalidAudio(
            f"sample {unusable[0]} could not be turned into a voiceprint; record it again",
            code="samples_disagree",
            details={"sample": unusable[0]},
        )
    lowest, outlier = scoring.agreement(embeddings)
    if lowest < rules.agreement:
        raise errors.InvalidAudio(
            f"sample {outlier} does not sound like the others; record it again",
            code="samples_disagree",
            details={"sample": outlier, "lowest_agreement": round(lowest, 4), "required": rules.agreement},
        )
    _refuse_two_voices(embeddings, rules.split_agreement)
    with db.transaction() as con:
        # one user's enrollments are decided one at a time, under the user's row, which the address's verification
        # updates: a token from before it (``users.outdated``) is refused whichever comes first
        users.hold_caller(con, user)
        con.run(erasure.VOICE_LOCK, u=uid)  # and with an erasure of their voice data
        _refuse_if_erased_since(con, uid, began)
        again = _as_stored(con, uid, samples_id, encoder, scorer, settings, now())
        if again is not None:  # the same samples, sent twice at once: the first stored them meanwhile
            return again
        _one_store_at_a_time_per_lock(con, uid)
        _refuse_past_the_limit(comparisons_wait(con, uid, settings.enroll_comparisons))
        at = now()
        before = first_come.standing(con, uid, encoder, scorer, settings, at)
        con.run("SAVEPOINT store")
        voiceprints.store(
            con, uid, encoder.model_id, embeddings, samples_id, address_verified=users.stored_email(user) is not None
        )
        after = first_come.standing(con, uid, encoder, scorer, settings, at)
        lost = sorted(set(after.aside_at) - set(before.aside_at)) if before.enrolled else []
        if lost:  # the voiceprint is not stored; the comparison's count is
            con.run("ROLLBACK TO SAVEPOINT store")
            audit.record(con, audit.user_actor(uid), "voice.enroll", "denied", details={"code": "voice_matches_member"})
        else:
            known_recordings.replace_enrollment(con, uid, takes)
            status = {**voiceprints.status(con, uid, encoder.model_id), "not_scored_at": after.aside_at}
            # a voice opens the member's doors: its change is a credential's, in the log with the session that made
            # it (``audit.acting``). Only the refusals were (attack run 120: a stolen phone's session enrolled its
            # holder's voice in the owner's account, left no row, and the doors it opened were hers in the log)
            replaced = {"replaced": True} if before.enrolled else {}
            audit.record(con, audit.user_actor(uid), "voice.enroll", "ok", details={"samples": len(clips), **replaced})
        if after.compared:  # an answer about co-members' voices, whichever it is: counted (and kept)
            con.run("INSERT INTO enrollment_comparisons (user_uid) VALUES (:u)", u=uid)
    if lost:
        raise errors.Conflict(
            "this voice is like that of someone who goes before you at a lock you share; your voice there stays as"
            " it is: enroll your own voice, or ask the lock's owner",
            code="voice_matches_member",
            details={"lock_ids": lost},
        )
    return Enrolled({**status, "agreement": round(lowest, 4)}, stored_now=True)


def _as_stored(
    con: Connection, uid: str, samples_id: bytes, encoder: Encoder, scorer: Scorer, settings: Settings, at: dt.datetime
) -> Enrolled | None:
    """``uid``'s voiceprint as stored, as its enrollment answered it, if it is the one made from the samples
    ``samples_id`` (with the current model); else None. Read in one snapshot (the first check) or holding
    ``erasure.VOICE_LOCK`` (the store's): the statements that read the voiceprint agree on it."""
    prints = voiceprints.made_from(con, uid, encoder.model_id, samples_id)
    if prints is None:
        return None
    lowest, _ = scoring.agreement(prints)
    aside = first_come.standing(con, uid, encoder, scorer, settings, at).aside_at  # as GET /embed/enrollment tells
    status = {**voiceprints.status(con, uid, encoder.model_id), "not_scored_at": aside}
    return Enrolled({**status, "agreement": round(lowest, 4)}, stored_now=False)


def _one_store_at_a_time_per_lock(con: Connection, uid: str) -> None:
    """Hold, until this transaction ends, each lock ``uid`` is a member of: two co-members' enrollments then store
    one after the other, and the second is compared with the first's voiceprint (stored later, it goes after it at
    the door: ``voiceprints.store``). Side by side, each read the other's neighbours before either stored: both
    stored one voice, ambiguous at their shared door (attack run 20), or, with ``first_come``, both were told their
    voice is scored there.
    Taken in the locks' order, so two enrollments sharing several locks never wait for each other in a circle."""
    for (lock_id,) in con.run("SELECT DISTINCT lock_id::text FROM lock_members WHERE user_uid = :u ORDER BY 1", u=uid):
        con.run("SELECT pg_advisory_xact_lock(hashtextextended('enrollment at ' || :l, 0))", l=lock_id)


def _refuse_two_voices(embeddings: scoring.Matrix, required: float | None) -> None:
    """422 ``samples_of_two_voices`` naming the smaller group, when the samples split into two groups (of two or more)
    whose voiceprints agree under ``required`` (None: not checked). A voiceprint is its user's alone: three takes of
    one person and two of another agree pairwise as two like voices do (every pair over the agreement floor), and
    their mean let the second in as the first (attack run 123: June on 24-40 % of her attempts at Allison's
    voiceprint, where Allison's own let her in on none)."""
    if required is None:
        return
    split, group = scoring.split_agreement(embeddings)
    if split < required:
        raise errors.InvalidAudio(
            f"samples {', '.join(map(str, group))} sound like another voice than the others; every sample must be"
            " your voice alone: record them again",
            code="samples_of_two_voices",
            details={"samples": group, "split_agreement": round(split, 4), "required": required},
        )


def _refuse_if_erased_since(con: Connection, uid: str, began: dt.datetime) -> None:
    """409 ``voice_data_deleted`` when ``uid``'s voice data was erased after this enrollment began: the deletion was
    answered first, and its voiceprint stored after it outlived the account's deletion (attack run 14)."""
    if con.run("SELECT 1 FROM voice_erasures WHERE user_uid = :u AND erased_at >= :b", u=uid, b=began):
        raise errors.Conflict(
            "your voice data was deleted while this enrollment ran; nothing was stored: enroll again",
            code="voice_data_deleted",
        )


def _at_least(sample: int, key: str, seconds: float, required: float, code: str, what: str) -> None:
    """Refuse ``sample`` (422 ``code``, with ``key`` and ``required_s``) when it holds under ``required`` seconds."""
    if seconds < required:
        raise errors.InvalidAudio(
            f"sample {sample}: only {seconds:.2f} s {what}; enrollment needs {required:g} s",
            code=code,
            details={"sample": sample, key: round(seconds, 2), "required_s": required},
        )


def take_a_request(db: Database, user: User, settings: Settings) -> None:
    """Count an enrollment request of ``user`` before its body is read, whatever it is answered: at most
    ``settings.enroll_requests_per_day`` in any 24 hours (then 429 ``enrollment_limit``). One refused by its samples'
    own checks was never counted, and its body (up to ~19 MB) was parsed, decoded and measured first: ~170 ms of an
    instance, as often as one account sent them (attack run 32). A user past a day's share of enrollments (compared
    with co-members' voices, or reaching the model) is refused here too, before the body and the voice activity
    model and fingerprints (~10 ms a sample); ``enroll`` takes those shares, exactly, under the user's row. An
    account found gone or disabled, or a revoked session, is refused before anything (``users.hold_caller``)."""
    limit = settings.enroll_requests_per_day
    with db.transaction() as con:
        users.hold_caller(con, user)
        _refuse_past_the_limit(comparisons_wait(con, user.uid, settings.enroll_comparisons))
        _count_a_run(con, user.uid, settings.enrollments_per_day, count=False)
        message = f"you sent {limit} enrollments in the last 24 hours; try again later"
        quotas.take(con, "enrollment_requests", user.uid, limit, message=message, code="enrollment_limit")


def comparisons_wait(con: Connection, uid: str, limit: int) -> int:
    """Seconds until ``uid``'s next enrollment may be compared with co-members' voices (0: now). Whatever it answers
    (stored, or 409 ``voice_matches_member``), such an enrollment tells whether a voice passes as someone who shares
    a lock with ``uid``: a probe of their voiceprint that the door's lockout never sees. So at most ``limit`` of them
    per user in any 24 hours (an enrollment with no co-member's voiceprint to compare tells nothing and is free)."""
    return quotas.day_wait(con, "enrollment_comparisons", "user_uid", uid, limit)


def _count_a_run(con: Connection, uid: str, limit: int, *, count: bool = True) -> None:
    """Count an enrollment that goes on to the model (every sample embedded), or refuse it (429 ``enrollment_limit``)
    once ``uid`` had ``limit`` in the last 24 hours: one with no co-member to compare was free, and one account could
    keep an instance busy (attack run). The caller holds the user's row; a failing enrollment counts too.
    ``count=False``: only refuse (the read before any voice model runs)."""
    quota = quotas.take if count else quotas.check
    message = f"you enrolled your voice {limit} times in the last 24 hours; try again later"
    quota(con, "enrollment_runs", uid, limit, message=message, code="enrollment_limit")


def _refuse_past_the_limit(wait: int) -> None:
    quotas.refuse_when_full(
        wait,
        "too many enrollments were compared with the voices of people who share a lock with you today; try again later",
        "enrollment_limit",
    )
