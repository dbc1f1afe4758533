"""One voice, one member at a door: of two voiceprints at a lock that pass as each other, when an utterance passes
as both only the one that goes first there is scored: the lock's owner's, else the one that came to the lock first.

Someone who enrolled a member's recordings before sharing a lock with them, and was then invited to it, brought
that member's voice to the door twice: the two scored alike, the decision was ``ambiguous``, and the member stood
outside their own door (a review of attack run 20). Joining is the devices function's, which loads no voice code,
so the rule is kept where voices are scored.

Which goes first (``Candidates.precedence``):
- the lock's owner, always: after an encoder change (every voiceprint stale, none compared) or after deleting her
  voice data, a guest holding her recordings enrolled them before she enrolled again, and her voice opened her own
  door as the guest's (attack run 22);
- else the voiceprint that came to the lock first: the later of the membership's start (an invitation accepted)
  and the enrollment (enrolling again starts it again). Ties go to the lower uid. Neither member can move theirs
  earlier, and nobody can move another's later (an expiry set and lifted by an admin keeps the start: attack run
  23). Between two members who are not the owner, whoever enrolls first after an encoder change keeps the voice at
  that lock (README: left).
Taken in that order, a voiceprint is set aside when it passes as one kept before it that the utterance passes as
too: of three voices each like the next (a voiceprint of two people's samples between them: attack run 23), the
first and the last are both scored, and a voiceprint that came first but that a later member's voice does not
reach keeps her out of nothing (attack run 24). Every active member's voiceprint counts, whether or not they may
come in now; the decision is then taken among those who may: a member's copy of a guest's voice let her in outside
her window (attack run 24).

Enrollment stores a voice wherever it stands, and says where it is not scored (``not_scored_at``), but refuses one
that would lose the user a lock where their voice is scored now (``lockwise.voice.enrollment``): a single refusal
for one lock blocked their enrollment everywhere, their own door too (attack run 23).

Only when the utterance passes as someone are the voiceprints scored against each other, in one product
(``Scorer.pairwise``): an owner with a thousand copies of one voice at her door cost k scorings each, in turn
(attack run 22). ``standing`` tells a user where their voiceprint yields (``GET /embed/enrollment``): to a like
one going before it, whatever an utterance passes as.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lockwise.core.config import Settings
from lockwise.core.db import Connection
from lockwise.voice import scoring, voiceprints
from lockwise.voice.model.encoder import Encoder, Policy, Scorer, policy
from lockwise.voice.voiceprints import Candidates

logger = logging.getLogger(__name__)
Scores = npt.NDArray[np.float32]
DoorDecision = Callable[[Scores, Scores, Policy], scoring.Decision]


def like_rules(settings: Settings, encoder: Encoder, lock_threshold: float | None, scorer: Scorer) -> Policy:
    """When two voiceprints at a lock count as like each other. On normalised scores, the encoder's own rules: a
    lock's threshold there is only a raw gate, which an owner moving it between two reads of ``not_scored_at`` could
    bisect to the cosine between two stored voiceprints (attack run 24); a stricter door's gate still decides whom
    an utterance passes as. On raw cosines, the lock's (its threshold may be under the default: two voices passing
    as each other there would be ambiguous at it; between the floor and the default an owner can still bisect)."""
    return policy(settings, encoder, None if scorer.normalised else lock_threshold, normalised=scorer.normalised)


def decide(
    found: Candidates,
    raw: Scores,
    scores: Scores,
    rules: Policy,
    scorer: Scorer,
    decide_one: DoorDecision,
    like: Policy | None = None,
) -> scoring.Decision:
    """``decide_one`` (the door's decision) among the candidates ``found``, each scored ``raw``/``scores``, with each
    voiceprint left out that is like one going before it which this utterance passes too (``set_aside``); accepted
    only as someone allowed in now. Those who are not are still in the decision, their margin too: a guest's
    utterance outside her window just under her own voiceprint, over a member's copy of it, was let in as the member
    (attack run 25). A decision whose best is someone not allowed in now is answered as nobody's (nothing said of
    them, not asked again: ``Decision.not_allowed``). ``like``: when two voiceprints count as like each other
    (``like_rules``; else ``rules``). The decision's indices are into ``found``."""
    passes = rules.passing(raw, scores)
    aside = set_aside(found, scorer, like or rules, passes) if passes.any() else np.zeros(len(found.uids), np.bool_)
    if aside.any():  # how many, not whose: whose voices pass as whose is kept in the attempts log, not in every
        # verification's INFO line, where the operators' log readers saw who sounds like whom (attack run 94)
        logger.info(
            "voiceprints like one going before them at this lock, which the utterance passes too, were not scored",
            extra={"fields": {"voiceprints": int(aside.sum())}},
        )
    kept = np.flatnonzero(~aside)
    taken = decide_one(raw[kept], scores[kept], rules)
    decision = dataclasses.replace(
        taken,
        best_index=None if taken.best_index is None else int(kept[taken.best_index]),
        runner_up_index=None if taken.runner_up_index is None else int(kept[taken.runner_up_index]),
    )
    if decision.best_index is not None and not found.allowed[decision.best_index]:
        # its scores kept for the attempts log: deleting her voice data finds the attempt by them, and deletes its
        # fingerprint (it had been logged as nobody's, its fingerprint kept: a review of verify)
        return dataclasses.replace(decision, accepted=False, reason="below_threshold", not_allowed=True)
    return decision


def set_aside(
    found: Candidates, scorer: Scorer, rules: Policy, passes: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.bool_]:
    """Which of the candidates ``found`` (``(k,)``) yield to a like voiceprint going before them; with ``passes``
    (an utterance passes as each), only to one the utterance passes as too: a voiceprint that came first and is like
    a later member's, but that her voice does not reach (one made of two people's samples), kept her out (attack
    run 24)."""
    order = sorted(range(len(found.uids)), key=found.precedence.__getitem__)
    return _first_of_each_voice(found.prints, order, scorer, rules, passes)


def _first_of_each_voice(
    prints: scoring.Matrix,
    order: list[int],
    scorer: Scorer,
    rules: Policy,
    passes: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]:
    """Which of ``prints`` are set aside, taken in ``order``: each one like one kept before it (and, with
    ``passes``, one the utterance passes as). One set aside keeps nobody else out (of three voices each like the
    next, the first and the last are both scored)."""
    like = rules.passing(*scorer.pairwise(prints))
    if passes is not None:
        like &= passes[:, None]  # [i, j]: j yields to i only when the utterance passes as i
    aside = np.zeros(len(prints), np.bool_)
    kept: list[int] = []
    for j in order:
        if kept and like[kept, j].any():
            aside[j] = True
        else:
            kept.append(j)
    return aside


@dataclass(frozen=True)
class Standing:
    """Where a user's voiceprint stands at the locks they belong to (``standing``)."""

    enrolled: bool  # with the served model: scored at each of their locks, and yielding at ``aside_at``
    aside_at: list[str]  # the locks where it yields to a like voiceprint going before it
    compared: bool  # whether it was scored against anyone's at all (an answer about co-members' voices)


def standing(
    con: Connection, uid: str, encoder: Encoder, scorer: Scorer, settings: Settings, now: dt.datetime
) -> Standing:
    """Where ``uid``'s voiceprint stands: it yields at the locks where it passes, at the lock's threshold, as the
    voiceprint of an active co-member (allowed in now or not) that goes before it there and is kept (an utterance
    that passes as both is taken as theirs)."""
    found = voiceprints.came_before(con, uid, encoder.model_id, encoder.dim, now)
    if found.mine is None:  # no voiceprint of this model: none is scored anywhere (``needs_reenrollment``)
        return Standing(False, [], False)
    aside = []
    for lock_id, (threshold, prints) in found.at_locks.items():
        rules = like_rules(settings, encoder, threshold, scorer)
        everyone = np.vstack([prints, found.mine[None, :]])  # those before it, in their order, then it
        if _first_of_each_voice(everyone, list(range(len(everyone))), scorer, rules)[-1]:
            aside.append(lock_id)
    return Standing(True, aside, bool(found.at_locks))
