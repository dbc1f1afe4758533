"""Daily quotas kept as rows: how many a key (a user, a lock's credential) had in the last 24 hours, and when one
more fits. The caller holds a lock that serializes the key's quota (``users.hold_caller``, its credential row), so a
parallel burst is counted exactly; it records the new row itself, in the same transaction. And a pace kept in an
instance's memory (``InstancePace``), for reads where a row a request would be a write."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from lockwise.core import errors
from lockwise.core.db import Connection

K = TypeVar("K")
V = TypeVar("V")

DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)


def day_wait(
    con: Connection,
    table: str,
    key_column: str,
    key: str,
    limit: int,
    *,
    since_column: str = "created_at",
    key_type: str = "text",
) -> int:
    """Seconds until ``key`` may have one more row in ``table`` (0: now): at most ``limit`` whose ``since_column`` is
    in the last day and that have not expired (``expires_at``; a late prune never lets one count). ``table`` and the
    columns are this code's names, never input."""
    count, oldest, now = con.run(
        f"SELECT count(*), min({since_column}), now() FROM {table} WHERE {key_column} = CAST(:k AS {key_type})"
        f" AND {since_column} > now() - interval '1 day' AND expires_at > now()",
        k=key,
    )[0]
    if int(count) < limit or oldest is None:
        return 0
    return errors.seconds_until(oldest + DAY, now)


def refuse_when_full(wait: int, message: str, code: str) -> None:
    """429 ``code`` with ``Retry-After: wait`` when a quota's wait (``day_wait``) is not over."""
    if wait:
        raise errors.RateLimited(message, retry_after_s=wait, code=code)


def check(con: Connection, table: str, uid: str, limit: int, *, message: str, code: str) -> None:
    """429 ``code`` when ``uid``'s per-user daily quota in ``table`` (``user_uid``, ``created_at``, ``expires_at``)
    is full; nothing recorded (a read ahead of costly work; ``take`` then counts, under the user's lock)."""
    refuse_when_full(day_wait(con, table, "user_uid", uid, limit), message, code)


def take(con: Connection, table: str, uid: str, limit: int, *, message: str, code: str) -> None:
    """One more row for ``uid`` in ``table``, a per-user daily quota, or 429 ``code`` (``check``)."""
    check(con, table, uid, limit, message=message, code=code)
    con.run(f"INSERT INTO {table} (user_uid) VALUES (:u)", u=uid)


def keep_newest(
    entries: dict[K, V], key: K, value: V, *, now: float, max_age_s: float, cap: int, at: Callable[[V], float]
) -> None:
    """Put ``key`` last in ``entries`` (kept in the order of their times, ``at``) with ``value``, first dropping the
    entries ``max_age_s`` old, oldest first, and all of them once ``cap`` are kept: an instance's memory of its callers
    forgets whoever counts for nothing any more (attack run 114: kept until the cap, every caller stayed)."""
    entries.pop(key, None)
    while entries:
        oldest = next(iter(entries))
        if now - at(entries[oldest]) < max_age_s:
            break
        del entries[oldest]
    if len(entries) >= cap:
        entries.clear()
    entries[key] = value


class InstancePace:
    """At most ``per_minute`` requests of one key (a user) in any minute on this instance; past it 429 ``code``
    with ``Retry-After``. For a read that costs the database and the instance more than its caller's own rows (an
    enrollment's standing reads every co-member's voice at every lock its user is in: attack run 93), where a row a
    request would be a write for a read. A key none of whose requests is in the last minute is forgotten as others
    come (each key is kept in the order of its last request, and the oldest are looked at first); at most ``keys``
    keys remembered (then it starts over). Kept until that cap, every user who had ever asked stayed for the
    instance's life: 1,000 users listing invitations once held ~2 MB for good (with ``PacedAddresses``: attack run
    114)."""

    def __init__(self, per_minute: int, *, message: str, code: str, keys: int = 10_000) -> None:
        self._per_minute, self._message, self._code, self._keys = per_minute, message, code, keys
        self._seen: dict[str, list[float]] = {}  # in the order of each key's last request (its list's last)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._seen.get(key, []) if now - t < 60.0]
            if len(recent) >= self._per_minute:
                raise errors.RateLimited(
                    self._message, retry_after_s=max(1, int(60.0 - (now - recent[0])) + 1), code=self._code
                )
            keep_newest(self._seen, key, [*recent, now], now=now, max_age_s=60.0, cap=self._keys, at=lambda t: t[-1])

    @property
    def remembered(self) -> int:
        """How many keys are kept now."""
        with self._lock:
            return len(self._seen)
