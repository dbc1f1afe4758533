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
        [str(LINT_IMPORTS), str(REPO / "pyproject.toml"), "--no-cache"],
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
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("lockwise/core/db.py", "from lockwise.devices import locks", "imports no domain"),
        ("lockwise/devices/locks.py", "import numpy", "no numpy"),
        ("lockwise/devices/lock_events.py", "from lockwise.voice import scoring", "no voice code"),
        ("lockwise/voice/model/encoder.py", "from lockwise.core import db", "no database"),
        ("lockwise/voice/scoring.py", "import onnxruntime", "imported through lockwise.voice.model.onnx_runtime only"),
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


#: what each function's handler may import from the shared package: the platform and its own domain (verify also
#: checks the lock's request signature, which the devices domain owns)
HANDLER_IMPORTS = {
    "devices": ("lockwise.core", "lockwise.devices"),
    "embed": ("lockwise.core", "lockwise.voice"),
    "verify": ("lockwise.core", "lockwise.voice", "lockwise.devices.lock_auth"),
}


def foreign_imports(source: str, allowed: tuple[str, ...]) -> list[str]:
    """The ``lockwise`` modules ``source`` imports that are not under one of ``allowed``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]  # a module or a name in one: same test
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [
            n for n in names if n.startswith("lockwise") and not any(n == a or n.startswith(a + ".") for a in allowed)
        ]
    return found


def test_handlers_import_only_the_platform_and_their_domain() -> None:
    assert sorted(p.parent.name for p in (REPO / "functions").glob("*/main.py")) == sorted(HANDLER_IMPORTS)
    for name, allowed in HANDLER_IMPORTS.items():
        source = (REPO / "functions" / name / "main.py").read_text()
        assert foreign_imports(source, allowed) == [], name
    # and the check sees a domain reached into from the wrong handler, in each import form
    bad = "from lockwise.voice import scoring\nimport lockwise.voice.audio\nfrom lockwise import voice\n"
    assert foreign_imports(bad, HANDLER_IMPORTS["devices"]) == [
        "lockwise.voice.scoring",
        "lockwise.voice.audio",
        "lockwise.voice",
    ]
    assert foreign_imports("from lockwise.devices import locks\n", HANDLER_IMPORTS["verify"]) == [
        "lockwise.devices.locks"
    ]
