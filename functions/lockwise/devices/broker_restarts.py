"""Locks not back after their broker restarted: a restart ends every lock's connection, and Mosquitto 2.0 keeps no
last will across a crash, so the relay's upkeep turns offline the locks whose connection came before the broker's
current run (``not_back_since``; the relay's side: ``mqtt_relay.broker_start``)."""

from __future__ import annotations

import datetime as dt

from lockwise.core import mirror
from lockwise.core.db import Connection
from lockwise.devices import lock_events

#: a lock's connection heard of this long before its broker's last start still counts as made after it: the start
#: is dated from the broker's uptime in whole seconds, read a moment late, on one devices instance's clock, and
#: ``connected_at`` on another's (only for connections heard of without a broker run: ``not_back_since``)
BROKER_START_SLACK = dt.timedelta(seconds=10)
#: locks turned offline per transaction (``not_back_since``)
NOT_BACK_PER_PASS = 1000


def not_back_since(
    con: Connection,
    now: dt.datetime,
    feed_budget: lock_events.FeedBudget,
    *,
    started_at: dt.datetime | None = None,
    run: int | None = None,
) -> int:
    """Turn offline the locks shown online whose connection was made before their broker last started, listed in
    their feeds as ``offline`` with ``reason: broker_restart``; returns how many, at most ``NOT_BACK_PER_PASS`` (call
    again, in a new transaction, while it returns that).

    A broker restart ends every lock's connection, and Mosquitto 2.0 keeps no last will across a crash
    (``persist_write.c`` saves none), so a lock that did not come back (its power cut while the broker was away) sent
    no ``offline`` and was shown online until it returned; commands made for it were sent into its broker session.

    ``run``, the broker's current run (its plugin's, as the relay read it): a lock heard from on an earlier run
    (``connected_run``) is not connected, whatever the clocks say; a run is never newer than the broker's own, so this
    never turns a live lock offline, and a lock that connected in the seconds before a second crash is caught (attack
    run 18: two restarts within the slack left it online). ``started_at``, the broker's start dated from its uptime,
    for the connections heard of without a run: ``connected_at`` more than ``BROKER_START_SLACK`` before it (not
    ``last_seen``: a report sent before the crash, forwarded after it, counted as heard from since: a review).

    Each lock turned offline has its connection's end applied (the status order made odd), so that connection's
    ``online`` or state report, forwarded late, does not bring it back (``lock_events``); its next connection's does.
    Idempotent: a lock back since then has a newer connection, and one turned offline is not online."""
    before = None if started_at is None else started_at - BROKER_START_SLACK

    def gone(connected_run: int | None, connected_at: dt.datetime | None) -> bool:
        if run is not None and connected_run is not None:
            return connected_run < run
        return before is not None and connected_at is not None and connected_at < before

    rules = []
    if run is not None:
        rules.append("connected_run < :r")
    if before is not None:
        rules.append(("connected_run IS NULL AND " if run is not None else "") + "connected_at < :b")
    if not rules:
        return 0
    lock_ids = [
        str(row[0])
        for row in con.run(
            f"SELECT lock_id::text FROM lock_state WHERE online AND ({' OR '.join(f'({r})' for r in rules)})"
            " ORDER BY lock_id LIMIT :n",
            n=NOT_BACK_PER_PASS,
            **({"r": run} if run is not None else {}),
            **({"b": before} if before is not None else {}),
        )
    ]
    batch = lock_events.Pending(lock_events.LockStates(con, lock_ids), feed_budget)
    turned = 0
    for lock_id in lock_ids:
        row = batch.states.get(lock_id)  # as locked: a report may have come since the query
        if row is None or not row.online or not gone(row.connected_run, row.connected_at):
            continue
        row.online, row.changed, turned = False, True, turned + 1
        if row.status_order is not None:
            row.status_order |= 1  # its connection's end: "online n" < "offline n"
        batch.writes.append((mirror.lock_doc(lock_id), "merge", {"online": False}))
        lock_events.list_in_feed(batch, lock_id, row, now, "offline", reason="broker_restart")
    batch.write(con)
    return turned
