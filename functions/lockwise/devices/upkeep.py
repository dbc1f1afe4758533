"""The devices side of the relay's periodic upkeep (``POST /devices/relay/flush``): access documents whose edge has
come, expired rows, accounts deleted outside the app. Each step runs in its own transactions, and each runs whatever
the others did: a prune the database refuses for now does not hold up the guests' windows or the accounts' checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from lockwise.core import accounts, retention
from lockwise.core.config import Settings
from lockwise.core.db import Database
from lockwise.devices import gone_accounts, lock_auth, members


def every_step(
    db: Database,
    directory: Callable[[], accounts.Directory],
    settings: Settings,
    now: Callable[[], dt.datetime],
) -> bool:
    """Run every step; the first step's failure is raised once all have run. Returns whether locks' access is left
    due (many edges fell together: the relay asks again at once rather than at its next period)."""
    access_due = False

    def refresh_access() -> None:
        nonlocal access_due
        access_due = members.mirror_access_due(db)

    def prune_expired() -> None:
        with db.transaction() as con:
            retention.prune_expired(con, nonces_kept_s=lock_auth.nonces_kept_s(settings))

    steps: tuple[Callable[[], object], ...] = (
        refresh_access,
        prune_expired,
        lambda: gone_accounts.end(db, directory, settings, now),
    )
    failed: Exception | None = None
    for step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - raised below, once every step has run
            failed = failed or exc
    if failed is not None:
        raise failed
    return access_due
