"""What a migration may do: only add, so the release before it runs on the schema it makes.

A deploy is not atomic. The migration job runs first; the functions then roll over one by one while the previous
release's instances still serve, and rolling back (README "Rolling back") puts the previous release on the new
schema. A migration that drops or renames something, changes a column's type, or makes old writes fail (a column
``NOT NULL`` without a default, a new constraint) breaks the release that still serves. The README said "migrations
only add", and nothing checked it (attack run 109 read all 75 by hand).

``check`` refuses such statements in a migration numbered after ``ADD_ONLY_FROM``'s predecessor, unless the file
says why with a line ``-- breaks the release before: <what the deploy does about it>`` (a contract step, run once
no instance of the release before serves).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parents[1] / "functions" / "lockwise" / "core" / "migrations"
#: the first migration held to the rule (those before were read by hand: attack run 109)
ADD_ONLY_FROM = 76
#: a migration that must break the release before says so, and why, on a line of its own
WAIVER = re.compile(r"^--[ \t]*breaks the release before:[ \t]*(\S.*)$", re.IGNORECASE | re.MULTILINE)

#: (what it breaks, the statement's pattern), read on the SQL without comments or string literals
_BREAKING: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("drops what the release before reads", re.compile(r"\bDROP\s+(TABLE|COLUMN|VIEW|FUNCTION|TRIGGER|TYPE)\b")),
    ("renames what the release before names", re.compile(r"\bRENAME\b")),
    (
        "changes a column's type under the release before",
        re.compile(r"\bALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b"),
    ),
    ("refuses the release before's writes without the column", re.compile(r"\b(SET\s+NOT\s+NULL|DROP\s+DEFAULT)\b")),
    ("adds a check the release before's writes may fail", re.compile(r"\bADD\s+(CONSTRAINT|CHECK|UNIQUE|FOREIGN)\b")),
)
_ADD_COLUMN = re.compile(r"\bADD\s+COLUMN\b(?P<rest>[^,;]*)")


@dataclass(frozen=True)
class Breach:
    migration: str
    what: str
    statement: str


def _code_only(sql: str) -> str:
    """``sql`` without comments and string literals (a comment saying "drop" drops nothing), upper-cased."""
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    sql = re.sub(r"--[^\n]*", " ", sql)
    sql = re.sub(r"\$(\w*)\$.*?\$\1\$", " ", sql, flags=re.DOTALL)  # function bodies: their own checks
    sql = re.sub(r"'(?:[^']|'')*'", "''", sql)
    return sql.upper()


def breaches(name: str, sql: str) -> list[Breach]:
    """What in migration ``name`` (its text ``sql``) breaks the release before, unless it says why (``WAIVER``)."""
    if WAIVER.search(sql):
        return []
    code = _code_only(sql)
    found: list[Breach] = []
    for statement in (s.strip() for s in code.split(";")):
        for what, pattern in _BREAKING:
            if pattern.search(statement):
                found.append(Breach(name, what, " ".join(statement.split())[:200]))
                break
        else:
            for added in _ADD_COLUMN.finditer(statement):
                rest = added.group("rest")
                if re.search(r"\bNOT\s+NULL\b", rest) and not re.search(r"\bDEFAULT\b", rest):
                    what = "adds a NOT NULL column without a default: the release before's inserts fail"
                    found.append(Breach(name, what, " ".join(statement.split())[:200]))
    return found


def check(folder: Path = MIGRATIONS) -> list[Breach]:
    """Every breach in the migrations numbered ``ADD_ONLY_FROM`` and after."""
    found: list[Breach] = []
    for path in sorted(folder.glob("*.sql")):
        number = path.name.split("_", 1)[0]
        if number.isdigit() and int(number) >= ADD_ONLY_FROM:
            found += breaches(path.name, path.read_text())
    return found
