"""The devices side of the relay's periodic upkeep (``POST /devices/relay/flush``): access documents whose edge has
come, locks not back since their broker restarted, expired rows, accounts deleted outside the app. Each step runs in
its own transactions, and each runs whatever the others did: a prune the database refuses for now does not hold up
the guests' windows or the accounts' checks."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from lockwise.core import accounts, errors, retention
from lockwise.core.config import Settings
from lockwise.core.db import Database
from lockwise.devices import broker_restarts, gone_accounts, lock_auth, lock_events, members, topics

T = TypeVar("T")
log = logging.getLogger("lockwise.devices.upkeep")


#: the longest uptime a broker is taken to report (ten years): past it, the relay is wrong
MAX_BROKER_UPTIME_S = 10 * 365 * 86400
#: how old (or how far ahead, by the relay's clock) an upkeep that carries the broker's uptime may be: the start is
#: dated on arrival, and a request held up D seconds dated it D seconds late, turning live locks offline for a minute
#: (attack run 18: 20 s, every live lock)
MAX_UPKEEP_AGE_S = 2.0


@dataclass(frozen=True)
class BrokerSeen:
    """What the relay's upkeep says of its broker: which run it is in (its plugin's), and when it started."""

    run: int | None = None
    started_at: dt.datetime | None = None


def broker_seen(body: dict[str, Any], now: dt.datetime) -> BrokerSeen | None:
    """The relay's broker, from its upkeep's ``broker_run``, ``broker_uptime_s`` and ``sent_at`` (None: neither
    sent). Fields it does not name are let be (a newer relay's)."""
    run = body.get("broker_run")
    if run is not None and not topics.is_run(run):
        raise errors.BadRequest("broker_run must be a positive 64-bit integer", code="invalid_broker_run")
    run = lock_events.taken_run(run, now)  # one ahead of the time: its events' runs are not taken either
    started_at = broker_start(body, now)
    return None if run is None and started_at is None else BrokerSeen(run, started_at)


def broker_start(body: dict[str, Any], now: dt.datetime) -> dt.datetime | None:
    """When the relay's broker started, from its upkeep's ``broker_uptime_s`` and ``sent_at`` (None: not sent, or
    the request too old to date it: ``MAX_UPKEEP_AGE_S``). An uptime, dated on this instance's clock: the relay's
    clock running ahead turned live locks offline (a review). A run needs no such care: it is an order, and one
    held up only names an older run, whose locks are gone."""
    if body.get("broker_uptime_s") is None:
        return None
    uptime = _seconds(body, "broker_uptime_s", MAX_BROKER_UPTIME_S)
    sent_at = _seconds(body, "sent_at", 1e11)
    if abs(now.timestamp() - sent_at) > MAX_UPKEEP_AGE_S:  # held up, or the two clocks apart: no sweep this time
        log.warning("broker uptime not used: the upkeep is too old", extra={"fields": {"sent_at": sent_at}})
        return None
    return now - dt.timedelta(seconds=uptime)


def _seconds(body: dict[str, Any], name: str, most: float) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= most:
        raise errors.BadRequest(f"{name} must be a number of seconds, 0 to {most:.0f}", code="invalid_broker_uptime")
    return float(value)


#: passes of ``lock_events.mirror_behind`` a flush makes while each comes back full
BEHIND_PASSES = 4


def every_step(
    db: Database,
    directory: Callable[[], accounts.Directory],
    settings: Settings,
    now: Callable[[], dt.datetime],
    broker: BrokerSeen | None = None,
) -> bool:
    """Run every step; the first step's failure is raised once all have run. Returns whether locks' access is left
    due (many edges fell together: the relay asks again at once rather than at its next period).
    ``broker``: the relay's broker's run and start, as far as it knows: locks whose connection came before are turned
    offline (``broker_restarts.not_back_since``)."""
    failures: list[Exception] = []

    def attempted(step: Callable[[], T]) -> T | None:
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - raised below, once every step has run
            failures.append(exc)
            return None

    def prune_expired() -> None:
        with db.transaction() as con:
            retention.prune_expired(con, nonces_kept_s=lock_auth.nonces_kept_s(settings))

    def forget_clip_identities() -> None:
        with db.transaction() as con:
            retention.forget_clip_identities(con)

    def mirror_behind() -> None:
        for _ in range(BEHIND_PASSES):
            with db.transaction() as con:
                if lock_events.mirror_behind(con, now()) < lock_events.BEHIND_PER_PASS:
                    return

    def not_back(broker: BrokerSeen) -> None:
        while True:
            with db.transaction() as con:
                turned = broker_restarts.not_back_since(
                    con, now(), lock_events.FeedBudget.of(settings), started_at=broker.started_at, run=broker.run
                )
            if turned:
                started = None if broker.started_at is None else broker.started_at.isoformat()
                fields = {"count": turned, "broker_run": broker.run, "broker_started_at": started}
                log.info("locks not back since the broker started: offline", extra={"fields": fields})
            if turned < broker_restarts.NOT_BACK_PER_PASS:
                return

    attempted(lambda: gone_accounts.check(db, directory, settings))  # first: accounts found disabled are due now

    def zone_data() -> None:
        with db.transaction() as con:
            members.mirror_for_zone_data(con)

    attempted(zone_data)  # before the due locks: those it makes due are mirrored in this flush
    access_due = attempted(lambda: members.mirror_access_due(db)) is True
    if broker is not None:
        attempted(lambda: not_back(broker))
    attempted(mirror_behind)
    attempted(prune_expired)
    attempted(forget_clip_identities)
    attempted(lambda: gone_accounts.end(db, now))  # last: up to 20 transactions, holding up no cut-off
    if failures:
        raise failures[0]
    return access_due
