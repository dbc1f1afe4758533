"""A function instance loads its modules with the garbage collector off (``lockwise.core.loading``): each
``main.py`` imports it before anything that loads numpy, onnxruntime, pg8000 or this package, and turns collection
back on, with what it loaded frozen, as its last line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = ("verify", "embed", "devices")
#: what may load before collection is paused: the standard library, and what functions-framework itself imported
#: before it loaded main.py
ALREADY_LOADED = {"flask", "functions_framework"}


def imported(statement: ast.stmt) -> list[str]:
    if isinstance(statement, ast.Import):
        return [alias.name for alias in statement.names]
    if isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
        return [statement.module]
    return []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_loads_its_modules_with_collection_paused_and_resumes_it_last(name: str) -> None:
    body = ast.parse((REPO / "functions" / name / "main.py").read_text()).body
    modules = [(i, module) for i, statement in enumerate(body) for module in imported(statement)]
    first = next((i for i, module in modules if module == "lockwise.core.loading"), None)
    assert first is not None, "main.py does not import lockwise.core.loading"
    before = [
        module
        for i, module in modules
        if i < first and module.split(".")[0] not in sys.stdlib_module_names | ALREADY_LOADED
    ]
    assert before == [], f"loaded before collection is paused: {before}"
    last = body[-1]
    assert isinstance(last, ast.Expr) and ast.unparse(last.value) == "lockwise.core.loading.loaded()", (
        "main.py's last line must be lockwise.core.loading.loaded()"
    )


def run_in_a_fresh_process(script: str) -> None:
    """Run ``script`` (its asserts) in a new interpreter with the package on its path: the collector's state is the
    process's."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(REPO / "functions")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_loading_pauses_collection_until_loaded_then_freezes_what_was_loaded() -> None:
    script = (
        "import gc\n"
        "assert gc.isenabled()\n"
        "import lockwise.core.loading as loading\n"
        "assert not gc.isenabled(), 'collection still on while modules load'\n"
        "import json, decimal\n"
        "assert gc.get_freeze_count() == 0\n"
        "loading.loaded()\n"
        "assert gc.isenabled(), 'collection left off'\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
    )
    run_in_a_fresh_process(script)


def test_a_process_that_loads_again_freezes_nothing_more_and_its_garbage_is_collected() -> None:
    """The tests load each function's main.py for every client: a freeze at each load kept the garbage of the loads
    before for good, pooled database connections included (the test database ran out of connections)."""
    script = (
        "import gc, importlib, weakref\n"
        "import lockwise.core.loading as loading\n"
        "loading.loaded()\n"
        "frozen = gc.get_freeze_count()\n"
        "class Pool: pass\n"
        "pool = Pool(); pool.me = pool; gone = weakref.ref(pool); del pool  # garbage in a cycle, as a runtime is\n"
        "importlib.reload(loading)  # main.py loaded again\n"
        "loading.loaded()\n"
        "assert gc.get_freeze_count() <= frozen, (gc.get_freeze_count(), frozen)  # fewer: some died\n"
        "gc.collect()\n"
        "assert gone() is None, 'the garbage of the load before was kept'\n"
    )
    run_in_a_fresh_process(script)
