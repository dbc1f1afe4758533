"""The relay's forwarder against a devices function it posts to: batches sized by bytes, payloads judged as posted,
and the periodic upkeep's failures seen (no services needed: a local HTTP server answers as the devices function
would; ``tests/e2e/test_relay.py`` runs the relay against the real one)."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from lockwise.devices import receipts, topics
from mqtt_relay.forwarder import PER_LOCK_WAITING, Event, Forwarder, receipts_of
from tests.http_stubs import StubHandler, serving
from tests.waiting import wait_for

batches: list[bytes] = []
upkeeps: list[bytes] = []  # each upkeep's body, as posted


@pytest.fixture
def devices() -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    """A devices function that answers each upkeep with the next of its answers (status, body), and takes every
    batch of events (kept in ``batches``, as posted)."""
    answers: list[tuple[int, bytes]] = []

    class Handler(StubHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            assert self.headers["X-LockWise-Service-Token"] == "token"
            if self.path == "/devices/relay/events":
                posted = self.body()
                batches.append(posted)
                taken = [{"outcome": "applied"} for _ in json.loads(posted)["events"]]
                self.answer(200, {"results": taken})
            else:
                assert self.path == "/devices/relay/flush"
                upkeeps.append(self.body())
                status, body = answers.pop(0)
                self.answer(status, body, content_type="application/json")

    batches.clear()
    upkeeps.clear()
    with serving(Handler) as url:
        yield url, answers


def test_a_failed_upkeep_is_kept_until_one_succeeds(devices: tuple[str, list[tuple[int, bytes]]]) -> None:
    """The relay did not read the upkeep's answer: a prune or an account check failing every time went unseen."""
    url, answers = devices
    forwarder = Forwarder(url, "token", timeout_s=5)
    failed = {"error": {"code": "database_unavailable", "message": "the database is not available"}}
    answers += [(503, json.dumps(failed).encode()), (502, b"<html>bad gateway</html>"), (200, b'{"written": 0}')]
    forwarder.flush_mirror()
    assert forwarder.upkeep_error == "HTTP 503 database_unavailable"
    forwarder.flush_mirror()
    assert forwarder.upkeep_error == "HTTP 502 -"  # not the function's JSON: the status alone
    forwarder.flush_mirror()
    assert forwarder.upkeep_error is None and answers == []


def test_an_upkeep_that_left_access_due_is_asked_again(devices: tuple[str, list[tuple[int, bytes]]]) -> None:
    """Many access edges at one instant: the function's budget runs out and it says so; the relay asks again at
    once instead of at its next period. An answer without the field (an older function) or a failure: not again."""
    url, answers = devices
    forwarder = Forwarder(url, "token", timeout_s=5)
    answers += [
        (200, b'{"written": 3, "pending": 0, "access_due": true}'),
        (200, b'{"written": 0, "pending": 0, "access_due": false}'),
        (200, b'{"written": 0}'),
        (503, b'{"access_due": true}'),
    ]
    assert [forwarder.flush_mirror() for _ in range(4)] == [True, False, False, False]


def test_an_upkeep_tells_the_broker_start_once_known(devices: tuple[str, list[tuple[int, bytes]]]) -> None:
    """The function turns offline the locks whose connection it heard of before the broker started; until the relay
    knows the broker's uptime (a live one on its connection), its upkeep has no body, as before the field."""
    url, answers = devices
    forwarder = Forwarder(url, "token", timeout_s=5)
    answers += [(200, b'{"written": 0}')] * 4
    forwarder.flush_mirror(None)
    forwarder.flush_mirror(125.5)
    sent = json.loads(upkeeps[1])
    assert upkeeps[0] == b"" and sent.pop("broker_uptime_s") == 125.5 and abs(sent.pop("sent_at") - time.time()) < 5
    assert sent == {}
    # and the broker's run, read from its plugin (an order: no time needed), with or without the uptime
    forwarder.flush_mirror(None, 1764840000123456)
    forwarder.flush_mirror(130.0, 1764840000123456)
    assert json.loads(upkeeps[2]) == {"broker_run": 1764840000123456}
    sent = json.loads(upkeeps[3])
    assert sent.pop("sent_at") and sent == {"broker_uptime_s": 130.0, "broker_run": 1764840000123456}


def test_an_event_carries_the_broker_run_it_was_published_in() -> None:
    """The broker's plugin tags each lock message with its run; the event posted carries it (none when untagged)."""
    tagged = Event("lockwise/lk/status", "online 7", lambda: None, 1764840000123456)
    assert json.loads(tagged.wire) == {"topic": "lockwise/lk/status", "payload": "online 7", "run": 1764840000123456}
    assert json.loads(Event("lockwise/lk/status", "online 7", lambda: None).wire) == {
        "topic": "lockwise/lk/status",
        "payload": "online 7",
    }


def test_an_unreachable_devices_function_is_an_upkeep_error() -> None:
    forwarder = Forwarder("http://127.0.0.1:9", "token", timeout_s=2)  # the discard port: nothing listens
    forwarder.flush_mirror()
    assert forwarder.upkeep_error == "ConnectionError"


def test_a_payload_is_judged_by_its_size_as_posted_and_batches_by_their_bodies(
    devices: tuple[str, list[tuple[int, bytes]]],
) -> None:
    """Attack run: 64 KiB messages of emoji (16,334 characters, under the cap then counted in characters) were posted
    with every character escaped to 12 bytes, a batch of 500 made 98 MB, which the function refused whole (or reset),
    and every lock's events waited behind it. Now the body is UTF-8 as it is, a payload over the cap in posted bytes
    is dropped before it is queued, and a batch is cut to bodies the function takes."""
    url, _ = devices
    told: list[int] = []  # the relay is told of each batch taken (receipts; it wakes its delivery round for reports)
    forwarder = Forwarder(url, "token", batch=500, timeout_s=10, on_taken=lambda events: told.append(len(events)))
    acked: list[str] = []
    smile = "\U0001f600"  # 4 bytes in UTF-8; 12 as a JSON escape pair
    under = smile * (topics.MAX_PAYLOAD_BYTES // 4 - 1)  # fits as posted: 16,380 bytes and its quotes
    over = smile * (topics.MAX_PAYLOAD_BYTES // 4 + 1)  # as many characters as the cap allows a quarter of
    assert len(over) < topics.MAX_PAYLOAD_BYTES
    forwarder.submit(Event("lockwise/big/state", over, lambda: acked.append("over")))
    assert forwarder.dropped == 1 and acked == ["over"] and forwarder.queue.empty()  # never queued, acked
    for i in range(600):  # forty locks' lines (each holds 16 payloads at the cap), taken in turn
        lock = f"lock{i % 40}"
        forwarder.submit(Event(f"lockwise/{lock}/state", under, functools.partial(acked.append, str(i))))
    forwarder.start()
    try:
        wait_for(lambda: len(acked) == 601, timeout=30, what="every event posted and acknowledged")
    finally:
        forwarder.stop(drain_timeout_s=5)
    assert sorted(acked[1:], key=int) == [str(i) for i in range(600)] and forwarder.flooded == 0  # each once
    assert len(batches) >= 3 and all(len(body) <= topics.MAX_BATCH_BYTES for body in batches)
    assert smile.encode() in batches[0] and b"\\ud83d" not in batches[0]  # UTF-8 as it is, not escaped
    posted = [json.loads(body)["events"] for body in batches]
    assert sum(len(events) for events in posted) == 600
    assert told[0] == 1 and sum(told) == 601 and len(told) == len(batches) + 1  # the oversized one too: for good
    assert all(event["payload"] == under for events in posted for event in events)


def test_a_locks_reports_and_acks_are_named_for_its_receipts_and_its_status_is_not() -> None:
    """A lock keeps each state report and ack until a receipt names it (docs/FIRMWARE.md, "Receipts"): the relay
    names them by the bytes as published (a payload that is not UTF-8 too), grouped by lock, in order."""
    raw = b'{"state":"locked","ts":1767225601.25,"note":"\xff"}'
    events = [
        Event.of(topics.state("L1"), raw, lambda: None, None),
        Event.of(topics.acks("L2"), b'{"id":"c","nonce":"n","result":"ok"}', lambda: None, None),
        Event.of(topics.status("L1"), b"online 7", lambda: None, None),
        Event.of(topics.acks("L1"), b"{}", lambda: None, None),
    ]
    assert events[0].digest == receipts.digest(raw) and "\ufffd" in events[0].payload  # named by its bytes
    assert events[2].digest == ""  # a status is not kept (the next connection's online says it again)
    assert receipts_of(events) == {"L1": [receipts.digest(raw), receipts.digest(b"{}")], "L2": [events[1].digest]}
    assert receipts_of([Event.of("elsewhere/x", b"x", lambda: None, None)]) == {}


def test_an_event_dropped_for_good_is_told_and_a_floods_is_not(devices: tuple[str, list[tuple[int, bytes]]]) -> None:
    """An event the function can never take (oversized) gets its receipt, so its lock stops sending it; one dropped
    because its lock's line is full does not: the lock sends it again later."""
    url, _ = devices
    told: list[Event] = []
    forwarder = Forwarder(url, "token", on_taken=told.extend)
    big = Event.of(topics.state("L1"), b"x" * (topics.MAX_PAYLOAD_BYTES + 1), lambda: None, None)
    forwarder.submit(big)
    assert told == [big]
    for i in range(PER_LOCK_WAITING + 1):  # not started: the line fills
        forwarder.submit(Event.of(topics.state("L2"), f'{{"ts":{i}}}'.encode(), lambda: None, None))
    assert forwarder.flooded == 1 and told == [big]


def test_a_locks_oversized_messages_are_not_logged_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    """A lock publishing messages over the cap as posted (the broker takes 64 KiB, the function 16,384 bytes) at the
    broker's pace of 20 a second had each logged as a WARNING line of its own, 265 bytes: 1.7M lines, 0.46 GB of
    Cloud Logging a day a lock, unpaced (attack run 110). Counted, and logged at the first and every 1,000th, as a
    flood's are; each still dropped and told."""
    told: list[Event] = []
    forwarder = Forwarder("http://127.0.0.1:9", "token", on_taken=told.extend)
    with caplog.at_level(logging.WARNING, logger="mqtt_relay.forwarder"):
        for i in range(2_001):
            payload = b"x" * (topics.MAX_PAYLOAD_BYTES + 1 + i)  # each its own message
            forwarder.submit(Event.of(topics.state("L1"), payload, lambda: None, None))
    assert forwarder.dropped == 2_001 and len(told) == 2_001
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["lock event dropped"] * 3


def test_a_receipt_names_messages_by_digest_a_few_dozen_a_message_and_is_never_a_command() -> None:
    names = [receipts.digest(f"report {i}".encode()) for i in range(70)]
    assert len(set(names)) == 70 and all(len(name) == 22 and "=" not in name for name in names)
    assert receipts.digest(b"report 1") == names[1]  # the same bytes, the same name
    sent = receipts.messages([*names, names[0]])  # each named once
    assert [len(receipts.read(message) or []) for message in sent] == [32, 32, 6]
    assert [name for message in sent for name in receipts.read(message) or []] == names
    assert all(len(message) < 1024 for message in sent)
    assert receipts.messages([]) == []
    command = json.dumps({"cmd": "{}", "sig": "AAAA", "receipt": names[:1]}).encode()
    for not_one in (command, b"not json", b"[1]", b'{"receipt": "x"}', b"\xff\xfe", b'{"cmd": "x"}'):
        assert receipts.read(not_one) is None, not_one
    assert receipts.read(b'{"receipt": ["a", 1, null]}') == ["a"]


def test_a_copy_that_comes_while_its_first_waits_is_not_queued_and_is_acknowledged_only_with_it(
    devices: tuple[str, list[tuple[int, bytes]]],
) -> None:
    """Attack run 30: with the devices function away for an hour, a lock sending again what no receipt named filled
    its line with 17-19 copies of each message: a copy of one still waiting is not queued. Attack run 31: acknowledged
    at once, a copy the broker redelivered (a resumed or drained session) left the message in the relay's memory
    alone, and a relay restart lost it: a copy is acknowledged only once its first is taken. Once it is, a copy is
    forwarded again (the lock did not get the receipt)."""
    url, _ = devices
    forwarder = Forwarder(url, "token")
    acked: list[str] = []
    payload = b'{"state":"locked","ts":1767225601}'
    forwarder.submit(Event.of(topics.state("L1"), payload, lambda: acked.append("first"), None))
    forwarder.submit(Event.of(topics.state("L1"), payload, lambda: acked.append("copy"), None, redelivered=True))
    forwarder.submit(Event.of(topics.state("L1"), payload, lambda: acked.append("copy 2"), None, redelivered=True))
    forwarder.submit(Event.of(topics.state("L2"), payload, lambda: acked.append("other lock"), None))
    forwarder.submit(Event.of(topics.status("L1"), b"online 7", lambda: acked.append("status"), None))
    forwarder.submit(
        Event.of(topics.status("L1"), b"online 7", lambda: acked.append("status again"), None, redelivered=True)
    )
    assert acked == [] and forwarder.repeated == 2 and forwarder.queue.qsize() == 4  # nothing taken, none acked
    forwarder.start()
    try:
        wait_for(lambda: len(acked) == 6, what="the four queued events posted, and the copies with the first")
        assert acked.index("copy") > acked.index("first") and acked.index("copy 2") > acked.index("first")
        forwarder.submit(Event.of(topics.state("L1"), payload, lambda: acked.append("after"), None))
        wait_for(lambda: "after" in acked, what="a copy after the first was taken, forwarded")
    finally:
        forwarder.stop(drain_timeout_s=5)
    assert forwarder.repeated == 2 and sum(len(json.loads(body)["events"]) for body in batches) == 5


def test_a_copy_the_lock_sent_again_is_acknowledged_at_once_and_only_a_redelivery_waits_for_its_first(
    devices: tuple[str, list[tuple[int, bytes]]],
) -> None:
    """Attack run 44: a lock sent one message 120,000 times; each copy was held unacknowledged with the first until
    the relay's window of unacknowledged messages was all its (the broker sent every lock's events after them, 15 s
    late) and nothing counted a flood. A copy the lock sent again is its own delivery, with its own packet id:
    acknowledged at once, its first still held. One the broker redelivered (DUP) may carry the first's packet id, and
    waits for it (attack run 31)."""
    url, _ = devices
    forwarder = Forwarder(url, "token")
    acked: list[str] = []
    payload = b'{"state":"locked","ts":1767225601}'
    forwarder.submit(Event.of(topics.state("L1"), payload, lambda: acked.append("first"), None, mid=7))
    for i in range(1000):
        forwarder.submit(Event.of(topics.state("L1"), payload, functools.partial(acked.append, f"copy {i}"), None))
    forwarder.submit(Event.of(topics.state("L1"), payload, lambda: acked.append("redelivered"), None, redelivered=True))
    # a broker that crashed before it saved the first as sent sends it again without DUP, with its packet id (a
    # review): held too
    forwarder.submit(Event.of(topics.state("L1"), payload, lambda: acked.append("its own id"), None, mid=7))
    assert acked == [f"copy {i}" for i in range(1000)] and forwarder.repeated == 1002
    assert forwarder.queue.qsize() == 1  # the first alone is queued
    forwarder.start()
    try:
        wait_for(lambda: "its own id" in acked, what="the first taken, its redelivered copies acknowledged with it")
        assert acked.index("first") < acked.index("redelivered") and acked.index("first") < acked.index("its own id")
    finally:
        forwarder.stop(drain_timeout_s=5)


def test_a_message_redelivered_at_each_reconnect_is_acknowledged_once(
    devices: tuple[str, list[tuple[int, bytes]]],
) -> None:
    """While the devices function is away, a resumed session redelivers every message it holds with its packet id at
    each reconnect: each copy's ack was kept with its first, up to the session's 4,000 unacknowledged messages at
    every reconnect, for as long as the function stayed away, and each was sent in the end (attack run 114: 1,000
    redeliveries, 1,001 acks of one packet id). One delivery is acknowledged once; another session's (a drained
    one's) still is, with it."""
    url, _ = devices
    forwarder = Forwarder(url, "token")
    acks: list[tuple[str, int, int]] = []

    def ack(session: str, mid: int, qos: int) -> None:
        acks.append((session, mid, qos))

    payload = b'{"state":"locked","ts":1767225601}'
    forwarder.submit(Event.of(topics.state("L1"), payload, functools.partial(ack, "relay", 7, 1), None, mid=7))
    for _ in range(1000):  # the function away, the broker reconnecting
        redelivered = functools.partial(ack, "relay", 7, 1)
        forwarder.submit(Event.of(topics.state("L1"), payload, redelivered, None, redelivered=True, mid=7))
    drained = functools.partial(ack, "drained", 3, 1)
    forwarder.submit(Event.of(topics.state("L1"), payload, drained, None, redelivered=True, mid=3))
    assert forwarder.repeated == 1001 and forwarder.queue.qsize() == 1
    forwarder.start()
    forwarder.stop(drain_timeout_s=5)  # once the first is taken and its acks are made
    assert sorted(acks) == [("drained", 3, 1), ("relay", 7, 1)]


def test_a_200_that_is_not_the_functions_answer_keeps_the_batch() -> None:
    """A proxy's page, or a wrong URL answering 200: nothing says the events were committed, so they are neither
    acknowledged nor told (their locks would forget them); the batch is posted again."""
    bodies = [b"<html>captive portal</html>", b'{"results": []}', b'{"results": "x"}']

    class Handler(StubHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            posted = json.loads(self.body())
            self.answer(200, bodies.pop(0) if bodies else {"results": [{"outcome": "applied"}] * len(posted["events"])})

    told: list[Event] = []
    acked: list[int] = []
    with serving(Handler) as url:
        forwarder = Forwarder(url, "token", on_taken=told.extend)
        forwarder.submit(Event.of(topics.acks("L1"), b'{"id":"c"}', lambda: acked.append(1), None))
        forwarder.start()
        try:
            wait_for(lambda: acked, timeout=15, what="the batch taken once the function answers")
            assert not bodies and len(told) == 1 and forwarder.forwarded == 1 and forwarder.last_error is None
        finally:
            forwarder.stop(drain_timeout_s=5)


def test_a_redirect_is_not_followed_with_the_service_token() -> None:
    """Attack run 89: the relay's posts followed a devices URL's redirect (a custom domain, a load balancer, a moved
    service), and requests sends a custom header on to another host: the service token went to whatever the
    redirect named. A redirect is an answer the relay does not take: the events stay queued, the upkeep fails."""
    seen: list[dict[str, str]] = []

    class Elsewhere(StubHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.body()
            seen.append(dict(self.headers))
            self.answer(200, {"access_due": False, "results": [{"outcome": "applied"}]})

    with serving(Elsewhere) as elsewhere:
        other = elsewhere.replace("127.0.0.1", "localhost")

        class Redirecting(StubHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.body()
                self.answer(307, b"", headers={"Location": other + self.path})

        with serving(Redirecting) as url:
            forwarder = Forwarder(url, "the-service-token", timeout_s=5, identity=lambda: {"Authorization": "Bearer x"})
            forwarder.flush_mirror()
            assert forwarder.upkeep_error is not None and forwarder.upkeep_error.startswith("HTTP 307")
            acked: list[str] = []
            forwarder.submit(Event("lockwise/lk/state", "{}", lambda: acked.append("taken")))
            forwarder.start()
            try:
                wait_for(lambda: forwarder.last_error == "HTTP 307", timeout=10, what="the batch's redirect refused")
            finally:
                forwarder.stop(drain_timeout_s=1)
    assert seen == [] and acked == []  # nothing reached the redirect's target, and the event was not taken


def test_an_upkeep_that_raises_is_tried_again_not_the_upkeeps_end() -> None:
    """Attack run 96: an error escaping one upkeep (the broker's start read while paho's thread forgot it, a
    TypeError) ended the upkeep's thread for good, the health report none the wiser: the app's view, guests' windows
    and the offline sweeps stopped until the relay restarted. It is logged, and the next upkeep runs at its time."""
    from types import SimpleNamespace

    from mqtt_relay.broker_start import BrokerStart
    from mqtt_relay.relay import Relay

    stopping = threading.Event()
    calls: list[float | None] = []

    def flush_mirror(uptime_s: float | None, run: int | None) -> bool:
        calls.append(uptime_s)
        if len(calls) == 1:
            raise TypeError("unsupported operand type(s) for -: 'float' and 'NoneType'")
        stopping.set()
        return False

    relay = SimpleNamespace(
        stopping=stopping,
        forwarder=SimpleNamespace(flush_mirror=flush_mirror),
        broker_start=BrokerStart(),
        settings=SimpleNamespace(flush_every_s=0.01),
        _certificate=lambda: {"ok": True},
    )
    Relay._upkeep(relay)  # type: ignore[arg-type]  # noqa: SLF001 - the loop alone, on this thread
    assert len(calls) == 2


def test_an_upkeep_whose_identity_token_fails_is_a_failed_upkeep(caplog: pytest.LogCaptureFixture) -> None:
    """Attack run 104: the identity token's fetch failing otherwise than as an OSError (the metadata server's answer
    cut off: http.client.IncompleteRead) escaped the upkeep, which the upkeep's loop logged as an ERROR no metric
    counts, the health report saying the upkeep was ok, as often as it failed. It is a failed upkeep: in the
    health report and in the line the ``lockwise_relay_upkeep_failed`` metric counts."""
    import http.client

    def identity() -> dict[str, str]:
        raise http.client.IncompleteRead(b"eyJ")

    forwarder = Forwarder("http://127.0.0.1:9", "token", timeout_s=2, identity=identity)
    with caplog.at_level(logging.WARNING, logger="mqtt_relay.forwarder"):
        assert forwarder.flush_mirror() is False
    assert forwarder.upkeep_error == "IncompleteRead"
    assert [r.getMessage() for r in caplog.records] == ["devices upkeep failed; will retry"]


def test_an_empty_message_is_acknowledged_and_never_posted() -> None:
    """An empty message deletes what its topic kept: a relay's clearing of an identity no lock uses any more
    (``mqtt_relay.retired``), delivered to the relays' own subscriptions, or a lock's. Each was posted and refused as an
    unknown lock's, or a malformed one, and kept in lock_event_rejects (attack run 131)."""
    told: list[Event] = []
    forwarder = Forwarder("http://127.0.0.1:9", "token", on_taken=told.extend)  # never started: nothing is posted
    acked: list[str] = []
    for topic in (topics.status("gone"), topics.state("gone"), topics.acks("gone")):
        forwarder.submit(Event.of(topic, b"", functools.partial(acked.append, topic), None))
    assert acked == [topics.status("gone"), topics.state("gone"), topics.acks("gone")]
    assert forwarder.queue.qsize() == 0 and forwarder.cleared == 3 and told == []
    forwarder.submit(Event.of(topics.status("live"), b"online 1", lambda: None, None))
    assert forwarder.queue.qsize() == 1
