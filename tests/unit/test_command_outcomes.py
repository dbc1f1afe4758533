"""What a command a lock answered ``failed`` or ``refused`` keeps of the lock's reason (docs/FIRMWARE.md)."""

from __future__ import annotations

from lockwise.devices import command_outcomes


def test_a_locks_reason_is_kept_to_its_first_200_characters_after_its_result() -> None:
    reason = "jammed " + "x" * 400
    assert command_outcomes.lock_said("failed", reason) == "failed: " + reason[:200]
    assert command_outcomes.lock_said("refused", "bad grant") == "refused: bad grant"
    assert command_outcomes.lock_said("refused", None) == "refused: no reason given"
    assert command_outcomes.lock_said("failed", "jammed").startswith(command_outcomes.TRIED)
