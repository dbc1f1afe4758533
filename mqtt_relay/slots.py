"""Which relay replica this is: a slot 1..N leased in PostgreSQL, which names the replica's MQTT session.

Every replica must connect with a client id no other live replica uses (the broker throws the older connection off
when two share one), yet a replica that replaces a crashed one should take over the crashed one's persistent session,
because the broker keeps queueing that session's share of lock events until it expires. A session-level advisory
lock per slot gives both: a replica holds the lowest free slot for as long as its lease connection lives, and a
replacement finds the dead replica's slot free again. If the lease connection is lost, ``Lease.check`` takes the
same slot again; when another replica got it meanwhile, the lease is lost and the relay exits (the platform
restarts it), so two live replicas never share a session.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from pg8000.exceptions import DatabaseError, InterfaceError

from lockwise.core import errors
from lockwise.core.db import Connection, Database

log = logging.getLogger("mqtt_relay.slots")

CLIENT_ID_PREFIX = "lockwise-relay-"
#: first key of the two-key advisory lock (the second is the slot number): "lockwise relay slots"
_LOCK_CLASS = 0x10C4_5E1A
#: ``pg_locks`` lists every database of the server: another deployment's relays (staging beside production) are not
#: this one's (attack run 71)
_THIS_DATABASE = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"


class LeaseLost(RuntimeError):
    """Another replica holds this replica's slot now: stop using its session."""


class NoFreeSlot(RuntimeError):
    """Every slot is held by a live replica: more replicas run than ``LOCKWISE_RELAY_SLOTS`` allows."""


class Lease:
    def __init__(self, db: Database, slots: int) -> None:
        self.db = db
        self.slots = slots
        self.slot: int | None = None
        self._con: Connection | None = None

    @property
    def client_id(self) -> str:
        if self.slot is None:
            raise RuntimeError("no slot leased yet")
        return f"{CLIENT_ID_PREFIX}{self.slot}"

    def acquire(self) -> int:
        """Lease the lowest free slot; raises ``NoFreeSlot``, or ``errors.Unavailable`` when the database cannot be
        reached (or is lost on the way)."""
        con = self.db.connect()
        try:
            for slot in range(1, self.slots + 1):
                if con.run("SELECT pg_try_advisory_lock(:c, :s)", c=_LOCK_CLASS, s=slot)[0][0]:
                    self._con, self.slot = con, slot
                    log.info("relay slot leased", extra={"fields": {"slot": slot}})
                    return slot
        except (InterfaceError, DatabaseError, OSError) as exc:  # lost, or refused for now (shutting down)
            with contextlib.suppress(InterfaceError, OSError):
                con.close()
            raise errors.Unavailable("database lost while leasing a slot", code="database_unavailable") from exc
        con.close()
        raise NoFreeSlot(f"all {self.slots} relay slots are held by live replicas (LOCKWISE_RELAY_SLOTS)")

    def check(self) -> bool:
        """True while the lease holds; re-takes the same slot after a lost connection. Raises ``LeaseLost`` when
        another replica holds it now; False while the database cannot be reached (keep going, check again)."""
        if self.slot is None:
            raise RuntimeError("no slot leased yet")
        try:
            if self._con is not None:
                self._con.run("SELECT 1")
                return True
        except Exception:  # noqa: BLE001 - the connection died with its lock; try to take the slot again below
            self._drop()
        try:
            con = self.db.connect()
        except Exception:  # noqa: BLE001 - database away (from this replica: another may lease the slot, having
            # seen it free for ``relay.LEFT_AFTER_S``, and take its session over; this one then exits, attack run 71)
            return False
        try:
            leased = con.run("SELECT pg_try_advisory_lock(:c, :s)", c=_LOCK_CLASS, s=self.slot)[0][0]
        except (InterfaceError, DatabaseError, OSError):  # lost again at once, or still starting up: away, as above
            # (it ended ``Relay.run`` with the exception: attack run 114's leftover)
            with contextlib.suppress(InterfaceError, OSError):
                con.close()
            return False
        if leased:
            self._con = con
            log.info("relay slot leased again", extra={"fields": {"slot": self.slot}})
            return True
        con.close()
        raise LeaseLost(f"relay slot {self.slot} was taken by another replica while the database was away")

    @contextlib.contextmanager
    def borrow(self, slot: int) -> Iterator[str | None]:
        """Hold another slot for a moment (to empty its abandoned session): its client id, or None when a live
        replica (or this one) holds it."""
        if slot == self.slot:
            yield None
            return
        con = self.db.connect()
        try:
            if not con.run("SELECT pg_try_advisory_lock(:c, :s)", c=_LOCK_CLASS, s=slot)[0][0]:
                yield None
                return
            yield f"{CLIENT_ID_PREFIX}{slot}"
        finally:
            with contextlib.suppress(Exception):
                con.close()  # ends the session and with it the advisory lock

    @contextlib.contextmanager
    def borrow_when_free(self, slot: int, timeout_s: float) -> Iterator[str]:
        """``borrow``, waiting while a relay holds the slot for a moment (to empty its session); raises ``NoFreeSlot``
        when it is still held after ``timeout_s`` (a live replica leases it). For a client with a relay's rights
        beside the relays (benchmarks, tests): holding the slot keeps every relay from connecting as it."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.borrow(slot) as client_id:
                if client_id is not None:
                    yield client_id
                    return
            if time.monotonic() > deadline:
                raise NoFreeSlot(f"relay slot {slot} stayed held for {timeout_s} s")
            time.sleep(0.2)

    @staticmethod
    def held(con: Connection) -> set[int]:
        """The slots live replicas (and this one, and any borrowing one) hold now."""
        rows = con.run(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = :c AND objsubid = 2 AND granted"
            f" AND {_THIS_DATABASE}",
            c=_LOCK_CLASS,
        )
        return {int(row[0]) for row in rows}

    def others_alive(self) -> bool:
        """Whether another replica holds a slot now (then it takes all lock events when this one leaves)."""
        if self._con is None:
            return False
        rows = self._con.run(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :c AND objsubid = 2"
            f" AND granted AND pid <> pg_backend_pid() AND {_THIS_DATABASE}",
            c=_LOCK_CLASS,
        )
        return int(rows[0][0]) > 0

    def release(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self._con is not None:
            with contextlib.suppress(Exception):
                self._con.close()
        self._con = None
