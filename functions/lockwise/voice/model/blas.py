"""numpy's BLAS (OpenBLAS) threads where the speaker model is served.

OpenBLAS runs a product big enough on every core, and its threads then spin for tens of milliseconds waiting for
the next one; on a 2-core instance that spinning slows the onnxruntime forward pass that follows by ~50 %. A serving
process therefore runs numpy's BLAS on one thread (:func:`one_thread`, called as any encoder is made): its products
(resampling, ~1 ms for 3 s of audio; scoring; GE2E's recurrent steps) are small, and onnxruntime's own thread pool
keeps the cores. A large batch takes every core for one block (:func:`every_core`). The setting is a global of each
loaded library, so it also holds in a process forked after it (gunicorn's worker).

Each call looks the BLAS libraries up afresh (~2.5 ms with torch loaded): a process may load another after the first
encoder was made (scipy brings an OpenBLAS of its own), and the libraries are not listed in the order they were
loaded, so neither "the first BLAS listed" nor a list made once stands for numpy's. Both calls belong on the main
thread, where the encoders are made: the OpenBLAS of numpy 2.4's wheel (0.3.31) ignores a change of its thread count
asked for from any other thread (measured: set to 2 from a thread, it stays 1 everywhere).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]


def one_thread() -> None:
    """Every BLAS library loaded in this process runs on one thread from now on (one loaded later keeps its default
    until the next call: each encoder calls this as it is made)."""
    ThreadpoolController().limit(limits=1, user_api="blas")


def every_core() -> AbstractContextManager[object]:
    """Every BLAS library on one thread per CPU inside the block, as before after it (offline work: the count is
    global, so a product on another thread meanwhile also spreads)."""
    block: AbstractContextManager[object] = ThreadpoolController().limit(limits=os.cpu_count() or 1, user_api="blas")
    return block
