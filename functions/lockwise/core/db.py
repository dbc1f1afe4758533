"""PostgreSQL access through pg8000: a small per-instance connection pool and transactions.

Connections are made lazily, reused across requests, and dropped when the server goes away: an idle one the server
ended (a restart, a failover that closes its connections) is noticed as it is taken from the pool and replaced, so
the first requests after a restart are served. One lost without a word (a failover that moved the server's address to
a new machine, a NAT or firewall that forgot an idle flow) is found by a round trip before it is used again after
more than ``check_idle_after_s`` idle, as HikariCP checks a connection idle past its "alive bypass window", and
replaced with every other idle one. One used more recently is lent unasked (a busy instance pays no round trip): a
transaction that finds it lost as it begins is begun again on a new connection. A connection lost anywhere else
(reset, or its stream ended) takes every idle one with it; one whose statement outlasted the socket's timeout is
closed alone (the server may only be slow; a statement waiting on a row lock is stopped by the server first, at
``STATEMENT_TIMEOUT_S``). Either surfaces as ``Unavailable("database")`` (503), as does a server refusing a new
connection (starting up, full) or a statement for now (``PASSING_REFUSALS``: a deadlock, a timeout, a read-only
server after a failover), never as a 500 with driver text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from lockwise.core import errors
from lockwise.core.database_url import split_url

log = logging.getLogger("lockwise.core.db")


class Connection(Protocol):
    """The part of ``pg8000.native.Connection`` this code base uses."""

    columns: list[dict[str, Any]] | None

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any: ...

    def settimeout(self, seconds: float | None) -> None: ...

    def gettimeout(self) -> float | None: ...

    def close(self) -> None: ...


class PreparingConnection(pg8000.native.Connection):  # type: ignore[misc]  # pg8000 has no type hints
    """pg8000's connection, each statement with parameters prepared once per connection and reused.

    pg8000 runs a statement with parameters as an unnamed one in three round trips, each waiting for the server
    (Parse, then Describe, then Bind and Execute) and parses its named parameters again on every call. Prepared, a
    run is one round trip (Bind, Execute, Sync). The server decides the parameter and result types at preparation
    exactly as it does for the unnamed statement, so results are the same. At most ``MAX_PREPARED`` statements are
    kept (the code's SQL is static text; beyond that, statements run unnamed), and of their results only the last
    run's on the connection, as pg8000 keeps an unnamed statement's. A prepared statement whose run the server
    refused as stale (a migration changed what it reads) is closed, forgotten and prepared anew on its next use;
    outside a transaction the refused run is made again at once, unnamed (inside one, the error has aborted the
    transaction).
    """

    MAX_PREPARED = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepared: dict[str, Any] = {}

    def settimeout(self, seconds: float | None) -> None:
        """How long a read or write on the connection's socket (the TLS one, when wrapped) may wait from now on;
        pg8000 takes one ``timeout`` for connecting and for every statement after."""
        self._usock.settimeout(seconds)

    def gettimeout(self) -> float | None:
        """How long a read or write on the socket may wait (``settimeout``)."""
        timeout: float | None = self._usock.gettimeout()
        return timeout

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        if not params or stream is not None or types is not None:
            return super().run(sql, stream=stream, types=types, **params)
        statement = self._prepared.get(sql)
        if statement is None:
            if len(self._prepared) >= self.MAX_PREPARED:
                return super().run(sql, **params)
            statement = self._prepared[sql] = self.prepare(sql)
        try:
            rows = statement.run(**params)
        except DatabaseError as exc:
            if sqlstate(exc) not in STALE_PLAN:  # a constraint refusing a row, say: the statement stays prepared
                raise
            del self._prepared[sql]
            # closed on the server too (a Close message is taken in an aborted transaction, and is no error for a
            # statement the server no longer has): forgotten only here, each stayed there for the connection's life,
            # one more each migration (attack run 114's leftover)
            with contextlib.suppress(DatabaseError):
                statement.close()
            if in_transaction(self):
                raise  # the error aborted the caller's transaction: only the caller can run it again
            return super().run(sql, **params)  # outside a transaction: run once unnamed; prepared anew next time
        # what ``columns`` and ``row_count`` read: the connection's last result alone. pg8000's statement keeps its
        # own last result too, and each of up to ``MAX_PREPARED`` statements on each pooled connection held its
        # last rows until it ran again there: a door's known recordings (up to ~1,500 fingerprints of ~19 KB) stayed
        # in memory between requests, once a connection (attack run 114)
        self._context, statement._context = statement._context, None
        return rows


UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"
CHECK_VIOLATION = "23514"
TOO_MANY_CONNECTIONS = "53300"


#: what the server answers when it could not run a statement now but may on the next try, by SQLSTATE (or its
#: class's first two characters): a 503 with the caller's words, not a 500 with the driver's. "busy": the server is
#: there and the connection stays usable; "gone": it can no longer write (a failover's old primary, now a read-only
#: standby), so the connection and every idle one are replaced.
@dataclass(frozen=True)
class Refusal:
    """One of ``PASSING_REFUSALS``: ``gone`` when the connection (and every idle one) must be replaced."""

    what: str
    gone: bool = False

    def unavailable(self, exc: DatabaseError) -> errors.Unavailable:
        """The 503 for it, logged with the server's detail (a deadlock's names the cycle: the fix is in the code's
        lock order)."""
        fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        log.warning(
            "the database refused a statement for now",
            extra={"fields": {"sqlstate": fields.get("C"), "detail": str(fields.get("D") or "")[:500]}},
        )
        code = "database_unavailable" if self.gone else "database_busy"
        return errors.Unavailable(f"{self.what}; try again", code=code)


PASSING_REFUSALS: dict[str, Refusal] = {
    "40001": Refusal("the database stopped a transaction that ran into another"),  # serialization failure
    "40P01": Refusal("the database stopped a transaction that ran into another"),  # deadlock detected
    "55P03": Refusal("the database waited too long for a lock"),  # lock not available (lock_timeout)
    "57014": Refusal("the database did not answer in time"),  # canceled: statement_timeout, or an operator
    "53": Refusal("the database is out of resources"),  # disk full, out of memory, too many connections
    "25006": Refusal("the database cannot write now (a failover is under way)", gone=True),  # read-only
    # (a shutdown's 57P01, an idle transaction ended by the server's limit (25P03) are fatal: the server closes the
    # connection with them, which pg8000 raises as the lost connection it is; an 08P01 protocol violation is a fault
    # in the code, not the server's passing state)
}
#: a pooled connection's statement is stopped by the server after this long (``statement_timeout``, which counts
#: the wait for a row lock), a little before the socket's own timeout gives up on it: the server then stops waiting
#: as the caller does (a write given up on by the caller is never made later) and the connection is kept
STATEMENT_TIMEOUT_S = 4.0
#: how long a pool's borrower waits for one of its connections (held through a voice decision's forward pass, or a
#: mirror flush's Firestore calls, they come back within seconds; a server that does not answer makes borrowers 503
#: at once instead, ``Database._lent``), as HikariCP's ``connectionTimeout``
SLOT_WAIT_S = 30.0
#: the wait for the session of a COMMIT left unanswered to end (``Database._status_of``), under the lookup
#: connection's own ``statement_timeout``
TERMINATE_WAIT_S = 3.0
#: what the terminate's statement is given beyond its wait: the round trip, the look-up after it
TERMINATE_MARGIN_S = 0.5
#: a transaction left open without a statement this long is ended by the server, with its row locks
#: (``idle_in_transaction_session_timeout``): an instance frozen or cut off mid-request does not hold a lock's rows
#: for the server's TCP keepalive (2 h by default). Far above the longest wait inside one (verify's forward pass,
#: ``FORWARD_WAIT_S``, 20 s).
IDLE_IN_TRANSACTION_S = 60.0
#: a TCP path idle this long is probed, every ``KEEPALIVE_INTERVAL_S``, and given up after ``KEEPALIVE_PROBES``
#: unanswered: by the client's kernel (``tcp_socket``) and, asked at each connection's start, by the server's
#: (``tcp_keepalives_*``), which otherwise keeps a vanished client's session for its own default, 2 h 11 min on Linux.
#: A relay replica whose host vanished (its link gone, then killed: no FIN reached the server) held its slot's
#: session-level advisory lock so, and no live replica emptied its abandoned MQTT session, where the broker queues a
#: share of every lock's events, before that session's expiry (an hour) dropped them (attack run 126: the slot was
#: still held 150 s on; free ~70 s after the host went now)
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 3
#: "cached plan must not change result type" (a table the statement reads was altered), "prepared statement does
#: not exist"
STALE_PLAN = frozenset({"0A000", "26000"})


@dataclass(frozen=True)
class ConnectParams:
    user: str
    password: str | None
    database: str
    host: str | None
    port: int
    unix_sock: str | None
    ssl: bool

    @classmethod
    def from_url(cls, url: str) -> ConnectParams:
        """Parse ``postgresql://user:pass@host:port/db`` (``?host=/socket/dir`` selects a unix socket)."""
        parts = split_url(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("DATABASE_URL must start with postgresql://")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unix_dir = query.get("host")
        port = parts.port or 5432
        unix_sock = f"{unix_dir.rstrip('/')}/.s.PGSQL.{port}" if unix_dir and unix_dir.startswith("/") else None
        return cls(
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password) if parts.password is not None else None,
            database=(parts.path or "/").lstrip("/") or "postgres",
            host=None if unix_sock else (parts.hostname or "127.0.0.1"),
            port=port,
            unix_sock=unix_sock,
            ssl=query.get("sslmode", "disable") in ("require", "verify-ca", "verify-full"),
        )


def tcp_socket(host: str, port: int, timeout_s: float) -> socket.socket:
    """A connected TCP socket for pg8000 with Nagle's algorithm off, as libpq sets it: pg8000 leaves it on, and a
    statement with a large parameter (a voice fingerprint, ~19 KB) then waited for the server's delayed ACK,
    ~40 ms per statement (measured in the verify request: 43 ms for that insert, 1 ms with TCP_NODELAY)."""
    sock = socket.create_connection((host, port), timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # a path gone silent is found by the kernel within ~a minute of idling (Linux's default waits 2 h before the
    # first probe); the pool's poll then sees the socket's error without a round trip
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        except (AttributeError, OSError):  # a platform without it keeps its own timers: no reason to refuse
            pass
    return sock


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE code of a pg8000 server error, if it is one."""
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        code = exc.args[0].get("C")
        return str(code) if code is not None else None
    return None


class Database:
    """A bounded pool of pg8000 connections for one process.

    ``check_idle_after_s``: a connection idle longer than this is asked a round trip (an empty query) before it is
    lent again; one used more recently is lent as it is (a busy instance pays nothing; the first request after a
    pause pays one round trip, 0.07-0.23 ms locally: ``./dev bench pool``)."""

    def __init__(
        self,
        url: str,
        pool_size: int = 4,
        connect_timeout_s: float = 5.0,
        check_idle_after_s: float = 0.5,
        statement_timeout_s: float = STATEMENT_TIMEOUT_S,
        read_timeout_s: float | None = None,
        on_connect: Callable[[Connection], None] | None = None,
    ) -> None:
        self.params = ConnectParams.from_url(url)
        #: run on each new connection before it is used (a function's check that the database is its deployment's:
        #: ``lockwise.core.deployment``); what it raises closes the connection and is raised
        self.on_connect = on_connect
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        #: a statement's wait for its answer once connected (``connect_timeout_s`` unless given: a job whose
        #: statements run minutes still gives up on an unreachable server within the connect timeout)
        self.read_timeout_s = connect_timeout_s if read_timeout_s is None else read_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self.check_idle_after_s = check_idle_after_s
        self._idle: list[tuple[Connection, float]] = []  # each with when it went back (``time.monotonic``)
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        #: the server was last found not answering (a connection or a statement outlasted its socket's timeout):
        #: one request at a time waits to find out whether it answers again (holding ``_finding_out``), the others
        #: are answered 503 at once instead of each waiting out its own timeouts (attack run 37: a server paused for
        #: 30 s held requests and the health check up to 30 s)
        self._silent = False
        self._finding_out = threading.Lock()
        self._tls: Any = None  # one ssl.SSLContext for every connection (loading the system CAs takes ~30 ms)

    @property
    def silent(self) -> bool:
        """The server was last found not answering (one borrower at a time finds out whether it does again)."""
        return self._silent

    def connect(self, timeout_s: float | None = None) -> Connection:
        """A new connection outside the pool (for LISTEN, migrations and tools); ``timeout_s``: to connect, instead
        of ``connect_timeout_s``."""
        timeout_s = self.connect_timeout_s if timeout_s is None else timeout_s
        p = self.params
        kwargs: dict[str, Any] = {"user": p.user, "password": p.password, "database": p.database}
        # each run of a prepared statement planned for its parameters, as an unnamed statement is: a generic plan
        # (the server's choice after five runs) may scan where the values at hand would use an index
        kwargs["startup_params"] = {
            "plan_cache_mode": "force_custom_plan",
            "statement_timeout": f"{round(self.statement_timeout_s * 1000)}",
            "idle_in_transaction_session_timeout": f"{round(IDLE_IN_TRANSACTION_S * 1000)}",
            # the server probes a silent client too (a unix socket's connection ignores these)
            "tcp_keepalives_idle": str(KEEPALIVE_IDLE_S),
            "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL_S),
            "tcp_keepalives_count": str(KEEPALIVE_PROBES),
        }
        # without TLS, say so: pg8000's default (None) builds a CA-loading context (~30 ms) and asks the server for
        # TLS first (one more round trip) on every connection, then goes on in the clear when it is refused
        kwargs["ssl_context"] = self._tls_context() if p.ssl else False
        sock: socket.socket | None = None
        try:
            if p.unix_sock:
                kwargs["unix_sock"] = p.unix_sock
            else:
                host = p.host or "127.0.0.1"
                sock = tcp_socket(host, p.port, timeout_s)
                # pg8000 still needs the host beside its own socket: TLS checks the server's name against it
                kwargs.update(host=host, sock=sock)
            con = PreparingConnection(timeout=timeout_s, **kwargs)
        except (InterfaceError, OSError) as exc:
            if sock is not None:
                sock.close()
            raise errors.Unavailable("database is unreachable", code="database_unavailable") from exc
        except DatabaseError as exc:  # refused at startup: starting up or shutting down (57P03), full (53300)...
            if sock is not None:
                sock.close()
            state = sqlstate(exc) or ""
            # a wrong password, pg_hba or database name is a misconfiguration, not an outage: say so loudly
            level = logging.ERROR if state.startswith("28") or state == "3D000" else logging.WARNING
            log.log(level, "the database refused a connection", extra={"fields": {"sqlstate": state}})
            if state == TOO_MANY_CONNECTIONS:
                raise errors.Unavailable("database is busy", code="database_busy") from exc
            raise errors.Unavailable("database is unavailable", code="database_unavailable") from exc
        if self.read_timeout_s != timeout_s:
            con.settimeout(self.read_timeout_s)
        if self.on_connect is not None:
            try:
                self.on_connect(cast(Connection, con))
            except (InterfaceError, OSError) as exc:  # as a connection that failed: the path or server is gone
                _close_quietly(cast(Connection, con))
                raise errors.Unavailable("database is unreachable", code="database_unavailable") from exc
            except BaseException:
                _close_quietly(cast(Connection, con))
                raise
        return cast(Connection, con)

    def _tls_context(self) -> Any:
        with self._lock:
            if self._tls is None:
                import ssl

                self._tls = ssl.create_default_context()
            return self._tls

    @contextmanager
    def connection(self, slot_wait_s: float = SLOT_WAIT_S) -> Iterator[Connection]:
        """Borrow a pooled connection (503 ``database_busy`` when none is free within ``slot_wait_s``). It goes back
        to the pool when the block ends, also when the block raised one of our errors (a 4xx: a bad signature, a
        missing lock) or PostgreSQL refused a statement (pg8000 has read up to the server's ready message by then),
        provided no transaction is left open; after anything else (a lost socket, an error in the middle of reading an
        answer) it is closed instead; a lost one (reset, or its stream ended) takes every idle one with it (what lost
        one, a failover or a path gone, lost them all: each would cost a request the same wait), a timed-out one goes
        alone."""
        with self._borrowed(begin=False, slot_wait_s=slot_wait_s) as con:
            yield con

    @contextmanager
    def _borrowed(self, begin: bool, slot_wait_s: float = SLOT_WAIT_S) -> Iterator[Connection]:
        if not self._slots.acquire(timeout=slot_wait_s):
            raise errors.Unavailable("database pool exhausted", code="database_busy")
        con: Connection | None = None
        try:
            pooled, con = self._lent()
            try:
                if begin:
                    handed, con = con, None
                    con = self._begin(handed, pooled is not None)
                yield con
            except (InterfaceError, OSError) as exc:
                if con is not None:
                    _close_quietly(con)  # a timed-out read leaves the protocol mid-message: never reused
                    con = None
                if _timed_out(exc):  # a statement that waited too long (on a row lock, say): only this one
                    self._silent = True  # the server stops its own statements sooner (4 s): it is not answering
                    raise errors.Unavailable("database did not answer in time", code="database_unavailable") from exc
                self._drop_idle()
                raise errors.Unavailable("database connection lost", code="database_unavailable") from exc
            except (errors.LockwiseError, DatabaseError) as exc:
                refusal = _passing_refusal(sqlstate(exc))
                gone = refusal is not None and refusal.gone
                if con is not None and (gone or in_transaction(con)):
                    _close_quietly(con)
                    con = None
                if refusal is None or not isinstance(exc, DatabaseError):
                    raise
                if gone:
                    self._drop_idle()
                raise refusal.unavailable(exc) from exc
            except BaseException:
                if con is not None:
                    _close_quietly(con)
                    con = None
                raise
            finally:
                if con is not None:
                    self._silent = False  # it answered
                    with self._lock:
                        self._idle.append((con, time.monotonic()))
        finally:
            self._slots.release()

    def _lent(self) -> tuple[Connection | None, Connection]:
        """The connection a borrower gets, and which pooled one it is (None: new). While the server was last found
        not answering, one borrower at a time finds out (an idle connection asked a round trip whatever its idle
        time, else a new connection), and the others are 503 at once; once it has an answer, the server answers
        again, before the borrower's block runs."""
        finding_out = self._silent and self._finding_out.acquire(blocking=False)
        if self._silent and not finding_out:
            raise errors.Unavailable("the database is not answering", code="database_unavailable")
        try:
            pooled = self._take_idle(ask=finding_out)
            con = pooled if pooled is not None else self.connect()
            if finding_out:
                self._silent = False
            return pooled, con
        except errors.Unavailable as exc:
            if exc.__cause__ is not None and _timed_out(exc.__cause__):  # refused or reset: it answers
                self._silent = True
            raise
        finally:
            if finding_out:
                self._finding_out.release()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """Run the block in one transaction: committed when it returns, rolled back when it raises. A pooled
        connection found lost as the transaction begins (used within the window, so lent unasked) is replaced and
        the transaction begun again on a new one: nothing has run on it yet.

        A COMMIT whose answer never came (the socket's timeout, a reset) may have been made: its transaction is
        looked up on a new connection before the caller hears anything (``_settle``). Made, the block returns as
        after any commit (a 503 would have told a lock whose door was opening that nothing was done); rolled back,
        the 503 of a lost connection; not known in time, 503 ``commit_unconfirmed``."""
        committing = False
        try:
            with self._borrowed(begin=True) as con:
                try:
                    yield con
                except BaseException:
                    try:
                        con.run("ROLLBACK")
                    except (InterfaceError, OSError, DatabaseError):
                        log.warning("rollback failed; connection dropped")
                        raise
                    raise
                committing = True
                _commit(con)
        except errors.Unavailable as exc:
            if not committing or not isinstance(exc.__cause__, CommitUnanswered):
                raise  # the block's own (a nested transaction's included), or not the COMMIT's answer lost
            self._settle(exc.__cause__, exc)

    def _settle(self, unanswered: CommitUnanswered, lost: errors.Unavailable) -> None:
        """Return if the transaction whose COMMIT went unanswered was committed; raise ``lost`` if it was rolled
        back, 503 ``commit_unconfirmed`` if that cannot be known now."""
        status = self._status_of(unanswered)
        fields = {"fields": {"xid": unanswered.xid, "status": status}}
        if status == "committed":
            log.warning("a COMMIT's answer was lost; the server had made it", extra=fields)
            return
        if status == "aborted":
            raise lost
        log.error("a COMMIT's answer was lost and whether it was made is not known", extra=fields)
        raise errors.Unavailable(
            "the database did not confirm the change, which may have been made: read it back before trying again",
            code="commit_unconfirmed",
        ) from lost

    def _status_of(self, unanswered: CommitUnanswered) -> str | None:
        """``pg_xact_status`` of the transaction, asked on a new connection (None: not reachable, no answer, or another
        run of the server: after a restart, a failover or a crash's recovery its id may be another transaction's). While
        its session still holds it open (its COMMIT on the way, or never sent) it is "in progress": that session is
        ended first (``pg_terminate_backend``, waiting up to ``TERMINATE_WAIT_S``), which makes the transaction
        committed or rolled back for good, never committed later. The whole look-up has ``connect_timeout_s``, each step
        what is left of it (attack run 38: a look-up whose server stalled again took 12 s, its steps' own timeouts
        adding up), so a request whose COMMIT went unanswered is answered within twice that."""
        deadline = time.monotonic() + self.connect_timeout_s

        def left() -> float:
            return deadline - time.monotonic()

        try:
            con = self.connect(timeout_s=max(0.05, left()))
        except errors.Unavailable:
            return None
        self._silent = False  # it answers
        try:
            _within(con, left())
            status = _xact_status(con, unanswered)
            wait_s = min(TERMINATE_WAIT_S, left() - TERMINATE_MARGIN_S)
            if status == "in progress" and wait_s > 0:
                _within(con, wait_s + TERMINATE_MARGIN_S)
                con.run(
                    "SELECT pg_terminate_backend(pid, :ms) FROM pg_stat_activity WHERE pid = :p"
                    " AND backend_xid::text = :short",  # the session still in that transaction, not a later one
                    p=unanswered.pid,
                    ms=round(wait_s * 1000),
                    short=str(int(unanswered.xid) % 2**32),
                )
                _within(con, left())
                status = _xact_status(con, unanswered)
            return status
        except (InterfaceError, OSError, DatabaseError):
            return None
        finally:
            _close_quietly(con)

    def _begin(self, con: Connection, pooled: bool) -> Connection:
        """``con`` with a transaction begun, or a new connection with one when pooled ``con`` was found lost (nothing
        has run on it yet, so nothing runs twice). What it does not return, it closes."""
        try:
            con.run("START TRANSACTION")
            return con
        except (InterfaceError, OSError) as exc:
            _close_quietly(con)
            if not pooled:
                raise
            lost = exc
        except BaseException:
            _close_quietly(con)
            raise
        log.warning(  # START TRANSACTION waits on nothing: a timeout here is a path or server gone, as a reset is
            "a pooled database connection was lost as a transaction began: begun again on a new one",
            extra={"fields": {"error": type(lost.__cause__ or lost).__name__}},
        )
        self._drop_idle()
        fresh = self.connect()
        try:
            fresh.run("START TRANSACTION")
        except BaseException:
            _close_quietly(fresh)
            raise
        return fresh

    def ping(self) -> None:
        with self.connection() as con:
            con.run("SELECT 1")

    def open_one(self) -> None:
        """Have a connection waiting in the pool (an instance opens one as it boots, while its model loads, so
        that its first request does not wait for the TCP, TLS and SCRAM handshakes). Never raises: a database that
        is down now is reported by the request that needs it."""
        try:
            with self.connection():
                pass
        except Exception as exc:  # noqa: BLE001 - best effort: whatever failed, the first request meets it again
            log.warning("no database connection opened ahead (%s)", getattr(exc, "code", type(exc).__name__))

    def _take_idle(self, ask: bool = False) -> Connection | None:
        """The most recently used idle connection still alive; ended ones are closed on the way. One that does not
        answer its round trip takes every other idle one with it: they were made to the same server over the same
        path, and each would cost a request the same wait. ``ask``: the round trip whatever its idle time."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                con, since = self._idle.pop()
            if _ended_by_server(con):
                log.info("a pooled database connection was ended by the server (a restart, say): replaced")
                _close_quietly(con)
                continue
            idle_s = time.monotonic() - since
            if (idle_s <= self.check_idle_after_s and not ask) or _answers(con):
                return con
            log.warning(
                "a pooled database connection idle %.1f s did not answer: it and every idle one replaced", idle_s
            )
            _close_quietly(con)
            self._drop_idle()

    @property
    def idle(self) -> list[Connection]:
        """The connections waiting in the pool, the most recently used last."""
        with self._lock:
            return [con for con, _ in self._idle]

    def close(self) -> None:
        self._drop_idle()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for con, _ in idle:
            _close_quietly(con)


def _ended_by_server(con: Connection) -> bool:
    """Whether the server has ended this idle connection (a restart, an idle timeout, a failover that closes it). An
    idle connection is asked nothing, so anything to read on its socket is the server's goodbye or the end of the
    stream: one poll of the socket, no round trip. (pg8000 keeps the socket as ``_usock``; a connection without one
    is taken as it is.)"""
    sock = getattr(con, "_usock", False)
    if sock is False:
        return False
    if sock is None:  # pg8000 closed it
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except Exception:  # noqa: BLE001 - closed underneath, or a socket poll refuses: not worth keeping
        return True


def refused_for_now(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing a statement for now (``PASSING_REFUSALS``): code that catches the
    server's errors to judge its own input lets these through, to be answered 503 and tried again, not judged."""
    return _passing_refusal(sqlstate(exc)) is not None


def _passing_refusal(state: str | None) -> Refusal | None:
    """``PASSING_REFUSALS``' entry for this SQLSTATE (its own, else its class's), or None: anything else the server
    refuses (a constraint, a type) is the caller's to handle or a fault in the code, raised as it is."""
    if state is None:
        return None
    return PASSING_REFUSALS.get(state) or PASSING_REFUSALS.get(state[:2])


def _timed_out(exc: BaseException) -> bool:
    """Whether a network error is the socket's timeout (the server may only be slow) rather than a reset or the end
    of the stream (it is gone). Read through causes and contexts: pg8000 wraps the socket's error, and a transaction
    whose statement timed out raises its ROLLBACK's failure ("cannot read from timed out object") over it."""
    seen: BaseException | None = exc
    for _ in range(8):
        if not isinstance(seen, InterfaceError | OSError):  # past the network's errors (a model's timeout, say)
            return False
        if isinstance(seen, TimeoutError) and seen.errno is None:  # the socket's; ETIMEDOUT (errno 110) is a path
            return True  # the kernel gave up on: gone, not slow
        seen = seen.__cause__ or seen.__context__
    return False


# The server's run, as text: when it started, and when its shared statistics were last reset. A transaction's id is
# only that transaction's within one run. A restart or a failover starts a new server; a backend's crash does not
# (``pg_postmaster_start_time`` stays), but its recovery may give again the ids whose records were not yet on disk
# (a COMMIT still being flushed among them), and it resets the statistics (the background writer's reset time is
# one function call: ~8 us a transaction here, where reading ``pg_stat_wal`` took ~55).
_SERVER_RUN = "pg_postmaster_start_time()::text || ' ' || coalesce(pg_stat_get_bgwriter_stat_reset_time()::text, '')"


class CommitUnanswered(InterfaceError):  # type: ignore[misc]  # pg8000 has no type hints
    """A transaction's COMMIT was sent and its answer never came: ``xid`` (``pg_current_xact_id``, as text) is how
    the server knows the transaction, ``server_run`` which run of the server gave it (``_SERVER_RUN``: an id is only
    that transaction's there), ``pid`` the session that held it."""

    def __init__(self, xid: str, server_run: str, pid: int) -> None:
        super().__init__(f"no answer to the COMMIT of transaction {xid}")
        self.xid = xid
        self.server_run = server_run
        self.pid = pid


def _commit(con: Connection) -> None:
    """COMMIT ``con``'s transaction. Its id is read first (one round trip): a COMMIT whose answer is lost raises
    ``CommitUnanswered`` with it, to be looked up; a transaction that wrote nothing has none, and its lost answer is
    the lost connection it is. A transaction a failed statement ended (its error caught by the caller) is sent its
    COMMIT as it is: the server rolls it back."""
    if getattr(con, "_transaction_status", None) == b"E":
        con.run("COMMIT")
        return
    xid, server_run, pid = con.run(f"SELECT pg_current_xact_id_if_assigned()::text, {_SERVER_RUN}, pg_backend_pid()")[0]
    try:
        con.run("COMMIT")
    except (InterfaceError, OSError) as exc:
        if xid is None:
            raise
        raise CommitUnanswered(xid, server_run, int(pid)) from exc


def _within(con: Connection, seconds: float) -> None:
    """Give ``con``'s next statement ``seconds`` (at least a moment) before its socket gives up; a timed-out one
    raises the network's error (a connection without ``settimeout``, a test's fake, is left as it is)."""
    if seconds <= 0:
        raise TimeoutError("no time left")
    settimeout = getattr(con, "settimeout", None)
    if settimeout is not None:
        settimeout(seconds)


def _xact_status(con: Connection, unanswered: CommitUnanswered) -> str | None:
    """ "committed", "aborted", "in progress", or None: too old to know, or asked of another run of the server than
    the transaction's (restarted, failed over, or recovered from a backend's crash since: its id may be another's
    there)."""
    run, status = con.run(f"SELECT {_SERVER_RUN}, pg_xact_status(CAST(:x AS xid8))", x=unanswered.xid)[0]
    return None if status is None or run != unanswered.server_run else str(status)


def _answers(con: Connection) -> bool:
    """Whether the connection answers an empty query (one round trip) in time (the socket's timeout, the pool's
    ``connect_timeout_s``)."""
    try:
        con.run("")
    except Exception:  # noqa: BLE001 - reset, timed out, refused by a server shutting down: not worth keeping
        return False
    return not in_transaction(con)


def in_transaction(con: Connection) -> bool:
    """Whether ``con`` is inside a transaction (``Database.transaction``), where a row lock lasts until it ends.
    pg8000 tracks the server's transaction status byte: b"I" idle, b"T" in a transaction, b"E" in a failed one (a
    connection without it, a test's fake, counts as idle)."""
    return getattr(con, "_transaction_status", None) in (b"T", b"E")


def _close_quietly(con: Connection) -> None:
    try:
        con.close()
    except Exception:  # noqa: BLE001 - closing a broken socket may fail in many ways
        pass


def rows_as_dicts(con: Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Run ``sql`` and return each row as ``{column: value}``."""
    rows = con.run(sql, **params)
    names = [c["name"] for c in (con.columns or [])]
    return [dict(zip(names, row, strict=True)) for row in rows]


def clock(con: Connection) -> dt.datetime:
    """The database's wall clock now (``clock_timestamp()``, not the transaction's start): the one clock every
    instance and the relay share, for times whose order between instances matters (a command's, when an issuer's
    commands were withdrawn)."""
    moment: dt.datetime = con.run("SELECT clock_timestamp()")[0][0]
    return moment
