"""One voice, one member at a door: of two voiceprints at a lock that pass as each other, only the one that goes
first there is scored: the lock's owner's, else the one that came to the lock first.

Enrollment refuses a voice that passes as a co-member's (409 ``voice_matches_member``), but only among the people
the user shares a lock with when they enroll, and only against voiceprints of the served model. Someone who enrolled
a member's recordings before sharing a lock with them, and was then invited to it, brought that member's voice to
the door twice: the two scored alike, the decision was ``ambiguous``, and the member stood outside their own door
(a review of attack run 20). Joining is the devices function's, which loads no voice code, so the rule is kept where
voices are scored.

Which goes first (``Candidates.precedence``):
- the lock's owner, always: after an encoder change (every voiceprint stale, none compared) or after deleting her
  voice data, a guest holding her recordings could enroll them before she enrolled again, and her voice opened her
  own door as the guest's, her enrollment refused (attack run 22). She may enroll a voice like a co-member's at the
  locks she owns (``enrollment.matches_a_neighbour``); theirs is then set aside there;
- else the voiceprint that came to the lock first: the later of the membership's start (an invitation accepted, or
  a membership brought back from its expiry: both start it again) and the enrollment (enrolling again starts it
  again). Ties go to the lower uid. Neither member can move theirs earlier: re-enrolling or joining again only
  makes it later. Between two members who are not the owner, whoever enrolls first after an encoder change keeps
  the voice (README: left).

Only when the best score reaches the threshold (nobody passes otherwise) are the candidates' voiceprints scored
against each other, in one product (``Scorer.pairwise``), and the decision taken again without those set aside:
an owner with a thousand copies of one voice at her door costs one (k, k) product, not k scorings each.
``set_aside_at`` tells a user the locks where their voiceprint is not scored (``GET /embed/enrollment``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable

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


def decide(
    found: Candidates, raw: Scores, scores: Scores, rules: Policy, scorer: Scorer, decide_one: DoorDecision
) -> scoring.Decision:
    """``decide_one`` (the door's decision) on the candidates ``found``, each scored ``raw``/``scores``, with every
    voiceprint that passes as one going before it left out. The decision's indices are into ``found``."""
    decision = decide_one(raw, scores, rules)
    if decision.best is None or not decision.best >= rules.threshold:  # nobody passes: nobody to keep apart
        return decision
    aside = set_aside(found, scorer, rules)
    if not aside.any():
        return decision
    logger.info(
        "voiceprints passing as one that goes before them at this lock were not scored",
        extra={"fields": {"user_uids": [found.uids[i] for i in np.flatnonzero(aside)]}},
    )
    kept = np.flatnonzero(~aside)
    taken = decide_one(raw[kept], scores[kept], rules)
    return dataclasses.replace(
        taken,
        best_index=None if taken.best_index is None else int(kept[taken.best_index]),
        runner_up_index=None if taken.runner_up_index is None else int(kept[taken.runner_up_index]),
    )


def set_aside(found: Candidates, scorer: Scorer, rules: Policy) -> npt.NDArray[np.bool_]:
    """Which of the candidates ``found`` pass, at this door, as a candidate that goes before them (``(k,)``)."""
    order = sorted(range(len(found.uids)), key=found.precedence.__getitem__)
    return _first_of_each_voice(found.prints, order, scorer, rules)


def _first_of_each_voice(
    prints: scoring.Matrix, order: list[int], scorer: Scorer, rules: Policy
) -> npt.NDArray[np.bool_]:
    """Which of ``prints`` are set aside, taken in ``order``: each one that passes as one kept before it. One set
    aside keeps nobody else out (of three voices each like the next, the first and the last are both scored)."""
    raw, scores = scorer.pairwise(prints)
    like = scores >= rules.threshold
    if rules.raw_gate is not None:
        like &= raw >= rules.raw_gate
    aside = np.zeros(len(prints), np.bool_)
    kept: list[int] = []
    for j in order:
        if kept and like[j, kept].any():
            aside[j] = True
        else:
            kept.append(j)
    return aside


def set_aside_at(
    con: Connection, uid: str, encoder: Encoder, scorer: Scorer, settings: Settings, now: dt.datetime
) -> list[str]:
    """The locks where ``uid``'s voiceprint is not scored (whenever those before it may open the door too): it
    passes, at the lock's threshold, as the voiceprint of a co-member that goes before it there and is scored."""
    found = voiceprints.came_before(con, uid, encoder.model_id, encoder.dim, now)
    if found.mine is None:  # no voiceprint of this model: none is scored anywhere (``needs_reenrollment``)
        return []
    aside = []
    for lock_id, (threshold, prints) in found.at_locks.items():
        rules = policy(settings, encoder, threshold, normalised=scorer.normalised)
        everyone = np.vstack([prints, found.mine[None, :]])  # those before it, in their order, then it
        if _first_of_each_voice(everyone, list(range(len(everyone))), scorer, rules)[-1]:
            aside.append(lock_id)
    return aside
