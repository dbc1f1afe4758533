"""The threads a verification's forward pass and fingerprint run on: one pool each, per process, so a worker that
gunicorn forks after the module was loaded (and even after its master used them) still runs the work it submits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from infra.local import services
from lockwise.voice.verification import Beside


def test_each_pool_has_one_thread_and_is_made_once() -> None:
    beside = Beside()
    forward, fingerprint = beside.pools()
    assert beside.pools() == (forward, fingerprint)
    names = {forward.submit(lambda: threading.current_thread().name).result(timeout=5) for _ in range(20)}
    assert len(names) == 1 and next(iter(names)).startswith("forward")
    started = threading.Event()
    release = threading.Event()

    def first() -> None:
        started.set()
        release.wait(5)

    forward.submit(first)
    assert started.wait(5)
    queued = forward.submit(lambda: "ran")
    assert not queued.done()  # the second forward waits for the first: they do not share the cores
    release.set()
    assert queued.result(timeout=5) == "ran"


FORK_PROBE = """
import os
from lockwise.voice.verification import Beside
from infra.local import services
beside = Beside()
assert beside.pools()[0].submit(lambda: 1).result(timeout=5) == 1  # the parent's pool has its thread
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: the parent's thread did not come along; its pools must be its own
    try:
        forward, fingerprint = beside.pools()
        ok = forward.submit(lambda: 2).result(timeout=5) == 2 and fingerprint.submit(lambda: 3).result(timeout=5)
        os.write(write, b"ok" if ok else b"no")
    finally:
        os._exit(0)
os.close(write)
answer = os.read(read, 2)
os.waitpid(pid, 0)
print(answer.decode() or "nothing")
"""


def test_a_forked_child_runs_what_it_submits() -> None:
    """Forked in a fresh interpreter: a fork inside the test process would also run every fork hook the suite's
    other objects left registered (an encoder whose files a test tampered with exits the child as it boots)."""
    env = {**os.environ, "PYTHONPATH": str(services.FUNCTIONS_DIR)}
    done = subprocess.run([sys.executable, "-c", FORK_PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
