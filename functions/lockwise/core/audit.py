"""The append-only audit log: every command, credential change and membership change, with actor and outcome."""

from __future__ import annotations

import json
from typing import Any, Literal

from lockwise.core.db import Connection

Outcome = Literal["ok", "denied", "failed"]


def user_actor(uid: str) -> str:
    return f"user:{uid}"


def lock_actor(lock_id: str) -> str:
    return f"lock:{lock_id}"


def record(
    con: Connection,
    actor: str,
    action: str,
    outcome: Outcome,
    *,
    lock_id: str | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    con.run(
        "INSERT INTO audit_log (actor, action, outcome, lock_id, target, details)"
        " VALUES (:actor, :action, :outcome, CAST(:lock_id AS uuid), :target, CAST(:details AS jsonb))",
        actor=actor,
        action=action,
        outcome=outcome,
        lock_id=lock_id,
        target=target,
        details=json.dumps(details or {}),
    )
