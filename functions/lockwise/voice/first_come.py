"""One voice, one member at a door: of two voiceprints at a lock that pass as each other, the one that came there
first is scored, the later one is not.

Enrollment refuses a voice that passes as a co-member's (409 ``voice_matches_member``), but only among the people
the user shares a lock with when they enroll. Someone who enrolled a member's recordings before sharing a lock with
them, and was then invited to it, brought that member's voice to the door twice: the two scored alike, the decision
was ``ambiguous``, and the member stood outside their own door (a review of attack run 20). Joining is the devices
function's, which loads no voice code, so the rule is kept where voices are scored.

A voiceprint *came to* a lock when both the membership and the voiceprint were there: the later of the
membership's start (an invitation accepted; a re-invitation after a removal starts it again) and the enrollment
(enrolling again starts it again). Ties go to the lower uid. Which voice came first is a fact neither member can
change afterwards: re-enrolling or being invited again only makes a voiceprint later.

``set_aside_at`` tells a user the locks where their voiceprint is not scored (``GET /embed/enrollment``).

Only the best and the runner-up can change a decision, so only they are checked, and only when the best reaches
the threshold (nobody passes otherwise): one or two extra scorings of a voiceprint against the candidates, at most
once each, and none at a door where nobody passes.
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
    voiceprint that passes as one which came to the lock before it left out. The decision's indices are into
    ``found``."""
    kept = list(range(len(found.uids)))
    checked: set[int] = set()
    while True:
        decision = decide_one(raw[kept], scores[kept], rules)
        suspects = [decision.best_index] if decision.best is not None and decision.best >= rules.threshold else []
        if decision.reason == "ambiguous":
            suspects.append(decision.runner_up_index)
        later = next(
            (i for i in suspects if i is not None and _came_after_its_like(found, kept[i], scorer, rules, checked)),
            None,
        )
        if later is None:
            return _into(decision, kept)
        logger.warning(
            "a voiceprint passes as one that came to this lock before it: not scored there",
            extra={"fields": {"user_uid": found.uids[kept[later]]}},
        )
        del kept[later]


def _came_after_its_like(found: Candidates, index: int, scorer: Scorer, rules: Policy, checked: set[int]) -> bool:
    """Whether candidate ``index`` passes, at this door, as a candidate that came to the lock before it (each
    candidate is checked once a decision)."""
    if index in checked:
        return False
    checked.add(index)
    mine = (found.arrived[index], found.uids[index])
    earlier = [i for i in range(len(found.uids)) if (found.arrived[i], found.uids[i]) < mine]
    if not earlier:
        return False
    raw, scores = scorer.scores(found.prints[index], found.prints[earlier])
    return any(rules.passes(float(c), float(s)) for c, s in zip(raw, scores, strict=True))


def _into(decision: scoring.Decision, kept: list[int]) -> scoring.Decision:
    """``decision``, taken among the ``kept`` candidates, with its indices into all of them."""
    return dataclasses.replace(
        decision,
        best_index=None if decision.best_index is None else kept[decision.best_index],
        runner_up_index=None if decision.runner_up_index is None else kept[decision.runner_up_index],
    )


def set_aside_at(
    con: Connection, uid: str, encoder: Encoder, scorer: Scorer, settings: Settings, now: dt.datetime
) -> list[str]:
    """The locks where ``uid``'s voiceprint is not scored (whenever the earlier member may open the door too): it
    passes, at the lock's threshold, as the voiceprint of a co-member that came to the lock before it."""
    found = voiceprints.came_before(con, uid, encoder.model_id, encoder.dim, now)
    if found.mine is None:  # no voiceprint of this model: none is scored anywhere (``needs_reenrollment``)
        return []
    aside = []
    for lock_id, (threshold, prints) in found.at_locks.items():
        rules = policy(settings, encoder, threshold, normalised=scorer.normalised)
        raw, scores = scorer.scores(found.mine, prints)  # as the door scores the later against the earlier
        if any(rules.passes(float(c), float(s)) for c, s in zip(raw, scores, strict=True)):
            aside.append(lock_id)
    return aside
