"""Health reports: every probe runs, side by side; a failing one makes the report 503 and names its error."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

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


def test_an_instance_answers_its_last_report_again_while_it_is_young(monkeypatch: pytest.MonkeyPatch) -> None:
    """The health routes take no credential and each report reads Firestore (billed) and the database: twenty
    anonymous calls were twenty of each (attack run 26). The last report is answered again while it is young, a
    degraded one for at most ``DEGRADED_MAX_AGE_S``; no clock is waited for (an age of 0 is young no more)."""
    runs: list[int] = []
    probes = {"database": lambda: runs.append(1)}
    young = health.Reports(max_age_s=60)
    answers = [young.check(probes, "devices", "r1") for _ in range(20)]
    assert len(runs) == 1 and {status for _, status in answers} == {200}
    assert all(body["age_s"] >= 0 for body, _ in answers)
    old = health.Reports(max_age_s=0)
    for _ in range(2):
        old.check(probes, "devices", "r1")
    assert len(runs) == 3

    def down() -> None:
        runs.append(1)
        raise errors.Unavailable("database is unreachable", code="database_unavailable")

    monkeypatch.setattr(health, "DEGRADED_MAX_AGE_S", 0.0)
    degraded = health.Reports(max_age_s=60)
    assert [degraded.check({"database": down}, "devices", "r1")[1] for _ in range(2)] == [503, 503]
    assert len(runs) == 5  # not kept for the healthy report's minute


def test_callers_at_once_share_one_report() -> None:
    runs: list[int] = []

    def slow() -> None:
        runs.append(1)
        time.sleep(0.2)

    reports = health.Reports()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: reports.check({"database": slow}, "devices", "r1")[1], range(8)))
    assert answers == [200] * 8 and len(runs) == 1


def test_anyone_is_shown_whether_it_serves_and_trusted_callers_the_report() -> None:
    def down() -> None:
        raise errors.Unavailable("database is unreachable", code="database_unavailable")

    report = health.Reports(max_age_s=60).check({"database": down}, "devices", "r1")
    assert health.shown(report, detailed=True) == report
    body, status = health.shown(report, detailed=False)
    assert (status, set(body)) == (503, {"service", "status", "age_s"}) and body["status"] == "degraded"
