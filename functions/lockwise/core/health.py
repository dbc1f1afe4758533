"""Health reports: the service's version and the state of each dependency, with how long each check took."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from lockwise import __version__
from lockwise.core import errors


def check(probes: Mapping[str, Callable[[], Any]], service: str, release: str) -> tuple[dict[str, Any], int]:
    """Run each probe; 200 when all pass, 503 naming what failed. A probe may return extra detail as a dict."""
    results: dict[str, Any] = {}
    healthy = True
    for name, probe in probes.items():
        started = time.perf_counter()
        entry: dict[str, Any]
        try:
            detail = probe()
            entry = {"ok": True}
            if isinstance(detail, dict):
                entry.update(detail)
        except errors.LockwiseError as exc:
            entry = {"ok": False, "error": exc.code}
            healthy = False
        except Exception as exc:  # noqa: BLE001 - a health probe reports every failure, never raises
            entry = {"ok": False, "error": type(exc).__name__}
            healthy = False
        entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
        results[name] = entry
    body = {
        "service": service,
        "version": __version__,
        "release": release,
        "status": "ok" if healthy else "degraded",
        "checks": results,
    }
    return body, 200 if healthy else 503
