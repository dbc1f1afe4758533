"""Lock events handed over by the relay: state reports, command acknowledgements, online/offline.

The relay forwards each MQTT message as ``{"topic", "payload"}``; the topic names the lock (its broker identity),
and ``run``, when the broker's plugin tagged the message, the broker run it was published in (``broker_restarts``).
Applying an event is idempotent, so a redelivery after a relay crash changes nothing: a state report is known by its
time and state among the lock's last ``RECENT_REPORTS`` and taken once; one older than the last applied changes no
state but is listed in the feed as late; an ack of a command the lock already answered, or unknown, is a duplicate
(one that comes late, after the command expired, was withdrawn or superseded, is taken: the lock may have acted).

Each event is checked and judged on its own (``apply_batch``; the database work of a batch is done once for it, and
one event at a time only when the database refuses something): a bad event from one lock (malformed, oversized, NUL
bytes, deeply nested, or one the database refuses) is ``rejected`` alone, with a reason, and kept in
``lock_event_rejects`` for an operator; it never fails the batch, so it never holds up another lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lockwise.core import audit, errors, inputs, mirror, shown_text
from lockwise.core.config import Settings
from lockwise.core.db import Connection, refused_for_now
from lockwise.core.log import logged_repeat
from lockwise.devices import command_outcomes, lockout, topics

STATES = ("locked", "unlocked", "locking", "unlocking", "jammed")
ACK_RESULTS = {"ok": "acked", "failed": "failed", "refused": "failed"}
#: how long after its expiry a command's ack is still taken (a lock that acted on a voice grant, then lost its
#: network, acknowledges when it is back); later, a duplicate
LATE_ACK_TAKEN = dt.timedelta(days=1)
MAX_FUTURE_S = 300
#: a lock's state row is made with the lock: one missing is a lock deleted since its credential was read
NO_STATE = "the lock has no state: deleted"
#: an event from a broker identity no live credential holds
UNKNOWN_LOCK = "unknown or revoked lock"


@dataclass(frozen=True)
class Outcome:
    outcome: str  # applied | duplicate | stale | rejected
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, **({"reason": self.reason} if self.reason else {})}


#: state and ack payloads are flat objects
MAX_PAYLOAD_DEPTH = 2
#: the window of a lock's feed budget (``LOCKWISE_FEED_REPORTS_PER_MINUTE``): at most that many of its state and
#: online/offline reports are listed in its activity feed per window (a lock reports a few an hour; one reporting in a
#: loop filled its feed and the Firestore bill); past it they still change its row (its document once the window is
#: over: ``mirror_behind``), and the next entry listed carries ``unlisted_before``, how many were left out
FEED_WINDOW = dt.timedelta(minutes=1)
#: refused events kept per lock (its topics together; any other topic on its own) and hour for an operator, so
#: long, their payloads' first characters (each refusal is counted by the relay all the same): 100 a topic and
#: hour for 30 days, 500 characters each, kept 216,000 rows (~260 MB) of one lock's junk (attack run 54)
REJECTS_KEPT_PER_HOUR = 10
REJECTS_KEPT = dt.timedelta(days=7)
REJECT_EXCERPT_CHARS = 200
#: a lock's last state reports known by their key (``lock_state.recent_reports``), so that one delivered again is
#: taken once (a lock reports a few an hour; a relay restart redelivers what it had not acknowledged)
RECENT_REPORTS = 64
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
log = logging.getLogger("lockwise.devices.lock_events")


@dataclass(frozen=True)
class FeedBudget:
    """The reports listed in the feeds per ``FEED_WINDOW``, at most: a lock's (``LOCKWISE_FEED_REPORTS_PER_MINUTE``)
    and the locks of one owner together (``LOCKWISE_FEED_REPORTS_PER_OWNER_MINUTE``): a lock's alone, an account's 100
    locks, made and paired for free, listed 3,000 entries a minute and wrote as many lock documents, 8.6M Firestore
    writes a day, each entry kept 90 days (attack run 110)."""

    per_lock: int
    per_owner: int

    @classmethod
    def of(cls, settings: Settings) -> FeedBudget:
        return cls(settings.feed_reports_per_minute, settings.feed_reports_per_owner_minute)


def apply_batch(con: Connection, events: list[Any], now: dt.datetime, feed_budget: FeedBudget) -> list[Outcome]:
    """Apply each event on its own; a rejected one is recorded in ``lock_event_rejects``.

    The batch runs under one savepoint: the locks' identities looked up in one query, their ``lock_state`` rows
    read once and written once (``LockStates``), the mirror rows queued in one statement. If the database refuses
    anything, the batch is rolled back to that savepoint and applied again one savepoint per event, so the failing
    event alone is rejected and every other one is applied exactly as if it had come alone.
    """
    locks = _lock_ids(con, events)
    con.run("SAVEPOINT lock_events")
    try:
        states = LockStates(con, locks.values())
        locks = _still_live(con, locks)
        batch = Pending(states, feed_budget)
        outcomes = [_judge(con, event, locks, now, batch) for event in events]
        batch.write(con)
    except Exception as exc:  # noqa: BLE001 - some event broke the database's rules: find it, one savepoint per event
        if refused_for_now(exc):  # a lock wait, a deadlock: the batch's 503 has the relay send it again
            raise
        con.run("ROLLBACK TO SAVEPOINT lock_events")
        LockStates(con, locks.values())  # the rows again (the rollback let them go), then their identities again
        locks = _still_live(con, locks)
        outcomes = [_one_by_one(con, event, locks, now, feed_budget) for event in events]
    con.run("RELEASE SAVEPOINT lock_events")
    for event, outcome in zip(events, outcomes, strict=True):
        if outcome.outcome == "rejected":
            _park(con, event, outcome.reason or "rejected")
    retire(con, events, outcomes)
    heard_from(con, locks.values())
    return outcomes


def retire(con: Connection, events: list[Any], outcomes: list[Outcome]) -> None:
    """The identities of presences refused as no live lock's are listed for the relay to clear
    (``retired_broker_identities``, migration 0085: ``mqtt_relay.retired``): a presence the broker kept for an
    identity paired again or deleted before the list was kept, or a replaced device's last will sent late, was handed
    to every relay subscription anew after each broker restart, and refused each time (attack run 131)."""
    gone = {
        identity
        for event, outcome in zip(events, outcomes, strict=True)
        if outcome.reason == UNKNOWN_LOCK
        and isinstance(event, dict)
        and isinstance(event.get("topic"), str)
        and event["topic"].endswith("/status")
        and (identity := topics.lock_of(event["topic"])) is not None
    }
    if gone:
        con.run(
            "INSERT INTO retired_broker_identities (identity) SELECT unnest(CAST(:i AS text[])) ON CONFLICT DO NOTHING",
            i=sorted(gone),
        )


def heard_from(con: Connection, lock_ids: Iterable[str]) -> None:
    """The locks whose live device sent any event (applied or not: its session is there) were heard from: the relay
    may publish to them again (``mqtt_relay.outbox.UNANSWERED``). Their counts are taken in lock id order, only
    those above zero (an honest lock's is cleared by its next event)."""
    con.run(
        "UPDATE lock_unanswered SET sent = 0 WHERE lock_id IN (SELECT lock_id FROM lock_unanswered"
        " WHERE lock_id = ANY(CAST(:l AS uuid[])) AND sent > 0 ORDER BY lock_id FOR UPDATE)",
        l=sorted(set(lock_ids)),
    )


def _judge(con: Connection, event: Any, locks: dict[str, str], now: dt.datetime, batch: Pending) -> Outcome:
    if not isinstance(event, dict):
        return Outcome("rejected", "event must be an object")
    return apply(con, event.get("topic"), event.get("payload"), now, locks, batch, event.get("run"))


def _one_by_one(
    con: Connection, event: Any, locks: dict[str, str], now: dt.datetime, feed_budget: FeedBudget
) -> Outcome:
    con.run("SAVEPOINT lock_event")
    try:
        alone = Pending(LockStates(con), feed_budget)
        outcome = _judge(con, event, locks, now, alone)
        alone.write(con)
    except Exception as exc:  # noqa: BLE001 - whatever one event does to the database, the others go on
        if refused_for_now(exc):  # not the event's fault: the whole batch is tried again, nothing dropped
            raise
        log.exception("lock event could not be applied")
        con.run("ROLLBACK TO SAVEPOINT lock_event")
        outcome = Outcome("rejected", "the event could not be applied")
    con.run("RELEASE SAVEPOINT lock_event")
    return outcome


@dataclass
class _State:
    """One ``lock_state`` row as the events of a batch leave it."""

    state: str
    battery_pct: int | None
    firmware: str | None
    online: bool
    last_seen: dt.datetime | None
    reported_at: dt.datetime | None
    feed_window_start: dt.datetime | None = None
    feed_entries: int = 0
    feed_unlisted: int = 0
    recent_reports: list[str] = field(default_factory=list)
    status_order: int | None = None
    #: when this function first heard of the lock's current connection (``broker_restarts.not_back_since``)
    connected_at: dt.datetime | None = None
    #: the newest broker run the lock was heard from on that connection (None: not told)
    connected_run: int | None = None
    #: a report applied past the feed's budget has not reached the lock's document yet (``mirror_behind``)
    doc_behind: bool = False
    changed: bool = False


@dataclass
class _OwnerWindow:
    """One ``owner_feed_windows`` row as the events of a batch leave it: the reports listed at the locks of one owner
    together in the window begun at ``start`` (``FeedBudget.per_owner``)."""

    start: dt.datetime | None
    entries: int
    changed: bool = False


class LockStates:
    """The ``lock_state`` rows of a batch's locks: read once (``FOR UPDATE``, in lock id order, so two batches never
    deadlock; each lock's own row held first, ``FOR KEY SHARE``, so a deletion of the lock never deadlocks with the
    batch either), changed in memory event by event, written in one statement by ``write``."""

    def __init__(self, con: Connection, lock_ids: Iterable[str] = ()) -> None:
        self._con = con
        self._rows: dict[str, _State | None] = {}
        self._owner_of: dict[str, str] = {}
        self._owners: dict[str, _OwnerWindow] = {}
        self._load(set(lock_ids))

    def _load(self, lock_ids: set[str]) -> None:
        missing = sorted(i for i in lock_ids if i not in self._rows)
        if not missing:
            return
        # the locks' own rows first, as a lock's deletion takes them (which then removes its commands before its
        # state row: a batch holding the state row while acknowledging a command deadlocked with it)
        owners = self._con.run(
            "SELECT id::text, owner_uid FROM locks WHERE id = ANY(CAST(:l AS uuid[])) ORDER BY id FOR KEY SHARE",
            l=missing,
        )
        rows = self._con.run(
            "SELECT lock_id::text, state, battery_pct, firmware, online, last_seen, reported_at, feed_window_start,"
            " feed_entries, feed_unlisted, recent_reports, status_order, connected_at, connected_run, doc_behind"
            " FROM lock_state"
            " WHERE lock_id = ANY(CAST(:l AS uuid[]))"
            " ORDER BY lock_id FOR UPDATE",
            l=missing,
        )
        found = {str(r[0]): _State(*r[1:]) for r in rows}
        for lock_id in missing:
            self._rows[lock_id] = found.get(lock_id)
        self._owner_of.update((str(r[0]), str(r[1])) for r in owners)
        new = sorted({str(r[1]) for r in owners} - self._owners.keys())
        if new:  # after every lock row, in uid order (two batches sharing an owner never wait in a circle), made here
            for uid, start, entries in self._con.run(
                "INSERT INTO owner_feed_windows (owner_uid) SELECT u FROM unnest(CAST(:u AS text[])) AS u ORDER BY u"
                " ON CONFLICT (owner_uid) DO UPDATE SET owner_uid = EXCLUDED.owner_uid"
                " RETURNING owner_uid, window_start, entries",
                u=new,
            ):
                self._owners[str(uid)] = _OwnerWindow(start, int(entries))

    def get(self, lock_id: str) -> _State | None:
        """The lock's row as this batch has left it so far (None: the lock has no state row)."""
        self._load({lock_id})
        return self._rows[lock_id]

    def owner_window(self, lock_id: str) -> _OwnerWindow:
        """The feed's window of the locks of ``lock_id``'s owner together (a lock ``get`` found)."""
        return self._owners[self._owner_of[lock_id]]

    def write(self) -> None:
        self._write_owners()
        changed = [(lock_id, row) for lock_id, row in self._rows.items() if row is not None and row.changed]
        if not changed:
            return
        self._con.run(
            "UPDATE lock_state AS s SET state = v.state, battery_pct = v.battery_pct, firmware = v.firmware,"
            " online = v.online, last_seen = v.last_seen, reported_at = v.reported_at,"
            " feed_window_start = v.feed_window_start, feed_entries = v.feed_entries, feed_unlisted = v.feed_unlisted,"
            " recent_reports = ARRAY(SELECT jsonb_array_elements_text(CAST(v.recent AS jsonb))),"
            " status_order = v.status_order, connected_at = v.connected_at, connected_run = v.connected_run,"
            " doc_behind = v.doc_behind, updated_at = now()"
            " FROM unnest(CAST(:l AS uuid[]), CAST(:s AS text[]), CAST(CAST(:b AS text[]) AS smallint[]),"
            " CAST(:f AS text[]), CAST(CAST(:o AS text[]) AS boolean[]), CAST(CAST(:ls AS text[]) AS timestamptz[]),"
            " CAST(CAST(:r AS text[]) AS timestamptz[]), CAST(CAST(:fw AS text[]) AS timestamptz[]),"
            " CAST(:fe AS integer[]), CAST(:fu AS integer[]), CAST(:rr AS text[]), CAST(:so AS bigint[]),"
            " CAST(CAST(:ca AS text[]) AS timestamptz[]), CAST(:cr AS bigint[]), CAST(:db AS boolean[]))"
            " AS v(lock_id, state, battery_pct, firmware, online, last_seen, reported_at, feed_window_start,"
            " feed_entries, feed_unlisted, recent, status_order, connected_at, connected_run, doc_behind)"
            " WHERE s.lock_id = v.lock_id",
            l=[lock_id for lock_id, _ in changed],
            s=[row.state for _, row in changed],
            b=[None if row.battery_pct is None else str(row.battery_pct) for _, row in changed],
            f=[row.firmware for _, row in changed],
            o=["true" if row.online else "false" for _, row in changed],
            ls=[None if row.last_seen is None else row.last_seen.isoformat() for _, row in changed],
            r=[None if row.reported_at is None else row.reported_at.isoformat() for _, row in changed],
            fw=[None if row.feed_window_start is None else row.feed_window_start.isoformat() for _, row in changed],
            fe=[row.feed_entries for _, row in changed],
            fu=[row.feed_unlisted for _, row in changed],
            rr=[json.dumps(row.recent_reports) for _, row in changed],
            so=[row.status_order for _, row in changed],
            ca=[None if row.connected_at is None else row.connected_at.isoformat() for _, row in changed],
            cr=[row.connected_run for _, row in changed],
            db=[row.doc_behind for _, row in changed],
        )
        for _, row in changed:
            row.changed = False

    def _write_owners(self) -> None:
        changed = [(uid, window) for uid, window in self._owners.items() if window.changed]
        if not changed:
            return
        self._con.run(
            "UPDATE owner_feed_windows AS o SET window_start = v.s, entries = v.e"
            " FROM unnest(CAST(:u AS text[]), CAST(CAST(:s AS text[]) AS timestamptz[]), CAST(:e AS integer[]))"
            " AS v(u, s, e) WHERE o.owner_uid = v.u",
            u=[uid for uid, _ in changed],
            s=[None if w.start is None else w.start.isoformat() for _, w in changed],
            e=[w.entries for _, w in changed],
        )
        for _, window in changed:
            window.changed = False


@dataclass
class Pending:
    """What the events of a batch leave to write at its end: the lock rows and the mirror rows."""

    states: LockStates
    #: the reports listed in the feeds per ``FEED_WINDOW``, at most: a lock's, and its owner's locks' together
    feed_budget: FeedBudget
    writes: list[mirror.Write] = field(default_factory=list)

    def write(self, con: Connection) -> None:
        self.states.write()
        mirror.enqueue_many(con, self.writes)


def _lock_ids(con: Connection, events: list[Any]) -> dict[str, str]:
    """Broker identity -> lock id, for the events' topics whose lock holds a live credential."""
    identities = set()
    for event in events:
        topic = event.get("topic") if isinstance(event, dict) else None
        if not isinstance(topic, str):
            continue
        try:
            identity = topics.lock_of(inputs.check_text(topic, "topic"))
        except errors.BadRequest:
            continue  # judged and rejected on its own
        if identity is not None:
            identities.add(identity)
    if not identities:
        return {}
    rows = con.run(
        "SELECT mqtt_username, lock_id::text FROM lock_credentials"
        " WHERE mqtt_username = ANY(CAST(:u AS text[])) AND revoked_at IS NULL",
        u=sorted(identities),
    )
    return {str(user): str(lock_id) for user, lock_id in rows}


def _still_live(con: Connection, locks: dict[str, str]) -> dict[str, str]:
    """``locks`` (``_lock_ids``) less the identities revoked since they were read, once the batch holds the locks'
    rows: a re-pairing that committed while the batch waited for a row revoked one, and the replaced device's
    events were applied to the row the re-pairing had just reset, its report ahead of the new device's making
    theirs stale (attack run 28). A lock deleted meanwhile keeps its identities here: its events are answered as a
    deleted lock's (stale, duplicate), not rejected."""
    if not locks:
        return locks
    revoked = {
        str(row[0])
        for row in con.run(
            "SELECT mqtt_username FROM lock_credentials WHERE mqtt_username = ANY(CAST(:u AS text[]))"
            " AND revoked_at IS NOT NULL",
            u=sorted(locks),
        )
    }
    return {user: lock_id for user, lock_id in locks.items() if user not in revoked}


def _park(con: Connection, event: Any, reason: str) -> None:
    """Keep a rejected event for an operator: its topic and a printable excerpt (NUL and bad text escaped); at most
    ``REJECTS_KEPT_PER_HOUR`` a lock (a lock publishing junk in a loop added 121,000 rows a minute: attack run),
    for ``REJECTS_KEPT``."""
    topic = event.get("topic") if isinstance(event, dict) else None
    payload = event.get("payload") if isinstance(event, dict) else event
    kept_topic = _printable(topic)[:200] if isinstance(topic, str) else None
    lock = topics.lock_of(kept_topic) if kept_topic is not None else None
    same = [kept_topic] if lock is None else [topics.state(lock), topics.acks(lock), topics.status(lock), kept_topic]
    same_lock = "topic = ANY(CAST(:same AS text[]))" if kept_topic is not None else "topic IS NULL"  # the index
    con.run(
        "INSERT INTO lock_event_rejects (topic, reason, payload_excerpt, payload_chars, expires_at)"
        " SELECT CAST(:t AS text), CAST(:r AS text), CAST(:p AS text), CAST(:n AS integer),"
        " now() + make_interval(days => :days)"
        f" WHERE (SELECT count(*) FROM lock_event_rejects WHERE {same_lock}"
        " AND received_at > now() - interval '1 hour') < :kept",
        kept=REJECTS_KEPT_PER_HOUR,
        same=sorted(set(same)),
        t=kept_topic,
        r=reason[:200],
        p=_printable(payload if isinstance(payload, str) else repr(payload))[:REJECT_EXCERPT_CHARS],
        n=len(payload) if isinstance(payload, str) else None,
        days=REJECTS_KEPT.days,
    )


def _printable(text: str) -> str:
    return text.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")


def apply(
    con: Connection,
    topic: Any,
    payload: Any,
    now: dt.datetime,
    locks: dict[str, str],
    batch: Pending,
    run: Any = None,
) -> Outcome:
    """Judge and apply one event. ``locks``: identity -> lock id for live credentials (``_lock_ids``); ``batch``:
    where the lock's row and the mirror rows wait until the caller writes them (``Pending.write``); ``run``: the
    broker run the message was published in, as the relay read it from the broker plugin's tag (``taken_run``)."""
    if not isinstance(topic, str) or not isinstance(payload, str):
        return Outcome("rejected", "topic and payload must be strings")
    run = taken_run(run, now)
    if len(topics.posted(payload)) > topics.MAX_PAYLOAD_BYTES:  # state and acks are a few hundred bytes
        return Outcome("rejected", f"payload over {topics.MAX_PAYLOAD_BYTES} bytes as posted")
    try:
        inputs.check_text(topic, "topic")
        inputs.check_text(payload, "payload")
    except errors.BadRequest as exc:
        return Outcome("rejected", exc.message)
    lock_user = topics.lock_of(topic)
    kind = topic.rsplit("/", 1)[-1]
    if lock_user is None:
        return Outcome("rejected", "not a lock topic")
    lock_id = locks.get(lock_user)
    if lock_id is None:
        return Outcome("rejected", UNKNOWN_LOCK)
    if kind == "status":
        return _status(lock_id, payload, now, batch, run)
    try:
        # not held to a count of values: 16 KiB as posted bounds them (2.7 ms at most), and a count takes the commas
        # in strings too, so an ack with a reason of commas, cut to 200 characters, would have been lost
        body = inputs.loads(payload, max_depth=MAX_PAYLOAD_DEPTH, most_values=None)
    except errors.BadRequest as exc:
        return Outcome("rejected", f"payload: {exc.message}")
    if not isinstance(body, dict):
        return Outcome("rejected", "payload is not a JSON object")
    if kind == "state":
        return _state(lock_id, body, now, batch, run)
    if kind == "ack":
        return _ack(con, lock_id, body, now)
    return Outcome("rejected", f"unknown event kind {kind!r}")


#: ``online`` or ``offline``, with the number of the connection it is about (docs/FIRMWARE.md, "Online and offline")
_STATUS = re.compile(r"(online|offline)(?: ([0-9]{1,15}))?")
#: how far a connection's number may be ahead of the server's time in milliseconds (a lock's clock may run fast)
STATUS_AHEAD_MS = 24 * 3600 * 1000
#: a connection's number has at most 15 digits
MAX_CONNECTION = 10**15 - 1
CONNECTION_AHEAD = "the connection's number is ahead of any time in milliseconds"


def _ahead(connection: int, now: dt.datetime) -> bool:
    """A number no clock or counter reaches: one report of it would make every later one stale."""
    return connection > now.timestamp() * 1000 + STATUS_AHEAD_MS


def _status(lock_id: str, payload: str, now: dt.datetime, batch: Pending, run: int | None) -> Outcome:
    parsed = _STATUS.fullmatch(payload)
    if parsed is None:
        return Outcome("rejected", "status must be online or offline, optionally followed by the connection's number")
    online = parsed[1] == "online"
    row = batch.states.get(lock_id)
    if row is None:  # deleted since its credential was read: writing its document would bring it back in the app
        return Outcome("stale", NO_STATE)
    if parsed[2] is not None:  # numbered: applied only when newer than the last one applied
        if _ahead(int(parsed[2]), now):
            return Outcome("rejected", CONNECTION_AHEAD)
        order = 2 * int(parsed[2]) + (0 if online else 1)
        if row.status_order is not None and order == row.status_order:
            return Outcome("duplicate", "this connection's report was already applied")
        if row.status_order is not None and order < row.status_order:
            return Outcome("stale", "a report of a newer connection, or this one's end, was already applied")
        row.status_order = order
    row.online, row.last_seen, row.changed = online, now, True
    if online:  # a new connection (numbered: newer than any applied), or a bare one as it comes
        row.connected_at, row.connected_run = now, _newest(run, row.connected_run)
    listed = list_in_feed(batch, lock_id, row, now, "online" if online else "offline")
    _mirror_lock_doc(batch, lock_id, row, listed, {"online": online, "last_seen": now.isoformat()})
    return Outcome("applied")


#: a report naming an ended connection, made this long after its lock was last heard from, was made on a live one (a
#: lock's clock may be this far off: its signed requests are taken within it)
LIVE_AFTER = dt.timedelta(seconds=60)
#: how far a broker run (its start in microseconds, on the broker's clock) may be ahead of this function's clock: a
#: broker started in the past, and both clocks are kept; a broker whose clock runs further ahead is judged by its
#: uptime instead, and a last will's run of its lock's choosing keeps its row online through restarts for no longer
RUN_AHEAD = dt.timedelta(minutes=10)


def taken_run(run: Any, now: dt.datetime) -> int | None:
    """An event's broker run, or None: untagged, or not a run a broker could have numbered (not a positive integer,
    or ahead of the time by more than ``RUN_AHEAD``). A lock's last will is sent without the plugin's tagging and
    keeps user properties of its lock's choosing: a run it names far ahead would keep its row shown online through
    every restart. Such an event is judged as untagged, never refused for it (its ``offline`` would be lost)."""
    if run is None:
        return None
    if not topics.is_run(run) or run > _run_at(now + RUN_AHEAD):
        # counted, and logged at the first and every 1,000th (``log.logged_repeat``): a lock chooses its will's
        # run, and one reconnecting in a loop has its will sent at its allowance's pace, 20 a second, each a WARNING
        # line of its own (attack run 120; as a lock's oversized messages were at the relay, attack run 110)
        refused = next(_runs_not_taken)
        if logged_repeat(refused):
            fields = {"run": repr(run)[:40], "not_taken_so_far": refused}
            log.warning("lock event's broker run not taken", extra={"fields": fields})
        return None
    return run


#: runs not taken (``taken_run``) so far
_runs_not_taken = itertools.count(1)


def _run_at(moment: dt.datetime) -> int:
    """A run's number for a broker started at ``moment``."""
    return _microseconds(moment)


def _newest(run: int | None, known: int | None) -> int | None:
    """The run a connection is heard from on: the newer of the event's and the one known for the lock's row. A
    message of an older run forwarded late (a relay's persisted session emptied after a restart) says nothing against
    a newer one: it turned a live lock offline at the next upkeep (a review). Nor does an untagged one: with the
    broker's plugin every message a lock publishes is tagged, and an untagged ``online`` is a last will (an ``online``
    will sent as the broker stopped cleared the run, and the row, its connection dated within the clocks' slack,
    stayed online for good: attack run 19). A row never told a run is judged by its time (``broker_restarts``)."""
    if run is None:
        return known
    return run if known is None else max(run, known)


def list_in_feed(
    batch: Pending,
    lock_id: str,
    row: _State,
    now: dt.datetime,
    kind: str,
    entry_id: str | None = None,
    **fields: Any,
) -> bool:
    """Add a report's entry to the lock's activity feed, within its budget and its owner's locks' together
    (``Pending.feed_budget``); whether it was listed. Past the owner's, as past the lock's own."""
    if row.feed_window_start is None or not row.feed_window_start <= now < row.feed_window_start + FEED_WINDOW:
        row.feed_window_start, row.feed_entries = now, 0
    row.changed = True
    owner = batch.states.owner_window(lock_id)
    if owner.start is None or not owner.start <= now < owner.start + FEED_WINDOW:
        owner.start, owner.entries, owner.changed = now, 0, True
    if row.feed_entries >= batch.feed_budget.per_lock or owner.entries >= batch.feed_budget.per_owner:
        row.feed_unlisted += 1
        return False
    row.feed_entries += 1
    owner.entries, owner.changed = owner.entries + 1, True
    if row.feed_unlisted:
        fields["unlisted_before"], row.feed_unlisted = row.feed_unlisted, 0
    batch.writes.append(mirror.activity_entry(lock_id, kind, now, entry_id=entry_id, **fields))
    return True


def _mirror_lock_doc(batch: Pending, lock_id: str, row: _State, listed: bool, fields: dict[str, Any]) -> None:
    """Write what a report changed to the lock's document while the report is listed in the feed (its budget, a
    lock's reports a window); past it, the document is left behind until the lock's next report listed, or the
    upkeep's ``mirror_behind`` once the window is over. Every report applied was a write to the one document: a
    lock at the broker's pace (20 a second) made 1.73M a day, 20 times what Firestore sustains on one document
    (attack run 54)."""
    if not listed:
        row.doc_behind = True
        return
    if row.doc_behind:  # what the reports left out changed too
        fields, row.doc_behind = (
            _lock_doc_fields(row.state, row.battery_pct, row.firmware, row.online, row.last_seen, row.reported_at),
            False,
        )
    batch.writes.append((mirror.lock_doc(lock_id), "merge", fields))


def _lock_doc_fields(
    state: str,
    battery_pct: int | None,
    firmware: str | None,
    online: bool,
    last_seen: dt.datetime | None,
    reported_at: dt.datetime | None,
) -> dict[str, Any]:
    """What a lock's document says of its reports."""
    return {
        "state": state,
        "battery_pct": battery_pct,
        "firmware": firmware,
        "online": online,
        "last_seen": None if last_seen is None else last_seen.isoformat(),
        "reported_at": None if reported_at is None else reported_at.isoformat(),
    }


#: locks' documents ``mirror_behind`` writes in one pass, at most
BEHIND_PER_PASS = 500


def mirror_behind(con: Connection, now: dt.datetime) -> int:
    """Write the documents of locks whose reports past their feed's budget left them behind, once that window is
    over (the upkeep's step, again while a pass comes back full), the longest behind first (in lock id order, 500
    locks flooding kept a later one's document behind for good: attack run 55); how many. Rows another transaction
    holds (a batch of the lock's events) are passed over: that batch or the next pass writes them."""
    rows = con.run(
        "SELECT lock_id::text, state, battery_pct, firmware, online, last_seen, reported_at FROM lock_state"
        " WHERE doc_behind AND (feed_window_start IS NULL OR feed_window_start <= :ended)"
        " ORDER BY feed_window_start NULLS FIRST LIMIT :n FOR UPDATE SKIP LOCKED",
        ended=now - FEED_WINDOW,
        n=BEHIND_PER_PASS,
    )
    if not rows:
        return 0
    mirror.enqueue_many(con, [(mirror.lock_doc(str(row[0])), "merge", _lock_doc_fields(*row[1:])) for row in rows])
    con.run(
        "UPDATE lock_state SET doc_behind = false WHERE lock_id = ANY(CAST(:l AS uuid[]))", l=[str(r[0]) for r in rows]
    )
    return len(rows)


def report_key(reported: dt.datetime, state: str) -> str:
    """How a state report is known (``lock_state.recent_reports``): the lock's own time of it, to the microsecond,
    and its state."""
    return f"{_microseconds(reported)}-{state}"


def _key_time(key: str) -> int:
    """The lock's time of the report ``key`` names (``report_key``), in microseconds."""
    return int(key.split("-", 1)[0])


def _microseconds(moment: dt.datetime) -> int:
    """``moment`` in whole microseconds since the epoch (the plugin's run numbers, report keys)."""
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


def _state(lock_id: str, body: dict[str, Any], now: dt.datetime, batch: Pending, run: int | None) -> Outcome:
    state, battery, firmware, ts = body.get("state"), body.get("battery_pct"), body.get("firmware"), body.get("ts")
    if state not in STATES:
        return Outcome("rejected", f"state must be one of {', '.join(STATES)}")
    if battery is not None and (isinstance(battery, bool) or not isinstance(battery, int) or not 0 <= battery <= 100):
        return Outcome("rejected", "battery_pct must be an integer 0-100")
    if firmware is not None:
        firmware = _plain_text(firmware)
        if firmware is None:
            return Outcome("rejected", "firmware must be printable text of at most 64 characters")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 < ts < 1e11:
        return Outcome("rejected", "ts must be the lock's unix time in seconds")
    connection = body.get("connection")
    if connection is not None and (
        isinstance(connection, bool) or not isinstance(connection, int) or not 0 <= connection <= MAX_CONNECTION
    ):
        return Outcome("rejected", "connection must be the number of the connection it is sent on, at most 15 digits")
    if connection is not None and _ahead(connection, now):
        return Outcome("rejected", CONNECTION_AHEAD)
    reported = dt.datetime.fromtimestamp(ts, dt.UTC)
    if reported > now + dt.timedelta(seconds=MAX_FUTURE_S):
        return Outcome("rejected", "ts is in the future")
    row = batch.states.get(lock_id)
    if row is None:
        return Outcome("stale", NO_STATE)
    key = report_key(reported, state)
    if key in row.recent_reports or (reported == row.reported_at and state == row.state):  # delivered again
        return Outcome("stale", "this report was already taken")
    # the last reports by the lock's time of them, not by their coming: each key of a redelivery of more than
    # RECENT_REPORTS reports pushed out the next one's, and 99 of 100 redelivered were listed again as late and
    # charged to the feed's budget again (attack run 29); one older than every key kept, with as many kept, may have
    # been taken already and is answered as taken
    if len(row.recent_reports) >= RECENT_REPORTS and _key_time(key) < min(map(_key_time, row.recent_reports)):
        return Outcome("stale", "this report is older than the last ones known: taken as already taken")
    row.recent_reports = sorted([*row.recent_reports, key], key=_key_time)[-RECENT_REPORTS:]
    row.changed = True
    entry_id = f"state-{key}"
    if row.reported_at is not None and row.reported_at >= reported:
        # it came after a report of the same moment or a newer one (delivered out of order): the state stays; the
        # feed still lists it, marked late, with the lock's time of it
        fields = {"state": state, "reported_at": reported.isoformat(), "late": True}
        list_in_feed(batch, lock_id, row, now, "state", entry_id, **fields)
        return Outcome("stale", "a newer report was already applied: listed in the feed as late, state unchanged")
    row.state, row.reported_at = state, reported
    _seen_on(row, connection, reported, now, run)
    row.battery_pct = battery if battery is not None else row.battery_pct
    row.firmware = firmware if firmware is not None else row.firmware
    listed = list_in_feed(batch, lock_id, row, now, "state", entry_id, state=state, reported_at=reported.isoformat())
    doc = _lock_doc_fields(row.state, row.battery_pct, row.firmware, row.online, row.last_seen, reported)
    _mirror_lock_doc(batch, lock_id, row, listed, doc)
    return Outcome("applied")


def _seen_on(row: _State, connection: int | None, reported: dt.datetime, now: dt.datetime, run: int | None) -> None:
    """A state report says its lock is online, unless it names a connection whose end was already applied: relay
    replicas share the lock's events and an abandoned session's are forwarded late, so a report sent just before a
    goodbye could come after it, and it showed the offline lock online; commands were then sent into its broker
    session. Such a report counts only when the lock made it more than ``LIVE_AFTER`` after it was last heard from:
    then the lock is on a live connection whose number went back (a counter not kept across a reboot), which counts
    from then on. One naming a connection newer than the last status applied stands for that connection's ``online``
    (which may come after it): an older connection's goodbye, late, is then stale. One that names no connection
    (firmware before the field) says the lock is online, as it always did. A report published in a newer broker
    run than the one its connection was last heard from on was made on a connection of that run."""
    order, last = (None if connection is None else 2 * connection), row.status_order
    if order is not None and last is not None and last > order:  # that connection's end was applied
        if (row.last_seen is not None and reported <= row.last_seen + LIVE_AFTER) or reported > now + LIVE_AFTER:
            # made before that end was applied, or too near it to tell, or by a clock further ahead than the lock's
            # may be (90 s ahead brought a dead lock back: attack run 18): not heard from now
            return
    if order is not None and order != last:  # a connection first heard of now (newer, or its number went back)
        row.status_order, row.connected_at = order, now
    elif not row.online or row.connected_at is None:
        row.connected_at = now  # back, on a connection it does not name (firmware before the field)
    row.online, row.last_seen, row.connected_run = True, now, _newest(run, row.connected_run)


def _plain_text(value: Any) -> str | None:
    """``value`` as kept (NFC), or None unless it is text every member of the lock may be shown as the lock wrote
    it: the rule for text others read (``shown_text``: no control, invisible or private-use character, line
    separator or flood of marks; a line separator and a Hangul filler were taken: attack run 118), in its one
    spelling (``shown_text.spelled``: trimmed and a run of spaces made one too, as a name is; a firmware of "1.0",
    60 spaces and more pushed the rest out of the members' view, attack run 122). Empty is empty."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = shown_text.spelled(value)  # a few letters are longer in NFC (U+0958)
    return text if text == "" or (len(text) <= 64 and shown_text.problem_in(text) is None) else None


def _ack(con: Connection, lock_id: str, body: dict[str, Any], now: dt.datetime) -> Outcome:
    command_id, nonce, result, reason = body.get("id"), body.get("nonce"), body.get("result"), body.get("reason")
    if not isinstance(command_id, str) or not isinstance(nonce, str) or result not in ACK_RESULTS:
        return Outcome("rejected", "ack needs id, nonce and result (ok, failed or refused)")
    if reason is not None and not isinstance(reason, str):
        return Outcome("rejected", "reason must be a string")
    command_id = inputs.canonical_uuid(command_id)
    if command_id is None:
        return Outcome("rejected", "id is not a command id")
    # an ack settles an open command, and also one that expired (the lock acted in time, by its grant or the message,
    # and its ack was held up while the relay or the broker was away: 29 doors that opened read ``expired`` in attack
    # run 13), one withdrawn (a voice grant the lock acted on by its HTTP answer) or one a newer command's ack marked
    # superseded (two relay replicas may take one lock's acks out of order); one the lock answered is a duplicate
    rows = con.run(
        "UPDATE commands c SET status = :st, acked_at = CASE WHEN :st = 'acked' THEN :now ELSE acked_at END,"
        " last_error = :err FROM (SELECT id, status AS was FROM commands WHERE id = CAST(:i AS uuid)"
        " AND lock_id = CAST(:l AS uuid) FOR UPDATE) old"
        " WHERE c.id = old.id AND lock_id = CAST(:l AS uuid) AND nonce = :n"
        " AND (status IN ('pending', 'sent', 'expired') OR (status = 'failed' AND last_error = ANY(:settled)))"
        " AND expires_at > CAST(:now AS timestamptz) - make_interval(secs => :late_s)"
        " RETURNING action, issuer_kind, issuer_uid, expires_at <= :now, created_at, recorded_at, old.was = 'failed'",
        st=ACK_RESULTS[result],
        now=now,
        err=None if result == "ok" else command_outcomes.lock_said(result, reason),
        i=command_id,
        l=lock_id,
        n=nonce,
        settled=list(command_outcomes.SETTLED_BY_AN_ACK),
        late_s=LATE_ACK_TAKEN.total_seconds(),
    )
    if not rows:
        return Outcome("duplicate", "no command this lock has yet to answer with this id and nonce")
    action, issuer_kind, issuer_uid, late, created, recorded, settled_before = rows[0]
    if result in ("ok", "failed"):
        # the lock refuses, unacknowledged, every command signed in an earlier second than one it carried out or
        # tried (it records the time before it acts: step 8): one never sent is settled here. Not one already sent:
        # the lock may have carried it out before the newer one and its ack been lost (a broker killed before it
        # saved the ack: attack run 16 read ``failed`` for a door that opened); it reads ``expired`` unless its ack
        # comes. One the relay holds while it publishes is passed over, not waited for past the statement limit with
        # every lock's batch
        con.run(
            "UPDATE commands SET status = 'failed', last_error = :superseded WHERE id IN (SELECT id FROM commands"
            " WHERE lock_id = CAST(:l AS uuid) AND status = 'pending' AND expires_at > :now"
            " AND date_trunc('second', created_at) < date_trunc('second', CAST(:c AS timestamptz))"
            " FOR UPDATE SKIP LOCKED)",
            l=lock_id,
            c=created,
            now=now,
            superseded=command_outcomes.SUPERSEDED,
        )
    if result == "ok" and action in ("unlock", "open") and issuer_kind == "user" and not (late or settled_before):
        # a successful app unlock ends a voice lockout, the failures counted before it was made (``recorded``, the
        # database's clock, as a failure's count is: one begun since is not the one it answered, attack run 14); if a
        # voice decision there holds it now, a marker that the decision (failing) or the lock's next attempt takes
        # ends it (``lockout.clear_unless_busy``); not one acked late, withdrawn (its issuer removed) or superseded
        lockout.clear_unless_busy(con, lock_id, counted_before=recorded)
    late_mark = {"late": True} if late else {}  # acknowledged after its expiry
    audit.record(
        con,
        audit.lock_actor(lock_id),
        "command.ack",
        "ok" if result == "ok" else "failed",
        lock_id=lock_id,
        target=command_id,
        details={"result": result, **late_mark},
    )
    mirror.activity(
        con,
        lock_id,
        "command_ack",
        at=now,
        command_id=command_id,
        action=action,
        result=result,
        actor_uid=issuer_uid,
        **late_mark,
    )
    return Outcome("applied")
