"""Migrations and constraints on the real PostgreSQL server."""

from __future__ import annotations

import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pg8000.native
import pytest
from pg8000.exceptions import DatabaseError

from infra.local.services import Postgres
from lockwise.core import db as db_module
from lockwise.core import deployment, errors, migrate
from lockwise.core.db import CHECK_VIOLATION, FOREIGN_KEY_VIOLATION, UNIQUE_VIOLATION, Database, sqlstate
from mqtt_relay import sessions
from tests.waiting import wait_for


@pytest.fixture
def fresh_db(postgres: Postgres) -> Iterator[Database]:
    """An empty database of its own on the session's server."""
    name = f"mig_{secrets.token_hex(4)}"
    admin = pg8000.native.Connection("postgres", unix_sock=f"{postgres.socket_dir}/.s.PGSQL.{postgres.port}")
    admin.run(f"CREATE DATABASE {name} OWNER {postgres.user}")
    db = Database(postgres.url.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield db
    finally:
        db.close()
        admin.run(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def tables(con: object) -> set[str]:
    rows = con.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")  # type: ignore[attr-defined]
    return {r[0] for r in rows}


def test_migrations_apply_once_and_rerun_is_a_no_op(fresh_db: Database) -> None:
    con = fresh_db.connect()
    try:
        applied = migrate.apply(con)
        assert [m.version for m in applied] == [m.version for m in migrate.load()]
        expected = {
            "users",
            "locks",
            "lock_members",
            "lock_credentials",
            "voiceprints",
            "verification_attempts",
            "commands",
            "audit_log",
            "schema_migrations",
        }
        assert expected <= tables(con)
        assert migrate.apply(con) == []
        recorded = con.run("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(v, c) for v, c in recorded] == [(m.version, m.checksum) for m in migrate.load()]
    finally:
        con.close()


def test_a_changed_applied_migration_is_refused(fresh_db: Database, tmp_path: Path) -> None:
    con = fresh_db.connect()
    try:
        migrate.apply(con)
        first = migrate.load()[0]
        edited = migrate.Migration(first.version, first.name, first.sql + "\n-- edited\n")
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            migrate.apply(con, [edited])
    finally:
        con.close()


def test_a_failing_migration_leaves_nothing_behind(fresh_db: Database) -> None:
    con = fresh_db.connect()
    try:
        migrate.apply(con)
        broken = migrate.Migration(9999, "broken", "CREATE TABLE half_done (id int); SELECT no_such_function();")
        with pytest.raises(DatabaseError):
            migrate.apply(con, [*migrate.load(), broken])
        assert "half_done" not in tables(con)
        assert con.run("SELECT count(*) FROM schema_migrations WHERE version = 9999") == [[0]]
    finally:
        con.close()


def test_a_migration_waiting_on_a_busy_table_gives_up_and_applies_nothing(
    fresh_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ALTER waiting for a table's lock (a long transaction holds it) queues every request on that table behind
    it: the migration gives up after its lock timeout (under the requests' own 4 s: it was 5 s, and every request
    queued behind it was a 503), is tried again a few times, and gives up with a message saying so, nothing of it
    applied."""
    assert migrate.LOCK_TIMEOUT_S * 2 <= db_module.STATEMENT_TIMEOUT_S
    con, holder = fresh_db.connect(), fresh_db.connect()
    try:
        migrate.apply(con)
        monkeypatch.setattr(migrate, "LOCK_TIMEOUT_S", 0.3)
        monkeypatch.setattr(migrate, "LOCK_RETRY_PAUSE_S", 0.05)
        holder.run("START TRANSACTION")
        holder.run("SELECT count(*) FROM users")  # a reader in a long transaction
        alter = migrate.Migration(9998, "busy", "CREATE TABLE first_half (id int); ALTER TABLE users ADD note text;")
        started = time.monotonic()
        with pytest.raises(
            migrate.MigrationError, match=f"0.3 s for a lock another session holds, {migrate.LOCK_TRIES}"
        ):
            migrate.apply(con, [*migrate.load(), alter])
        assert time.monotonic() - started >= 0.3 * migrate.LOCK_TRIES  # each try waited its lock timeout
        holder.run("COMMIT")
        assert "first_half" not in tables(con)
        assert con.run("SELECT count(*) FROM schema_migrations WHERE version = 9998") == [[0]]
        assert [m.version for m in migrate.apply(con, [*migrate.load(), alter])] == [9998]  # run again: applied
    finally:
        holder.close()
        con.close()


def test_a_migration_that_met_a_busy_table_is_applied_once_the_table_is_free(
    fresh_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that gave up waiting for a lock stopped the whole job (and so the deploy) at once, for a voice
    decision's few seconds: it is tried again, and applied once the table is free."""
    con, holder = fresh_db.connect(), fresh_db.connect()
    try:
        migrate.apply(con)
        monkeypatch.setattr(migrate, "LOCK_TIMEOUT_S", 0.2)
        monkeypatch.setattr(migrate, "LOCK_RETRY_PAUSE_S", 0.2)
        holder.run("START TRANSACTION")
        holder.run("SELECT count(*) FROM users")
        threading.Timer(0.5, holder.run, ("COMMIT",)).start()  # the long transaction ends during the retries
        alter = migrate.Migration(9998, "busy", "ALTER TABLE users ADD note text;")
        assert [m.version for m in migrate.apply(con, [*migrate.load(), alter])] == [9998]
        assert con.run("SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'") == [[1]]
    finally:
        holder.close()
        con.close()


def test_an_index_is_built_without_holding_its_tables_writes_and_built_again_after_a_failed_build(
    fresh_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every migration ran inside one transaction, so an index was built holding its table's writes for the whole
    build (0063's on ``commands``: unlocks, the relay's rounds, acks; attack run 62). A migration marked
    ``CONCURRENT_MARKER`` builds its one index ``CONCURRENTLY``, outside a transaction: writes to the table go on
    while it waits for a transaction longer than the migrations' lock timeout (it gave up at 1 s, six times, each
    scan lost: attack run 63) and builds. A build that failed left its index invalid, a unique one still refusing
    duplicates, and ``IF NOT EXISTS`` would have passed over it for good: it is dropped, and the job run again
    builds it, only then recorded; one left by a job that was itself stopped is dropped before the next build."""
    monkeypatch.setattr(migrate, "LOCK_TIMEOUT_S", 0.2)
    con, writer, holder = fresh_db.connect(), fresh_db.connect(), fresh_db.connect()
    try:
        scratch = migrate.Migration(
            9990, "scratch", "CREATE TABLE scratch (v int); INSERT INTO scratch VALUES (1), (1);"
        )
        unique = migrate.Migration(
            9991,
            "scratch_v",
            f"{migrate.CONCURRENT_MARKER}\n-- one value a row\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS scratch_v"
            " ON scratch (v);\n",
        )
        assert unique.concurrent_index == migrate.ConcurrentIndex(
            "create", "scratch_v", "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS scratch_v ON scratch (v);"
        )
        with pytest.raises(DatabaseError) as duplicate:
            migrate.apply(con, [*migrate.load(), scratch, unique])
        assert sqlstate(duplicate.value) == UNIQUE_VIOLATION
        assert con.run("SELECT to_regclass('scratch_v') IS NULL") == [[True]]  # not left behind, refusing
        assert con.run("SELECT max(version) FROM schema_migrations") == [[9990]]
        writer.run("INSERT INTO scratch VALUES (1)")
        # a build a stopped job left: invalid, and IF NOT EXISTS would pass over it
        with pytest.raises(DatabaseError):
            writer.run("CREATE UNIQUE INDEX CONCURRENTLY scratch_v ON scratch (v)")
        assert con.run("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('scratch_v')") == [[False]]
        con.run("DELETE FROM scratch WHERE v = 1")
        holder.run("START TRANSACTION")
        holder.run("INSERT INTO scratch VALUES (2)")  # a transaction the build waits for, past the lock timeout
        build = threading.Thread(target=lambda: migrate.apply(con, [*migrate.load(), scratch, unique]))
        build.start()
        time.sleep(0.5)
        started = time.monotonic()
        writer.run("INSERT INTO scratch VALUES (3)")  # not held behind the build
        assert time.monotonic() - started < 0.25
        time.sleep(0.5)
        holder.run("COMMIT")
        build.join(timeout=30)
        assert not build.is_alive()
        assert con.run("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('scratch_v')") == [[True]]
        assert con.run("SELECT max(version) FROM schema_migrations") == [[9991]]
        assert con.run("SHOW lock_timeout") + con.run("SHOW statement_timeout") == [["0"], ["4s"]]  # its own again
        with pytest.raises(DatabaseError):
            writer.run("INSERT INTO scratch VALUES (3)")  # the index it built holds
    finally:
        for c in (holder, writer, con):
            c.close()


def test_a_concurrent_builds_socket_waits_as_long_as_its_statement_may_run(
    fresh_db: Database, postgres: Postgres
) -> None:
    """The job's socket gave up after its statements' 600 s + 30, and a concurrent build allowed 3,000 s was cut
    off there while the server built on (attack run 65). It waits as long as the build may run, then as before."""

    class Watched:
        def __init__(self, con: Any) -> None:
            self.con, self.seen = con, list[tuple[str, float | None]]()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.con, name)

        def run(self, sql: str, **params: Any) -> Any:
            self.seen.append((sql, self.con.gettimeout()))
            return self.con.run(sql, **params)

    job = migrate.job_connection(postgres.url.rsplit("/", 1)[0] + f"/{fresh_db.params.database}")
    try:
        before = job.gettimeout()
        assert before == migrate.STATEMENT_TIMEOUT_S + 30
        watched = Watched(job)
        table = migrate.Migration(9990, "scratch", "CREATE TABLE scratch (v int);")
        index = migrate.Migration(
            9991,
            "scratch_v",
            f"{migrate.CONCURRENT_MARKER}\nCREATE INDEX CONCURRENTLY IF NOT EXISTS scratch_v ON scratch (v);",
        )
        migrate.apply(cast(Any, watched), [*migrate.load(), table, index])
        building = [t for sql, t in watched.seen if sql.startswith("CREATE INDEX CONCURRENTLY")]
        assert building and set(building) == {migrate.CONCURRENT_STATEMENT_TIMEOUT_S + 30}  # the release's and this
        assert job.gettimeout() == before
    finally:
        job.close()


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (v); CREATE INDEX CONCURRENTLY IF NOT EXISTS b ON t (w);",
        "CREATE INDEX CONCURRENTLY a ON t (v);",  # not IF NOT EXISTS: a build run again fails
        "ALTER TABLE t ADD w int;",
        "CREATE INDEX IF NOT EXISTS a ON t (v);",  # not concurrently
        "DROP INDEX CONCURRENTLY IF EXISTS public.a;",  # a qualified name: the invalid index check reads another
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS public.a ON t (v);",
    ],
)
def test_a_migration_marked_concurrent_that_is_not_one_such_statement_is_refused(sql: str) -> None:
    marked = migrate.Migration(9992, "marked", f"{migrate.CONCURRENT_MARKER}\n{sql}\n")
    with pytest.raises(migrate.MigrationError, match="is marked"):
        _ = marked.concurrent_index
    assert migrate.Migration(9992, "plain", sql).concurrent_index is None


def test_a_concurrent_index_migration_runs_what_was_checked() -> None:
    """Comment lines were left out of the check but sent: a line of a string literal that looked like one hid a
    second statement from it (attack run 63). What runs is the statement checked, without them."""
    drop = migrate.Migration(
        9993, "drop", f"{migrate.CONCURRENT_MARKER}\n-- gone\nDROP INDEX CONCURRENTLY IF EXISTS a;"
    )
    assert drop.concurrent_index == migrate.ConcurrentIndex("drop", "a", "DROP INDEX CONCURRENTLY IF EXISTS a;")
    hidden = migrate.Migration(
        9994,
        "hidden",
        f"{migrate.CONCURRENT_MARKER}\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_w ON t (w) WHERE w <> '\n"
        "-- '; DROP TABLE other; SELECT '\n';",
    )
    concurrent = hidden.concurrent_index
    assert concurrent is not None and "DROP TABLE" not in concurrent.statement


def test_the_job_says_whether_the_database_has_every_migration_of_this_code(
    fresh_db: Database, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Code deployed ahead of its migration failed on what the schema lacked, a relay's every delivery round, its
    health 200 (attack run 62). The code knows the migration it needs (the last one bundled with it); ``--check``
    (the deploy's step before new code goes live) fails while the database lacks it, and applies nothing."""
    monkeypatch.setenv("DATABASE_URL", postgres.url.rsplit("/", 1)[0] + f"/{fresh_db.params.database}")
    monkeypatch.setattr("lockwise.core.log.configure", lambda *_a, **_k: None)  # leave the test run's logging be
    everything = migrate.load()
    assert max(migrate.bundled_versions()) == everything[-1].version
    con = fresh_db.connect()
    try:
        assert migrate.applied_versions(con) == set()  # never migrated: no table yet
        assert migrate.main(["--check"]) == 3
        assert "schema_migrations" not in tables(con)  # --check applied nothing
        migrate.apply(con, everything[:-1])
        with pytest.raises(errors.Unavailable) as behind:
            migrate.require_current(con)
        assert behind.value.code == "schema_behind" and f"lacks migration {everything[-1].version:04d} " in str(
            behind.value.message
        )
        assert migrate.main(["--check"]) == 3
        assert migrate.main([]) == 0
        assert migrate.main(["--check"]) == 0
        assert migrate.require_current(con) == everything[-1].version
        # one missing below the last the database has (merged from a branch after a later one was applied)
        middle = everything[len(everything) // 2]
        con.run("DELETE FROM schema_migrations WHERE version = :v", v=middle.version)
        with pytest.raises(errors.Unavailable, match=f"lacks migration {middle.version:04d} this code needs"):
            migrate.require_current(con)
        assert migrate.main(["--check"]) == 3
        assert con.run("SHOW client_connection_check_interval") == [["0"]]  # the request path's: not the job's
        job = migrate.job_connection(postgres.url.rsplit("/", 1)[0] + f"/{fresh_db.params.database}")
        try:
            assert job.run("SHOW client_connection_check_interval") == [[f"{migrate.CLIENT_CHECK_S}s"]]
        finally:
            job.close()
    finally:
        con.close()


def test_a_relay_started_ahead_of_its_migration_waits_for_it_saying_so(fresh_db: Database) -> None:
    """A relay deployed before the migration job failed every delivery round on a table it lacked, its health 200
    (attack run 62). Its start waits for the database to have every migration bundled with it, its health saying
    ``schema_behind`` meanwhile, and goes on once the job has run."""
    from mqtt_relay.__main__ import current_schema, when_reachable

    con = fresh_db.connect()
    stop, waiting, found = threading.Event(), dict[str, str](), list[int | None]()
    try:
        migrate.apply(con, migrate.load()[:-1])
        start = threading.Thread(
            target=lambda: found.append(when_reachable(stop, lambda: current_schema(fresh_db), "start", waiting))
        )
        start.start()
        try:
            wait_for(lambda: waiting.get("error") == "schema_behind", what="the relay to say what it waits for")
            time.sleep(0.6)
            assert start.is_alive() and found == []
            migrate.apply(con)
            start.join(timeout=15)
            assert not start.is_alive() and found == [max(migrate.bundled_versions())] and waiting == {}
        finally:
            stop.set()
            start.join(timeout=15)
    finally:
        con.close()


def test_the_migration_job_lets_a_long_statement_run(
    fresh_db: Database, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request path's connections are stopped after 4 s; the job's are not (an index over a large table)."""
    seen: list[object] = []

    def record(con: object) -> list[migrate.Migration]:
        seen.append(con.run("SHOW statement_timeout"))  # type: ignore[attr-defined]
        con.run("SELECT pg_sleep(0.6)")  # type: ignore[attr-defined]  # past the connect timeout: the socket waits
        return []

    monkeypatch.setenv("DATABASE_URL", postgres.url.rsplit("/", 1)[0] + f"/{fresh_db.params.database}")
    monkeypatch.setattr(migrate, "apply", record)
    monkeypatch.setattr(deployment, "bind", lambda *_a: None)  # nothing applied: no table to bind in
    monkeypatch.setattr(migrate, "CONNECT_TIMEOUT_S", 0.3)
    monkeypatch.setattr("lockwise.core.log.configure", lambda *_a, **_k: None)  # leave the test run's logging be
    assert migrate.main([]) == 0
    assert seen == [[["10min"]]]


def test_the_migration_job_gives_up_on_a_server_that_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job pointed at an address that takes the connection and says nothing (a wrong host, a proxy whose backend
    is not up) fails within its connect timeout, not after the 10 min a statement may run."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes the handshake; nobody ever answers
    monkeypatch.setattr(migrate, "CONNECT_TIMEOUT_S", 0.5)
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            migrate.job_connection(f"postgresql://lockwise:x@127.0.0.1:{silent.getsockname()[1]}/lockwise").close()
        except BaseException as exc:  # noqa: BLE001 - what the job met, read below
            outcome.append(exc)

    try:
        attempt = threading.Thread(target=connect, daemon=True)
        attempt.start()
        attempt.join(timeout=10)
        assert not attempt.is_alive(), "the job still waits on a server that never answers"
    finally:
        silent.close()
    assert len(outcome) == 1 and isinstance(outcome[0], errors.Unavailable)


def test_every_foreign_key_has_an_index_led_by_its_columns(fresh_db: Database) -> None:
    """Deleting a row looks up the rows that refer to it: without an index led by the foreign key's columns each
    lookup reads the whole table (a lock with 1,500 attempts among 100,000 commands took 13.5 s to delete here, past the
    4 s statement limit: it could never be deleted). A partial index leaving out NULLs serves as well."""
    con = fresh_db.connect()
    try:
        migrate.apply(con)
        bare = con.run(
            "SELECT c.conrelid::regclass::text || '.' || c.conname FROM pg_constraint c WHERE c.contype = 'f'"
            " AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid"
            " AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey"
            " AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey"
            " AND (i.indpred IS NULL OR pg_get_expr(i.indpred, i.indrelid) = '(' || (SELECT a.attname FROM"
            " pg_attribute a WHERE a.attrelid = c.conrelid AND a.attnum = c.conkey[1]) || ' IS NOT NULL)'))"
            " ORDER BY 1"
        )
        assert [r[0] for r in con.run("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")] != [0]
        assert bare == []
    finally:
        con.close()


def _expect(con: object, state: str, sql: str, **params: object) -> None:
    run = con.run  # type: ignore[attr-defined]
    run("SAVEPOINT s")
    with pytest.raises(DatabaseError) as info:
        run(sql, **params)
    run("ROLLBACK TO SAVEPOINT s")
    assert sqlstate(info.value) == state, info.value


def test_constraints_live_in_the_database(fresh_db: Database) -> None:
    con = fresh_db.connect()
    migrate.apply(con)
    try:
        con.run("START TRANSACTION")
        con.run("INSERT INTO users (uid, email) VALUES ('u1', 'a@example.com'), ('u2', NULL)")
        lock = con.run("INSERT INTO locks (name, owner_uid) VALUES ('Front door', 'u1') RETURNING id")[0][0]
        con.run("INSERT INTO lock_members (lock_id, user_uid, role) VALUES (:l, 'u1', 'owner')", l=lock)
        _expect(con, FOREIGN_KEY_VIOLATION, "INSERT INTO locks (name, owner_uid) VALUES ('x', 'ghost')")
        _expect(con, CHECK_VIOLATION, "INSERT INTO locks (name, owner_uid) VALUES ('   ', 'u1')")
        _expect(
            con, CHECK_VIOLATION, "INSERT INTO lock_members (lock_id, user_uid, role) VALUES (:l, 'u2', 'god')", l=lock
        )
        _expect(
            con,
            UNIQUE_VIOLATION,
            "INSERT INTO lock_members (lock_id, user_uid, role) VALUES (:l, 'u2', 'owner')",
            l=lock,
        )
        _expect(con, UNIQUE_VIOLATION, "INSERT INTO users (uid, email) VALUES ('u3', 'A@example.com')")
        # guest windows only for guests
        _expect(
            con,
            CHECK_VIOLATION,
            "INSERT INTO lock_members (lock_id, user_uid, role, weekdays) VALUES (:l, 'u2', 'member', 3)",
            l=lock,
        )
        # a voiceprint's bytes must match its dimension
        _expect(
            con,
            CHECK_VIOLATION,
            "INSERT INTO voiceprints (user_uid, model_id, dim, embedding, sample_count, sample_embeddings)"
            " VALUES ('u1', 'm', 192, :e, 1, :e)",
            e=b"\0" * 100,
        )
        # commands expire after they are created, and an acked command has its ack time
        _expect(
            con,
            CHECK_VIOLATION,
            "INSERT INTO commands (lock_id, action, issuer_kind, issuer_uid, nonce, expires_at, payload)"
            " VALUES (:l, 'unlock', 'user', 'u1', :n, now() - interval '1 s', '{}')",
            l=lock,
            n="n" * 24,
        )
        _expect(
            con,
            CHECK_VIOLATION,
            "INSERT INTO commands (lock_id, action, issuer_kind, issuer_uid, nonce, expires_at, status, payload)"
            " VALUES (:l, 'unlock', 'user', 'u1', :n, now() + interval '30 s', 'acked', '{}')",
            l=lock,
            n="m" * 24,
        )
        con.run("ROLLBACK")
    finally:
        con.close()


def test_the_relays_share_group_is_random_per_database_and_one(fresh_db: Database, postgres: Postgres) -> None:
    """The relays' shared-subscription group (``mqtt_relay.sessions.share_group``): 32 hex digits made by the
    migration, so no two deployments (and no lock) share a name; only ever one, made again if the row is gone."""
    con = fresh_db.connect()
    migrate.apply(con)
    try:
        ((name,),) = con.run("SELECT name FROM relay_share_group")
        assert re.fullmatch(r"lockwise-relay-[0-9a-f]{32}", name) and sessions.share_group(con) == name
        con.run("START TRANSACTION")
        _expect(con, UNIQUE_VIOLATION, "INSERT INTO relay_share_group DEFAULT VALUES")
        con.run("ROLLBACK")
        con.run("DELETE FROM relay_share_group")
        again = sessions.share_group(con)
        assert re.fullmatch(r"lockwise-relay-[0-9a-f]{32}", again) and again != name
        other = Database(postgres.url).connect()  # the session's database
        try:
            assert sessions.share_group(other) not in (name, again)
        finally:
            other.close()
    finally:
        con.close()


def test_the_server_gives_up_on_a_client_gone_silent_as_the_clients_kernel_does(fresh_db: Database) -> None:
    """A session-level advisory lock is the relay's slot (``mqtt_relay.slots``): a replica whose host vanished (its
    link gone, then killed: no FIN reached the server) held it for the server's TCP keepalive, 2 h 11 min by Linux's
    default, and no live replica emptied its abandoned MQTT session, which the broker keeps an hour with its share of
    every lock's events (attack run 126, reproduced with the holder in a network namespace whose link was taken down:
    the slot was still held 150 s on; free 62 s after the link went now). Every connection asks the server to probe
    as its own socket does (``db.KEEPALIVE_IDLE_S``)."""
    assert fresh_db.params.unix_sock is None  # over TCP: a unix socket's connection reads these as 0
    con = fresh_db.connect()
    try:
        shown = [con.run(f"SHOW tcp_keepalives_{name}")[0][0] for name in ("idle", "interval", "count")]
        assert shown == ["30", "10", "3"]  # as ``db.tcp_socket`` sets its own: silent for a minute, given up
    finally:
        con.close()


def test_audit_log_is_append_only(fresh_db: Database) -> None:
    con = fresh_db.connect()
    migrate.apply(con)
    try:
        con.run("INSERT INTO audit_log (actor, action, outcome) VALUES ('user:u1', 'lock.create', 'ok')")
        # a row over a year old may be deleted (the relay's prune keeps them ``retention.AUDIT_KEPT_DAYS``, migration
        # 0066), never updated; a younger one neither, and the log is never truncated
        con.run(
            "INSERT INTO audit_log (actor, action, outcome, at) VALUES ('user:u1', 'lock.update', 'ok',"
            " now() - interval '366 days'), ('user:u1', 'lock.delete', 'ok', now() - interval '364 days')"
        )
        for sql in (
            "UPDATE audit_log SET outcome = 'denied'",
            "UPDATE audit_log SET outcome = 'denied' WHERE action = 'lock.update'",
            "DELETE FROM audit_log",
            "DELETE FROM audit_log WHERE action <> 'lock.update'",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(DatabaseError, match="append-only"):
                con.run(sql)
        con.run("DELETE FROM audit_log WHERE action = 'lock.update'")
        assert con.run("SELECT action, outcome FROM audit_log ORDER BY id") == [
            ["lock.create", "ok"],
            ["lock.delete", "ok"],
        ]
    finally:
        con.close()


def test_users_whose_uid_cannot_be_a_document_id_are_marked_gone(fresh_db: Database) -> None:
    """Migration 0032: users recorded before ID tokens with such subjects were refused sign in no more, and their
    Firestore paths named other users' documents: each is an account found gone, which the relay's flush ends."""
    con = fresh_db.connect()
    try:
        migrate.apply(con, [m for m in migrate.load() if m.version < 32])
        uids = ["V/", "org/team/carol", ".", "..", "__x__", "ok-uid", "a.b", "__x"]
        for uid in uids:
            con.run("INSERT INTO users (uid) VALUES (:u)", u=uid)
        migrate.apply(con)
        gone = {r[0] for r in con.run("SELECT uid FROM users WHERE account_gone_at IS NOT NULL")}
        assert gone == {"V/", "org/team/carol", ".", "..", "__x__"}
        audited = {r[0] for r in con.run("SELECT target FROM audit_log WHERE action = 'user.account_gone'")}
        assert audited == gone
    finally:
        con.close()


def test_open_address_invitations_from_before_0072_are_held_by_the_addresss_holder(fresh_db: Database) -> None:
    """Migration 0073: an invitation to an address sent before 0072 named no holder, so a member who moved their
    account to another address before their removal left it answerable by a new account made with the address. The
    open ones take the address's holder now; a closed one, one to a uid and one to an address nobody holds stay
    without."""
    con = fresh_db.connect()
    try:
        migrate.apply(con, [m for m in migrate.load() if m.version < 73])
        con.run("INSERT INTO users (uid, email) VALUES ('owner', 'o@example.com'), ('ann', 'Ann@Example.com')")
        lock = con.run("INSERT INTO locks (name, owner_uid) VALUES ('Front door', 'owner') RETURNING id::text")[0][0]
        sent = {}
        for name, email, uid, closed in [
            ("open", "ann@example.COM", None, False),
            ("closed", "ann@example.com", None, True),
            ("nobodys", "zed@example.com", None, False),
            ("by_uid", None, "ann", False),
        ]:
            sent[name] = con.run(
                "INSERT INTO invitations (lock_id, email, invitee_uid, role, invited_by, expires_at, closed_at)"
                " VALUES (CAST(:l AS uuid), :e, :u, 'member', 'owner', now() + interval '1 day',"
                " CASE WHEN :c THEN now() END) RETURNING id::text",
                l=lock,
                e=email,
                u=uid,
                c=closed,
            )[0][0]
        migrate.apply(con)
        held = dict(con.run("SELECT id::text, held_by FROM invitations"))
        assert {name: held[i] for name, i in sent.items()} == {
            "open": "ann",
            "closed": None,
            "nobodys": None,
            "by_uid": None,
        }
    finally:
        con.close()
