"""Helpers shared by the benchmarks: a throwaway stack, percentiles, and the printed table."""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.local import services
from infra.local.stack import background

local_stack = background  # the benchmarks' throwaway stack

#: the relay benchmarks' locks report hundreds of times a second each, standing in for a fleet whose locks report a
#: few times an hour: every report is listed in its lock's feed (no feed budget), so the Firestore mirror writes all
BENCH_FUNCTION_SETTINGS = {
    "LOCKWISE_FEED_REPORTS_PER_MINUTE": "1000000000",
    "LOCKWISE_FEED_REPORTS_PER_OWNER_MINUTE": "1000000000",
    # and one lock is sent hundreds of signed requests a minute, to measure the request itself
    "LOCKWISE_LOCK_REQUESTS_PER_MINUTE": "1000000000",
    # and one account sends 200 commands round its locks, one after another, to time each round trip
    "LOCKWISE_APP_COMMANDS_PER_ACCOUNT_MINUTE": "1000000000",
    # and its voice attempts, each a forward pass, are what the verify benchmarks time
    "LOCKWISE_VOICE_ATTEMPTS_PER_MINUTE": "1000000000",
    "LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_MINUTE": "1000000000",
    # the benchmarks' members are rows (``bench.verify.add_members``), not Firebase accounts: the relay's flush would
    # find them deleted and end their memberships mid-run
    "LOCKWISE_ACCOUNT_CHECK_BATCH": "0",
    # and one clip is sent many times, each timed as an attempt decided by the model: not answered as the clip sent
    # again (``lockwise.voice.sent_again``; the goals run keeps it, forgetting each attempt: ``GOALS_SETTINGS``)
    "LOCKWISE_VOICE_SENT_AGAIN_S": "0",
}
#: the goals run's: as deployed there, the look-up of a clip sent again included (each timed attempt is forgotten
#: before the next, so it finds nothing and the model decides, as at a door)
GOALS_SETTINGS = {**BENCH_FUNCTION_SETTINGS, "LOCKWISE_VOICE_SENT_AGAIN_S": "120"}

REPO = Path(__file__).resolve().parents[1]

#: what a function process is given of the stack's environment (as a deployment sets it): its services, and of the
#: LOCKWISE_ variables only these (the stack's own URLs and tuning stay out)
FUNCTION_KEYS = (
    "LOCKWISE_MODE",
    "LOCKWISE_PROJECT_ID",
    "LOCKWISE_SERVICE_TOKEN",
    "LOCKWISE_COMMAND_SIGNING_KEY",
    "LOCKWISE_MODEL_DIR",
)


def function_env(stack_env: dict[str, str]) -> dict[str, str]:
    """The environment for a fresh function process (cold starts) from a running stack's, with the benchmarks'
    settings (``BENCH_FUNCTION_SETTINGS``)."""
    kept = {k: v for k, v in stack_env.items() if not k.startswith("LOCKWISE_") or k in FUNCTION_KEYS}
    return {**kept, **BENCH_FUNCTION_SETTINGS}


def model_health(verify_url: str, env: dict[str, str]) -> dict[str, Any]:
    """The verify function's model check (its ``model_id`` and ``dim``), read as a trusted caller: health shows its
    checks to the service token only (a5c84b2), and read without it every bench that pairs a lock stopped with a
    ``KeyError`` before measuring anything."""
    import requests

    from lockwise.core.headers import SERVICE_TOKEN_HEADER

    token = {SERVICE_TOKEN_HEADER: env["LOCKWISE_SERVICE_TOKEN"]}
    resp = requests.get(verify_url + "/verify/health", headers=token, timeout=10)
    return dict(resp.json()["checks"]["model"])


def forget_attempts(db: Any, lock_id: str) -> None:
    """Clear a lock's voice lockout and attempt log, so the lockout and the daily ceiling stay out of a measurement
    that sends one clip many times (``db``: a ``lockwise.core.db.Database``)."""
    with db.transaction() as con:
        con.run("DELETE FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid)", l=lock_id)
        con.run("DELETE FROM verification_attempts WHERE lock_id = CAST(:l AS uuid)", l=lock_id)


@contextmanager
def throwaway_postgres(name: str) -> Iterator[services.Postgres]:
    """A PostgreSQL of the bench's own (TCP on 127.0.0.1, not durable), stopped and removed when the block ends."""
    root = Path(tempfile.mkdtemp(prefix=f"lockwise-{name}-"))
    root.chmod(0o755)
    pg = services.start_postgres(root / "pg", services.free_port(), secrets.token_urlsafe(12), durable=False)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GB, {system}, Python {platform.python_version()}"


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99), "mean": statistics.fmean(values)}


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header], *[[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"\n{title}", ""]
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells[1:]]
    return "\n".join(lines) + "\n"


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def slot_files(relay_certs: Path, slot: int) -> tuple[str, str]:
    """The certificate and key of relay slot ``slot`` from a relay certificates file, as files (for paho)."""
    entry = json.loads(relay_certs.read_text())[f"lockwise-relay-{slot}"]
    folder = Path(tempfile.mkdtemp(prefix="lockwise-bench-slot-"))
    (folder / "c.crt").write_text(entry["cert"])
    (folder / "c.key").write_text(entry["key"])
    return str(folder / "c.crt"), str(folder / "c.key")


def full_random_ecapa() -> Path:
    """A full-size ECAPA-TDNN with random weights (the real model's size and speed) and its ONNX export, built once
    per machine (``infra.model.cache``): what the benchmarks time, since the real weights cannot be fetched here."""
    from infra.model.cache import random_model

    return random_model("full", 0, exported=True)
