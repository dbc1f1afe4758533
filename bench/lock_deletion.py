"""What migration 0026's foreign-key indexes save a lock's deletion: ``./dev bench lock_deletion``.

A throwaway PostgreSQL migrated twice, once without 0026 (the plain path, as the schema was) and once with it; in
each, ``--locks`` locks, one with ``--attempts`` verification attempts, ``--commands`` commands spread over the others
(the table is never pruned), then the time of ``DELETE FROM locks`` for the lock with the attempts (each attempt's
``ON DELETE SET NULL`` looks up the commands that point at it). The request path stops a statement at 4 s.
"""

from __future__ import annotations

import argparse
import time

from bench.common import machine, out, table, throwaway_postgres
from lockwise.core import migrate
from lockwise.core.db import Connection

FK_INDEXES = 26  # the migration measured


def fill(con: Connection, locks: int, attempts: int, commands: int) -> None:
    con.run("INSERT INTO users (uid, email) VALUES ('owner', 'owner@example.com')")
    con.run("INSERT INTO locks (name, owner_uid) SELECT 'lock ' || g, 'owner' FROM generate_series(1, :n) g", n=locks)
    con.run(
        "INSERT INTO verification_attempts (lock_id, outcome) SELECT (SELECT id FROM locks ORDER BY id LIMIT 1),"
        " 'rejected' FROM generate_series(1, :n)",
        n=attempts,
    )
    con.run(
        "INSERT INTO commands (lock_id, action, issuer_kind, issuer_uid, nonce, status, expires_at, payload)"
        " SELECT (SELECT id FROM locks ORDER BY id OFFSET 1 + g % (:locks - 1) LIMIT 1), 'unlock', 'user', 'owner',"
        " md5(g::text) || md5(g::text), 'expired', now() + interval '1 minute', '{}' FROM generate_series(1, :n) g",
        locks=locks,
        n=commands,
    )
    con.run("ANALYZE")


def timed_deletion(con: Connection, with_indexes: bool, args: argparse.Namespace) -> float:
    """A fresh schema (with or without 0026), filled, and the seconds its lock deletion takes."""
    con.run("DROP SCHEMA public CASCADE")
    con.run("CREATE SCHEMA public")
    migrate.apply(con, [m for m in migrate.load() if with_indexes or m.version != FK_INDEXES])
    fill(con, args.locks, args.attempts, args.commands)
    started = time.perf_counter()
    con.run("DELETE FROM locks WHERE id = (SELECT id FROM locks ORDER BY id LIMIT 1)")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locks", type=int, default=100)
    parser.add_argument("--attempts", type=int, default=1500)
    parser.add_argument("--commands", type=int, default=100_000)
    args = parser.parse_args(argv)
    with throwaway_postgres("lock-deletion") as pg:
        con = migrate.job_connection(pg.url)
        try:
            took = {with_indexes: timed_deletion(con, with_indexes, args) for with_indexes in (False, True)}
        finally:
            con.close()
    out(
        table(
            f"Deleting a lock with {args.attempts} attempts among {args.commands} commands ({machine()})",
            ["schema", "DELETE FROM locks, s", "ratio"],
            [
                ["without 0026 (plain)", f"{took[False]:.3f}", "1.00x"],
                ["with 0026", f"{took[True]:.3f}", f"{took[True] / took[False]:.4f}x"],
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
