"""Fingerprints of recordings the system has heard, kept to refuse their replay at the door.

An enrollment sample's fingerprint lives as long as its voiceprint; an attempt's lives ``replay_memory_hours`` at
its lock. Verify compares a probe with the enrollment samples of the lock's candidates, the lock's recent attempts
and the attempts that opened the candidates' other doors, in one vectorised pass
(``lockwise.voice.model.fingerprint.match_scores``); a probe whose voice would open the door is also searched for
as an altered replay (played faster, slower or backwards) of that voice's recordings
(``fingerprint.altered_scores``). Stored in PostgreSQL only: never mirrored, deleted with the voice data
(``erasure.forget_voice``), the lock, or the attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lockwise.core.db import Connection
from lockwise.voice.model import fingerprint, retimed


def replace_enrollment(con: Connection, uid: str, prints: Sequence[fingerprint.Landmarks]) -> None:
    """The user's enrollment samples are now ``prints`` (their voiceprint row must exist)."""
    con.run("DELETE FROM voice_fingerprints WHERE user_uid = :u", u=uid)
    for fp in prints:
        con.run(
            "INSERT INTO voice_fingerprints (user_uid, landmarks) VALUES (:u, :b)", u=uid, b=fingerprint.to_bytes(fp)
        )


def remember_attempt(
    con: Connection, lock_id: str, attempt_id: str, fp: fingerprint.Landmarks, hours: int, speaker_uid: str | None
) -> None:
    """Keep an attempt's fingerprint at its lock for ``hours`` (0: not at all)."""
    if hours <= 0 or len(fp) == 0:
        return
    con.run(
        "INSERT INTO voice_fingerprints (lock_id, attempt_id, speaker_uid, landmarks, expires_at)"
        " VALUES (CAST(:l AS uuid), CAST(:a AS uuid), :s, :b, now() + make_interval(hours => :h))",
        l=lock_id,
        a=attempt_id,
        s=speaker_uid,
        b=fingerprint.to_bytes(fp),
        h=hours,
    )


#: the most recent attempts at a lock a probe is compared with: rejected ones are bounded by the daily ceiling, and
#: a door opens a few dozen times a day, so this is a bound for the unforeseen (each costs ~0.6 ms and 8 KB)
ATTEMPTS_COMPARED = 1000
#: the most recent attempts that opened other doors to the candidates' voices a probe is also compared with: a member
#: opening three other doors 15 times a day each is 315 a week (matching 300: 33 ms p50, ``./dev bench replay``)
OTHER_DOORS_COMPARED = 300


#: the most recordings of the voice a probe would let in that the altered search compares it with: the voice's
#: enrollment samples first, then the attempts it opened a door with (here and at its other doors), then those at
#: this door scored closest to it, each newest first (at 67 variants, ~0.5 ms each: ``./dev bench replay``)
ALTERED_COMPARED = 100
#: what a known recording is, in the order the altered search takes them: rejected attempts, which anyone at the
#: door makes, last, so that they cannot push out the recordings that opened a door (attack run 67)
ENROLLED, OPENED, REJECTED = 0, 1, 2


@dataclass(frozen=True)
class Known:
    """The recordings a probe at a lock is checked against (``prints``), whose voice each is (``voices``: an
    enrollment sample's member, the member an attempt let in or, rejected, was scored closest to; None: nobody's),
    what each is (``kinds``: ``ENROLLED``, ``OPENED``, ``REJECTED``) and when an attempt's expires (``expires``, in
    seconds; 0 for a sample: the newest expires last)."""

    prints: list[fingerprint.Landmarks]
    voices: list[str | None]
    kinds: list[int]
    expires: list[float]

    def of(self, uid: str) -> list[fingerprint.Landmarks]:
        """The recordings of ``uid``'s voice: her enrollment samples, the attempts that opened a door to her voice,
        then those at this door scored closest to it, each newest first, ``ALTERED_COMPARED`` at most."""
        mine = [i for i, voice in enumerate(self.voices) if voice == uid]
        mine.sort(key=lambda i: (self.kinds[i], -self.expires[i]))
        return [self.prints[i] for i in mine[:ALTERED_COMPARED]]


def at_lock(con: Connection, lock_id: str, uids: Sequence[str]) -> Known:
    """The known recordings a probe at ``lock_id`` is checked against: the enrollment samples of ``uids``, the lock's
    newest ``ATTEMPTS_COMPARED`` unexpired attempts, and the newest ``OTHER_DOORS_COMPARED`` that opened another door
    to the voice of one of ``uids`` (expired ones are deleted by ``lockwise.core.retention``). A recording that opened
    one door (which a compromised lock or a listener there holds) is a replay at every door of that member, not only
    at the one that heard it (attack run: it opened the member's other door). Each with whose voice it is: a
    rejected attempt's is the voice it was scored closest to (``verification_attempts.best_uid``)."""
    rows = con.run(
        "(SELECT f.landmarks, COALESCE(f.speaker_uid, a.best_uid),"
        f" CASE WHEN f.speaker_uid IS NULL THEN {REJECTED} ELSE {OPENED} END, f.expires_at"
        " FROM voice_fingerprints f LEFT JOIN verification_attempts a ON a.id = f.attempt_id"
        " WHERE f.lock_id = CAST(:l AS uuid) AND f.expires_at > now() ORDER BY f.expires_at DESC LIMIT :n) UNION ALL"
        f" (SELECT landmarks, user_uid, {ENROLLED}, NULL FROM voice_fingerprints"
        " WHERE user_uid = ANY(CAST(:u AS text[])))"
        f" UNION ALL (SELECT landmarks, speaker_uid, {OPENED}, expires_at FROM voice_fingerprints"
        " WHERE speaker_uid = ANY(CAST(:u AS text[]))"
        " AND lock_id <> CAST(:l AS uuid) AND expires_at > now() ORDER BY expires_at DESC LIMIT :m)",
        l=lock_id,
        u=list(uids),
        n=ATTEMPTS_COMPARED,
        m=OTHER_DOORS_COMPARED,
    )
    return Known(
        [fingerprint.from_bytes(bytes(r[0])) for r in rows],
        [r[1] for r in rows],
        [int(r[2]) for r in rows],
        [r[3].timestamp() if r[3] is not None else 0.0 for r in rows],
    )


def is_replay(probe: fingerprint.Landmarks, known: Sequence[fingerprint.Landmarks]) -> bool:
    return replayed(probe, known) is not None


def replayed(probe: fingerprint.Landmarks, known: Sequence[fingerprint.Landmarks]) -> int | None:
    """The index of the first of ``known`` that ``probe`` is a replay of, or None."""
    hits = np.flatnonzero(fingerprint.match_scores(probe, known) >= fingerprint.REPLAY_Z)
    return int(hits[0]) if len(hits) else None


@dataclass(frozen=True)
class Altered:
    """A probe as the altered search matches it: its landmarks at each speed undone and backwards
    (``fingerprint.altered``), and its triplets as heard and backwards, which a tempo change keeps
    (``retimed.retimed``)."""

    speeds: list[fingerprint.Landmarks]
    tempos: list[retimed.Triplets]


def altered(found: fingerprint.Peaks) -> Altered:
    """The altered search's view of the probe whose peaks are ``found`` (~6 ms for 3 s; made once it is let in)."""
    return Altered(fingerprint.altered(found), retimed.retimed(found))


def altered_replay(probe: Altered, recordings: Sequence[fingerprint.Landmarks]) -> bool:
    """Whether ``probe`` is one of ``recordings`` played faster, slower or backwards, or with its tempo changed:
    attack run 64 opened the door with a heard take played 3 % fast, backwards, both, or at 1.1x tempo."""
    if not recordings:
        return False
    if np.any(fingerprint.altered_scores(probe.speeds, recordings) >= fingerprint.REPLAY_Z):
        return True
    return bool(np.any(retimed.tempo_scores(probe.tempos, recordings) >= retimed.TEMPO_Z))
