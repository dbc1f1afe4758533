"""Versioned SQL migrations: ``migrations/NNNN_name.sql`` applied in order, each once, each in a transaction.

Applied versions are recorded in ``schema_migrations`` with a checksum; an applied file that later changes is an
error (write a new migration instead). A session advisory lock makes concurrent runs safe.

Run: ``python -m lockwise.core.migrate`` (uses ``DATABASE_URL``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lockwise.core.db import Connection, Database, sqlstate

log = logging.getLogger("lockwise.core.migrate")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_ADVISORY_KEY = 0x10C4_3153  # arbitrary, stable: "lockwise migrations"
#: the job's statements may run long (an index built over a large table; the request path's connections are stopped
#: after ``db.STATEMENT_TIMEOUT_S``), and a second run waits this long for the first to finish ...
STATEMENT_TIMEOUT_S = 600.0
#: ... but a migration waiting for a table's lock queues every request that touches the table behind it: it gives
#: up after this long (55P03), nothing applied, and the job is run again
LOCK_TIMEOUT_S = 5.0
LOCK_NOT_AVAILABLE = "55P03"
#: reaching the server and its startup answer: a job pointed at an unreachable host (a wrong address, a private IP
#: not routed yet) fails in seconds, not after a statement's 10 minutes
CONNECT_TIMEOUT_S = 10.0


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with the files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME_RE.fullmatch(path.name)
        if not match:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_lower_snake.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


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
            con.run("START TRANSACTION")
            try:
                con.run(f"SET LOCAL lock_timeout = '{round(LOCK_TIMEOUT_S * 1000)}ms'")
                con.run(migration.sql)
                con.run(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
                    v=migration.version,
                    n=migration.name,
                    c=migration.checksum,
                )
                con.run("COMMIT")
            except BaseException as exc:
                con.run("ROLLBACK")
                if sqlstate(exc) == LOCK_NOT_AVAILABLE:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} waited over {LOCK_TIMEOUT_S:g} s for a"
                        " lock another session holds (a long transaction?); nothing applied: run the job again"
                    ) from exc
                raise
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
        return applied
    finally:
        con.run("SELECT pg_advisory_unlock(:k)", k=_ADVISORY_KEY)


def job_connection(database_url: str) -> Connection:
    """A connection with the migration job's limits (``STATEMENT_TIMEOUT_S``; the request path's 4 s would stop a
    long migration, and a lock wait past ``LOCK_TIMEOUT_S`` with the server's own error, not ``MigrationError``),
    reached within ``CONNECT_TIMEOUT_S`` (``errors.Unavailable`` past it)."""
    job = Database(
        database_url,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        read_timeout_s=STATEMENT_TIMEOUT_S + 30,  # the server stops a statement first, with its own error
        statement_timeout_s=STATEMENT_TIMEOUT_S,
    )
    return job.connect()


def main() -> int:
    """Apply every migration not applied yet (the deploy's migration job: no arguments; the database from
    ``DATABASE_URL``)."""
    from lockwise.core import log as lwlog
    from lockwise.core.config import DatabaseSettings

    settings = DatabaseSettings.from_env()
    lwlog.configure("migrate", settings.log_level)
    con = job_connection(settings.database_url)
    try:
        applied = apply(con)
    finally:
        con.close()
    log.info("database is at the latest migration", extra={"fields": {"applied_now": len(applied)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
