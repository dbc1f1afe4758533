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

from lockwise.core import audit, deployment, firestore, health, log, migrate, users
from lockwise.core.auth import User
from lockwise.core.config import Settings, get_settings
from lockwise.core.db import Database
from lockwise.core.db_clock import DatabaseClock
from lockwise.core.forking import in_each_child
from lockwise.core.mirror import Flusher

if TYPE_CHECKING:
    from lockwise.core.id_tokens import IdTokenVerifier


_log = logging.getLogger("lockwise.core.runtime")

#: app users an instance remembers having recorded (a uid, an email, a time: ~150 bytes each)
RECORDED_USERS_MAX = 10_000
#: how long an instance takes a recorded user's row as it last read it (their account found deleted since: their
#: requests are refused at most this long after, besides the per-user writes and the private reads refusing at once:
#: ``users.hold_caller``, ``users.refuse_caller``)
RECORDED_USER_TTL_S = 60.0


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
        self._clock = clock
        #: ``now`` is ``clock`` set by the database's (replacing ``clock`` turns it off)
        self.clock_set_by_database = True
        self.database_clock = DatabaseClock(lambda: self.db)
        self._recorded_users: dict[str, Recorded] = {}  # uid -> what this instance recorded of them
        # functions-framework's gunicorn loads main.py in its master and forks the worker that serves: the worker
        # opens its first database connection as it boots (never the master: a socket must not cross the fork)
        in_each_child(self._after_fork)

    @property
    def clock(self) -> Callable[[], dt.datetime]:
        """The instance's own clock (UTC)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], dt.datetime]) -> None:
        """A test moves time by replacing it (lockout expiry, membership windows): ``now`` is then that clock, not
        set by the database's (a reading taken after the move undid it; attack run 76), unless the test says so."""
        self._clock = clock
        self.clock_set_by_database = False

    def now(self) -> dt.datetime:
        """The time every time-dependent decision of a handler is made at (UTC): the instance's clock set by the
        database's (``lockwise.core.db_clock``)."""
        local = self._clock()
        return local + self.database_clock.offset_now(self._clock) if self.clock_set_by_database else local

    @cached_property
    def db(self) -> Database:
        # each new connection finds the database is this deployment's (503 ``wrong_deployment`` otherwise: attack run
        # 116, ``lockwise.core.deployment``)
        return deployment.database(
            self.settings.database_url, self.settings.project_id, pool_size=self.settings.db_pool_size
        )

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
        audit.acting(user.uid, users.signed_in_at(user))
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
        threading.Thread(target=self._open_database, name="database-connect", daemon=True).start()

    def _open_database(self) -> None:
        """A connection waiting in the pool, and the database's clock read on it (one round trip while the model
        loads, not in the first request). Never raises: what failed, the first request meets again."""
        self.db.open_one()
        try:
            self.now()
        except Exception:  # noqa: BLE001 - best effort, as ``open_one``: the first request reads it again
            _log.warning("the database's clock was not read at boot")


@lru_cache(maxsize=1)
def get_runtime(component: str) -> Runtime:
    """The instance's runtime; configures JSON logging the first time."""
    settings = get_settings(component)
    log.configure(component, settings.log_level)
    return Runtime(settings)
