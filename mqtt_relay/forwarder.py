"""Lock events (state, acks, online/offline) from the broker to the devices function, acknowledged only after.

Messages arrive on paho's network thread and are queued; one worker posts them in batches to
``/devices/relay/events`` with the relay's service token and calls ``ack`` for each only when the function has
accepted the batch. If the relay dies first, the broker redelivers (persistent session, QoS 1): nothing is lost, and
the devices side is idempotent on redelivery.

No event can hold up the others. Events wait in one line per lock, served in turn (``mqtt_relay.lines``), and a lock
with ``PER_LOCK_WAITING`` events already waiting has its next ones dropped, logged and counted: one lock's flood
neither stands in front of the others nor fills the relay's memory. The devices function judges each event alone (a
bad one comes back ``rejected``, counted here, and is acknowledged with the batch). A payload over
``topics.MAX_PAYLOAD_BYTES`` is dropped here, logged and counted, never posted. A batch the function refuses as a
whole with 400 or 413 is split in halves until the one event it refuses is found, which is dropped the same way; an
unreachable function, a 5xx or a refused service token keeps the batch, unacknowledged, and retries it.

Each batch taken, and each event dropped for good, is told to ``on_taken``: the relay then publishes the locks their
receipts (``lockwise.devices.receipts``), so a lock stops keeping what the back-end holds. A copy of a lock's message
that comes while the first is held is not queued. One the broker redelivered (MQTT's DUP: a resumed session's
message in flight, perhaps the first's own delivery, with its packet id) is acknowledged with the first, once that is
taken or dropped, so that id may be acknowledged twice (Mosquitto logs the second as unknown and goes on). One the
lock sent again is a delivery of its own, acknowledged at once: held, one lock sending one message 120,000 times took
the relay's window of unacknowledged messages, and every lock's events came 15 s late (attack run 44).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from lockwise.core.headers import SERVICE_TOKEN_HEADER
from lockwise.core.log import logged_repeat
from lockwise.devices import receipts, topics
from mqtt_relay.lines import Lines

#: what the function answers for a batch one of whose events it cannot take at all: split the batch to find it
SPLIT_ON = (400, 413)
#: events of one lock waiting at most (a lock reports a few times an hour; a relay back from an outage finds each
#: lock's few): past it the lock is flooding, and its next events are dropped until its line moves
PER_LOCK_WAITING = 500
#: and their bytes as posted: 500 reports of a few hundred bytes, or 16 payloads at the cap
PER_LOCK_WAITING_BYTES = 256 * 1024

log = logging.getLogger("mqtt_relay.forwarder")


@dataclass(frozen=True)
class Event:
    topic: str
    payload: str
    #: acknowledges the message to the broker (on the session it came from), once the devices function took it
    ack: Callable[[], None]
    #: the broker run it was published in (``mqtt_relay.broker_start.run_of``; None: untagged)
    run: int | None = None
    #: its payload's name in a receipt to its lock (``receipts.digest`` of the bytes as published; "": none)
    digest: str = ""
    #: the broker sent it again (MQTT's DUP: a resumed session's in-flight message, perhaps one already here)
    redelivered: bool = False
    #: its packet id on the session it came from (0: none): a copy with its first's is the first's own delivery
    mid: int = 0
    #: its lock's identity ("" for a topic of none), the payload's size as posted (``topics.posted``), and the event
    #: as one item of a batch's ``events``, made once
    lock: str = field(init=False, repr=False)
    size: int = field(init=False, repr=False)
    wire: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lock", topics.lock_of(self.topic) or "")
        payload = topics.posted(self.payload)
        object.__setattr__(self, "size", len(payload))
        run = b"" if self.run is None else b',"run":' + str(self.run).encode()
        wire = b'{"topic":' + json.dumps(self.topic).encode() + b',"payload":"' + payload + b'"' + run + b"}"
        object.__setattr__(self, "wire", wire)

    @classmethod
    def of(
        cls,
        topic: str,
        raw: bytes,
        ack: Callable[[], None],
        run: int | None,
        *,
        redelivered: bool = False,
        mid: int = 0,
    ) -> Event:
        """A lock's message as it came: its payload as text (a byte that is not UTF-8 as U+FFFD: an ack so sent still
        counts), and its name in a receipt when its lock keeps it until one (``receipts.names``)."""
        named = receipts.digest(raw) if receipts.names(topic) else ""
        return cls(topic, raw.decode("utf-8", errors="replace"), ack, run, named, redelivered, mid)


@dataclass
class _Held:
    """A lock's message waiting here or being posted: the packet id it came with and its ack, and the acks of the
    copies the broker redelivered meanwhile (acknowledged with it), each delivery once (``same_delivery``)."""

    mid: int
    ack: Callable[[], None]
    copies: list[Callable[[], None]] = field(default_factory=list)

    def keep(self, ack: Callable[[], None]) -> None:
        """Acknowledge ``ack`` with the first, unless it acknowledges a delivery this one's or a kept copy's does: a
        resumed session redelivers what it holds with the same packet id at each reconnect, and each copy was kept,
        up to the session's 4,000 unacknowledged messages at every reconnect while the devices function was away,
        each acknowledged again in the end (attack run 114: 1,000 redeliveries, 1,001 acks of one packet id)."""
        if not any(same_delivery(ack, kept) for kept in (self.ack, *self.copies)):
            self.copies.append(ack)


def same_delivery(a: Callable[[], None], b: Callable[[], None]) -> bool:
    """Whether two acks acknowledge one delivery: one callable, or partials of one callable with the same arguments
    (a session's ack of a packet id: ``Relay._ack``, ``sessions.drain``'s)."""
    if a is b:
        return True
    if not isinstance(a, functools.partial) or not isinstance(b, functools.partial):
        return False
    return bool(a.func == b.func and a.args == b.args and a.keywords == b.keywords)


def receipts_of(events: list[Event]) -> dict[str, list[str]]:
    """The digests of ``events`` that their locks wait a receipt for, by lock identity, in order."""
    names: dict[str, list[str]] = {}
    for event in events:
        if event.digest:
            names.setdefault(event.lock, []).append(event.digest)
    return names


class Forwarder:
    def __init__(
        self,
        devices_url: str,
        service_token: str,
        *,
        batch: int = 100,
        timeout_s: float = 10.0,
        identity: Callable[[], dict[str, str]] | None = None,
        on_taken: Callable[[list[Event]], None] | None = None,
    ) -> None:
        self.url = f"{devices_url}/devices/relay/events"
        self.flush_url = f"{devices_url}/devices/relay/flush"
        self.headers = {SERVICE_TOKEN_HEADER: service_token}
        self.identity = identity or dict
        #: told of each batch the devices function took, and of each event dropped for good (not a flood's, which
        #: the lock may send again): the relay sends the locks their receipts, and a lock that reported itself may
        #: be sent to
        self.on_taken = on_taken or (lambda _events: None)
        self.batch = batch
        self.timeout_s = timeout_s
        self.queue: Lines[Event] = Lines(PER_LOCK_WAITING, PER_LOCK_WAITING_BYTES)
        self.forwarded = 0
        self.rejected = 0  # events the devices function judged and refused (kept in its lock_event_rejects)
        self.stale = 0  # state reports it ignored as not newer than the last applied (a repeat, or out of order)
        self.dropped = 0  # events not delivered at all (oversized, refused alone with 400/413, a full lock line)
        self.flooded = 0  # of those, events of a lock with PER_LOCK_WAITING already waiting
        #: and those over ``topics.MAX_PAYLOAD_BYTES`` as posted: logged at the first and every 1,000th, as a flood's
        #: are (each had a WARNING line, 265 bytes: a lock at the broker's pace of 20 a second wrote 1.7M a day,
        #: ~0.5 GB of Cloud Logging, unpaced: attack run 110)
        self.oversized = 0
        #: empty messages, acknowledged unposted: an empty message deletes what its topic kept, a relay's for an
        #: identity no lock uses any more (``retired``) or a lock's own, and is no event (each was posted and refused
        #: as an unknown lock's, or a malformed one, and kept in lock_event_rejects: attack run 131)
        self.cleared = 0
        #: the locks' messages waiting here or being posted, by (lock, digest), with the acks of the copies the broker
        #: redelivered meanwhile (a resumed or drained session): a copy is not queued (``repeated``), so a lock's line
        #: holds each message once (attack run 30: an hour's outage made 17-19 copies of each), and a redelivered one
        #: is acknowledged only with its first, once that is taken (acknowledged at once, it left the message in the
        #: relay's memory alone: attack run 31 lost an ack and a report to a relay restarted while the function was
        #: away); one the lock sent again is acknowledged at once (attack run 44)
        self._holding: dict[tuple[str, str], _Held] = {}
        self._holding_lock = threading.Lock()
        self.repeated = 0
        self.last_error: str | None = None
        self.upkeep_error: str | None = None  # the last upkeep's failure (``flush_mirror``), None once one succeeds
        self._stop = threading.Event()
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, event: Event) -> None:
        """Queue ``event`` in its lock's line; or hold it as a copy of a message of its lock waiting here (not
        queued, counted in ``repeated``, acknowledged with the first); or drop it (acknowledged, counted): a payload
        longer than the function takes, measured as it would be posted (a 64 KiB message of emoji, posted with every
        character escaped to 12 bytes, made a batch of 98 MB, refused whole, and every lock's events waited: attack
        run), or a flood. An empty one is acknowledged and counted, unposted (``cleared``)."""
        if not event.payload:
            self.cleared += 1
            event.ack()
            return
        if event.size > topics.MAX_PAYLOAD_BYTES:
            self.oversized += 1
            why = f"payload of {event.size} bytes as posted ({self.oversized} so far)"
            self._drop(event, why, logged=logged_repeat(self.oversized))
            return
        if event.digest:
            with self._holding_lock:
                held = self._holding.get((event.lock, event.digest))
                if held is not None:  # its first waits here: this one is not queued, named by its receipt
                    self.repeated += 1
                    # perhaps the first's own delivery: acknowledged only with it. A broker that crashed before it
                    # saved the first as sent sends it again without DUP, and with its packet id (a review)
                    if event.redelivered or (event.mid and event.mid == held.mid):
                        held.keep(event.ack)
                        return
                else:
                    self._holding[(event.lock, event.digest)] = _Held(event.mid, event.ack)
            if held is not None:  # the lock's sending again: a delivery of its own, acknowledged now
                event.ack()
                return
        if not self.queue.put(event.lock, event, event.size):  # a flood: counted, logged at times
            self.flooded += 1
            why = f"its lock's line is full ({self.flooded} so far)"
            self._drop(event, why, logged=logged_repeat(self.flooded), for_good=False)

    def _drop(self, event: Event, why: str, *, logged: bool = True, for_good: bool = True) -> None:
        """Acknowledge ``event`` unposted; ``for_good``: it can never be taken (told as if taken: its lock gets a
        receipt and stops sending it), else its lock may send it again once its line moves (no receipt)."""
        if logged:
            log.warning("lock event dropped", extra={"fields": {"topic": event.topic[:200], "reason": why}})
        self.dropped += 1
        event.ack()
        self._release([event])
        if for_good:
            self.on_taken([event])

    def _release(self, events: list[Event]) -> None:
        """``events`` are acknowledged: so are the copies that came meanwhile, and one that comes now is forwarded."""
        with self._holding_lock:
            held = [self._holding.pop((e.lock, e.digest), None) for e in events if e.digest]
        for ack in (ack for first in held if first is not None for ack in first.copies):
            ack()

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Forward what is queued (up to the timeout), then stop; anything left is redelivered by the broker."""
        deadline = time.monotonic() + drain_timeout_s
        while not self.queue.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1)

    def _take(self) -> list[list[Event]]:
        """Every waiting lock's next events in turn, up to ``batch``, in batches whose bodies the function takes
        (``topics.MAX_BATCH_BYTES``; a 413 all the same is split like any refused batch)."""
        return _by_size(self.queue.take(self.batch, timeout_s=0.2))

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            pending = self._take()
            if not pending:
                continue
            taken = sum(len(batch) for batch in pending)
            while pending and not self._stop.is_set():
                verdict = self._post(pending[0])
                if verdict == "taken":
                    taken_batch = pending.pop(0)
                    for event in taken_batch:
                        event.ack()
                    self._release(taken_batch)
                    self.on_taken(taken_batch)
                    backoff = 0.2
                elif verdict == "refused":  # one of these events poisons the batch: find it, drop it alone
                    batch = pending.pop(0)
                    if len(batch) == 1:
                        self._drop(batch[0], "refused by the devices function")
                    else:
                        pending[:0] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
                else:
                    time.sleep(backoff)  # keep the batch, unacknowledged, until the function takes it
                    backoff = min(backoff * 2, 5.0)
            self.queue.done(taken)

    def _post(self, events: list[Event]) -> str:
        """``taken`` (each event judged: applied, duplicate, stale or rejected), ``refused`` (400/413 for the batch
        as a whole) or ``retry``."""
        try:
            headers = {**self.headers, **self.identity(), "Content-Type": "application/json"}
            resp = self._session.post(
                self.url, data=_body(events), headers=headers, timeout=self.timeout_s, allow_redirects=False
            )  # a redirect is not followed: requests sends the service token on to its target (attack run 89)
        except (requests.RequestException, OSError) as exc:
            self.last_error = type(exc).__name__
            log.warning("devices function unreachable; will retry", extra={"fields": {"error": self.last_error}})
            return "retry"
        if resp.status_code in SPLIT_ON:
            log.warning("devices function refused a batch", extra={"fields": {"status": resp.status_code}})
            return "refused"
        if resp.status_code != 200:
            self.last_error = f"HTTP {resp.status_code}"
            log.warning("devices function refused events; will retry", extra={"fields": {"status": resp.status_code}})
            return "retry"
        judged = _outcomes(resp, len(events))
        if judged is None:  # not the function's answer (a proxy's page): nothing says the batch was committed
            self.last_error = "HTTP 200 without the batch's results"
            log.warning("devices function answered without results; will retry")
            return "retry"
        self.last_error = None
        self.forwarded += len(events)
        self.rejected += judged.count("rejected")
        self.stale += judged.count("stale")
        return "taken"

    def flush_mirror(self, broker_uptime_s: float | None = None, broker_run: int | None = None) -> bool:
        """Ask the devices function for its upkeep: write queued Firestore mirror rows (the app's view converges),
        refresh guests' windows, turn offline the locks not back since the broker started ``broker_uptime_s`` ago or
        its run ``broker_run`` began (when known: ``mqtt_relay.broker_start``), prune expired rows, end gone
        accounts. A failure is logged with the function's error and kept in ``upkeep_error`` until an upkeep
        succeeds (its answer was not read: a failing upkeep went unseen). Not on the forwarder's session, which is
        its thread's. Returns whether the function says locks' access is left due (ask again at once)."""
        body: dict[str, float] = {} if broker_run is None else {"broker_run": broker_run}
        if broker_uptime_s is not None:
            body.update(broker_uptime_s=broker_uptime_s, sent_at=time.time())
        try:
            headers = {**self.headers, **self.identity()}
            resp = requests.post(
                self.flush_url, json=body or None, headers=headers, timeout=self.timeout_s, allow_redirects=False
            )
        except Exception as exc:  # noqa: BLE001 - any, the identity token's fetch's too (a metadata server's cut-off
            # answer, http.client.IncompleteRead): escaping, it was logged by the upkeep's loop as an ERROR no metric
            # counts (``infra.monitoring`` counts this line) and the health report said the upkeep was ok (attack
            # run 104)
            self.upkeep_error = type(exc).__name__
        else:
            self.upkeep_error = None if resp.status_code == 200 else f"HTTP {resp.status_code} {_error_code(resp)}"
            if self.upkeep_error is None:
                return _access_due(resp)
        log.warning("devices upkeep failed; will retry", extra={"fields": {"error": self.upkeep_error}})
        return False


def _outcomes(resp: requests.Response, events: int) -> list[str] | None:
    """Each event's outcome in the function's answer to a batch of ``events``, or None when the answer is not one (a
    200 from anything else: the events' locks would be told they are held, and forget them)."""
    try:
        results = resp.json()["results"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(results, list) or len(results) != events or not all(isinstance(r, dict) for r in results):
        return None
    return [str(result.get("outcome")) for result in results]


def _access_due(resp: requests.Response) -> bool:
    """Whether an upkeep's answer says locks' access is left due (an older function's says nothing: no)."""
    try:
        return resp.json().get("access_due") is True
    except (ValueError, AttributeError):
        return False


def _error_code(resp: requests.Response) -> str:
    """The error code of a function's JSON error body, or ``-`` (a proxy's page, a truncated body)."""
    try:
        code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "-"
    return code if isinstance(code, str) else "-"


def _body(events: list[Event]) -> bytes:
    return b'{"events":[' + b",".join(event.wire for event in events) + b"]}"


def _by_size(events: list[Event]) -> list[list[Event]]:
    """``events`` in order, cut into batches whose bodies are at most ``topics.MAX_BATCH_BYTES``."""
    batches: list[list[Event]] = []
    size = 0
    for event in events:
        grows = len(event.wire) + 1  # and its comma
        if not batches or size + grows > topics.MAX_BATCH_BYTES:
            batches.append([])
            size = len(b'{"events":[]}')
        batches[-1].append(event)
        size += grows
    return batches
