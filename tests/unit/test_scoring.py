"""Cosine scoring, the decision rule and enrollment agreement (numpy only)."""

from __future__ import annotations

import doctest
import itertools
from typing import Any

import numpy as np
import pytest

from lockwise.voice import scoring


def test_doctests() -> None:
    result = doctest.testmod(scoring)
    assert result.attempted >= 3 and result.failed == 0  # a runner that found no example would pass on nothing


def unit(*values: float) -> np.ndarray:
    return scoring.normalise(np.array(values, dtype=np.float32))


def test_scores_are_cosines_in_one_matrix_product() -> None:
    prints = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 0)])
    scores = scoring.cosine_scores(unit(1, 0, 0), prints)
    np.testing.assert_allclose(scores, [1.0, 0.0, np.sqrt(0.5)], atol=1e-6)
    with pytest.raises(ValueError):
        scoring.cosine_scores(unit(1, 0), prints)


def test_decision_needs_threshold_and_margin() -> None:
    assert scoring.decide(np.array([], np.float32), 0.5, 0.1).reason == "no_candidates"
    assert scoring.decide(np.array([0.4, 0.1], np.float32), 0.5, 0.1).reason == "below_threshold"
    ambiguous = scoring.decide(np.array([0.80, 0.75], np.float32), 0.5, 0.1)
    assert not ambiguous.accepted and ambiguous.reason == "ambiguous"
    ok = scoring.decide(np.array([0.3, 0.9, 0.5], np.float32), 0.5, 0.1)
    assert ok.accepted and ok.best_index == 1 and ok.runner_up == pytest.approx(0.5)
    assert ok.runner_up_index == 2  # whose voiceprint the runner-up score is (the erasure scrubs by it)
    assert scoring.decide(np.array([0.9], np.float32), 0.5, 0.1).runner_up_index is None


def test_bytes_round_trip_and_dimension_checks() -> None:
    m = np.random.default_rng(0).standard_normal((3, 192)).astype(np.float32)
    np.testing.assert_array_equal(scoring.from_bytes(scoring.to_bytes(m), 192), m)
    with pytest.raises(ValueError):
        scoring.from_bytes(b"\0" * 100, 192)


def test_voiceprint_and_agreement_find_the_outlier() -> None:
    samples = np.stack([unit(1, 0.1, 0), unit(1, 0, 0.1), unit(0, 0, 1)])
    lowest, outlier = scoring.agreement(samples)
    assert outlier == 2 and lowest < 0.2
    vp = scoring.voiceprint(samples[:2])
    assert abs(float(np.linalg.norm(vp)) - 1) < 1e-6 and vp[0] > 0.9


def test_two_voices_takes_split_apart_where_each_pair_agrees() -> None:
    """Three takes near one voice and two near another (cosine 0.78): every pair agrees over 0.6, and the two
    groups' voiceprints at 0.78; one voice's five takes split no lower than their spread. Every split
    is the brute force's (each group of two or more), and twenty samples, past weighing every split, are split by
    two-means from seeds (attack run 123)."""
    rng = np.random.default_rng(0)
    a, b = unit(1, 0, 0, 0), unit(1, 0.8, 0, 0)

    def near(v: Any, k: int) -> Any:
        return scoring.normalise(v + 0.03 * rng.standard_normal((k, 4)))

    mixed = np.concatenate([near(a, 3), near(b, 2)])[[0, 3, 1, 4, 2]]
    assert scoring.agreement(mixed)[0] > 0.6
    split, group = scoring.split_agreement(mixed)
    assert group == [1, 3] and abs(split - 0.781) < 0.03
    honest = near(a, 5)
    assert scoring.split_agreement(honest)[0] > 0.99
    for samples in (mixed, honest, near(a, 7)):
        n = len(samples)
        worst = min(
            float(
                scoring.voiceprint(samples[list(g)]) @ scoring.voiceprint(samples[[i for i in range(n) if i not in g]])
            )
            for k in range(2, n - 1)
            for g in itertools.combinations(range(n), k)
        )
        assert abs(scoring.split_agreement(samples)[0] - worst) < 1e-5
    assert scoring.split_agreement(mixed[:3]) == (1.0, [])  # no two groups of two
    twenty = np.concatenate([near(a, 12), near(b, 8)])
    assert sorted(scoring.split_agreement(twenty)[1]) == list(range(12, 20))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_score_that_is_not_a_number_never_opens_the_door(bad: float) -> None:
    """NaN >= threshold and NaN < threshold are both False: an unguarded NaN best score was accepted (attack run).
    inf is no score either: whatever made it is not a voice the model measured."""
    alone = scoring.decide(np.array([bad], dtype=np.float32), 0.5, 0.0)
    assert not alone.accepted and alone.reason == "below_threshold"
    beside = scoring.decide(np.array([0.2, bad, 0.3], dtype=np.float32), 0.5, 0.05)
    assert not beside.accepted
    genuine = scoring.decide(np.array([bad, 0.9, 0.1], dtype=np.float32), 0.5, 0.05)
    assert genuine.accepted and genuine.best_index == 1  # the others' scores still decide


def test_normalised_scores_pass_nobody_whose_cosine_is_under_the_encoders_floor() -> None:
    """A cohort of another channel than the probe's inflates normalised scores (README "Wideband speech"): the door
    also wants the best voiceprint's raw cosine at the encoder's floor, or at a lock's own threshold above it."""
    from types import SimpleNamespace

    from lockwise.core.config import Settings
    from lockwise.voice.model.encoder import CALIBRATIONS, policy
    from lockwise.voice.verification import decide

    settings = Settings.from_env({"LOCKWISE_MODE": "local"}, component="verify")
    ge2e, encoder = CALIBRATIONS["ge2e"], SimpleNamespace(name="ge2e")
    rules = policy(settings, encoder, normalised=True)
    assert rules.raw_gate == ge2e.floor and rules.threshold == ge2e.norm_threshold
    high = np.array([9.0, 1.0], np.float32)  # far above the normalised threshold, far ahead of the runner-up
    assert decide(np.array([ge2e.floor + 1e-4, 0.1], np.float32), high, rules).accepted
    assert not decide(np.array([np.nan, 0.1], np.float32), high, rules).accepted  # a NaN cosine passes no gate
    below = decide(np.array([ge2e.floor - 0.01, 0.1], np.float32), high, rules)
    assert not below.accepted and below.reason == "below_threshold" and below.best_index == 0
    stricter = policy(settings, encoder, 0.95, normalised=True)
    assert stricter.raw_gate == 0.95 and not decide(np.array([0.94, 0.1], np.float32), high, stricter).accepted
    looser = policy(settings, encoder, 0.5, normalised=True)
    assert looser.raw_gate == ge2e.floor  # a lock cannot lower it
    raw = policy(settings, encoder)
    assert raw.raw_gate is None and raw.threshold == ge2e.threshold  # raw cosines: the threshold is the gate


@pytest.mark.parametrize("name", ["ge2e", "ecapa-tdnn", "an encoder without a calibration"])
@pytest.mark.parametrize("normalised", [False, True])
def test_an_operators_threshold_under_its_scales_floor_refuses_to_start(name: str, normalised: bool) -> None:
    """Attack run 89: an operator's ``LOCKWISE_VOICE_THRESHOLD`` replaced the encoder's with no floor (a lock's own
    is floored): 0.045 for 0.45, 0 or -1 on raw cosines, or GE2E's raw 0.877 set on the normalised scale, opened
    every door without its own threshold to nearly any voice. Under the scale's floor it refuses to start."""
    from types import SimpleNamespace

    from lockwise.core.config import Settings
    from lockwise.voice.model.encoder import CALIBRATIONS, FALLBACK, NORM_FLOOR, check_operator_threshold
    from lockwise.voice.model.model_files import ModelError

    encoder: Any = SimpleNamespace(name=name)
    floor = NORM_FLOOR if normalised else CALIBRATIONS.get(name, FALLBACK).floor
    for low in ("-1", "0", "0.045", str(round(floor - 0.001, 3))):
        settings = Settings.from_env({"LOCKWISE_VOICE_THRESHOLD": low}, component="verify")
        with pytest.raises(ModelError, match="below the floor"):
            check_operator_threshold(settings, encoder, normalised=normalised)
    for fine in (str(floor), str(floor + 0.5), ""):  # "": the calibration's own
        settings = Settings.from_env({"LOCKWISE_VOICE_THRESHOLD": fine}, component="verify")
        check_operator_threshold(settings, encoder, normalised=normalised)


def test_rows_no_cosine_can_be_taken_with_are_named() -> None:
    prints = np.ones((5, 4), np.float32)
    prints[1, 2], prints[2, 0], prints[3] = np.nan, -np.inf, 0.0
    assert scoring.unusable_rows(prints) == [1, 2, 3]
    assert scoring.unusable_rows(np.full((2, 192), 3e38, np.float32)) == []  # large but a direction


def test_a_cosine_stays_within_one_whatever_the_scale() -> None:
    probe = np.linspace(-1, 1, 192).astype(np.float32)
    prints = np.stack([np.sign(probe) * np.float32(3e38), probe * np.float32(1e20), probe])
    scores = scoring.cosine_scores(probe, prints)
    assert np.all(np.abs(scores) <= 1.0) and scores[1] == pytest.approx(1.0) and scores[2] == pytest.approx(1.0)
    assert scoring.unusable_rows((probe * np.float32(1e-30))[None, :]) == [0]  # no direction left to score


def test_of_two_voiceprints_that_pass_as_each_other_only_the_one_going_first_is_scored() -> None:
    """The door's rule (``first_come``) on raw cosines: Alice came first; a copy of her voice (Mallory's, enrolled
    before she joined) came later. Alice speaking was ``ambiguous`` between the two; now the copy is not scored,
    whichever of the two scores best, and she is accepted as herself. The lock's owner goes before everyone, when
    she came too. A later voice unlike any earlier one is scored as before, and a door where nobody passes scores
    no voiceprint against another."""
    import datetime as dt
    from types import SimpleNamespace

    from lockwise.core.config import Settings
    from lockwise.devices.members import Membership
    from lockwise.voice import first_come
    from lockwise.voice.model.encoder import Scorer, policy
    from lockwise.voice.verification import decide
    from lockwise.voice.voiceprints import Candidates

    rules = policy(Settings.from_env({"LOCKWISE_MODE": "local"}, component="verify"), SimpleNamespace(name="ge2e"))
    day = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    alice, bob = unit(1, 0, 0, 0), unit(0, 1, 0, 0)
    copy = unit(1, 0.05, 0, 0)  # Alice's voice, other recordings
    uids = ["mallory", "alice", "bob"]
    members = [Membership("lock", uid, "member") for uid in uids]

    def at_lock(owner: str, *days: int, allowed: tuple[bool, ...] = (True, True, True)) -> Candidates:
        came = [day + dt.timedelta(days=d) for d in days]
        precedence = [(u != owner, t, u) for u, t in zip(uids, came, strict=True)]
        return Candidates(uids, np.stack([copy, alice, bob]), [], precedence, list(allowed), members)

    def named(at: Candidates, index: int | None) -> str | None:
        return None if index is None else at.uids[index]

    scorer = Scorer()
    found = at_lock("bob", 2, 0, 1)  # Mallory came last
    for probe, nearest in ((unit(1, 0.02, 0.1, 0), "alice"), (unit(1, 0.06, 0.1, 0), "mallory")):
        raw, scores = scorer.scores(probe, found.prints)
        everyone = decide(raw, scores, rules)  # all three scored
        assert everyone.reason == "ambiguous" and named(found, everyone.best_index) == nearest
        decision = first_come.decide(found, raw, scores, rules, scorer, decide)
        assert decision.accepted and named(found, decision.best_index) == "alice"
        assert named(found, decision.runner_up_index) == "bob"
    raw, scores = scorer.scores(unit(1, 0.02, 0.1, 0), found.prints)
    for owner, days, first in (("bob", (0, 2, 0), "mallory"), ("alice", (0, 2, 1), "alice")):
        decision = first_come.decide(at_lock(owner, *days), raw, scores, rules, scorer, decide)
        assert decision.accepted and named(found, decision.best_index) == first  # came first, or owns the lock
    raw, scores = scorer.scores(bob, found.prints)  # a later voice like no earlier one: scored as before
    assert named(found, first_come.decide(found, raw, scores, rules, scorer, decide).best_index) == "bob"
    assert first_come.set_aside(found, scorer, rules).tolist() == [True, False, False]
    # three voices each like the next, not the first like the last: one set aside keeps nobody else out
    turn = np.radians(25)  # cos 0.906 passes the threshold, twice the turn (cos 0.643) does not
    chain = np.stack([unit(np.cos(k * turn), np.sin(k * turn), 0, 0) for k in range(3)])
    assert rules.threshold < np.cos(turn) and np.cos(2 * turn) < rules.threshold
    came = [(True, day + dt.timedelta(days=k), u) for k, u in enumerate(uids)]
    in_turn = Candidates(uids, chain, [], came, [True] * 3, members)
    assert first_come.set_aside(in_turn, scorer, rules).tolist() == [False, True, False]
    # the first of two like voiceprints yields nothing to an utterance that does not pass as it (a voiceprint of
    # two people's samples came first: the later member's own voice does not reach it, and is hers: attack run 24)
    past_it = unit(np.cos(1.4 * turn), np.sin(1.4 * turn), 0.1, 0)  # passes as the second and the third
    raw, scores = scorer.scores(past_it, chain)
    assert not raw[0] >= rules.threshold and raw[1] >= rules.threshold
    passes = scores >= rules.threshold  # the second yields to nobody, the third to the second
    assert first_come.set_aside(in_turn, scorer, rules, passes).tolist() == [False, False, True]
    # one who may not come in now (a guest outside her window) keeps her voice from a copy that came after it: her
    # voice is nobody's who may come in (a member's copy let her in outside her window: attack run 24)
    outside = at_lock("bob", 2, 0, 1, allowed=(True, False, True))
    raw, scores = scorer.scores(unit(1, 0.02, 0.1, 0), outside.prints)
    refused = first_come.decide(outside, raw, scores, rules, scorer, decide)
    assert (refused.accepted, refused.reason, refused.not_allowed) == (False, "below_threshold", True)  # nobody's
    assert named(outside, refused.best_index) == "alice" and refused.best is not None  # her scores, for the log

    class Counting(Scorer):
        calls = 0

        def pairwise(self, prints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            Counting.calls += 1
            return super().pairwise(prints)

    raw, scores = scorer.scores(unit(0, 0, 0, 1), found.prints)  # nobody's voice
    assert first_come.decide(found, raw, scores, rules, Counting(), decide).reason == "below_threshold"
    assert Counting.calls == 0


def test_pairwise_scores_are_each_voiceprint_scored_as_a_probe_against_all() -> None:
    """``Scorer.pairwise`` (one product, each row's cohort statistics once) is ``scores`` row by row, AS-norm too."""
    from lockwise.voice.model.cohort import Cohort
    from lockwise.voice.model.encoder import Scorer

    rng = np.random.default_rng(7)
    prints = rng.standard_normal((6, 16)).astype(np.float32)
    cohort = Cohort(scoring.normalise(rng.standard_normal((40, 16))), top_k=5, model_id="test")
    for scorer in (Scorer(), Scorer(cohort)):
        raw, scores = scorer.pairwise(prints)
        for i in range(len(prints)):
            one_raw, one = scorer.scores(prints[i], prints)
            np.testing.assert_allclose(raw[i], one_raw, atol=1e-6)
            np.testing.assert_allclose(scores[i], one, atol=1e-5)
        assert scorer.normalised is (scorer.cohort is not None)


def test_voiceprints_set_aside_are_counted_in_the_log_not_named(caplog: pytest.LogCaptureFixture) -> None:
    """Whose voice passes as whose at a lock is the attempts log's, not every verification's INFO line: the uids of
    the voiceprints set aside were logged (attack run 94)."""
    import datetime as dt
    import logging
    from types import SimpleNamespace

    from lockwise.core.config import Settings
    from lockwise.devices.members import Membership
    from lockwise.voice import first_come
    from lockwise.voice.model.encoder import Scorer, policy
    from lockwise.voice.verification import decide
    from lockwise.voice.voiceprints import Candidates

    rules = policy(Settings.from_env({"LOCKWISE_MODE": "local"}, component="verify"), SimpleNamespace(name="ge2e"))
    day = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    uids = ["uid-mallory-7f3a", "uid-alice-19c2", "uid-bob-44d0"]
    came = [(True, day + dt.timedelta(days=d), u) for d, u in zip((2, 0, 1), uids, strict=True)]
    members = [Membership("lock", uid, "member") for uid in uids]
    prints = np.stack([unit(1, 0.05, 0, 0), unit(1, 0, 0, 0), unit(0, 1, 0, 0)])
    found = Candidates(uids, prints, [], came, [True] * 3, members)
    scorer = Scorer()
    raw, scores = scorer.scores(unit(1, 0.02, 0.1, 0), found.prints)
    with caplog.at_level(logging.INFO, logger="lockwise.voice"):
        assert first_come.decide(found, raw, scores, rules, scorer, decide).accepted
    logged = [r for r in caplog.records if "were not scored" in r.getMessage()]
    assert logged and logged[0].fields == {"voiceprints": 1}  # type: ignore[attr-defined]
    assert not any(uid in str(vars(r)) for r in caplog.records for uid in uids)
