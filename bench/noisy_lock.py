"""One lock posting attempts side by side, and what another lock's door sees meanwhile.

``./dev bench noisy_lock`` starts one throwaway stack with a full-size ECAPA-TDNN (random weights), pairs two locks
with 10 members each, and measures the victim lock's signed ``POST /verify`` (3 s clips, one after another) twice in
one run: alone, then while a noisy lock keeps ``--side-by-side`` attempts (``--noisy-seconds`` clips) in flight at
once (within the 120 signed requests a minute a lock is allowed). The function serves them as deployed
(functions-framework: one gunicorn worker, 8 threads, 4 database connections). The noisy lock's lockout and daily
ceiling are lifted for the run (as an owner whose own voice is accepted each time would have them), so every one of
its attempts that is decided runs the model.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.common import BENCH_FUNCTION_SETTINGS, full_random_ecapa, local_stack, machine, model_health, out, pct, table
from bench.verify import add_members, sign_up, signed_post
from lockwise.core.db import Database
from simlock.lock import provision
from tests.voices import speech_like, wav

#: the noisy lock's attempts are all decided by the model: no lockout, no daily ceiling, no per-minute budget of
#: model passes in the way (what this measures is the one-at-a-time rule); a lock's signed requests keep their limit
#: (120 a minute), as deployed
NOISY_SETTINGS = {
    "LOCKWISE_FEED_REPORTS_PER_MINUTE": BENCH_FUNCTION_SETTINGS["LOCKWISE_FEED_REPORTS_PER_MINUTE"],
    "LOCKWISE_LOCKOUT_AFTER": "1000000",
    "LOCKWISE_VOICE_DAILY_REJECTIONS": "1000000",
    "LOCKWISE_VOICE_ATTEMPTS_PER_MINUTE": BENCH_FUNCTION_SETTINGS["LOCKWISE_VOICE_ATTEMPTS_PER_MINUTE"],
    "LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_MINUTE": BENCH_FUNCTION_SETTINGS["LOCKWISE_VOICE_ATTEMPTS_PER_OWNER_MINUTE"],
    "LOCKWISE_ACCOUNT_CHECK_BATCH": BENCH_FUNCTION_SETTINGS["LOCKWISE_ACCOUNT_CHECK_BATCH"],  # members are rows
    "LOCKWISE_VOICE_SENT_AGAIN_S": BENCH_FUNCTION_SETTINGS["LOCKWISE_VOICE_SENT_AGAIN_S"],  # one clip, many attempts
}


def paired_lock(env: dict[str, str], db: Database, headers: dict[str, str], name: str, model: dict[str, Any]) -> Any:
    """A lock of the bench's owner with 10 members, paired: (lock id, its signing key)."""
    devices = env["LOCKWISE_DEVICES_URL"]
    created = requests.post(f"{devices}/devices/locks", json={"name": name}, headers=headers, timeout=10).json()
    config = provision(devices, created["provisioning"]["code"], env["MQTT_CA_FILE"], host="127.0.0.1")
    add_members(db, created["lock"]["id"], 10, model["model_id"], model["dim"])
    return created["lock"]["id"], config.signing_key()


def victim_run(url: str, lock: Any, body: bytes, n: int) -> tuple[list[float], Counter[str]]:
    """``n`` attempts one after another: their times (ms) and answers (status and code)."""
    times: list[float] = []
    answers: Counter[str] = Counter()
    session = requests.Session()
    for _ in range(n):
        t0 = time.perf_counter()
        resp = signed_post(url, lock[1], lock[0], body, session)
        times.append((time.perf_counter() - t0) * 1000)
        answers[answer(resp)] += 1
        time.sleep(0.25)
    return times, answers


def answer(resp: requests.Response) -> str:
    if resp.status_code == 200:
        return f"200 {resp.json()['decision']}"
    return f"{resp.status_code} {resp.json()['error']['code']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="the victim's attempts in each phase")
    parser.add_argument("--side-by-side", type=int, default=16, help="the noisy lock's attempts in flight at once")
    parser.add_argument("--noisy-seconds", type=float, default=15.0, help="length of the noisy lock's clips")
    args = parser.parse_args(argv)
    victim_body = wav(speech_like(3.0, rate=44100, seed=3))
    noisy_body = wav(speech_like(args.noisy_seconds, rate=44100, seed=4))
    with local_stack(full_random_ecapa(), settings=NOISY_SETTINGS) as env:
        db = Database(env["DATABASE_URL"])
        url = env["LOCKWISE_VERIFY_URL"]
        model = model_health(url, env)
        headers = {"Authorization": f"Bearer {sign_up(env['FIREBASE_AUTH_EMULATOR_HOST'])['idToken']}"}
        victim = paired_lock(env, db, headers, "Victim", model)
        noisy = paired_lock(env, db, headers, "Noisy", model)
        victim_run(url, victim, victim_body, 3)  # warm up
        alone, alone_answers = victim_run(url, victim, victim_body, args.requests)

        stop = threading.Event()
        noisy_answers: Counter[str] = Counter()

        def flood() -> None:
            session = requests.Session()
            while not stop.is_set():
                try:
                    noisy_answers[answer(signed_post(url, noisy[1], noisy[0], noisy_body, session))] += 1
                except requests.RequestException as exc:
                    noisy_answers[type(exc).__name__] += 1

        with ThreadPoolExecutor(args.side_by_side) as pool:
            for _ in range(args.side_by_side):
                pool.submit(flood)
            time.sleep(2)  # the flood under way
            beside, beside_answers = victim_run(url, victim, victim_body, args.requests)
            stop.set()
        db.close()

    def row(name: str, times: list[float], answers: Counter[str]) -> list[object]:
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
        return [name, pct(times, 50), pct(times, 95), max(times), summary]

    out(f"\nmachine: {machine()}\nmodel: {model['encoder']} {model['model_id']} (full size, random weights)\n")
    out(
        table(
            f"The victim lock's POST /verify, 3 s clips, {args.requests} one after another (ms)",
            ["phase", "p50", "p95", "max", "answers"],
            [
                row("alone", alone, alone_answers),
                row(f"beside a lock with {args.side_by_side} attempts in flight", beside, beside_answers),
            ],
        )
    )
    out(f"victim p50 beside / alone: {pct(beside, 50) / pct(alone, 50):.1f}x\n")
    out("the noisy lock's answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(noisy_answers.items())) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
