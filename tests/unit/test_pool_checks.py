"""The pool's round trip before lending a connection idle past its window (a fast check beside the real one in
``tests/integration/test_functions_base.py``, which cuts real connections to the test PostgreSQL)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from lockwise.core import db as db_module
from lockwise.core import errors
from lockwise.core.db import Database


class Recorded:
    """A connection that records what it was asked; ``answers`` False makes every statement fail as a reset does."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.answers = True
        self.slow: str | None = None  # a statement that outlasts the socket's timeout
        self.refused: dict[str, str] = {}  # a statement the server refuses, with its SQLSTATE
        self.closed = False
        self.columns: list[dict[str, Any]] | None = None

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        self.asked.append(sql)
        if not self.answers:
            raise ConnectionResetError("reset by peer")
        if sql == self.slow:
            raise TimeoutError("timed out")
        if sql in self.refused:
            from pg8000.exceptions import DatabaseError

            raise DatabaseError({"S": "ERROR", "C": self.refused[sql], "M": "refused"})
        if sql.startswith("SELECT pg_current_xact_id_if_assigned()"):  # read before a COMMIT: wrote nothing
            return [[None, "2026-12-05 00:00:00+00", 4242]]
        return []

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds

    def gettimeout(self) -> float | None:
        return getattr(self, "timeout", None)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Database:
    db = Database("postgresql://u:p@127.0.0.1:1/d", pool_size=3, check_idle_after_s=60)
    monkeypatch.setattr(db, "connect", Recorded)
    return db


def test_a_connection_used_within_the_window_is_lent_without_a_round_trip(pool: Database) -> None:
    with pool.connection() as first:
        pass
    with pool.connection() as again:
        assert again is first
    assert first.asked == []  # type: ignore[attr-defined]


def test_a_connection_idle_past_the_window_is_asked_first(pool: Database) -> None:
    with pool.connection() as first:
        pass
    pool.check_idle_after_s = 0.0
    with pool.connection() as again:
        assert again is first
    assert first.asked == [""]  # type: ignore[attr-defined]


def test_one_that_does_not_answer_is_replaced_with_every_other_idle_one(pool: Database) -> None:
    with pool.connection() as a, pool.connection() as b:
        pass
    for con in (a, b):
        con.answers = False  # type: ignore[attr-defined]
    pool.check_idle_after_s = 0.0
    with pool.connection() as served:
        assert served not in (a, b)
    assert a.closed and b.closed  # type: ignore[attr-defined]
    # a went back last (the inner block ends first): the most recent is asked, the other dropped unasked
    assert a.asked == [""] and b.asked == []  # type: ignore[attr-defined]
    assert db_module._answers(served)


def test_a_transaction_that_meets_a_lost_pooled_connection_begins_again_on_a_new_one(pool: Database) -> None:
    with pool.connection() as a, pool.connection() as b:
        pass
    for con in (a, b):
        con.answers = False  # type: ignore[attr-defined]
    with pool.transaction() as served:  # within the window: lent unasked
        assert served not in (a, b)
    assert a.asked == ["START TRANSACTION"] and b.asked == []  # type: ignore[attr-defined]
    assert a.closed and b.closed  # type: ignore[attr-defined]  # the lost one took the idle one with it
    asked = served.asked  # type: ignore[attr-defined]
    assert asked[0] == "START TRANSACTION" and asked[-1] == "COMMIT" and len(asked) == 3  # its id read before


def test_a_new_connection_lost_as_its_transaction_begins_is_closed_and_a_503(
    pool: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Recorded] = []

    def lost() -> Recorded:
        con = Recorded()
        con.answers = False
        made.append(con)
        return con

    monkeypatch.setattr(pool, "connect", lost)
    with pytest.raises(errors.Unavailable), pool.transaction():
        pass
    assert len(made) == 1 and made[0].closed and pool.idle == []  # not begun again: nothing was pooled


def test_a_lost_connection_takes_the_idle_ones_with_it_and_a_timed_out_one_goes_alone(pool: Database) -> None:
    with pool.connection() as a, pool.connection() as b:
        pass
    with pytest.raises(errors.Unavailable, match="did not answer in time"), pool.connection() as con:
        assert con is a
        a.slow = "SELECT pg_sleep(10)"  # type: ignore[attr-defined]  # waiting on a row lock, say
        con.run("SELECT pg_sleep(10)")
    assert a.closed and not b.closed and pool.idle == [b]  # type: ignore[attr-defined]  # not emptied
    with pytest.raises(errors.Unavailable, match="connection lost"), pool.connection() as con:
        assert con is b
        b.answers = False  # type: ignore[attr-defined]
        con.run("SELECT 1")
    with pool.connection() as c, pool.connection() as d:
        pass
    with pytest.raises(errors.Unavailable, match="connection lost"), pool.connection() as con:
        con.answers = False  # type: ignore[attr-defined]
        con.run("SELECT 1")
    assert c.closed and d.closed and pool.idle == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("state", "code"), [("53300", "database_busy"), ("57P03", "database_unavailable")])
def test_a_server_refusing_a_new_connection_is_a_503(monkeypatch: pytest.MonkeyPatch, state: str, code: str) -> None:
    """pg8000 raises the server's startup refusal (too many clients, starting up) as a DatabaseError: it was a 500."""
    from pg8000.exceptions import DatabaseError

    def refused(*args: Any, **kwargs: Any) -> None:
        raise DatabaseError({"S": "FATAL", "C": state, "M": "refused"})

    monkeypatch.setattr(db_module.PreparingConnection, "__init__", refused)
    with pytest.raises(errors.Unavailable) as caught:
        Database("postgresql://u:p@127.0.0.1:1/d?host=/nonexistent").connect()
    assert caught.value.code == code


def test_only_the_sockets_own_timeout_reads_as_a_slow_server() -> None:
    from pg8000.exceptions import InterfaceError

    def raised(exc: BaseException, cause: BaseException | None = None, context: BaseException | None = None) -> Any:
        exc.__cause__, exc.__context__ = cause, context
        return exc

    read = raised(InterfaceError("network error"), TimeoutError("timed out"))
    assert db_module._timed_out(read)
    # a transaction's ROLLBACK failing on the timed-out socket is raised over the timeout
    assert db_module._timed_out(raised(OSError("cannot read from timed out object"), context=read))
    # the kernel gave up on the path (keepalive or retransmissions): gone, not slow
    assert not db_module._timed_out(raised(InterfaceError("network error"), TimeoutError(110, "Connection timed out")))
    assert not db_module._timed_out(raised(InterfaceError("network error"), ConnectionResetError(104, "reset")))
    # a reset met while rolling back after the model's timeout (not the database's)
    model = raised(errors.Unavailable("the voice model did not answer in time"), TimeoutError())
    assert not db_module._timed_out(raised(InterfaceError("network error"), ConnectionResetError(), context=model))


def test_database_sockets_are_set_to_probe_an_idle_path_within_a_minute() -> None:
    """Linux waits 2 h before its first keepalive probe; the pool's sockets probe after 30 s idle, every 10 s, three
    times, so a path gone silent shows as the socket's error to the pool's poll (no round trip) within ~a minute."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = db_module.tcp_socket("127.0.0.1", server.getsockname()[1], 1.0)
        try:
            got = {
                name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
                for name in ("TCP_NODELAY", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")
            }
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        finally:
            sock.close()
    assert got == {"TCP_NODELAY": 1, "TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}


@pytest.mark.parametrize(
    ("state", "code", "what"),
    [
        ("40P01", "database_busy", "ran into another"),  # deadlock detected
        ("40001", "database_busy", "ran into another"),  # serialization failure
        ("55P03", "database_busy", "waited too long for a lock"),  # lock_timeout
        ("57014", "database_busy", "did not answer in time"),  # statement_timeout
        ("53100", "database_busy", "out of resources"),  # disk full
    ],
)
def test_what_the_server_refuses_for_now_is_a_503_to_try_again_and_the_connection_stays(
    pool: Database, state: str, code: str, what: str
) -> None:
    """pg8000 raises these as a DatabaseError, which the API answered 500 ``internal`` (no hint to try again)."""
    with pool.connection() as a, pool.connection() as b:
        pass
    for borrowed in (pool.connection, pool.transaction):
        with pytest.raises(errors.Unavailable, match=f"{what}; try again") as caught, borrowed() as con:
            assert con is a
            a.refused["UPDATE locks"] = state  # type: ignore[attr-defined]
            con.run("UPDATE locks")
        assert caught.value.code == code
        assert not a.closed and pool.idle == [b, a]  # type: ignore[attr-defined]  # the server is there: kept
    assert a.asked[-2:] == ["UPDATE locks", "ROLLBACK"]  # type: ignore[attr-defined]


def test_a_server_that_can_no_longer_write_costs_every_idle_connection(pool: Database) -> None:
    """Read-only (a failover's old primary, now a standby): a 503, and the pooled connections, all made to that
    server, are replaced."""
    state = "25006"
    with pool.connection() as a, pool.connection() as b:
        pass
    with pytest.raises(errors.Unavailable, match="try again") as caught, pool.transaction() as con:
        assert con is a
        a.refused["INSERT INTO attempts"] = state  # type: ignore[attr-defined]
        con.run("INSERT INTO attempts")
    assert caught.value.code == "database_unavailable"
    assert a.closed and b.closed and pool.idle == []  # type: ignore[attr-defined]


def test_what_the_server_refuses_for_good_is_raised_as_it_is(pool: Database) -> None:
    """A constraint (the caller's to handle: a pairing code taken) or a fault in the SQL stays the driver's error."""
    from pg8000.exceptions import DatabaseError

    for state in ("23505", "42P01", "22P02", "08P01"):  # 08P01: a protocol violation is the code's fault
        with pytest.raises(DatabaseError), pool.transaction() as con:
            con.refused["INSERT"] = state  # type: ignore[attr-defined]
            con.run("INSERT")
        assert pool.idle == [con]


def test_once_a_silent_server_answers_again_the_borrower_that_found_out_holds_nobody_back(pool: Database) -> None:
    """A statement outlasting the socket's timeout marks the server silent: one borrower at a time then finds out
    (a round trip), the others 503 at once. Found answering, the others are served at once, also while the first
    one's block still runs (the review found the gate held through it: a voice decision's forward pass, a mirror
    flush's Firestore calls, turned every other request away while the server answered)."""
    with pool.connection() as a:
        pass
    with pytest.raises(errors.Unavailable, match="did not answer in time"), pool.connection() as con:
        a.slow = "SELECT pg_sleep(10)"  # type: ignore[attr-defined]
        con.run("SELECT pg_sleep(10)")
    with pool.connection() as first, pool.connection() as second:
        assert first is not second


def test_an_error_the_block_raises_is_never_taken_for_its_own_commits_answer_lost(
    pool: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the transaction's own COMMIT is looked up: a 503 its block raises (a nested transaction's lost COMMIT,
    say) is the block's, rolled back and raised as it is."""
    monkeypatch.setattr(pool, "_settle", lambda *args: pytest.fail("the block's error was settled as a COMMIT"))
    inner = errors.Unavailable("database connection lost", code="database_unavailable")
    inner.__cause__ = db_module.CommitUnanswered("7", "2026-12-05 00:00:00+00", 4242)
    with pytest.raises(errors.Unavailable) as raised, pool.transaction():
        raise inner
    assert raised.value is inner


def test_a_transaction_whose_failed_statement_was_caught_is_sent_its_commit_as_it_is(pool: Database) -> None:
    """In a transaction a failed statement ended, any statement but its end is refused (25P02): its id is not read
    (that was a 500), its COMMIT is sent, which the server answers by rolling it back."""
    with pool.transaction() as con:
        con._transaction_status = b"E"  # type: ignore[attr-defined]
    assert con.asked == ["START TRANSACTION", "COMMIT"]  # type: ignore[attr-defined]


def test_a_commits_look_up_keeps_to_one_budget_whatever_its_steps_take(
    pool: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look-up of a COMMIT left unanswered has the connect timeout in all (attack run 38: a server that stalled
    again during it held the request 12 s, each step with its own timeout). Here the connection and each statement
    take 0.4 s of a 1 s budget: the transaction, still "in progress", is not waited for past it, and is answered
    as unknown."""
    asked: list[str] = []

    class Slow(Recorded):
        def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
            asked.append(sql)
            time.sleep(0.4)
            if "pg_xact_status" in sql:
                return [["2026-12-05 00:00:00+00", "in progress"]]
            return [[True]]

    pool.connect_timeout_s = 1.0

    def slow_connect(timeout_s: float | None = None) -> Slow:
        time.sleep(0.4)
        return Slow()

    monkeypatch.setattr(pool, "connect", slow_connect)
    unanswered = db_module.CommitUnanswered("7", "2026-12-05 00:00:00+00", 4242)
    started = time.monotonic()
    status = pool._status_of(unanswered)
    took = time.monotonic() - started
    # 0.8 s here; each step with a timeout of its own, the terminate and a second look-up: 1.6 s
    assert status == "in progress" and took < 1.4, (status, took)  # _settle: commit_unconfirmed
    assert not any("pg_terminate_backend" in sql for sql in asked), asked


def test_a_transaction_is_looked_up_only_on_the_run_of_the_server_that_gave_its_id() -> None:
    """The server's run is its start time and its statistics' reset time (a backend's crash keeps the first and
    resets the second, and may give a lost transaction's id to another): asked of another run, the look-up knows
    nothing, whatever that run says of the id."""

    class Answering(Recorded):
        def __init__(self, run: str) -> None:
            super().__init__()
            self.run_now = run

        def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
            super().run(sql, **params)
            return [[self.run_now, "committed"]]

    unanswered = db_module.CommitUnanswered("7", "2026-12-05 00:00:00+00 2026-12-05 00:00:00+00", 4242)
    assert db_module._xact_status(Answering(unanswered.server_run), unanswered) == "committed"
    crashed = Answering("2026-12-05 00:00:00+00 2026-12-05 00:03:00+00")  # the same start, statistics reset
    assert db_module._xact_status(crashed, unanswered) is None
    assert "pg_stat_get_bgwriter_stat_reset_time" in crashed.asked[0]
