"""The verify decision at the server: lockout, candidates, one vectorised scoring, the attempt log, the unlock.

``Doors.decide`` decides one attempt in one transaction, which holds the lock's lockout row, so a lock's attempts are
counted exactly (one that comes while another is decided is refused at once); once the lockout and the daily ceiling
allow the attempt and someone may open the door by voice (no model work otherwise), the probe is embedded on a thread
of its own while that transaction reads the candidates' known recordings. Every attempt (accepted, rejected, refused,
invalid) is logged in PostgreSQL and mirrored to the lock's activity feed without biometric data (no embedding, no
score).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from lockwise.core import errors, mirror
from lockwise.core.config import Settings
from lockwise.core.db import Connection, Database, clock
from lockwise.core.forking import in_each_child
from lockwise.devices import commands, door_decisions, lock_auth, lockout
from lockwise.voice import audio, budgets, first_come, known_recordings, scoring, sent_again, voiceprints
from lockwise.voice.model import fingerprint
from lockwise.voice.model.encoder import Encoder, Policy, Scorer, policy
from lockwise.voice.model.model_files import ModelError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Beside:
    """The threads a verification runs beside its request's: the model's forward pass on one, the clip's fingerprint
    on the other (onnxruntime and numpy release the GIL; measured in process: 95 -> 83 ms for both on a 3 s clip),
    while the request's thread reads what the decision needs. One of each: the model's own thread pool takes every
    core, so a second forward beside it would only slow both. Made per process on first use (a pool made before
    gunicorn forks its worker would have no thread there: work submitted to it would never run)."""

    def __init__(self) -> None:
        self._pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self._lock = threading.Lock()
        in_each_child(self._forget)

    def pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """(forward, fingerprint) of this process."""
        with self._lock:
            if self._pools is None:
                self._pools = (
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward"),
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint"),
                )
            return self._pools

    def _forget(self) -> None:
        """In a forked child: the parent's pools' threads did not come along."""
        self._lock = threading.Lock()
        self._pools = None


#: this process's threads beside its requests (a test waits on the forward pool to see that nothing is left to run)
BESIDE = Beside()
#: how long a decision waits for its forward pass (a 30 s clip takes ~1 s on 2 cores) while it holds the lock's
#: lockout row: past it the attempt is answered 503 and the transaction rolled back (the lock's other attempts are
#: refused meanwhile: ``IN_PROGRESS_RETRY_S``)
FORWARD_WAIT_S = 20.0


@dataclass(frozen=True)
class Refusal:
    """Why an attempt was refused before any voice was scored: its reason in the attempts log, and its 429."""

    reason: str
    code: str
    message: str

    def error(self, retry_after_s: int | None) -> errors.RateLimited:
        return errors.RateLimited(self.message, retry_after_s=retry_after_s or 1, code=self.code)


#: the reason of a clip sent again after its accepted first sending's unlock lapsed (``_Attempt.lapsed``), and of
#: a voice accepted as a member's whose access ended while it was decided (``commands.lifetime``)
UNLOCK_EXPIRED = "unlock_expired"

IN_PROGRESS = Refusal(
    "in_progress", "voice_attempt_in_progress", "another attempt at this lock is being decided; try again"
)
LOCKED_OUT = Refusal("locked_out", "voice_locked_out", "voice unlock is locked out after repeated failures")
DAILY_LIMIT = Refusal(
    "daily_limit",
    "voice_daily_limit",
    "voice unlock has reached its daily limit of rejected attempts; the app still opens the door",
)
ATTEMPT_RATE = Refusal(
    "attempt_rate",
    "voice_attempt_rate",
    "too many voice attempts at this lock, or at its owner's locks, in the last minute; try again shortly",
)


@dataclass(frozen=True)
class Result:
    decision: str  # accepted | rejected | refused (then ``refusal`` says why)
    attempt_id: str
    reason: str
    score: float | None = None
    threshold: float | None = None
    member_uid: str | None = None
    command: dict[str, Any] | None = None
    grant: str | None = None
    retry_after_s: int | None = None
    stale_voiceprints: int = 0
    refusal: Refusal | None = None

    def body(self) -> dict[str, Any]:
        # the decision only: a score or the threshold would let whoever holds a lock hill-climb towards a voiceprint
        # (they are in the attempts log, for the owner and operators)
        out: dict[str, Any] = {
            "decision": self.decision,
            "attempt_id": self.attempt_id,
            "reason": self.reason,
            "stale_voiceprints": self.stale_voiceprints,
        }
        if self.decision == "accepted":
            out.update(
                member_uid=self.member_uid, command_id=self.command["id"] if self.command else None, grant=self.grant
            )
        return out


#: a lock's attempts are decided one at a time (they share its lockout row); one that comes while another is being
#: decided is refused at once (429 ``voice_attempt_in_progress``) instead of waiting for that row: waiting, each held
#: a server thread and a database connection for up to the statement limit (4 s) before its 503, so one lock sending
#: attempts side by side (120 a minute are allowed) kept an instance's threads from every other lock's door
IN_PROGRESS_RETRY_S = 1

#: attempts that never reached the model (bad audio, a lockout, the daily ceiling): a lock posting junk in a loop
#: (up to its signed-request limit, 120 a minute) wrote an entry to the feed each, burying the rest of the lock's
#: history (attack run); at most ``FEED_REFUSALS_PER_MINUTE`` a minute are listed, every one is kept in PostgreSQL
#: (those listed in no feed for ``retention.UNLISTED_REFUSALS_KEPT_DAYS``: attack run 130)
FEED_BUDGETED = ("invalid", "refused")
#: ... and rejections answered without the model: at a lock nobody enrolled at, a lock's loop of clips made one
#: entry each, 120 a minute, each a Firestore write kept 90 days (attack run 54)
FEED_BUDGETED_REASONS = ("no_candidates", "unlock_expired")
FEED_REFUSALS_PER_MINUTE = 10
#: ... and of all the locks one account owns together, counting the entries listed (and the notes): a lock's ten
#: alone, an account's 100 locks, made and paired for free, each posting junk up to its request limit, listed 1,100
#: entries a minute (attack run 110). Counted as committed: attempts at the owner's other locks decided side by side
#: may each list one more. Counting every refusal, listed or not, one door's junk (61 clips, within its own request
#: limit) spent it, and the refusals at the owner's other doors were listed nowhere (attack run 111)
FEED_REFUSALS_PER_OWNER_MINUTE = 60

#: before a refusal is recorded: the lock's refusals of the minute and the listed ones of its owner's locks, each
#: counted only as far as the decision reads them (all of the minute's, each attempt read every attempt at the
#: owner's locks, up to 12,000 a minute: attack run 111); the listed ones through their own index (migration 0078)
_FEED_BUDGETS_SQL = (
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM verification_attempts WHERE lock_id = CAST(:l AS uuid)"
    " AND (outcome = ANY(:o) OR reason = ANY(:r)) AND created_at > now() - interval '1 minute' LIMIT :n) AS a),"
    " (SELECT count(*) FROM (SELECT 1 FROM verification_attempts WHERE refusal_listed"
    " AND lock_id IN (SELECT id FROM locks WHERE owner_uid = (SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid)))"
    " AND created_at > now() - interval '1 minute' LIMIT :m) AS b)"
)


def record_attempt(
    con: Connection,
    lock_id: str,
    outcome: str,
    reason: str,
    *,
    matched_uid: str | None = None,
    score: float | None = None,
    runner_up: float | None = None,
    threshold: float | None = None,
    model_id: str | None = None,
    cosine: float | None = None,
    best_uid: str | None = None,
    runner_up_uid: str | None = None,
    clip_sha256: bytes | None = None,
) -> str:
    """Log an attempt at ``lock_id`` (and its feed entry, within the feed's budget). ``best_uid`` and
    ``runner_up_uid``: whose voiceprints it was scored closest to, kept for the erasure of their voice data only
    (migration 0041); ``clip_sha256``: the decided clip's (``sent_again``)."""
    budgeted = outcome in FEED_BUDGETED or reason in FEED_BUDGETED_REASONS
    entry = _refusal_entry(con, lock_id) if budgeted else "voice_attempt"
    ((attempt_id, at),) = con.run(  # the feed entry's time with it (no round trip more: ``mirror.activity``)
        "INSERT INTO verification_attempts (lock_id, outcome, reason, matched_uid, score, runner_up_score,"
        " threshold, model_id, cosine, best_uid, runner_up_uid, clip_sha256, refusal_listed)"
        " VALUES (CAST(:l AS uuid), :o, :r, :u, :s, :ru, :t, :m, :c, :b, :bu, :h, :listed)"
        " RETURNING id::text, clock_timestamp()",
        l=lock_id,
        o=outcome,
        r=reason[:200],
        u=matched_uid,
        s=score,
        ru=runner_up,
        t=threshold,
        m=model_id,
        c=cosine,
        b=best_uid,
        bu=runner_up_uid,
        h=clip_sha256,
        listed=(entry is not None) if budgeted else None,
    )
    if entry == "voice_attempt":
        mirror.activity(con, lock_id, entry, at=at, outcome=outcome, reason=reason, member_uid=matched_uid)
    elif entry is not None:  # the feed says more came than it lists: once a minute at a lock, once for its owner's
        mirror.activity(con, lock_id, entry, at=at, listed_per_minute=FEED_REFUSALS_PER_MINUTE)
    return str(attempt_id)


def _refusal_entry(con: Connection, lock_id: str) -> str | None:
    """What the feed lists of a refusal at ``lock_id`` now: the attempt (``voice_attempt``) while the lock has had
    fewer than ``FEED_REFUSALS_PER_MINUTE`` refusals this minute and its owner's locks have listed fewer than
    ``FEED_REFUSALS_PER_OWNER_MINUTE``; the note that more came (``voice_attempts_unlisted``) for the lock's first
    one past its own, and for the first one past its owner's (the note counted as listed: the next one finds the
    owner's budget past, and writes none); else nothing."""
    ((at_lock, listed),) = con.run(
        _FEED_BUDGETS_SQL,
        l=lock_id,
        o=list(FEED_BUDGETED),
        r=list(FEED_BUDGETED_REASONS),
        n=FEED_REFUSALS_PER_MINUTE + 1,
        m=FEED_REFUSALS_PER_OWNER_MINUTE + 2,
    )
    if listed < FEED_REFUSALS_PER_OWNER_MINUTE:
        if at_lock < FEED_REFUSALS_PER_MINUTE:
            return "voice_attempt"
        return "voice_attempts_unlisted" if at_lock == FEED_REFUSALS_PER_MINUTE else None
    return "voice_attempts_unlisted" if listed == FEED_REFUSALS_PER_OWNER_MINUTE else None


def take_follow_up(con: Connection, lock_id: str, attempt_id: str) -> dict[str, float] | None:
    """The per-candidate scores of the first utterance ``attempt_id`` at ``lock_id``, if it still waits (once).
    Expired ones are skipped here and deleted by ``lockwise.core.retention``."""
    rows = con.run(
        "DELETE FROM verify_follow_ups WHERE attempt_id = CAST(:a AS uuid) AND lock_id = CAST(:l AS uuid)"
        " AND expires_at > now() RETURNING scores",
        a=attempt_id,
        l=lock_id,
    )
    if not rows:
        return None
    stored = rows[0][0] if isinstance(rows[0][0], dict) else json.loads(rows[0][0])
    return {str(uid): float(score) for uid, score in stored.items()}


def record_invalid(db: Database, signer: lock_auth.Signer, code: str) -> None:
    """Log a refused attempt (bad audio, a bad query) of a device whose signature was checked; a lock deleted (or
    paired again) since is answered as the deleted lock is (401 ``unknown_lock``), not with its attempt's foreign
    key (a 500), nor logged as the new device's."""
    with db.transaction() as con:
        lock_auth.hold(con, signer)  # the lock's row too, as the attempt's foreign key needs it
        record_attempt(con, signer.lock_id, "invalid", code)


def decide(raw: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], rules: Policy) -> scoring.Decision:
    """The door's decision on one probe's ``scores`` (normalised, or raw cosines) against the candidates' voiceprints:
    the best must reach the threshold and beat the runner-up by the margin, and its raw cosine must reach the
    policy's gate (with normalised scores: the encoder's floor, or a lock's own threshold above it)."""
    decision = scoring.decide(scores, rules.threshold, rules.margin)
    gated = decision.best_index is not None and decision.reason in ("accepted", "ambiguous")
    if gated and not rules.passing(raw, scores)[decision.best_index]:  # the one rule, with the gate
        # ambiguous too: it says the best reached the threshold, which a voice the gate refuses is not told (attack
        # run 43: one close voiceprint answered below_threshold, two answered ambiguous)
        return dataclasses.replace(decision, accepted=False, reason="below_threshold")
    return decision


@dataclass(frozen=True)
class Doors:
    """What decides at an instance's doors, made once at its start: the database, the model, how a probe is scored,
    and the settings (``decide`` for each attempt)."""

    db: Database
    encoder: Encoder
    scorer: Scorer
    settings: Settings

    def decide(
        self,
        signer: lock_auth.Signer,
        clip: audio.Clip,
        *,
        sent_as: bytes,
        follow_up: str | None = None,
    ) -> Result:
        """Decide on ``clip`` heard by the device ``signer`` at its lock. ``follow_up``: the attempt id of a first
        utterance answered "say_again"; while it waits (30 s, once) the two utterances' normalised scores are fused,
        else this one is decided alone.

        A clip that is a replay of a known recording (an enrollment sample of a candidate, an earlier attempt at this
        lock) is rejected as ``replay`` before any voice is scored, and counts as a failed attempt; the same clip sent
        again by the lock (``sent_again``; ``sent_as``: its identity) is answered with its decision."""
        lock_id = signer.lock_id
        with self.db.transaction() as con:
            # the device's credential held with the lock's row: a re-pairing waits for the decision, and one that
            # came first is the deleted lock's 401 (``lock_auth.Signer``: attack run 50, a voice heard by the
            # replaced device as the lock was paired again was granted, and its unlock went to the new device)
            # and the database's clock (for a refusal before the lockout's row is held, which reads it again): the
            # decision's one time (memberships' windows, the lockout, the budgets), read with no extra round trip.
            # One instance's clock a minute ahead locked a lock out for a minute more than its wait, and its own
            # lockouts' ends were read against its clock (attack run 69, read only)
            found_lock = con.run(
                f"SELECT l.voice_threshold, pg_try_advisory_xact_lock({door_decisions.KEY}), clock_timestamp()"
                " FROM locks l"
                f" JOIN lock_credentials c ON c.lock_id = l.id AND {lock_auth.live_sql('c')}"
                " WHERE l.id = CAST(:l AS uuid) FOR SHARE",
                l=lock_id,
                c=signer.credential_id,
            )
            if not found_lock:  # deleted, or paired again, since its signature was checked
                raise lock_auth.deleted_lock()
            now = found_lock[0][2]
            attempt = _Attempt(self, con, lock_id, signer.credential_id, now, found_lock[0][0], sent_as)
            if not found_lock[0][1]:  # another attempt at this lock is being decided: answered now, not after it
                return attempt.refused(IN_PROGRESS, IN_PROGRESS_RETRY_S)
            first = sent_again.decided(con, lock_id, signer.credential_id, sent_as, self.settings.voice_sent_again_s)
            if first is not None:  # its answer was lost: nothing is decided or counted again
                return attempt.as_before(first) if first.stands else attempt.lapsed(first)
            held = lockout.hold(con, lock_id)
            now = held.now  # read once the lockout's row is held (after any wait for it)
            attempt = dataclasses.replace(attempt, now=now)
            if held.wait_s:  # refused before the model runs: a locked-out lock costs no forward pass
                return attempt.refused(LOCKED_OUT, held.wait_s)
            settings = self.settings
            budget = budgets.at_lock(
                con,
                lock_id,
                now,
                daily_rejections=settings.voice_daily_rejections,
                per_minute=settings.voice_attempts_per_minute,
                per_owner_minute=settings.voice_attempts_per_owner_minute,
                per_owner_at_once=settings.voice_attempts_per_owner_at_once,
            )
            if budget.daily_wait_s:
                return attempt.refused(DAILY_LIMIT, budget.daily_wait_s)
            rules = policy(settings, self.encoder, found_lock[0][0], normalised=self.scorer.normalised)
            found = voiceprints.candidates(con, lock_id, self.encoder.model_id, self.encoder.dim, now)
            if not any(found.allowed):  # nobody to pass as: answered without the model (it ran for each such attempt,
                # uncounted, unlimited: a lock nobody is enrolled at kept an instance's model busy: attack run)
                return attempt.nobody(found, rules)
            if budget.rate_wait_s or not budget.slot:  # the lock's, or its owner's locks', attempts had their model
                # passes this minute, or as many as may be in the model at once are there now
                return attempt.refused(ATTEMPT_RATE, budget.rate_wait_s or IN_PROGRESS_RETRY_S)
            # the forward pass (~40-100 ms) and the fingerprint on their threads, while this one reads the recordings
            heard = _Heard.begin(self.encoder, clip)
            try:
                return attempt.decide(heard, found, rules, held, follow_up)
            except BaseException:
                heard.abandon()  # a read that failed, a model that did not answer: nobody waits for what is left
                raise


@dataclass(frozen=True)
class _Heard:
    """A probe's embedding and fingerprint on their threads (``Beside``), and, once the candidates are known, whether
    it replays one of their recordings."""

    probe: Future[npt.NDArray[np.float32]]
    printed: Future[fingerprint.Fingerprint]

    @classmethod
    def begin(cls, encoder: Encoder, clip: audio.Clip) -> _Heard:
        forward, fingerprints = BESIDE.pools()
        return cls(
            forward.submit(encoder.embed, clip.samples, clip.rate),
            fingerprints.submit(fingerprint.of, clip.samples, clip.rate),
        )

    def abandon(self) -> None:
        """Nobody will wait for this work (the decision failed or ran out of time): what has not begun never does. A
        pass left queued behind a slow one ran later for nobody, and kept the model's one thread from the attempts
        still waiting (attack run)."""
        self.probe.cancel()
        self.printed.cancel()

    def replay_of(self, recordings: list[fingerprint.Landmarks]) -> Future[bool]:
        """Whether the probe replays one of ``recordings``, matched on the fingerprint's thread after its fingerprint,
        while the forward pass runs (matching against a week of a busy door's recordings takes tens of ms)."""
        return BESIDE.pools()[1].submit(_is_replay, self.printed, recordings)


def _finished(soon: Future[T], deadline: float) -> T:
    """The result of work begun beside the decision, waited for until ``deadline`` (``time.monotonic()``); a model
    that fails or does not answer is a 503 (the decision's transaction, rolled back, has written nothing)."""
    try:
        return soon.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout as exc:
        raise errors.Unavailable("the voice model did not answer in time; try again", code="model_timeout") from exc
    except ModelError as exc:
        logger.error("the voice model failed during a verification", extra={"fields": {"error": str(exc)}})
        raise errors.Unavailable("the voice model failed; try again", code="model_unavailable") from exc


def _is_replay(heard_soon: Future[fingerprint.Fingerprint], recordings: list[fingerprint.Landmarks]) -> bool:
    """Whether the probe (its fingerprint on its way) is a replay of one of ``recordings``."""
    return known_recordings.is_replay(heard_soon.result().landmarks, recordings)


@dataclass(frozen=True)
class _Attempt:
    """One attempt at a lock, decided in ``con``'s transaction (which holds the lock's lockout row)."""

    doors: Doors
    con: Connection
    lock_id: str
    device: str  # the credential of the lock's device that heard it (``lock_auth.Signer``): its unlock goes there only
    now: dt.datetime
    lock_threshold: float | None  # the lock's own voice threshold (None: the encoder's)
    clip_sha256: bytes  # the clip's identity (``sent_again.identity``), kept with a decision

    def as_before(self, first: sent_again.Decided) -> Result:
        """The clip's decision at its first sending, for the same clip sent again."""
        stale = self._stale()
        logger.info(
            "a clip sent again was answered with its first decision",
            extra={"fields": {"attempt_id": first.attempt_id, "outcome": first.outcome}},
        )
        if first.outcome == "accepted":
            command = {"id": first.command_id}
            return Result(
                "accepted",
                first.attempt_id,
                "accepted",
                None,
                None,
                first.matched_uid,
                command,
                first.grant,
                stale_voiceprints=stale,
            )
        return Result(first.outcome, first.attempt_id, first.reason, stale_voiceprints=stale)

    def lapsed(self, first: sent_again.Decided) -> Result:
        """A clip accepted at its first sending, sent again once its unlock no longer stands: refused as
        ``unlock_expired``, uncounted, without a look at its voice. Decided anew it was a ``replay`` of itself, counted
        towards the lockout and shown to the owner as a playback attack (attack run 39's lost answer, the lock away
        past the unlock's 30 s). Kept with the clip's identity (sent again later, it is answered so again) and whose
        voice the first accepted, so that the erasure of that voice forgets the clip here too (a review): her
        voiceprint held first, so that an erasure under way is waited for (then neither is kept: a clip sent again is
        decided anew) and one to come waits for this record and clears it. Holding nothing, the record committed after
        an erasure answered 204 named her, with the clip's identity (attack run 46)."""
        held = self.con.run("SELECT 1 FROM voiceprints WHERE user_uid = :u FOR KEY SHARE", u=first.matched_uid)
        if held:
            attempt = self._record("rejected", UNLOCK_EXPIRED, clip_sha256=self.clip_sha256, best_uid=first.matched_uid)
        else:  # her voice erased since: nothing of it, nor the clip's identity
            attempt = self._record("rejected", UNLOCK_EXPIRED)
        logger.info(
            "a clip sent again was refused: its first decision's unlock no longer stands",
            extra={"fields": {"attempt_id": attempt, "first_attempt_id": first.attempt_id}},
        )
        return Result("rejected", attempt, UNLOCK_EXPIRED, stale_voiceprints=self._stale())

    def refused(self, refusal: Refusal, retry_after_s: int) -> Result:
        """Refused before any voice is scored."""
        attempt = self._record("refused", refusal.reason)
        return Result("refused", attempt, refusal.reason, retry_after_s=retry_after_s, refusal=refusal)

    def nobody(self, found: voiceprints.Candidates, rules: Policy) -> Result:
        """No voice may open the door now: rejected, uncounted (nobody to guess at), nothing of the clip kept."""
        attempt = self._record(
            "rejected", "no_candidates", threshold=rules.threshold, model_id=self.doors.encoder.model_id
        )
        return Result(
            "rejected", attempt, "no_candidates", None, rules.threshold, stale_voiceprints=len(found.stale_uids)
        )

    def decide(
        self, heard: _Heard, found: voiceprints.Candidates, rules: Policy, held: lockout.Hold, follow_up: str | None
    ) -> Result:
        """The decision once the attempt is allowed and someone may open the door, with the probe and its
        fingerprint on their way."""
        encoder = self.doors.encoder
        known = known_recordings.at_lock(self.con, self.lock_id, found.uids)
        replay_soon = heard.replay_of(known.prints)
        deadline = time.monotonic() + FORWARD_WAIT_S  # one wait for all, not one each
        try:
            printed, probe = _finished(heard.printed, deadline), _finished(heard.probe, deadline)
            replayed = _finished(replay_soon, deadline)
        except BaseException:
            replay_soon.cancel()  # the rest: the caller's (``Doors.decide``)
            raise
        stale, landmarks = len(found.stale_uids), printed.landmarks
        if replayed:
            return self._replayed(stale)
        raw, scores = self.doors.scorer.scores(probe, found.prints)
        first = take_follow_up(self.con, self.lock_id, follow_up) if follow_up else None
        doors = self.doors
        like = first_come.like_rules(doors.settings, encoder, self.lock_threshold, doors.scorer)
        decision = first_come.decide(found, raw, scores, rules, doors.scorer, decide, like)
        if first is None:
            decision = _asked_again(decision, rules)
        else:
            fused = np.array(
                [(s + first[uid]) / 2 if uid in first else s for uid, s in zip(found.uids, scores, strict=True)],
                dtype=np.float32,
            )
            decision = _with_follow_up(
                first_come.decide(found, raw, fused, rules, doors.scorer, decide, like), decision
            )
        matched = found.uids[decision.best_index] if decision.best_index is not None else None
        logged: dict[str, Any] = {  # what the attempts log keeps of the scoring (not the feed, not the lock)
            "clip_sha256": self.clip_sha256,
            "score": decision.best,
            "runner_up": decision.runner_up,
            "threshold": rules.threshold,
            "model_id": encoder.model_id,
            "cosine": float(raw[decision.best_index]) if decision.best_index is not None else None,
            "best_uid": matched,
            "runner_up_uid": found.uids[decision.runner_up_index] if decision.runner_up_index is not None else None,
        }
        if not decision.accepted:
            attempt = self._record("rejected", decision.reason, **logged)
            self._remember(attempt, landmarks, None)
            if decision.reason == "say_again":
                self._wait_for_follow_up(
                    attempt, {u: s for u, s in zip(found.uids, scores.tolist(), strict=True) if math.isfinite(s)}
                )
            self._count_failure()
            return Result("rejected", attempt, decision.reason, decision.best, rules.threshold, stale_voiceprints=stale)
        # the variants made here, for a voice let in only (~6 ms for 3 s): made beside the forward pass for every
        # attempt, they took its cores from it and every rejected attempt paid them (one goals run: warm verify
        # 1.47x our forward, 1.31x the run before)
        altered = known_recordings.altered(printed.peaks)
        if matched is not None and known_recordings.altered_replay(altered, known.of(matched)):
            logger.info("a voice let in was an altered replay of its recordings", extra={"fields": {"uid": matched}})
            return self._replayed(stale)
        settings = self.doors.settings
        # the unlock's clock: the member's window is judged by it (attack run 42); the database's, as an app command's
        # is (``commands.from_app``): the order of a lock's commands is their times' (attack run 69)
        at = clock(self.con)
        membership = next(m for m in found.memberships if m.user_uid == matched)
        expires = commands.lifetime(membership, at, settings.command_ttl_s)
        if expires is None:  # their access ended while the voice was decided: no unlock, no failure counted
            attempt = self._record("rejected", UNLOCK_EXPIRED, **logged)
            self._remember(attempt, landmarks, None)
            return Result("rejected", attempt, UNLOCK_EXPIRED, stale_voiceprints=stale)
        attempt = self._record("accepted", "accepted", matched_uid=matched, **logged)
        self._remember(attempt, landmarks, matched)
        if held.counting:  # an owner's usual accepted attempt has nothing to clear: one statement fewer
            lockout.clear(self.con, self.lock_id)
        issued = commands.create(
            self.con,
            lock_id=self.lock_id,
            made_for=self.device,
            action="unlock",
            issuer_kind="voice",
            issuer_uid=matched,
            signing_key_b64=settings.signing_key(),
            at=at,
            expires=expires,
            attempt_id=attempt,
        )
        return Result(
            "accepted",
            attempt,
            "accepted",
            decision.best,
            rules.threshold,
            matched,
            issued.command,
            issued.payload,
            stale_voiceprints=stale,
        )

    def _replayed(self, stale: int) -> Result:
        """A replay of a known recording: rejected before any voice is scored (or, altered, once it was), counted."""
        attempt = self._record("rejected", "replay", model_id=self.doors.encoder.model_id, clip_sha256=self.clip_sha256)
        self._count_failure()
        return Result("rejected", attempt, "replay", stale_voiceprints=stale)

    def _stale(self) -> int:
        """How many of the lock's members allowed now must enroll again (another model's voiceprint)."""
        encoder = self.doors.encoder
        return len(voiceprints.candidates(self.con, self.lock_id, encoder.model_id, encoder.dim, self.now).stale_uids)

    def _record(self, outcome: str, reason: str, **logged: Any) -> str:
        return record_attempt(self.con, self.lock_id, outcome, reason, **logged)

    def _remember(self, attempt: str, landmarks: fingerprint.Landmarks, speaker: str | None) -> None:
        """Keep the probe's fingerprint: a replay of it at this lock is refused for a while."""
        hours = self.doors.settings.replay_memory_hours
        known_recordings.remember_attempt(self.con, self.lock_id, attempt, landmarks, hours, speaker)

    def _count_failure(self) -> None:
        settings = self.doors.settings
        lockout.record_failure(
            self.con, self.lock_id, self.now, after=settings.lockout_after, base_s=settings.lockout_base_s
        )

    def _wait_for_follow_up(self, attempt: str, scores: dict[str, float]) -> None:
        """Keep a "say_again" attempt's per-candidate scores for its follow-up (30 s, taken once)."""
        self.con.run(
            "INSERT INTO verify_follow_ups (attempt_id, lock_id, scores, expires_at) VALUES (CAST(:a AS uuid),"
            " CAST(:l AS uuid), CAST(:s AS jsonb), now() + interval '30 seconds')",
            a=attempt,
            l=self.lock_id,
            s=json.dumps(scores),
        )


def _with_follow_up(fused: scoring.Decision, alone: scoring.Decision) -> scoring.Decision:
    """The decision on a second utterance and the first's scores (``fused``: their means), which lets in only
    someone this utterance ``alone`` lets in: the mean lowers the best's score (the first was under the threshold),
    and it lowered the others' too, so a first utterance far from a guest outside her window, or from a voiceprint
    like the member's, took her out of the margin and the set-aside rules, and a second utterance that alone was
    hers, or ambiguous, was let in as the member (attack run 43). Refused, it is answered as the utterance alone
    (closest to another voice: ``ambiguous``)."""
    if not fused.accepted or (alone.accepted and alone.best_index == fused.best_index):
        return fused
    if alone.accepted:  # the two utterances let in two voices
        return dataclasses.replace(alone, accepted=False, reason="ambiguous")
    return alone


def _asked_again(decision: scoring.Decision, rules: Policy) -> scoring.Decision:
    """A first utterance just under the threshold is answered "say_again": the lock asks the person to say it again,
    and the two are fused. Not a voice the raw gate refused at or over the threshold: its normalised scores are the
    inflated ones the gate is there for."""
    if (
        rules.retry_band is not None
        and decision.reason == "below_threshold"
        and not decision.not_allowed
        and decision.best is not None
        and rules.threshold - rules.retry_band <= decision.best < rules.threshold
    ):
        return dataclasses.replace(decision, reason="say_again")
    return decision
