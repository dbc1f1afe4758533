"""The borders of the shared package (pyproject's import-linter contracts): kept by the code as it is, and a
forbidden import is caught (each contract broken on purpose in a copy of the package); and the handlers in
functions/*/main.py run no SQL of their own."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(functions_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run the repository's contracts against the ``lockwise`` package found in ``functions_dir``."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: import-linter is in requirements-dev.txt (./dev setup installs it)")
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=functions_dir,
        env={**os.environ, "PYTHONPATH": str(functions_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_package_keeps_every_contract() -> None:
    done = lint_imports(REPO / "functions")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("lockwise/db.py", "from lockwise import locks", "imports no domain"),
        ("lockwise/locks.py", "import numpy", "no numpy"),
        ("lockwise/lock_events.py", "from lockwise import scoring", "no voice code"),
        ("lockwise/voice/encoder.py", "from lockwise import db", "no database"),
    ],
)
def test_a_forbidden_import_is_caught(tmp_path: Path, module: str, forbidden: str, contract: str) -> None:
    copy = tmp_path / "functions"
    shutil.copytree(REPO / "functions" / "lockwise", copy / "lockwise", ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{forbidden}  # added by the test\n")
    done = lint_imports(copy)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout and contract in done.stdout.replace("\n", " ")


def test_handlers_run_no_sql() -> None:
    """Handlers parse, call one domain function and shape the answer: no statement is run in functions/*/main.py."""
    for main in sorted((REPO / "functions").glob("*/main.py")):
        tree = ast.parse(main.read_text())
        runs = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run"
        ]
        sql = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.lstrip().upper().startswith(("SELECT ", "INSERT ", "UPDATE ", "DELETE "))
        ]
        assert not runs and not sql, f"{main.relative_to(REPO)}: statements at lines {runs + sql}"
