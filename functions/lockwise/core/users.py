"""App users as PostgreSQL knows them: one row per Firebase uid, made on first authenticated call."""

from __future__ import annotations

import re

from lockwise.core.auth import User
from lockwise.core.db import Connection

_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def valid_email(value: str) -> bool:
    return len(value) <= 320 and bool(_EMAIL_RE.match(value))


def stored_email(user: User) -> str | None:
    """The email ``upsert`` records for ``user``: theirs, or None where the database would refuse it."""
    return user.email if user.email and valid_email(user.email) else None


def upsert(con: Connection, user: User) -> None:
    """Record ``user`` (and their current email) so locks and voiceprints can refer to them.

    An email now held by this uid is released from any older account that had it (a Firebase account deleted and
    made again gets a new uid); an address the database would refuse is stored as NULL.
    """
    email = stored_email(user)
    if email is not None:
        con.run("UPDATE users SET email = NULL WHERE lower(email) = lower(:e) AND uid <> :u", e=email, u=user.uid)
    con.run(
        "INSERT INTO users (uid, email) VALUES (:uid, :email) "
        "ON CONFLICT (uid) DO UPDATE SET email = EXCLUDED.email WHERE users.email IS DISTINCT FROM EXCLUDED.email",
        uid=user.uid,
        email=email,
    )


def hold(con: Connection, uid: str) -> None:
    """Hold ``uid``'s row until the transaction ends: what is counted per user (daily quotas, locks owned) is then
    decided one request at a time, so a burst in parallel gets no more than the same requests in a row."""
    con.run("SELECT 1 FROM users WHERE uid = :u FOR NO KEY UPDATE", u=uid)
