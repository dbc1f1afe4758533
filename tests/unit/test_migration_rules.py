"""``infra.migration_rules``: a migration only adds, so the release before it runs on the schema it makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import migration_rules


def test_the_migrations_held_to_the_rule_only_add() -> None:
    assert migration_rules.check() == []


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE locks DROP COLUMN name;",
        "DROP TABLE lock_state;",
        "DROP FUNCTION notify_credentials();",
        "ALTER TABLE locks RENAME COLUMN name TO title;",
        "ALTER TABLE locks RENAME TO doors;",
        "ALTER TABLE locks ALTER COLUMN name TYPE varchar(50);",
        "ALTER TABLE locks ALTER COLUMN name SET DATA TYPE text;",
        "ALTER TABLE locks ALTER COLUMN name SET NOT NULL;",
        "ALTER TABLE locks ALTER COLUMN name DROP DEFAULT;",
        "ALTER TABLE locks ADD COLUMN colour text NOT NULL;",
        "ALTER TABLE locks ADD COLUMN a int, ADD COLUMN colour text NOT NULL;",
        "ALTER TABLE locks ADD CONSTRAINT name_short CHECK (length(name) < 50);",
        "alter table locks add unique (name);",
    ],
)
def test_what_breaks_the_release_before_is_refused(sql: str) -> None:
    (breach,) = migration_rules.breaches("0099_x.sql", sql)
    assert breach.migration == "0099_x.sql" and breach.statement


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE owner_feed_windows (owner_uid text PRIMARY KEY REFERENCES users (uid), entries int NOT NULL);",
        "ALTER TABLE locks ADD COLUMN colour text;",
        "ALTER TABLE locks ADD COLUMN colour text NOT NULL DEFAULT 'grey';",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS locks_name ON locks (name);",
        "-- we never DROP TABLE here, nor RENAME\nCREATE TABLE t (a int);",
        "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN DROP TABLE x; RETURN NULL; END $$ LANGUAGE plpgsql;",
        "INSERT INTO settings VALUES ('drop table', 'rename');",
        "ALTER TABLE locks ALTER COLUMN name DROP NOT NULL;",
    ],
)
def test_what_only_adds_passes(sql: str) -> None:
    assert migration_rules.breaches("0099_x.sql", sql) == []


def test_a_migration_that_must_break_the_release_before_says_why() -> None:
    sql = "ALTER TABLE locks DROP COLUMN legacy;"
    said = "-- breaks the release before: run after every instance of 0.9 is gone (its last reader)\n" + sql
    assert migration_rules.breaches("0099_x.sql", said) == []
    assert migration_rules.breaches("0099_x.sql", "-- breaks the release before:\n" + sql) != []


def test_only_migrations_from_the_first_held_to_it_are_read(tmp_path: Path) -> None:
    before = f"{migration_rules.ADD_ONLY_FROM - 1:04d}_old.sql"
    held = f"{migration_rules.ADD_ONLY_FROM + 1:04d}_new.sql"
    (tmp_path / before).write_text("DROP TABLE a;")
    (tmp_path / held).write_text("DROP TABLE b;")
    assert [b.migration for b in migration_rules.check(tmp_path)] == [held]
