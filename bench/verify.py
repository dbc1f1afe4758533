"""Verify latency, cold start and memory, against the bare model and the original design, in one run.

``./dev bench verify [--requests N]`` starts a throwaway local stack (full-size ECAPA-TDNN, random weights: speed is
the same as with the real weights), pairs a lock, gives it 1, 10 and 100 enrolled members, and prints:

* warm ``POST /verify`` latency over HTTP (3 s of 44.1 kHz audio, signed by the lock) with 1/10/100 members, next to
  the bare model forward on the same audio, with the overhead as a share of the forward pass;
* the original design's flow (JSON base64 audio, per-candidate Python loop) against this code's pipeline, in process;
* cold start: process start to the first answered verify, and to the first answered devices call (each served
  from its built bundle, as deployed);
* peak RSS of the verify function.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.common import (
    BENCH_FUNCTION_SETTINGS,
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
from infra.build import build
from infra.local.services import free_port, function_argv
from lockwise.core.db import Database
from lockwise.devices import lock_auth
from lockwise.voice import audio, scoring
from simlock.lock import provision
from tests.voices import speech_like, wav


def sign_up(auth_host: str) -> dict[str, Any]:
    resp = requests.post(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signUp?key=bench",
        json={"email": f"b{time.time_ns()}@example.com", "password": "bench-123456", "returnSecureToken": True},
        timeout=10,
    )
    result: dict[str, Any] = resp.json()
    return result


def add_members(db: Database, lock_id: str, n: int, model_id: str, dim: int) -> None:
    """n members with (synthetic) voiceprints of the current model, straight into PostgreSQL."""
    rng = np.random.default_rng(n)
    with db.transaction() as con:
        for i in range(n):
            uid = f"bench-{lock_id[:8]}-{n}-{i}"
            con.run("INSERT INTO users (uid) VALUES (:u) ON CONFLICT DO NOTHING", u=uid)
            con.run(
                "INSERT INTO lock_members (lock_id, user_uid, role) VALUES (CAST(:l AS uuid), :u, 'member')",
                l=lock_id,
                u=uid,
            )
            samples = scoring.normalise(rng.standard_normal((3, dim)).astype(np.float32))
            con.run(
                "INSERT INTO voiceprints (user_uid, model_id, dim, embedding, sample_count, sample_embeddings)"
                " VALUES (:u, :m, :d, :e, 3, :s)",
                u=uid,
                m=model_id,
                d=dim,
                e=scoring.to_bytes(scoring.voiceprint(samples)),
                s=scoring.to_bytes(samples),
            )


def signed_post(url: str, key: Any, lock_id: str, body: bytes, session: requests.Session) -> requests.Response:
    headers = lock_auth.sign_headers(key, lock_id, "POST", "/verify", body, content_type="audio/wav")
    return session.post(url + "/verify", data=body, headers=headers, timeout=30)


def original_flow(encoder: Any, body: dict[str, Any], candidates: list[list[float]]) -> tuple[int, float]:
    """A straight re-implementation of the original design: JSON base64 audio, one Python loop per candidate."""
    pcm = base64.b64decode(body["pcm_base64"])
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    emb = encoder.embed(samples, 44100)
    best_i, best = -1, -2.0
    for i, cand in enumerate(candidates):
        dot = sum(a * b for a, b in zip(emb.tolist(), cand, strict=True))
        norm = (sum(a * a for a in cand) ** 0.5) * (sum(a * a for a in emb.tolist()) ** 0.5)
        if dot / norm > best:
            best_i, best = i, dot / norm
    return best_i, best


def this_flow(encoder: Any, body: dict[str, Any], prints: np.ndarray) -> tuple[int, float]:
    clip = audio.validate(audio.from_json(body, fields=None), audio.Limits())  # the original contract's body
    scores = scoring.cosine_scores(encoder.embed(clip.samples, clip.rate), prints)
    best = int(scores.argmax())
    return best, float(scores[best])


@contextmanager
def built_bundles(*names: str) -> Iterator[dict[str, Path]]:
    """Each named function's deployable bundle (``infra.build``), in a folder removed afterwards: what cold starts
    serve."""
    with tempfile.TemporaryDirectory(prefix="lockwise-bundles-") as folder:
        yield {name: build(name, Path(folder) / name) for name in names}


def cold_start(
    env: dict[str, str], name: str, probe: Any, bundle: Path, after: Callable[[], object] | None = None
) -> float:
    """Seconds from spawning a fresh function process to its first answered request. The function is served from
    ``bundle``, its deployable bundle (``infra.build``: the shared package copied in, compiled to bytecode), as a
    deployment serves it: nothing of the source tree on the path. ``after``: the bench's own clean-up once the probe
    was answered (run after the clock stops, not timed)."""
    port = free_port()
    child = {k: v for k, v in dict(os.environ, **env).items() if k != "PYTHONPATH"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        function_argv(name, bundle, port),
        env=child,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            try:
                if probe(f"http://127.0.0.1:{port}"):
                    seconds = time.perf_counter() - t0
                    if after is not None:
                        after()
                    return seconds
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError(f"{name} did not answer")
            time.sleep(0.01)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # still in start-up work that ignores SIGTERM: do not wait for it
            proc.kill()
            proc.wait(10)


def peak_rss_mb(port: int) -> float:
    """Peak resident memory of the function serving ``port``: the VmHWM of gunicorn's master and of its worker(s)
    (found by their command line), summed. The master holds no model (the worker makes its session after the fork),
    so the worker's figure alone would leave the master out and the master's alone the model."""
    needle = f"--port\0{port}\0".encode()
    total, found = 0.0, False
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes() + b"\0":
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
                        found = True
        except OSError:
            continue
    return total if found else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args(argv)
    clip = speech_like(3.0, rate=44100, seed=3)
    body = wav(clip)
    rows, ratio_rows, cold_rows = [], [], []
    with local_stack(full_random_ecapa(), settings=BENCH_FUNCTION_SETTINGS) as env:
        db = Database(env["DATABASE_URL"])
        account = sign_up(env["FIREBASE_AUTH_EMULATOR_HOST"])
        headers = {"Authorization": f"Bearer {account['idToken']}"}
        devices, verify_url = env["LOCKWISE_DEVICES_URL"], env["LOCKWISE_VERIFY_URL"]
        health = model_health(verify_url, env)

        from lockwise.voice.model.ecapa import EcapaEncoder

        encoder = EcapaEncoder(Path(env["LOCKWISE_MODEL_DIR"]))
        forward = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            encoder.embed(clip, 44100)
            forward.append((time.perf_counter() - t0) * 1000)
        fwd = summary(forward)
        session = requests.Session()
        for n in (1, 10, 100):
            created = session.post(
                f"{devices}/devices/locks", json={"name": f"Bench {n}"}, headers=headers, timeout=10
            ).json()
            config = provision(devices, created["provisioning"]["code"], env["MQTT_CA_FILE"], host="127.0.0.1")
            lock_id = created["lock"]["id"]
            add_members(db, lock_id, n, health["model_id"], health["dim"])
            key = config.signing_key()
            for _ in range(3):  # warm up
                signed_post(verify_url, key, lock_id, body, session)
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                resp = signed_post(verify_url, key, lock_id, body, session)
                times.append((time.perf_counter() - t0) * 1000)
                if resp.status_code != 200:
                    raise RuntimeError(resp.text)
                forget_attempts(db, lock_id)
            s = summary(times)
            overhead = (s["p50"] - fwd["p50"]) / fwd["p50"]
            rows.append([f"POST /verify, {n} members", s["p50"], s["p95"], f"{overhead:+.0%}"])
        rows.append(["bare model forward (same audio)", fwd["p50"], fwd["p95"], "0%"])

        obj = {"pcm_base64": base64.b64encode((clip * 32767).astype("<i2").tobytes()).decode(), "sample_rate": 44100}
        for n in (1, 10, 100):
            prints = scoring.normalise(np.random.default_rng(n).standard_normal((n, 192)).astype(np.float32))
            lists = prints.tolist()
            orig, ours = [], []
            for _ in range(max(10, args.requests // 2)):
                t0 = time.perf_counter()
                original_flow(encoder, obj, lists)
                orig.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                this_flow(encoder, obj, prints)
                ours.append((time.perf_counter() - t0) * 1000)
            ratio_rows.append(
                [f"{n} candidates", pct(orig, 50), pct(ours, 50), f"{pct(orig, 50) / pct(ours, 50):.2f}x"]
            )

        fn_env = function_env(env)
        lock_for_cold = lock_id

        def verify_probe(base: str) -> bool:
            return signed_post(base, key, lock_for_cold, body, requests.Session()).status_code == 200

        def devices_probe(base: str) -> bool:
            return requests.get(base + "/devices/health", timeout=5).status_code in (200, 503)

        with built_bundles("verify", "devices") as bundles:
            for name, probe in (("verify", verify_probe), ("devices", devices_probe)):
                runs = [cold_start(fn_env, name, probe, bundles[name]) for _ in range(3)]
                cold_rows.append([f"{name}: process start -> first answer", min(runs), pct(runs, 50)])
        rss = peak_rss_mb(int(verify_url.rsplit(":", 1)[1]))
        db.close()

    out(f"\nmachine: {machine()}\nmodel: {health['encoder']} {health['model_id']} (full size, random weights)\n")
    out(
        table(
            f"Warm verify over HTTP, 3 s at 44.1 kHz, {args.requests} requests each (ms)",
            ["path", "p50", "p95", "overhead vs forward (p50)"],
            rows,
        )
    )
    out(
        table(
            "Original design (JSON base64, per-candidate Python loop) vs this pipeline, in process (p50 ms)",
            ["candidates", "original", "this", "speed-up"],
            ratio_rows,
        )
    )
    out(table("Cold start (s), 3 runs", ["function", "best", "median"], cold_rows))
    out(table("Memory", ["function", "peak RSS (MB)"], [["verify (after the runs above)", rss]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
