"""Every goal of the speed issue (#17), measured in one run, with the original design's service beside ours.

``./dev bench`` (or ``./dev bench goals``) starts one throwaway local stack with a full-size ECAPA-TDNN (random
weights: the real model's size and speed), starts the original design's FastAPI + SpeechBrain service
(``bench/original_service.py``, rebuilt from its documented code) on the same model directory, and prints one table:
each goal's measured value, the goal, and whether it is met. Warm requests are interleaved round by round (ours,
the original, the bare SpeechBrain forward, our in-process ONNX forward), 0.25 s apart so that one's spinning
thread pool does not slow the next: every path sees the same machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import requests
from packaging.requirements import Requirement

from bench import relay as relay_bench
from bench.common import (
    GOALS_SETTINGS,
    REPO,
    forget_attempts,
    full_random_ecapa,
    function_env,
    local_stack,
    machine,
    model_health,
    out,
    pct,
    table,
)
from bench.verify import add_members, built_bundles, cold_start, peak_rss_mb, sign_up, signed_post
from infra.local.services import free_port
from lockwise.core.headers import SERVICE_TOKEN_HEADER
from lockwise.voice import scoring
from simlock.lock import provision
from tests.voices import speech_like, wav

#: between two measured calls: on 2 cores, a pool still spinning after the previous call slows the next one
PAUSE_S = 0.25


@dataclass
class Row:
    goal: str
    measured: str
    target: str
    met: bool | None  # None: shown for comparison, not a goal

    def cells(self) -> list[str]:
        verdict = "" if self.met is None else ("met" if self.met else "NOT MET")
        return [self.goal, self.measured, self.target, verdict]


def original_service(model_dir: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start the original design's service; return it, its URL and seconds to its first answered /verify."""
    port = free_port()
    env = dict(os.environ, ORIGINAL_MODEL_DIR=str(model_dir), PYTHONPATH=f"{REPO}:{REPO / 'functions'}")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.original_service:app", "--port", str(port), "--log-level", "error"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    body = original_body(speech_like(3.0, rate=44100, seed=3), 1)
    while True:
        try:
            if requests.post(url + "/verify", json=body, timeout=60).status_code == 200:
                return proc, url, time.perf_counter() - started
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.perf_counter() - started > 180:
            raise RuntimeError("the original service did not start")
        time.sleep(0.01)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def original_body(clip: np.ndarray, candidates: int) -> dict[str, Any]:
    """The original contract: base64 PCM16 at 44.1 kHz and base64 float32 candidate embeddings."""
    rng = np.random.default_rng(candidates)
    prints = scoring.normalise(rng.standard_normal((candidates, 192)).astype(np.float32))
    return {
        "pcm_base64": base64.b64encode((clip * 32767).astype("<i2").tobytes()).decode(),
        "candidates": [base64.b64encode(p.tobytes()).decode() for p in prints],
    }


def installed_mb(requirements: Path) -> tuple[float, set[str]]:
    """Size on disk of what ``requirements`` installs (its pins and their dependencies, as installed here)."""
    seen: set[str] = set()
    todo = [
        Requirement(line.split("#")[0].strip()).name
        for line in requirements.read_text().splitlines()
        if line.split("#")[0].strip() and not line.startswith("-")
    ]
    total = 0
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for file in dist.files or []:
            path = Path(str(file.locate()))
            if path.is_file():
                total += path.stat().st_size
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return total / 2**20, seen


def timed(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="interleaved warm rounds")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--locks", type=int, default=30)
    args = parser.parse_args(argv)
    model_dir = full_random_ecapa()
    clip = speech_like(3.0, rate=44100, seed=3)
    body = wav(clip)
    rows: list[Row] = []
    with local_stack(model_dir, settings=GOALS_SETTINGS) as env:
        from lockwise.core.db import Database
        from lockwise.voice.model.ecapa import EcapaEncoder
        from lockwise.voice.model.onnx_ecapa import OnnxEcapaEncoder

        db = Database(env["DATABASE_URL"])
        account = sign_up(env["FIREBASE_AUTH_EMULATOR_HOST"])
        headers = {"Authorization": f"Bearer {account['idToken']}"}
        devices, verify_url = env["LOCKWISE_DEVICES_URL"], env["LOCKWISE_VERIFY_URL"]
        health = model_health(verify_url, env)
        created = requests.post(f"{devices}/devices/locks", json={"name": "Goals"}, headers=headers, timeout=10).json()
        config = provision(devices, created["provisioning"]["code"], env["MQTT_CA_FILE"], host="127.0.0.1")
        lock_id = created["lock"]["id"]
        add_members(db, lock_id, args.members, health["model_id"], health["dim"])
        key = config.signing_key()

        # -- cold starts, one process at a time (the original's first: it takes seconds)
        original, original_url, original_cold = original_service(model_dir)
        fn_env = {**function_env(env), **GOALS_SETTINGS}
        pcm = {"pcm_base64": base64.b64encode((clip * 32767).astype("<i2").tobytes()).decode()}
        token = {SERVICE_TOKEN_HEADER: env["LOCKWISE_SERVICE_TOKEN"]}

        def verify_probe(base: str) -> bool:
            return signed_post(base, key, lock_id, body, requests.Session()).status_code == 200

        probes = {
            "verify": verify_probe,
            "embed": lambda base: (
                requests.post(base + "/embed", json=pcm, headers=token, timeout=60).status_code == 200
            ),
            "devices": lambda base: requests.get(base + "/devices/health", timeout=5).status_code in (200, 503),
        }
        forget = partial(forget_attempts, db, lock_id)  # after each cold start's answer, untimed
        with built_bundles(*probes) as bundles:
            cold = {
                name: pct([cold_start(fn_env, name, probe, bundles[name], forget) for _ in range(args.cold_runs)], 50)
                for name, probe in probes.items()
            }

        # -- warm, interleaved: our POST /verify, the original's /verify, bare SpeechBrain, our ONNX in process
        speechbrain = EcapaEncoder(model_dir)
        onnx = OnnxEcapaEncoder(model_dir / "onnx")
        original_json = original_body(clip, args.members)
        session, original_session = requests.Session(), requests.Session()
        for _ in range(3):  # warm-up
            signed_post(verify_url, key, lock_id, body, session)
            original_session.post(original_url + "/verify", json=original_json, timeout=60)
            speechbrain.embed(clip, 44100)
            onnx.embed(clip, 44100)
        forget_attempts(db, lock_id)
        ours, theirs, bare, in_process = [], [], [], []

        def settled(call: Callable[[], Any]) -> float:
            time.sleep(PAUSE_S)  # the last call's spinning thread pools (torch's, onnxruntime's) go idle first
            return timed(call)

        answers: list[requests.Response] = []
        for _ in range(args.rounds):
            ours.append(settled(lambda: answers.append(signed_post(verify_url, key, lock_id, body, session))))
            if answers[-1].status_code != 200:
                raise RuntimeError(answers[-1].text)
            forget_attempts(db, lock_id)  # keeps the lockout and the daily ceiling out of the measurement
            theirs.append(
                settled(lambda: original_session.post(original_url + "/verify", json=original_json, timeout=60))
            )
            bare.append(settled(lambda: speechbrain.embed(clip, 44100)))
            in_process.append(settled(lambda: onnx.embed(clip, 44100)))
        stop(original)
        rss = {
            name: peak_rss_mb(int(env[f"LOCKWISE_{name.upper()}_URL"].rsplit(":", 1)[1]))
            for name in ("verify", "embed")
        }
        db.close()

        relay = relay_bench.measure(env, args.commands, args.events, args.locks)

    manifest = json.loads((model_dir / "onnx" / "manifest.json").read_text())
    # every graph the product may serve from this export: the portable one, and the CPU one where it was made
    parities = {
        "portable": manifest["parity"],
        **({"cpu": manifest["cpu_graph"]["parity"]} if "cpu_graph" in manifest else {}),
    }
    sizes = {name: installed_mb(REPO / "functions" / name / "requirements.txt") for name in ("verify", "embed")}
    ours50, theirs50, bare50, proc50 = (pct(v, 50) for v in (ours, theirs, bare, in_process))
    embed_mb, verify_mb, embed_torch = sizes["embed"][0], sizes["verify"][0], "torch" in sizes["embed"][1]
    rows += [
        Row(
            "verify cold start: process start -> first signed POST /verify answered",
            f"{cold['verify']:.2f} s",
            "<= 0.5 s",
            cold["verify"] <= 0.5,
        ),
        Row("  the original service (uvicorn + SpeechBrain), same clock", f"{original_cold:.2f} s", "", None),
        Row(
            "  original / ours",
            f"{original_cold / cold['verify']:.1f}x",
            ">= 10x",
            original_cold / cold["verify"] >= 10,
        ),
        Row(
            f"warm POST /verify over HTTP, {args.members} members, p50 / bare SpeechBrain forward p50",
            f"{ours50:.1f} / {bare50:.1f} ms = {ours50 / bare50:.2f}x",
            "<= 0.80x",
            ours50 / bare50 <= 0.8,
        ),
        Row(
            f"warm POST /verify p50 / our in-process embedding (ONNX, {onnx.graph} graph) p50",
            f"{ours50:.1f} / {proc50:.1f} ms = {ours50 / proc50:.2f}x",
            "<= 1.10x",
            ours50 / proc50 <= 1.10,
        ),
        Row(
            f"  the original service's /verify, {args.members} candidates, p50 (ours / original)",
            f"{theirs50:.1f} ms ({ours50 / theirs50:.2f}x)",
            "",
            None,
        ),
        Row(
            "embed cold start: process start -> first POST /embed answered (ONNX, no torch)",
            f"{cold['embed']:.2f} s",
            "<= 0.5 s",
            cold["embed"] <= 0.5,
        ),
        Row(
            "embed peak RSS / verify's (master + worker)",
            f"{rss['embed']:.0f} / {rss['verify']:.0f} MB = {rss['embed'] / rss['verify']:.2f}x",
            "<= 1.10x",
            rss["embed"] / rss["verify"] <= 1.10,
        ),
        Row(
            "embed installed requirements / verify's",
            f"{embed_mb:.0f} / {verify_mb:.0f} MB = {embed_mb / verify_mb:.2f}x, torch: {embed_torch}",
            "<= 1.10x, no torch",
            embed_mb / verify_mb <= 1.10 and not embed_torch,
        ),
        Row(
            "devices cold start: process start -> first answer",
            f"{cold['devices']:.2f} s",
            "<= 0.5 s",
            cold["devices"] <= 0.5,
        ),
        Row(
            f"relay: lock events/s into PostgreSQL + Firestore mirror ({relay.locks} locks)",
            f"{relay.relay_rate:.0f}/s",
            ">= 1000/s",
            relay.relay_rate >= 1000,
        ),
        Row(
            "  events lost or doubled",
            f"{abs(relay.events - relay.applied)} of {relay.events}",
            "0",
            relay.applied == relay.events,
        ),
        Row("  plain MQTT subscriber on the same broker", f"{relay.plain_rate:.0f}/s", "", None),
        Row(
            "command: app POST -> arrival at the lock, p50 / p99",
            f"{relay.arrival['p50']:.1f} / {relay.arrival['p99']:.1f} ms",
            "<= 30 / <= 100 ms",
            relay.arrival["p50"] <= 30 and relay.arrival["p99"] <= 100,
        ),
        Row("  plain MQTT publish -> lock -> ack back, p50", f"{relay.plain_rt['p50']:.1f} ms", "", None),
        Row(
            "parity of every servable graph with SpeechBrain (max |diff|, export gate)",
            ", ".join(f"{name} {parity['max_abs_diff']:.1e}" for name, parity in parities.items()),
            f"<= {manifest['parity']['tolerance']:.0e}",
            all(parity["max_abs_diff"] <= parity["tolerance"] for parity in parities.values()),
        ),
    ]
    out(f"\nmachine: {machine()}\nmodel: {health['encoder']} {health['model_id']} (full size, random weights)\n")
    out(
        table(
            f"Speed goals (#17), one run: {args.rounds} interleaved warm rounds, {args.cold_runs} cold starts (median)",
            ["goal", "measured", "target", ""],
            [r.cells() for r in rows],
        )
    )
    met = sum(1 for r in rows if r.met)
    out(f"\n{met} of {sum(1 for r in rows if r.met is not None)} goals met\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
