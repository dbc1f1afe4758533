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


def test_the_recordings_sharing_the_most_are_left_out_and_a_probe_too_dense_is_a_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack run 67: each (probe triplet, recording triplet) pair is tried at up to 110 stretches, and 489,000 pairs
    held 2.1 GB. Past ``MAX_PAIRS`` the recordings sharing the most are left out (0), not taken as replays (the
    recordings searched include rejected attempts, which anyone at the door makes); a probe past
    ``MAX_PROBE_TRIPLETS`` (not speech) is a replay of each."""
    takes = spoken("allison", n=4, start=12)
    known = [fp.landmarks(t, 44100) for t in takes]
    probes = retimed.retimed(fp.peaks(replay.played_at(takes[2], 1.0, False, 1.2, 44100), 44100))
    whole = retimed.tempo_scores(probes, known)
    assert whole[2] >= retimed.TEMPO_Z > max(np.delete(whole, 2))
    monkeypatch.setattr(retimed, "MAX_PAIRS", 10)  # every recording past it: all left out
    assert not retimed.tempo_scores(probes, known).any()
    assert not retimed.tempo_scores([], known).any() and not len(retimed.tempo_scores(probes, []))
    silence = fp.peaks(np.zeros(44100, dtype=np.float32), 44100)
    assert retimed.retimed(silence) == [] and not retimed.tempo_scores(probes, [fp.landmarks(np.zeros(4410), 44100)])
    monkeypatch.undo()
    monkeypatch.setattr(retimed, "MAX_PROBE_TRIPLETS", max(len(p) for p in probes) - 1)
    assert np.isinf(retimed.tempo_scores(probes, known)).all()
