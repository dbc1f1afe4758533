"""Which of a voice's known recordings the altered search takes, and in what order (no database: ``Known`` as
``known_recordings.at_lock`` returns it)."""

from __future__ import annotations

import numpy as np
import pytest

from lockwise.voice import known_recordings as kr


def _print(n: int) -> np.ndarray:
    return np.full((1, 2), n, dtype=np.int32)


def test_rejected_attempts_cannot_push_out_the_recordings_that_opened_a_door(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack run 67: the voice's recordings were taken in the order the query returned them (this lock's attempts,
    newest first, then the other doors'), so a busy door never searched the other doors' recordings, and anyone at
    the door could push an accepted recording out with rejected attempts, which are the owner's when she is the only
    voice to be closest to. Now: enrollment samples, then the attempts that opened a door (here or elsewhere), then
    rejected ones, each newest first, whatever order the rows came in."""
    monkeypatch.setattr(kr, "ALTERED_COMPARED", 4)
    rows = [  # (print, voice, kind, expires)
        (1, "ann", kr.REJECTED, 500.0),
        (2, "ann", kr.REJECTED, 600.0),
        (3, "bob", kr.OPENED, 700.0),
        (4, "ann", kr.OPENED, 100.0),  # at another door, older than every rejected one
        (5, "ann", kr.ENROLLED, 0.0),
        (6, "ann", kr.OPENED, 300.0),
        (7, None, kr.REJECTED, 900.0),
    ]
    known = kr.Known([_print(r[0]) for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
    assert [int(p[0, 0]) for p in known.of("ann")] == [5, 6, 4, 2]
    assert [int(p[0, 0]) for p in known.of("bob")] == [3]
    assert known.of("carol") == []
