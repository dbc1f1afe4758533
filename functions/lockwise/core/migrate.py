"""Versioned SQL migrations: ``migrations/NNNN_name.sql`` applied in order, each once, each in a transaction.

Applied versions are recorded in ``schema_migrations`` with a checksum; an applied file that later changes is an
error (write a new migration instead). A session advisory lock makes concurrent runs safe.

Run: ``python -m lockwise.core.migrate`` (uses ``DATABASE_URL``); ``--check`` applies nothing and fails (exit 3) while
the database is behind the migrations bundled here: the deploy runs it before it replaces the functions and the relay.

Code needs the schema of the migrations bundled with it (``bundled_versions``): the functions' health reports and the
relay's start check the database has them (``require_current``), so that code deployed ahead of its migration says
so (503 ``schema_behind``) instead of failing on a table it lacks (a relay's every delivery round did, its health 200:
attack run 62).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pg8000.exceptions import InterfaceError

from lockwise.core import deployment, errors
from lockwise.core.db import Connection, Database, sqlstate

log = logging.getLogger("lockwise.core.migrate")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_ADVISORY_KEY = 0x10C4_3153  # arbitrary, stable: "lockwise migrations"
#: the job's statements may run long (an index built over a large table; the request path's connections are stopped
#: after ``db.STATEMENT_TIMEOUT_S``), and a second run waits this long for the first to finish ...
STATEMENT_TIMEOUT_S = 600.0
#: ... but a migration waiting for a table's lock queues every request that touches the table behind it: it gives
#: up after this long (55P03), nothing of it applied, well before the requests' own ``db.STATEMENT_TIMEOUT_S`` (it
#: was 5 s: every request queued behind it was stopped at 4 s, a 503, and the job failed as well: attack run 62) ...
LOCK_TIMEOUT_S = 1.0
#: ... and is tried again (each migration is all or nothing), up to this many times in all, after a pause doubling
#: from ``LOCK_RETRY_PAUSE_S`` (a voice decision holds a lock's rows through its model pass; a relay round, seconds)
LOCK_TRIES = 6
LOCK_RETRY_PAUSE_S = 1.0
LOCK_NOT_AVAILABLE = "55P03"
#: reaching the server and its startup answer: a job pointed at an unreachable host (a wrong address, a private IP
#: not routed yet) fails in seconds, not after a statement's 10 minutes
CONNECT_TIMEOUT_S = 10.0


UNDEFINED_TABLE = "42P01"


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with the files."""


#: ``require_current``'s 503: the database lacks a migration this code was bundled with (the job has not run)
SCHEMA_BEHIND = "schema_behind"


#: the first line of a migration that builds or drops one index without holding its table's writes
#: (``CONCURRENTLY``, which no transaction may hold): an index built inside the migration's transaction blocked
#: every write to its table for the whole build (0063's on ``commands``: unlocks, the relay's rounds, acks; attack run
#: 62). Such a file holds one statement, ``CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS name ON ...`` or ``DROP
#: INDEX CONCURRENTLY IF EXISTS name`` (an unqualified name), and never sits in a file with an ``ALTER TABLE`` of
#: that table. Comment lines are left out of what runs: what was checked is what runs.
CONCURRENT_MARKER = "-- lockwise: concurrent-index"
_NAME = r"([a-z_][a-z0-9_]*)"
_CREATE_CONCURRENTLY = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+" + _NAME + r"\s+ON\s+[^;]+;?", re.IGNORECASE
)
_DROP_CONCURRENTLY = re.compile(r"DROP\s+INDEX\s+CONCURRENTLY\s+IF\s+EXISTS\s+" + _NAME + r"\s*;?", re.IGNORECASE)
#: a concurrent build waits for every transaction that may use its table, and scans it twice: no lock timeout (it
#: takes a lock that holds up neither reads nor writes, and gave up at 1 s behind a voice decision, six times, each
#: scan lost: attack run 63), a statement limit of its own, within the job's task timeout
CONCURRENT_STATEMENT_TIMEOUT_S = 3000.0


@dataclass(frozen=True)
class ConcurrentIndex:
    """What a concurrent-index migration does (``create`` or ``drop``), to which index, and the statement it runs."""

    does: str
    index: str
    statement: str


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def concurrent_index(self) -> ConcurrentIndex | None:
        """What a concurrent-index migration (``CONCURRENT_MARKER``) does; None for any other migration
        (``MigrationError`` for a marked one that is not one such statement)."""
        first, _, rest = self.sql.partition("\n")
        if first.strip() != CONCURRENT_MARKER:
            return None
        statement = "\n".join(line for line in rest.splitlines() if not line.lstrip().startswith("--")).strip()
        for does, pattern in (("create", _CREATE_CONCURRENTLY), ("drop", _DROP_CONCURRENTLY)):
            match = pattern.fullmatch(statement)
            if match is not None:
                return ConcurrentIndex(does, match.group(1).lower(), statement)
        raise MigrationError(
            f"migration {self.version:04d}_{self.name} is marked {CONCURRENT_MARKER!r} but is not one CREATE INDEX"
            " CONCURRENTLY IF NOT EXISTS name ON ... or DROP INDEX CONCURRENTLY IF EXISTS name statement"
        )


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME_RE.fullmatch(path.name)
        if not match:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_lower_snake.sql")
        migration = Migration(int(match.group(1)), match.group(2), path.read_text())
        migration.concurrent_index  # noqa: B018 - a marked file that is not one such statement: refused before any runs
        found.append(migration)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


@functools.cache
def bundled_versions(directory: Path = MIGRATIONS_DIR) -> frozenset[int]:
    """The migrations bundled with this code (read from the files' names once): the schema it is written for."""
    return frozenset(int(m.group(1)) for p in directory.glob("*.sql") if (m := _NAME_RE.fullmatch(p.name)))


def applied_versions(con: Connection) -> set[int]:
    """The migrations the database has (none for one never migrated)."""
    try:
        rows = con.run("SELECT version FROM schema_migrations")
    except Exception as exc:
        if sqlstate(exc) == UNDEFINED_TABLE:
            return set()
        raise
    return {int(row[0]) for row in rows}


def require_current(con: Connection) -> int:
    """The database's last migration when it has every one bundled here (``bundled_versions``); 503
    ``SCHEMA_BEHIND`` otherwise, naming the first it lacks (by the set, not the last: one merged below a migration
    applied already was missed). A database ahead passes: the previous release runs on the next one's schema while
    a deploy rolls (migrations only add, ``docs/ARCHITECTURE.md``)."""
    applied = applied_versions(con)
    missing = sorted(bundled_versions() - applied)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise errors.Unavailable(
            f"the database lacks migration {missing[0]:04d}{more} this code needs: run the migration job",
            code=SCHEMA_BEHIND,
            retry_after_s=30,
        )
    return max(applied, default=0)


def apply(con: Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply what is missing; return the migrations applied now (empty when up to date)."""
    migrations = load() if migrations is None else migrations
    con.run("SELECT pg_advisory_lock(:k)", k=_ADVISORY_KEY)
    try:
        con.run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        recorded = {int(v): str(c) for v, c in con.run("SELECT version, checksum FROM schema_migrations")}
        applied: list[Migration] = []
        for migration in migrations:
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after it was applied"
                    )
                continue
            _apply_one(con, migration)
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
        return applied
    finally:
        con.run("SELECT pg_advisory_unlock(:k)", k=_ADVISORY_KEY)


def _apply_one(con: Connection, migration: Migration) -> None:
    """``migration`` and its record, in one transaction (a concurrent-index one: ``_apply_concurrently``); tried
    again while it gives up waiting for a lock."""
    pause = LOCK_RETRY_PAUSE_S
    for attempt in range(1, LOCK_TRIES + 1):
        try:
            concurrent = migration.concurrent_index
            if concurrent is not None:
                _apply_concurrently(con, migration, concurrent)
                return
            con.run("START TRANSACTION")
            try:
                con.run(f"SET LOCAL lock_timeout = '{round(LOCK_TIMEOUT_S * 1000)}ms'")
                con.run(migration.sql)
                _record(con, migration)
                con.run("COMMIT")
                return
            except BaseException:
                con.run("ROLLBACK")
                raise
        except Exception as exc:
            if sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            if attempt == LOCK_TRIES:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} waited over {LOCK_TIMEOUT_S:g} s for a lock"
                    f" another session holds, {LOCK_TRIES} times (a long transaction?); nothing applied: run the job"
                    " again"
                ) from exc
            log.warning(
                "migration %04d_%s waited over %g s for a lock; trying again in %g s",
                migration.version,
                migration.name,
                LOCK_TIMEOUT_S,
                pause,
            )
        time.sleep(pause)
        pause *= 2


def _record(con: Connection, migration: Migration) -> None:
    con.run(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
        v=migration.version,
        n=migration.name,
        c=migration.checksum,
    )


def _apply_concurrently(con: Connection, migration: Migration, concurrent: ConcurrentIndex) -> None:
    """A concurrent-index migration, outside any transaction, then its record. A build that fails or is stopped (a
    duplicate under a unique index, its statement limit) leaves its index behind, invalid: never used to read, but
    written with its table and, unique, still refusing duplicates; dropped then (and, left by a job that was itself
    stopped, before the next build: ``IF NOT EXISTS`` would pass over it for good). A build that ended before its
    record is found built and recorded. Its socket waits as long as its statement may run (the job's waited 630 s,
    and a longer build was cut off there while the server built on: attack run 65); a connection lost meanwhile is
    left alone (the next run drops what it left)."""
    index = concurrent.index
    waited = con.gettimeout()
    con.settimeout(CONCURRENT_STATEMENT_TIMEOUT_S + 30)
    con.run(f"SET statement_timeout = '{round(CONCURRENT_STATEMENT_TIMEOUT_S * 1000)}ms'")
    con.run("SET lock_timeout = 0")
    lost = False
    try:
        if concurrent.does == "create" and _invalid(con, index):
            log.warning("dropping index %s, left invalid by a build that did not finish", index)
            con.run(f'DROP INDEX CONCURRENTLY IF EXISTS "{index}"')
        try:
            con.run(concurrent.statement)
        except (InterfaceError, OSError):  # pg8000 raises a reset or a timeout as the OSError it met
            lost = True
            raise
        except Exception:
            if concurrent.does == "create":
                _drop_quietly(con, index)
            raise
    finally:
        if not lost:
            con.run("RESET statement_timeout")
            con.run("RESET lock_timeout")
            con.settimeout(waited)
    _record(con, migration)


def _invalid(con: Connection, index: str) -> bool:
    rows = con.run("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)", n=index)
    return bool(rows and rows[0][0])


def _drop_quietly(con: Connection, index: str) -> None:
    """Drop ``index`` when a failed build left it invalid; what fails here is logged (the build's error is the one
    raised), and the next run drops it first."""
    try:
        if _invalid(con, index):
            con.run(f'DROP INDEX CONCURRENTLY IF EXISTS "{index}"')
            log.warning("dropped index %s, left invalid by the build that failed", index)
    except Exception:  # noqa: BLE001 - the build's own failure is what the job reports
        log.exception("index %s, left invalid by a failed build, was not dropped: the next run drops it", index)


#: how often the server checks, while it runs a statement, that the job is still there: a job stopped by the
#: platform's task timeout left its statement running, an index build holding its table's lock and the migrations'
#: advisory lock with it, until the server next wrote to the gone client (attack run 62); PostgreSQL 14 and later
CLIENT_CHECK_S = 10
UNRECOGNIZED_PARAMETER = "42704"


def job_connection(database_url: str) -> Connection:
    """A connection with the migration job's limits (``STATEMENT_TIMEOUT_S``; the request path's 4 s would stop a
    long migration, and a lock wait past ``LOCK_TIMEOUT_S`` with the server's own error, not ``MigrationError``),
    reached within ``CONNECT_TIMEOUT_S`` (``errors.Unavailable`` past it), its statements stopped once the job is
    gone (``CLIENT_CHECK_S``)."""
    job = Database(
        database_url,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        read_timeout_s=STATEMENT_TIMEOUT_S + 30,  # the server stops a statement first, with its own error
        statement_timeout_s=STATEMENT_TIMEOUT_S,
    )
    con = job.connect()
    try:
        con.run(f"SET client_connection_check_interval = '{CLIENT_CHECK_S}s'")
    except Exception as exc:
        if sqlstate(exc) != UNRECOGNIZED_PARAMETER:  # a server before 14: it finds out when it next writes
            con.close()
            raise
    return con


#: the job's exit status when the database belongs to another deployment (``lockwise.core.deployment``)
WRONG_DEPLOYMENT_EXIT = 4


def main(argv: list[str] | None = None) -> int:
    """Apply every migration not applied yet (the deploy's migration job: no arguments; the database from
    ``DATABASE_URL``), then bind the database to ``LOCKWISE_PROJECT_ID`` if it is bound to none; with ``--check``, apply
    nothing and answer 3 while the database lacks one (``SCHEMA_BEHIND``), 0 once it has them all. Either answers 4
    (``WRONG_DEPLOYMENT_EXIT``), doing nothing, for a database bound to another project."""
    from lockwise.core import log as lwlog
    from lockwise.core.config import DatabaseSettings

    parser = argparse.ArgumentParser(prog="python -m lockwise.core.migrate")
    parser.add_argument("--check", action="store_true", help="apply nothing: fail while a migration is missing")
    args = parser.parse_args(argv)
    settings = DatabaseSettings.from_env()
    lwlog.configure("migrate", settings.log_level)
    con = job_connection(settings.database_url)
    try:
        # a database of another deployment is neither migrated nor passed as current (attack run 116): a job whose
        # DATABASE_URL named another deployment's database migrated it to this release unasked
        try:
            deployment.check(con, settings.project_id)
        except deployment.WrongDeployment as exc:
            log.error(
                "the database belongs to another deployment's Firebase project: nothing was done (check DATABASE_URL"
                " and LOCKWISE_PROJECT_ID; README 'One database, one deployment')",
                extra={"fields": {"database_project": exc.bound, "project": exc.serving}},
            )
            return WRONG_DEPLOYMENT_EXIT
        if args.check:
            try:
                at = require_current(con)
            except errors.Unavailable as exc:
                if exc.code != SCHEMA_BEHIND:
                    raise
                log.error("%s", exc.message)
                return 3
            log.info("the database has every migration", extra={"fields": {"version": at}})
            return 0
        applied = apply(con)
        deployment.bind(con, settings.project_id)  # a database not bound yet is this deployment's from now on
    finally:
        con.close()
    log.info("database is at the latest migration", extra={"fields": {"applied_now": len(applied)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
