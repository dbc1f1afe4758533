"""The verify function served from ECAPA-TDNN's ONNX export vs through SpeechBrain, in one run.

``./dev bench verify_runtime [--requests N] [--cold-runs K]`` starts a throwaway local stack with a full-size
ECAPA-TDNN (random weights: the real model's size and speed), serves two more verify functions on it, one with
``LOCKWISE_VERIFY_RUNTIME=speechbrain`` and one with the default ONNX export (same environment, same malloc
settings), pairs a lock with one enrolled member, and prints, each row with the ratio SpeechBrain / ONNX:

* cold start: process start to the first ``POST /verify`` answered over HTTP (the lock's real request);
* warm ``POST /verify`` p50/p95 for 2, 3, 5 and 10 s of 44.1 kHz audio, one runtime at a time, 0.3 s apart;
* peak RSS of each verify process, and the installed size of each variant (bundle + its Python dependencies);
* the ONNX path's thread count and glibc malloc settings, measured in fresh processes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import requests

from bench.common import (
    BENCH_FUNCTION_SETTINGS,
    REPO,
    forget_attempts,
    full_random_ecapa,
    function_env,
    local_stack,
    machine,
    model_health,
    out,
    pct,
    summary,
    table,
)
from bench.verify import add_members, built_bundles, cold_start, peak_rss_mb, sign_up, signed_post
from infra.local.services import free_port, start_function
from simlock.lock import provision
from tests.voices import speech_like, wav

SECONDS = (2.0, 3.0, 5.0, 10.0)
# Between requests: both runtimes' worker threads spin-wait for a while after each call, so back-to-back requests
# to the two processes on 2 cores would time each one against the other's spinning threads.
PAUSE_S = 0.3
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}

TUNING_PROBE = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from lockwise.voice.model.onnx_ecapa import OnnxEcapaEncoder
enc = OnnxEcapaEncoder(sys.argv[1], threads=int(sys.argv[2]))
loaded = time.perf_counter() - t0
rng = np.random.default_rng(0)
clip = (0.1 * rng.standard_normal(3 * 44100)).astype(np.float32)
times = []
for _ in range(25):
    t = time.perf_counter(); enc.embed(clip, 44100); times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"loaded": loaded, "first3": times[:3], "rest": sorted(times[5:])}))
"""


def distribution_closure(requirements: list[str]) -> set[str]:
    """Installed distributions a requirements list pulls in (by walking their metadata's Requires-Dist)."""
    seen: set[str] = set()
    todo = [re.split(r"[=<>!~\[; ]", r.strip(), maxsplit=1)[0] for r in requirements]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if not name or name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[=<>!~\[; (]", req.strip(), maxsplit=1)[0])
    return seen


def installed_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        dist = importlib.metadata.distribution(name)
        for f in dist.files or []:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                total += path.stat().st_size
    return total / 2**20


def requirement_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#", "-"))]


def sizes() -> list[list[object]]:
    with built_bundles("verify") as bundles:
        bundle = bundles["verify"]
        bundle_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 2**20
        onnx_reqs = requirement_lines(bundle / "requirements.txt")
    artifact = full_random_ecapa() / "onnx"
    artifact_mb = sum(p.stat().st_size for p in artifact.iterdir()) / 2**20
    checkpoints_mb = sum(p.stat().st_size for p in full_random_ecapa().glob("*.ckpt")) / 2**20
    onnx = distribution_closure(onnx_reqs)
    # the SpeechBrain variant: the same bundle with torch, torchaudio and SpeechBrain instead of onnxruntime (no
    # function pins them any more: embed serves the ONNX export too; their pins are requirements-dev's)
    torch_reqs = [r for r in onnx_reqs if not r.startswith("onnxruntime")] + ["torch", "torchaudio", "speechbrain"]
    sb = distribution_closure(torch_reqs)
    cuda = {n for n in sb if n.startswith(("nvidia-", "triton"))}
    onnx_mb = installed_mb(onnx) + bundle_mb + artifact_mb
    sb_mb = installed_mb(sb) + bundle_mb + checkpoints_mb
    sb_cpu_mb = installed_mb(sb - cuda) + bundle_mb + checkpoints_mb
    return [
        ["ONNX (this bundle + deps + model)", f"{onnx_mb:.0f}", "1.0x"],
        ["SpeechBrain, PyPI torch (CUDA libs)", f"{sb_mb:.0f}", f"{sb_mb / onnx_mb:.1f}x"],
        ["SpeechBrain, without the CUDA libs", f"{sb_cpu_mb:.0f}", f"{sb_cpu_mb / onnx_mb:.1f}x"],
    ]


def tuning(artifact: Path) -> list[list[object]]:
    rows: list[list[object]] = []
    for threads in (1, 2):
        for label, extra in (("glibc default", {}), ("tuned malloc", MALLOC)):
            env = dict(os.environ, **extra, PYTHONPATH=str(REPO / "functions"))
            done = subprocess.run(
                [sys.executable, "-c", TUNING_PROBE, str(artifact), str(threads)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(
                [
                    f"{threads} thread{'s' if threads > 1 else ''}, {label}",
                    r["loaded"] * 1000,
                    " / ".join(f"{t:.0f}" for t in r["first3"]),
                    pct(r["rest"], 50),
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--cold-runs", type=int, default=3)
    args = parser.parse_args(argv)
    model = full_random_ecapa()
    warm_rows: list[list[object]] = []
    cold_rows: list[list[object]] = []
    rss_rows: list[list[object]] = []
    with local_stack(model, settings=BENCH_FUNCTION_SETTINGS) as env, tempfile.TemporaryDirectory() as logs:
        from lockwise.core.db import Database

        db = Database(env["DATABASE_URL"])
        fn_env = function_env(env)
        fn_env["LOCKWISE_MODEL_DIR"] = str(model)
        fn_env.update(MALLOC)
        fn_env["LOCKWISE_LOCKOUT_AFTER"] = "1000000"  # random voiceprints: every attempt is a rejection
        servers = [
            start_function("verify", free_port(), dict(fn_env, LOCKWISE_VERIFY_RUNTIME=name), Path(logs) / name)
            for name in ("speechbrain", "onnx")
        ]
        urls = {"speechbrain": servers[0].url, "onnx": servers[1].url}
        try:
            account = sign_up(env["FIREBASE_AUTH_EMULATOR_HOST"])
            headers = {"Authorization": f"Bearer {account['idToken']}"}
            devices = env["LOCKWISE_DEVICES_URL"]
            created = requests.post(
                f"{devices}/devices/locks", json={"name": "Bench"}, headers=headers, timeout=10
            ).json()
            config = provision(devices, created["provisioning"]["code"], env["MQTT_CA_FILE"], host="127.0.0.1")
            lock_id, key = created["lock"]["id"], config.signing_key()
            health = model_health(urls["onnx"], env)
            add_members(db, lock_id, 1, health["model_id"], health["dim"])
            session = requests.Session()

            for seconds in SECONDS:
                body = wav(speech_like(seconds, rate=44100, seed=int(seconds)))
                times: dict[str, list[float]] = {"onnx": [], "speechbrain": []}
                for name in times:  # one runtime at a time, as each instance serves one
                    for _ in range(3):
                        signed_post(urls[name], key, lock_id, body, session)
                    for _ in range(args.requests):
                        time.sleep(PAUSE_S)
                        t0 = time.perf_counter()
                        resp = signed_post(urls[name], key, lock_id, body, session)
                        times[name].append((time.perf_counter() - t0) * 1000)
                        if resp.status_code != 200:
                            raise RuntimeError(resp.text)
                o, s = summary(times["onnx"]), summary(times["speechbrain"])
                speed_up = f"{s['p50'] / o['p50']:.2f}x"
                warm_rows.append([f"{seconds:g} s", s["p50"], s["p95"], o["p50"], o["p95"], speed_up])
            for name, url in urls.items():
                rss_rows.append([name, peak_rss_mb(int(url.rsplit(":", 1)[1]))])

            body = wav(speech_like(3.0, rate=44100, seed=3))

            def verify_probe(base: str) -> bool:
                return signed_post(base, key, lock_id, body, requests.Session()).status_code == 200

            forget = partial(forget_attempts, db, lock_id)  # after each cold start's answer, untimed
            runs: dict[str, list[float]] = {"speechbrain": [], "onnx": []}
            with built_bundles("verify") as bundles:
                for _ in range(args.cold_runs):
                    for name in runs:
                        runtime_env = dict(fn_env, LOCKWISE_VERIFY_RUNTIME=name)
                        runs[name].append(cold_start(runtime_env, "verify", verify_probe, bundles["verify"], forget))
            for name, values in runs.items():
                ratio = pct(runs["speechbrain"], 50) / pct(values, 50)
                cold_rows.append([name, min(values), pct(values, 50), max(values), f"{ratio:.1f}x"])
        finally:
            for server in servers:
                server.stop()
            db.close()

    size_rows = sizes()
    tuning_rows = tuning(model / "onnx")
    sb_rss = next(r[1] for r in rss_rows if r[0] == "speechbrain")
    for row in rss_rows:
        row.append(f"{float(sb_rss) / float(row[1]):.1f}x")  # type: ignore[arg-type]
    out(f"\nmachine: {machine()}\nmodel: ECAPA-TDNN full size ({health['model_id']}, random weights)\n")
    out(
        table(
            f"Cold start: process start -> first POST /verify answered over HTTP, {args.cold_runs} runs (s)",
            ["runtime", "min", "p50", "max", "SpeechBrain / this (p50)"],
            cold_rows,
        )
    )
    out(
        table(
            f"Warm POST /verify over HTTP, 44.1 kHz, {args.requests} requests each, 0.3 s apart (ms)",
            ["clip", "SpeechBrain p50", "SpeechBrain p95", "ONNX p50", "ONNX p95", "speed-up (p50)"],
            warm_rows,
        )
    )
    out(table("Peak RSS of the verify process (MB)", ["runtime", "VmHWM", "SpeechBrain / this"], rss_rows))
    out(table("Installed size of the verify function (MB)", ["variant", "MB", "vs ONNX"], size_rows))
    out(
        table(
            "ONNX runtime settings, fresh process each (3 s at 44.1 kHz; ms)",
            ["setting", "load", "first 3 calls", "p50 of calls 6-25"],
            tuning_rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
