"""Erasing a user's voice data, written once: for the app's ``DELETE /embed/enrollment`` and for an account found
deleted outside the app (``lockwise.devices.gone_accounts``, on the relay's flush: the devices bundle loads no voice
code, so the statements live here, as the voice tables' retention does in ``lockwise.core.retention``)."""

from __future__ import annotations

from typing import Literal

from lockwise.core import mirror
from lockwise.core.db import Connection

#: a user's voice data changes one transaction at a time: an enrollment storing it, its erasure (not the user's row,
#: which the erasure would hold while it waits for the door decisions reading the voiceprint: every request holding
#: that row, a command, an invitation's acceptance, would wait with it)
VOICE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('voice ' || :u, 0))"


#: why a user's voice data was erased (``voice_erasures.reason``, migration 0068; ``GET /embed/enrollment`` says it)
ErasureReason = Literal["requested", "address_verified", "account_gone"]


def forget_voice(con: Connection, uid: str, reason: ErasureReason) -> int:
    """Delete all of ``uid``'s voice data, for ``reason``; returns the number of voiceprint rows removed.

    Comparison results tied to it go too: the scores of every attempt scored against it (as the best candidate or
    the runner-up, accepted or rejected), and the fingerprints of the enrollment samples (with the voiceprint), of
    every attempt that opened a door with this voice and of every rejected one scored closest to it. An accepted
    attempt keeps who opened the door (an access record, not biometric data); nothing names the closest voiceprint
    of a rejected one after this (``best_uid``, read here only: migration 0041).

    A verify decision holds the voiceprints it read (``FOR KEY SHARE``) until it commits, so the voiceprint's
    deletion waits for every decision already reading it, at any lock (one the user joined a moment ago too), and
    the statements after it, each reading afresh, scrub what those decisions wrote; a decision that begins meanwhile
    waits and finds no voiceprint. Before, a door could open on this voice after the deletion was answered, its
    score and fingerprint left behind (attack runs)."""
    # one at a time with the user's enrollments as they store (``VOICE_LOCK``)
    con.run(VOICE_LOCK, u=uid)
    removed = len(con.run("DELETE FROM voiceprints WHERE user_uid = :u RETURNING 1", u=uid))  # + its samples' prints
    con.run("DELETE FROM voice_fingerprints WHERE speaker_uid = :u", u=uid)  # of the doors it opened
    con.run(  # of the rejected utterances scored closest to it (their own voice asked to say it again, mostly)
        "DELETE FROM voice_fingerprints f USING verification_attempts a"
        " WHERE f.attempt_id = a.id AND a.best_uid = :u AND a.outcome = 'rejected'",
        u=uid,
    )
    con.run(  # every score against it, best or runner-up, whatever the outcome, and the clip's identity (a clip sent
        # again after this is decided anew, not answered as scored against this voice: ``lockwise.voice.sent_again``).
        # Only what names or measures this voice: an attempt whose runner-up it was keeps its best voice's name, score
        # and cosine, so that voice's rejected attempts stay its known recordings and go with its own erasure (all of
        # them were cleared here, and such an attempt's fingerprint outlived the best voice's erasure: a review)
        "UPDATE verification_attempts SET clip_sha256 = NULL,"
        " score = CASE WHEN best_uid = :u OR matched_uid = :u THEN NULL ELSE score END,"
        " cosine = CASE WHEN best_uid = :u OR matched_uid = :u THEN NULL ELSE cosine END,"
        " best_uid = CASE WHEN best_uid = :u THEN NULL ELSE best_uid END,"
        " runner_up_score = CASE WHEN runner_up_uid = :u THEN NULL ELSE runner_up_score END,"
        " runner_up_uid = CASE WHEN runner_up_uid = :u THEN NULL ELSE runner_up_uid END,"
        " matched_uid = CASE WHEN matched_uid = :u AND outcome <> 'accepted' THEN NULL ELSE matched_uid END"
        " WHERE matched_uid = :u OR best_uid = :u OR runner_up_uid = :u",
        u=uid,
    )
    # a waiting first utterance's scores against them
    con.run("DELETE FROM verify_follow_ups WHERE (scores ->> :u) IS NOT NULL", u=uid)
    if removed:  # none: the app's document says so already (a loop of erasures wrote it 129 times a second: attack
        # run 54); the mark below is written all the same, for an enrollment under way
        mirror.enqueue(con, mirror.user_doc(uid), "set", {"voice_enrolled": False})
    # and marked: an enrollment that began before this stores nothing, also one computing its voiceprint now
    # (``lockwise.voice.enrollment``). The time is taken last, after the voiceprints' deletion has waited for the door
    # decisions reading them (it was taken first, and an enrollment begun in that wait stored after the deletion was
    # answered: attack run 20), and under the lock, so it is later than the start of every enrollment that stored
    # before.
    con.run(
        # why and when its voice was forgotten: only by an erasure that removed one (a DELETE of none answered
        # "forgotten: requested" to a member who never enrolled: attack run 77)
        "INSERT INTO voice_erasures (user_uid, erased_at, reason, forgotten_at)"
        " SELECT uid, clock_timestamp(), CASE WHEN :gone THEN :r END, CASE WHEN :gone THEN clock_timestamp() END"
        " FROM users WHERE uid = :u"
        " ON CONFLICT (user_uid) DO UPDATE SET erased_at = EXCLUDED.erased_at,"
        " reason = coalesce(EXCLUDED.reason, voice_erasures.reason),"
        " forgotten_at = coalesce(EXCLUDED.forgotten_at, voice_erasures.forgotten_at)",
        u=uid,
        r=reason,
        gone=removed > 0,
    )
    return removed
