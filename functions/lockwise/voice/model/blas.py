"""numpy's BLAS (OpenBLAS) threads where the speaker model is served.

OpenBLAS runs a product big enough on every core, and its threads then spin for tens of milliseconds waiting for
the next one; on a 2-core instance that spinning slows the onnxruntime forward pass that follows by ~50 %. A serving
process therefore runs numpy's BLAS on one thread (:func:`one_thread`, called as any encoder is made): its products
(resampling, ~1 ms for 3 s of audio; scoring; GE2E's recurrent steps) are small, and onnxruntime's own thread pool
keeps the cores. A large batch takes every core for one block (:func:`every_core`). The setting is a global of the
loaded library, so it also holds in a process forked after it (gunicorn's worker).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from functools import lru_cache

from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


@lru_cache(maxsize=1)
def one_thread() -> None:
    """From now on, numpy's BLAS in this process runs on one thread (once per process; later calls do nothing)."""
    _controller().limit(limits=1, user_api="blas")


def every_core() -> AbstractContextManager[object]:
    """numpy's BLAS on one thread per CPU inside the block, as before after it (offline work: the count is global,
    so a product on another thread meanwhile also spreads)."""
    block: AbstractContextManager[object] = _controller().limit(limits=os.cpu_count() or 1, user_api="blas")
    return block
