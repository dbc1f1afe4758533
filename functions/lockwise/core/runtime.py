"""Per-instance clients, made once and reused across requests (heavy ones on first use)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from lockwise.core import errors, firestore, health, log, migrate, users
from lockwise.core.auth import User
from lockwise.core.config import Settings, get_settings
from lockwise.core.db import Database, clock
from lockwise.core.forking import in_each_child
from lockwise.core.mirror import Flusher

if TYPE_CHECKING:
    from lockwise.core.id_tokens import IdTokenVerifier


_log = logging.getLogger("lockwise.core.runtime")

#: app users an instance remembers having recorded (a uid, an email, a time: ~150 bytes each)
RECORDED_USERS_MAX = 10_000
#: how long an instance takes a recorded user's row as it last read it (their account found deleted since: their
#: requests are refused at most this long after, besides the per-user writes refusing at once: ``users.hold_caller``)
RECORDED_USER_TTL_S = 60.0
#: how long an instance goes by its last reading of how far its clock is from the database's (a round trip each time)
CLOCK_READ_TTL_S = 60.0
#: an instance whose clock is further than this from the database's says so in a warning at each reading
CLOCK_OFF_WARN_S = 1.0


@dataclass(frozen=True)
class Recorded:
    email: str | None  # the address this instance recorded for the user
    at: float  # when (``time.monotonic()``)
    standing: users.Standing  # what was found of their account: deleted, disabled, sessions revoked


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Runtime:
    """What a function instance holds between requests."""

    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.settings = settings
        self.clock = clock  # a test moves time by replacing it (lockout expiry, membership windows)
        #: ``now`` is ``clock`` set by the database's; a test that moves time with ``clock`` turns this off
        self.clock_set_by_database = True
        self._recorded_users: dict[str, Recorded] = {}  # uid -> what this instance recorded of them
        #: the database's clock less this instance's, and when that was read (``time.monotonic()``; None: never)
        self._clock_off: tuple[dt.timedelta, float | None] = (dt.timedelta(0), None)
        # functions-framework's gunicorn loads main.py in its master and forks the worker that serves: the worker
        # opens its first database connection as it boots (never the master: a socket must not cross the fork)
        in_each_child(self._after_fork)

    def now(self) -> dt.datetime:
        """The time every time-dependent decision of a handler is made at (UTC): the instance's clock set by the
        database's, which verify decides by and commands are made by (``db.clock``), so that a membership's window,
        an invitation's or offer's expiry and a pause begin and end at the same moment for every instance. An instance
        whose clock ran 50 s ahead ended a guest's window 50 s early for the app while the door let her in (the
        devices function stamped and compared those times by its own clock: the note of stop 65)."""
        local = self.clock()
        return local + self._clock_off_database() if self.clock_set_by_database else local

    def _clock_off_database(self) -> dt.timedelta:
        """How far the database's clock is from this instance's, read again (one round trip, on a pooled connection
        if one is free at once: a caller may hold the others) once ``CLOCK_READ_TTL_S`` has passed; the last reading
        (none: 0) while the database cannot be asked."""
        off, read_at = self._clock_off
        if read_at is not None and time.monotonic() - read_at < CLOCK_READ_TTL_S:
            return off
        try:
            with self.db.connection(slot_wait_s=0.0) as con:
                before = self.clock()
                moment = clock(con)
                after = self.clock()
        except errors.Unavailable:
            return off
        off = moment - (before + (after - before) / 2)  # read at the round trip's middle
        self._clock_off = (off, time.monotonic())
        if abs(off.total_seconds()) > CLOCK_OFF_WARN_S:
            log.event(
                _log,
                "this instance's clock is off the database's: its decisions go by the database's",
                level=logging.WARNING,
                database_ahead_s=round(off.total_seconds(), 3),
            )
        return off

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url, pool_size=self.settings.db_pool_size)

    @cached_property
    def verifier(self) -> IdTokenVerifier:
        """Made on the first app request (PyJWT is not imported before: see ``lockwise.core.id_tokens``)."""
        from lockwise.core.id_tokens import verifier_for

        return verifier_for(self.settings.project_id, self.settings.auth_emulator_host)

    @cached_property
    def mirror(self) -> Flusher:
        """The Firestore mirror, which owns the instance's one Firestore client (made on first use)."""
        settings = self.settings
        return Flusher(self.db, lambda: firestore.make_client(settings.project_id, settings.firestore_emulator_host))

    def app_user(self, id_token: str) -> User:
        """The signed-in app user: token verified and recorded in PostgreSQL (invitations wait for an answer); 401
        ``account_deleted`` or ``account_disabled`` once their account was found deleted or disabled, and
        ``token_revoked`` for a token signed in before the account's sessions were last revoked (ID tokens are
        checked offline and live up to an hour after any of these: ``users.standing``).

        The user row is written when this instance has not recorded this uid with this email yet, not on every
        request (users are never deleted, so a recorded row stays); what was found of the account is read again
        once ``RECORDED_USER_TTL_S`` has passed (what holds the user's row, a command among them, reads it at once:
        ``users.hold_caller``), and on every request while the account is refused (one enabled again is let in as
        soon as the relay's flush finds it so)."""
        user = self.verifier.verify(id_token)
        email = users.stored_email(user)
        seen, now = self._recorded_users.get(user.uid), time.monotonic()
        if seen is None or seen.email != email:
            with self.db.transaction() as con:  # remembered once committed
                users.upsert(con, user)
                standing = users.standing(con, user)
            seen = self._recorded(user.uid, Recorded(email, now, standing))
        elif seen.standing.refused is not None or now - seen.at > RECORDED_USER_TTL_S:  # only the standing again
            with self.db.connection() as con:
                standing = users.standing(con, user)
            seen = self._recorded(user.uid, Recorded(email, now, standing))
        refused = seen.standing.refusal(user)  # this token's: a session revoked is one token's, not the account's
        if refused is not None:
            raise users.REFUSED[refused]()
        return user

    def _recorded(self, uid: str, seen: Recorded) -> Recorded:
        if len(self._recorded_users) >= RECORDED_USERS_MAX:  # bounded: start over rather than grow
            self._recorded_users.clear()
        self._recorded_users[uid] = seen
        return seen

    def flush_mirror(self, *, force: bool = False) -> int:
        """Write queued Firestore mirror rows now (best effort: a Firestore outage leaves them queued). ``force``: the
        relay's periodic flush, which tries again at once after a failure and deletes collections itself (a
        request's flush leaves them to a background one). A request's flush while Firestore is failing
        (``Flusher.failing``) is left to a background one: a Firestore that does not answer added its timeout to an
        answer every few seconds (``mirror.BACKOFF_S``) on each instance, for as long as it was away."""
        if force:
            self.mirror.retry_now()
            return self.mirror.flush(deletes=True)
        if self.mirror.failing:
            self.mirror.flush_soon()
            return 0
        return self.mirror.flush(deletes=False)

    def flush_mirror_soon(self) -> None:
        """Flush in the background: rows stay queued in PostgreSQL until written, so nothing is lost if the
        instance is throttled after the response (the next request or the relay's periodic flush writes them)."""
        self.mirror.flush_soon()

    def ping_firestore(self) -> None:
        firestore.ping(self.mirror.client())

    @cached_property
    def health(self) -> health.Reports:
        """The instance's health reports (the last one answered again for a few seconds)."""
        return health.Reports()

    def probes(self) -> dict[str, Callable[[], Any]]:
        """The dependency checks every function's health endpoint runs."""
        return {"database": self.check_database, "firestore": self.ping_firestore}

    def check_database(self) -> dict[str, Any]:
        """The database answers, and has the migrations this code was bundled with (503 ``schema_behind``: the
        instance was deployed ahead of the migration job, and fails on what it lacks)."""
        with self.db.connection() as con:
            return {"migration": migrate.require_current(con)}

    def _after_fork(self) -> None:
        threading.Thread(target=self.db.open_one, name="database-connect", daemon=True).start()


@lru_cache(maxsize=1)
def get_runtime(component: str) -> Runtime:
    """The instance's runtime; configures JSON logging the first time."""
    settings = get_settings(component)
    log.configure(component, settings.log_level)
    return Runtime(settings)
