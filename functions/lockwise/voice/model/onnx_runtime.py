"""onnxruntime as this code base imports it: with its telemetry off, which also keeps it from starting a thread.

onnxruntime's Python module (1.31 here) starts a telemetry thread as it is imported (Microsoft's 1DS events SDK).
A function imports it in gunicorn's master, which then forks the worker that serves: the worker inherits the
thread's state but not the thread, and at exit it joins a thread that is not there. Measured on every stop of the
verify and embed functions (gunicorn sends SIGTERM at scale-in and at every redeploy): the worker aborted
("terminate called after throwing an instance of 'std::system_error'", SIGABRT), and with one intra-op thread it
hung instead, until the platform killed it. ``ORT_DISABLE_TELEMETRY`` set before the import starts no such thread,
and a door lock's back-end sends no usage events to a third party. Every module of the package imports onnxruntime
from this one (an import contract in pyproject.toml; ``tests/integration/test_bundles_serve.py`` stops each voice
bundle, started without the variable, and sees its worker exit cleanly).
"""

from __future__ import annotations

import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # read by onnxruntime as it is imported, so set before it

import onnxruntime as ort  # type: ignore[import-untyped]  # noqa: E402

__all__ = ["ort"]
