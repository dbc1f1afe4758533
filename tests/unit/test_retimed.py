"""Triplets of peaks, which a tempo change keeps: a known recording retimed with its pitch kept, or backwards, is
recognised; a recording's triplets are rebuilt from its stored landmarks exactly (no model, no service; real speech
from the corpus, sox for the time stretch)."""

from __future__ import annotations

import numpy as np
import pytest

from infra.voice import replay
from lockwise.voice.model import fingerprint as fp
from lockwise.voice.model import retimed
from tests.voices import spoken


def test_a_recordings_triplets_are_rebuilt_from_its_stored_landmarks() -> None:
    """Nothing new is stored: every peak a triplet takes is an anchor or a target of the landmarks."""
    for take in spoken("june", n=3, start=4):
        found = fp.peaks(take, 44100)
        stored = fp.landmarks(take, 44100)
        rebuilt, owner = retimed.of_recordings([stored])
        direct = retimed.triplets(found)
        assert len(direct) > 500 and not owner.any()
        np.testing.assert_array_equal(rebuilt[np.lexsort(rebuilt.T[::-1])], direct[np.lexsort(direct.T[::-1])])


@pytest.mark.parametrize(("tempo", "backwards"), [(1.1, False), (0.75, False), (1.3, False), (1.2, True)])
def test_a_take_with_its_tempo_changed_is_recognised_and_another_take_is_not(tempo: float, backwards: bool) -> None:
    """Attack run 64: a heard take at 1.1x tempo, pitch kept, opened the door 20 of 20; the landmarks' time gaps
    change with the tempo, and GE2E lets takes in at 0.6-1.5x."""
    take, other = spoken("allison", n=2, start=10)
    known = [fp.landmarks(take, 44100), fp.landmarks(other, 44100)]
    heard = fp.peaks(replay.played_at(take, 1.0, backwards, tempo, 44100), 44100)
    assert fp.match_scores(fp.hashed(heard), known)[0] < fp.REPLAY_Z  # the plain check misses it
    scores = retimed.tempo_scores(retimed.retimed(heard), known)
    assert scores[0] >= retimed.TEMPO_Z > scores[1]


def test_a_probe_past_the_pairs_a_decision_may_hold_is_taken_as_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each (probe triplet, equal recording triplet) pair is tried at every stretch its gaps allow: past
    ``MAX_PAIRS`` together the recordings are scored as replayed, not matched."""
    take, other = spoken("allison", n=2, start=12)
    known = [fp.landmarks(other, 44100)]
    probes = retimed.retimed(fp.peaks(take, 44100))
    assert np.isfinite(retimed.tempo_scores(probes, known)).all()
    monkeypatch.setattr(retimed, "MAX_PAIRS", 10)
    assert np.isinf(retimed.tempo_scores(probes, known)).all()
    assert not retimed.tempo_scores([], known).any() and not len(retimed.tempo_scores(probes, []))
    silence = fp.peaks(np.zeros(44100, dtype=np.float32), 44100)
    assert retimed.retimed(silence) == [] and not retimed.tempo_scores(probes, [fp.landmarks(np.zeros(4410), 44100)])
