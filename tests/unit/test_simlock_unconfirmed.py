"""The reference lock's rules for what it keeps until a receipt names it (``simlock.unconfirmed``, docs/FIRMWARE.md
"Receipts"), on a clock given by the test; ``tests/e2e/test_relay.py`` runs them against a broker killed -9."""

from __future__ import annotations

from lockwise.devices import receipts, topics
from simlock.unconfirmed import KEEP_AT_MOST, KEEP_FOR_S, RESEND_MAX_S, Unconfirmed

STATE, ACK = topics.state("L1"), topics.acks("L1")


def report(i: int) -> bytes:
    return f'{{"state":"locked","ts":{1767225600 + i}}}'.encode()


def test_reports_sent_at_every_turned_away_connection_never_push_out_an_ack() -> None:
    """Attack run 30: while no relay was connected the broker turned the lock away right after each CONNACK, the
    lock sent a report at each connection, and after 31 of them the ack a killed broker had lost was pushed out."""
    kept = Unconfirmed()
    kept.sent(ACK, b'{"id":"c","nonce":"n","result":"ok"}', 0.0)
    for i in range(KEEP_AT_MOST + 8):
        kept.sent(STATE, report(i), float(i))
    assert [k.topic for k in kept.kept.values()].count(ACK) == 1
    assert [k.payload for k in kept.kept.values() if k.topic == STATE] == [report(i) for i in range(8, 40)]


def test_after_a_connection_what_no_receipt_named_is_sent_again_once_and_then_only_on_evidence() -> None:
    kept = Unconfirmed(wait_s=10)
    for i in range(3):
        kept.sent(STATE, report(i), 0.0)
    assert kept.next_due() is None and kept.due(1000.0) == []  # connected all along, no receipt: the back-end is away
    kept.connected(100.0)  # a broker killed after its PUBACKs ends the connection
    assert kept.next_due() == 110.0 and kept.due(109.9) == []
    kept.named([receipts.digest(report(0))])  # taken meanwhile: not sent again
    assert [k.payload for k in kept.due(110.0)] == [report(1), report(2)]
    assert kept.sent_again == 2 and kept.receipted == 1
    assert kept.next_due() is None and kept.due(10_000.0) == []  # sent again once; no receipt since: not again


def test_a_message_a_later_ones_receipt_passed_over_is_sent_again_with_a_doubling_wait() -> None:
    """A receipt lost (QoS 0), or a flood's drop at the relay: the relay took a later message and not this one."""
    kept = Unconfirmed(wait_s=10)
    kept.sent(STATE, report(0), 0.0)
    kept.sent(STATE, report(1), 1.0)
    kept.named([receipts.digest(report(1))])
    assert kept.next_due() == 10.0 and [k.payload for k in kept.due(10.0)] == [report(0)]
    assert kept.next_due() is None  # sent again after the latest named one: no evidence yet that it went astray
    kept.sent(STATE, report(2), 11.0)
    kept.named([receipts.digest(report(2))])
    assert kept.next_due() == 30.0  # 20 s after its sending at 10: the wait doubled
    waits = []
    for _ in range(8):
        due = kept.next_due()
        assert due is not None
        waits.append(kept.kept[receipts.digest(report(0))].wait)
        kept.due(due)
        kept.sent(STATE, report(int(due)), due)
        kept.named([receipts.digest(report(int(due)))])
    assert waits[-1] == RESEND_MAX_S and waits[:3] == [20, 40, 80]
    kept.named([receipts.digest(report(0))])
    assert not kept.kept and kept.next_due() is None


def test_the_same_bytes_sent_again_are_kept_as_the_newest_and_nothing_is_kept_past_a_day() -> None:
    """Attack run 31: an ack published again (its command repeated) kept its old place, and was the next pushed out."""
    kept = Unconfirmed()
    acks = [f'{{"id":"c{i}","nonce":"n","result":"ok"}}'.encode() for i in range(KEEP_AT_MOST + 1)]
    for i, ack in enumerate(acks[:KEEP_AT_MOST]):
        kept.sent(ACK, ack, float(i))
    kept.sent(ACK, acks[0], 100.0)  # the first command repeated: its ack published again
    kept.sent(ACK, acks[KEEP_AT_MOST], 101.0)
    assert receipts.digest(acks[0]) in kept.kept and receipts.digest(acks[1]) not in kept.kept
    kept.connected(200.0)
    again = kept.due(KEEP_FOR_S + 50.0)  # those first sent more than a day before are forgotten, not sent
    assert [k.payload for k in again] == [acks[0], acks[KEEP_AT_MOST]] and len(kept.kept) == 2
