"""BLAS thread counts where an encoder serves (``lockwise.voice.model.blas``), on the real libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

from infra.local import services
from lockwise.voice.model import blas


def blas_threads() -> set[int]:
    return {int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}


def test_a_block_spreads_and_one_thread_holds_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    monkeypatch.setattr(os, "cpu_count", lambda: 3)  # a count told apart from 1 on any machine
    blas.one_thread()
    assert blas_threads() == {1}
    with blas.every_core():
        assert blas_threads() == {3}
    assert blas_threads() == {1}


LATER_LIBRARY = """
import json, numpy
from lockwise.voice.model import blas
from threadpoolctl import threadpool_info
def threads():
    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
blas.one_thread()  # the first encoder: numpy's BLAS alone is loaded
import scipy.linalg  # an OpenBLAS of scipy's own, loaded since, at its default
loaded = threads()
blas.one_thread()  # the next encoder
print(json.dumps([loaded, threads()]))
"""


def test_a_blas_loaded_after_the_first_encoder_is_limited_by_the_next() -> None:
    """In a fresh process (this one may have scipy already): a list of libraries made once would miss scipy's."""
    env = {
        k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")
    }  # OpenBLAS's default: a thread per CPU
    env["PYTHONPATH"] = str(services.FUNCTIONS_DIR)
    done = subprocess.run(
        [sys.executable, "-c", LATER_LIBRARY], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded, after = json.loads(done.stdout)
    assert os.cpu_count() != 1, "this test tells one thread from a library's default: it needs two CPUs"
    assert loaded == [1, os.cpu_count()] and after == [1, 1]
