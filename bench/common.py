"""Helpers shared by the benchmarks: a throwaway stack, percentiles, and the printed table."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


@contextmanager
def local_stack(model_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """The whole stack (``python -m infra.local.stack --free-ports``) in a temporary state folder; ``model_dir``:
    an ECAPA-TDNN directory (default: the stack's GE2E)."""
    state = Path(tempfile.mkdtemp(prefix="lockwise-bench-"))
    state.chmod(0o755)
    ready = state / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKWISE_", "MQTT_"))}
    for key in ("DATABASE_URL", "FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST"):
        env.pop(key, None)
    env["PYTHONPATH"] = f"{REPO / 'functions'}:{REPO}"
    if model_dir is not None:
        env["LOCKWISE_MODEL_DIR"] = str(model_dir)
    with open(state / "stack.out", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.local.stack",
                "--state-dir",
                str(state / "s"),
                "--free-ports",
                "--ready-file",
                str(ready),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((state / "stack.out").read_text()[-3000:])
            time.sleep(0.3)
        yield json.loads(ready.read_text())
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(90)


def slot_files(relay_certs: Path, slot: int) -> tuple[str, str]:
    """The certificate and key of relay slot ``slot`` from a relay certificates file, as files (for paho)."""
    entry = json.loads(relay_certs.read_text())[f"lockwise-relay-{slot}"]
    folder = Path(tempfile.mkdtemp(prefix="lockwise-bench-slot-"))
    (folder / "c.crt").write_text(entry["cert"])
    (folder / "c.key").write_text(entry["key"])
    return str(folder / "c.crt"), str(folder / "c.key")


def full_random_ecapa() -> Path:
    """A full-size ECAPA-TDNN with random weights (the real model's size and speed) and its ONNX export, made once
    in ~/.cache/lockwise/models: what the benchmarks time, since the real weights cannot be fetched here."""
    from infra.model.export_onnx import export
    from infra.model.random_ecapa import build_model_dir
    from lockwise.voice.encoder import onnx_dir

    target = Path.home() / ".cache" / "lockwise" / "models" / "ecapa-random-full"
    if not (target / "embedding_model.ckpt").exists():
        build_model_dir(target, size="full", seed=0)
    if not (onnx_dir(target) / "manifest.json").exists():
        export(target, target / "onnx")
    return target
