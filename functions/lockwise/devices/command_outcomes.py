"""What a command that never reached its lock, or that the lock will refuse, says it failed for (``last_error``):
written by the devices function and by the relay's outbox, read by the acks' handling (``lock_events``), which still
takes a lock's ack of such a command: the lock may have acted on it all the same."""

from __future__ import annotations

from lockwise.core import shown_text

#: its issuer was removed, or their access narrowed, before it was sent (``commands.withdraw_unsent``, the relay's
#: outbox); a voice grant withdrawn so may have been acted on already, by the lock's HTTP answer
WITHDRAWN = "withdrawn: the issuer's access changed"
#: signed in an earlier second than a command the lock has carried out (or tried to): the lock refuses it without
#: an ack (docs/FIRMWARE.md, step 7); it read ``expired`` 30 s later although a newer one was done (attack run 13)
SUPERSEDED = "superseded: the lock carried out or tried a newer command first"
#: made before the lock was paired again: its old device may have carried it out (its ack refused with its
#: identity), and a re-send went to the new device, which opened the door a second time (attack run 48)
PAIRED_AGAIN = "paired again: made for the lock's previous device"
#: what an ack may still settle besides an open or expired command
SETTLED_BY_AN_ACK = (WITHDRAWN, SUPERSEDED)
#: how a lock's ``failed`` ack (it tried and could not: jammed) begins its ``last_error``; ``refused`` ones begin
#: ``"refused: "``
TRIED = "failed: "


def lock_said(result: str, reason: str | None) -> str:
    """The ``last_error`` of a command the lock answered ``failed`` or ``refused``, with the first ``REASON_MAX``
    characters of its reason, if any (docs/FIRMWARE.md; the whole cut to 200 kept 191 of the reason's), as text
    others read (``shown_text``); one the rule refuses is said to be so, not shown: it is shown to whoever reads the
    command, after the server's own words, and a newline and "withdrawn: the issuer's access changed" made up the
    server's reason, U+202E turned it around (attack run 118). The ack's outcome stands either way."""
    if reason is None or not reason.strip():
        return f"{result}: {NO_REASON}"
    said = shown_text.kept(reason, REASON_MAX)
    return f"{result}: {NOT_PLAIN if said is None else said}"


#: the characters of a lock's ``reason`` kept (docs/FIRMWARE.md)
REASON_MAX = 200
NO_REASON = "no reason given"
#: said for a reason the rule for text others read refuses
NOT_PLAIN = "(the lock's reason is not shown: it is not plain text)"
