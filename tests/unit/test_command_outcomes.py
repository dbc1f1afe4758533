"""What a command a lock answered ``failed`` or ``refused`` keeps of the lock's reason (docs/FIRMWARE.md)."""

from __future__ import annotations

import pytest

from lockwise.devices import command_outcomes


def test_a_locks_reason_is_kept_to_its_first_200_characters_after_its_result() -> None:
    reason = "jammed " + "x" * 400
    assert command_outcomes.lock_said("failed", reason) == "failed: " + reason[:200]
    assert command_outcomes.lock_said("refused", "bad grant") == "refused: bad grant"
    assert command_outcomes.lock_said("refused", None) == "refused: no reason given"
    assert command_outcomes.lock_said("failed", "jammed").startswith(command_outcomes.TRIED)


@pytest.mark.parametrize(
    "reason",
    [
        "jammed\nwithdrawn: the issuer's access changed",  # the server's own words on a line of their own
        "bolt \u202edemmaj",  # turned around
        "\u3164",  # looks empty
        "x" + "\u0336" * 40,  # stacked over the lines around it
    ],
)
def test_a_locks_reason_that_would_mislead_its_reader_is_said_to_be_so_not_shown(reason: str) -> None:
    """Attack run 118: the reason is shown to whoever reads the command, after the server's own words."""
    assert command_outcomes.lock_said("failed", reason) == "failed: " + command_outcomes.NOT_PLAIN


def test_a_locks_reason_is_kept_in_one_spelling() -> None:
    assert command_outcomes.lock_said("refused", " Grant  expire\u0301 ") == "refused: Grant expir\u00e9"
    assert command_outcomes.lock_said("refused", "  ") == "refused: no reason given"
