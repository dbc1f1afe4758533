"""Health reports: the service's version and the state of each dependency, with how long each check took."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lockwise import __version__
from lockwise.core import errors, log

logger = logging.getLogger(__name__)


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


#: what a health report shows a caller without the service token: whether the function serves, not what it runs
PUBLIC = ("service", "status", "age_s")


def shown(report: tuple[dict[str, Any], int], *, detailed: bool) -> tuple[dict[str, Any], int]:
    """``report`` as the caller may see it: whole to the trusted callers (the service token: operators, the relay,
    the deploy's checks), and to anyone else only whether the function serves (``PUBLIC``; the same status code).
    The health routes take no credential, and they answered anyone with the release and code version running, the
    schema's migration, and which dependency was down, for a caller timing an attack to read (left open since attack
    run 85)."""
    body, status = report
    return (body if detailed else {key: body[key] for key in PUBLIC}), status


#: how long an instance answers its last report again before it runs the probes anew
REPORT_MAX_AGE_S = 5.0
#: and a degraded one
DEGRADED_MAX_AGE_S = 1.0


class Reports:
    """An instance's health reports: the last one is answered again for ``max_age_s`` (its ``age_s`` says how old),
    and one report runs at a time, the callers meanwhile waiting for it. The health routes take no credential, and
    each report reads Firestore (a billed read) and the database: anyone's loop of them cost both per request
    (attack run 26)."""

    def __init__(self, max_age_s: float = REPORT_MAX_AGE_S) -> None:
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any], int] | None = None

    def check(self, probes: Mapping[str, Callable[[], Any]], service: str, release: str) -> tuple[dict[str, Any], int]:
        """``check``'s report, or the last one while it is younger than ``max_age_s`` (a degraded one, a second at
        most: a dependency back is seen soon, by the platform's readiness checks too)."""
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self._max_age(self._last[2]):
                body, status = check(probes, service, release)
                if status != 200:  # what is down, for the operators in the logs (the route shows it to trusted callers)
                    log.event(logger, "health degraded", level=logging.WARNING, checks=body["checks"])
                self._last = (time.monotonic(), body, status)
            at, body, status = self._last
            return {**body, "age_s": round(time.monotonic() - at, 3)}, status

    def _max_age(self, status: int) -> float:
        return self._max_age_s if status == 200 else min(self._max_age_s, DEGRADED_MAX_AGE_S)
