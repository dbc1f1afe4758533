"""``Lease.check`` while the database comes and goes (the e2e relay tests restart a real PostgreSQL under it)."""

from __future__ import annotations

from typing import Any

from pg8000.exceptions import DatabaseError, InterfaceError

from mqtt_relay.slots import Lease


class _Con:
    def __init__(self, fails: Exception | None) -> None:
        self.fails, self.closed = fails, False

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        if self.fails is not None:
            raise self.fails
        return [[True]]

    def close(self) -> None:
        self.closed = True


class _Db:
    def __init__(self, *cons: _Con) -> None:
        self.cons = list(cons)

    def connect(self) -> _Con:
        return self.cons.pop(0)


def test_a_new_connection_lost_at_its_first_statement_is_the_database_away_not_the_relays_end() -> None:
    # a connection made while the database was coming back (or going again) whose first statement fails ended
    # ``Relay.run`` with the exception: the relay exited on a database restart instead of checking again (attack run
    # 114's leftover, reasoned there; this reproduces it)
    for failure in (InterfaceError("network error"), DatabaseError({"C": "57P03", "M": "the database is starting up"})):
        first, second = _Con(failure), _Con(None)
        lease = Lease(_Db(first, second), slots=2)  # type: ignore[arg-type]
        lease.slot = 1
        assert lease.check() is False
        assert first.closed
        assert lease.check() is True  # and the next check takes the slot again on a good connection
