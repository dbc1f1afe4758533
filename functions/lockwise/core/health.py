"""Health reports: the service's version and the state of each dependency, with how long each check took."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lockwise import __version__
from lockwise.core import errors


def check(probes: Mapping[str, Callable[[], Any]], service: str, release: str) -> tuple[dict[str, Any], int]:
    """Run the probes side by side (the report takes as long as the slowest, not their sum: one dependency timing
    out does not push the report past the platform's own health-check deadline); 200 when all pass, 503 naming
    what failed. A probe may return extra detail as a dict."""
    with ThreadPoolExecutor(max_workers=max(1, len(probes)), thread_name_prefix="health") as pool:
        futures = {name: pool.submit(_run, probe) for name, probe in probes.items()}
        results = {name: future.result() for name, future in futures.items()}
    healthy = all(entry["ok"] for entry in results.values())
    body = {
        "service": service,
        "version": __version__,
        "release": release,
        "status": "ok" if healthy else "degraded",
        "checks": results,
    }
    return body, 200 if healthy else 503


def _run(probe: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    entry: dict[str, Any]
    try:
        detail = probe()
        entry = {"ok": True}
        if isinstance(detail, dict):
            entry.update(detail)
    except errors.LockwiseError as exc:
        entry = {"ok": False, "error": exc.code}
    except Exception as exc:  # noqa: BLE001 - a health probe reports every failure, never raises
        entry = {"ok": False, "error": type(exc).__name__}
    entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return entry
