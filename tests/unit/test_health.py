"""Health reports: every probe runs, side by side; a failing one makes the report 503 and names its error."""

from __future__ import annotations

import threading

from lockwise.core import errors, health


def test_probes_run_side_by_side() -> None:
    # each probe waits for the other: run one after the other, both would break the barrier and fail
    meet = threading.Barrier(2, timeout=5)
    body, status = health.check({"database": meet.wait, "firestore": meet.wait}, "devices", "r1")
    assert status == 200 and body["status"] == "ok"
    assert [body["checks"][name]["ok"] for name in ("database", "firestore")] == [True, True]


def test_a_failed_probe_is_named_and_the_others_still_report() -> None:
    def down() -> None:
        raise errors.Unavailable("database is unreachable", code="database_unavailable")

    def broken() -> None:
        raise RuntimeError("driver text that must not leak")

    body, status = health.check(
        {"database": down, "firestore": broken, "model": lambda: {"model_id": "m1"}}, "verify", "r1"
    )
    assert status == 503 and body["status"] == "degraded"
    assert body["checks"]["database"]["error"] == "database_unavailable"
    assert body["checks"]["firestore"]["error"] == "RuntimeError"
    assert body["checks"]["model"] == {
        "ok": True,
        "model_id": "m1",
        "latency_ms": body["checks"]["model"]["latency_ms"],
    }
    assert list(body["checks"]) == ["database", "firestore", "model"]
