"""App users as PostgreSQL knows them: one row per Firebase uid, made on first authenticated call."""

from __future__ import annotations

from lockwise.auth import User
from lockwise.db import Connection


def upsert(con: Connection, user: User) -> None:
    """Record ``user`` (and their current email) so locks and voiceprints can refer to them."""
    con.run(
        "INSERT INTO users (uid, email) VALUES (:uid, :email) "
        "ON CONFLICT (uid) DO UPDATE SET email = EXCLUDED.email WHERE users.email IS DISTINCT FROM EXCLUDED.email",
        uid=user.uid,
        email=user.email,
    )
