"""The Firestore mirror of what the app reads live, fed through a queue in PostgreSQL.

A change and its mirror writes commit together (``enqueue`` in the same transaction); ``flush`` writes them to
Firestore afterwards, oldest first, and deletes each once Firestore took it. When Firestore is down the rows stay
queued and a later flush (next request, or the relay's periodic flush) writes them: the view converges and a
Firestore outage never blocks or undoes a PostgreSQL commit.

Documents: ``locks/{lock_id}`` (state, battery, online, firmware, last_seen, name, member_uids, access),
``locks/{lock_id}/activity/{entry_id}`` (commands, voice attempts without biometric data, membership changes),
``users/{uid}`` (voice enrollment status only).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from lockwise.db import Connection, Database

log = logging.getLogger("lockwise.mirror")

Op = Literal["merge", "replace_fields", "set", "delete", "delete_collection"]
FIRESTORE_TIMEOUT_S = 3.0
BACKOFF_S = 5.0


def enqueue(con: Connection, doc_path: str, op: Op, data: dict[str, Any] | None = None) -> None:
    con.run(
        "INSERT INTO firestore_outbox (doc_path, op, data) VALUES (:p, :op, CAST(:d AS jsonb))",
        p=doc_path,
        op=op,
        d=json.dumps(data or {}, default=str),
    )


def lock_doc(lock_id: str) -> str:
    return f"locks/{lock_id}"


def activity(con: Connection, lock_id: str, kind: str, **fields: Any) -> None:
    """Add an entry to the lock's activity feed (never biometric data)."""
    entry = {"kind": kind, "at": _now_iso(), **fields}
    enqueue(con, f"locks/{lock_id}/activity/{uuid.uuid4()}", "set", entry)


def _now_iso() -> str:
    """UTC to the millisecond: entries of one second (a command, its ack) sort in the order they happened."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class Flusher:
    """Writes queued rows to Firestore; after a failure it waits ``BACKOFF_S`` before trying again."""

    def __init__(self, db: Database, make_client: Callable[[], Any]) -> None:
        self.db = db
        self._make_client = make_client
        self._client: Any = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The Firestore client, made on first use and made anew after a failed write."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def retry_now(self) -> None:
        self._retry_at = 0.0

    def flush(self, limit: int = 200) -> int:
        """Write up to ``limit`` queued rows; return how many were written. Never raises for Firestore errors."""
        if time.monotonic() < self._retry_at or not self._lock.acquire(blocking=False):
            return 0
        try:
            return self._flush(limit)
        finally:
            self._lock.release()

    def _flush(self, limit: int) -> int:
        written = 0
        with self.db.transaction() as con:
            rows = con.run(
                "SELECT id, doc_path, op, data FROM firestore_outbox ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED",
                n=limit,
            )
            if not rows:
                return 0
            try:
                client = self.client()
            except Exception as exc:  # noqa: BLE001 - no client, nothing written; rows stay queued
                self._failed(con, rows[0][0], exc)
                return 0
            for row_id, path, op, data in rows:
                try:
                    _apply(client, str(path), str(op), data if isinstance(data, dict) else json.loads(data))
                except Exception as exc:  # noqa: BLE001 - Firestore errors come in many types; keep order, retry later
                    self._failed(con, row_id, exc)
                    break
                con.run("DELETE FROM firestore_outbox WHERE id = :i", i=row_id)
                written += 1
        return written

    def _failed(self, con: Connection, row_id: int, exc: Exception) -> None:
        self._retry_at = time.monotonic() + BACKOFF_S
        self._client = None  # a fresh channel next time, not one stuck in gRPC's reconnect backoff
        con.run(
            "UPDATE firestore_outbox SET attempts = attempts + 1, last_error = :e WHERE id = :i",
            i=row_id,
            e=f"{type(exc).__name__}: {exc}"[:500],
        )
        log.warning("firestore mirror write failed; queued for retry", extra={"fields": {"error": type(exc).__name__}})

    def pending(self) -> int:
        with self.db.connection() as con:
            return int(con.run("SELECT count(*) FROM firestore_outbox")[0][0])


def _apply(client: Any, path: str, op: str, data: dict[str, Any]) -> None:
    if op == "delete_collection":
        collection = client.collection(path)
        while docs := list(collection.limit(200).stream(retry=None, timeout=FIRESTORE_TIMEOUT_S)):
            for snapshot in docs:
                snapshot.reference.delete(retry=None, timeout=FIRESTORE_TIMEOUT_S)
        return
    doc = client.document(path)
    if op == "delete":
        doc.delete(retry=None, timeout=FIRESTORE_TIMEOUT_S)
    elif op == "set":
        doc.set(data, retry=None, timeout=FIRESTORE_TIMEOUT_S)
    elif op == "replace_fields":  # these top-level fields whole (a map loses the keys it no longer has)
        doc.set(data, merge=list(data), retry=None, timeout=FIRESTORE_TIMEOUT_S)
    else:
        doc.set(data, merge=True, retry=None, timeout=FIRESTORE_TIMEOUT_S)
