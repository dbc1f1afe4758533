"""What a command a lock answered ``failed`` or ``refused`` keeps of the lock's reason (docs/FIRMWARE.md)."""

from __future__ import annotations

from lockwise.devices import command_outcomes


def test_a_locks_reason_is_kept_to_its_first_200_characters_after_its_result() -> None:
    reason = "jammed " + "x" * 400
    assert command_outcomes.lock_said("failed", reason) == "failed: " + reason[:200]
    assert command_outcomes.lock_said("refused", "bad grant") == "refused: bad grant"
    assert command_outcomes.lock_said("refused", None) == "refused: no reason given"
    assert command_outcomes.lock_said("failed", "jammed").startswith(command_outcomes.TRIED)


def test_a_locks_reason_shows_no_control_or_format_character() -> None:
    """The reason is shown to the member who sent the command as the lock wrote it (docs/FIRMWARE.md), and was the
    one text of a lock's kept whole: line breaks, an ANSI escape and a right-to-left override made the app's line of
    the outcome read as others (attack run 120); each is U+FFFD, the rest as sent (emoji too)."""
    said = command_outcomes.lock_said("refused", "jammed\n\nrefused: \x1b[2Jowner\u202eok\u200b é 🔒")
    assert said == "refused: jammed\ufffd\ufffdrefused: \ufffd[2Jowner\ufffdok\ufffd é 🔒"
    assert len(said) == len("refused: ") + len("jammed\n\nrefused: \x1b[2Jowner\u202eok\u200b é 🔒")
