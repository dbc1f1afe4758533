"""What the pool's liveness round trip costs a request: ``./dev bench pool``.

A throwaway PostgreSQL (TCP on 127.0.0.1, as the tests' and the local stack's), one ``lockwise.core.db.Database``:
the time to borrow a pooled connection and run one statement on it, the plain path (a connection used within the
pool's 0.5 s window, lent unasked: every borrow of a busy instance) against a connection idle past the window (asked
an empty query first: the first borrow after a pause), in interleaved rounds, and the same for a transaction.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench.common import machine, out, pct, table, throwaway_postgres
from lockwise.core.db import Database


def borrow_and_read(db: Database) -> None:
    with db.connection() as con:
        con.run("SELECT 1")


def transaction_read(db: Database) -> None:
    with db.transaction() as con:
        con.run("SELECT 1")


def timed(work: Callable[[Database], None], db: Database) -> float:
    started = time.perf_counter()
    work(db)
    return (time.perf_counter() - started) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv)
    with throwaway_postgres("pool") as pg:
        busy = Database(pg.url, pool_size=1)  # the window's default: each borrow follows the last at once
        idle = Database(pg.url, pool_size=1, check_idle_after_s=0.0)  # as if every borrow came after a pause
        try:
            _measure(busy, idle, args.rounds)
        finally:
            busy.close()
            idle.close()
    return 0


def _measure(busy: Database, idle: Database, rounds: int) -> None:
    rows: list[list[object]] = []
    for name, work in (("connection + SELECT 1", borrow_and_read), ("transaction + SELECT 1", transaction_read)):
        for db in (busy, idle):
            work(db)  # the connection made, its statement prepared
        plain: list[float] = []
        asked: list[float] = []
        for _ in range(rounds):
            plain.append(timed(work, busy))
            asked.append(timed(work, idle))
        rows.append(
            [
                name,
                pct(plain, 50),
                pct(asked, 50),
                pct(asked, 50) - pct(plain, 50),
                f"{pct(asked, 50) / pct(plain, 50):.2f}x",
            ]
        )
    out(
        table(
            f"Borrowing a pooled database connection ({rounds} interleaved rounds; {machine()})",
            ["borrow", "within the window p50 us", "idle past it (asked) p50 us", "added us", "ratio"],
            rows,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
