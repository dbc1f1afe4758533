"""A function instance's start without the cyclic garbage collector.

Each function's ``main.py`` imports this module before any other of this package (``import lockwise.core.loading``
sorts first among them) and calls ``loaded()`` as its last line. In between, its modules load with collection off:
numpy, onnxruntime, pg8000, cryptography and this package make ~90,000 objects that the collector would otherwise
scan in thousands of young-generation passes and a few full ones, finding no garbage worth them (verify's cold
start, 9 interleaved starts each: 0.507 -> 0.481 s median; docs/benchmarks/speed-history.md). ``loaded()`` moves
everything loaded to the permanent generation (``gc.freeze``), which no later collection scans and which the worker
gunicorn forks from the master then shares instead of copying as a collection touches it, and turns collection
back on.
"""

from __future__ import annotations

import gc

gc.disable()


def loaded() -> None:
    """The instance's modules are loaded: keep them out of every later collection, then collect as usual. Only the
    process's first load freezes: a process that loads ``main.py`` again (the tests load it for each client) would
    otherwise freeze, for good, the garbage of what it loaded before (a full ``gc.collect`` first costs 33-53 ms of a
    cold start, more than the pause saves), and with it the database connections that garbage held: the test
    database ran out of connections."""
    if not gc.get_freeze_count():
        gc.freeze()
    gc.enable()
