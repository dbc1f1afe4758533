"""The firebase-tools the deploy runs is the one infra/local/firebase-tools' lock file pins (attack run 124)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra import firebase_tools

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def install(tmp_path: Path) -> Path:
    """A tree as npm ci leaves it from the lock file: its record of what it installed, and the CLI's package.json."""
    lock = json.loads(firebase_tools.LOCK_FILE.read_text())
    packages = {name: entry for name, entry in lock["packages"].items() if name}
    folder = tmp_path / "firebase-tools"
    (folder / firebase_tools.CLI_PACKAGE).mkdir(parents=True)
    (folder / "node_modules" / ".package-lock.json").write_text(json.dumps({"packages": packages}))
    version = packages[firebase_tools.CLI_PACKAGE]["version"]
    (folder / firebase_tools.CLI_PACKAGE / "package.json").write_text(json.dumps({"version": version}))
    return folder


def _record(install: Path) -> dict[str, dict[str, str]]:
    packages: dict[str, dict[str, str]] = json.loads((install / "node_modules" / ".package-lock.json").read_text())[
        "packages"
    ]
    return packages


def _rewrite(install: Path, packages: dict[str, dict[str, str]]) -> None:
    (install / "node_modules" / ".package-lock.json").write_text(json.dumps({"packages": packages}))


def test_an_install_other_than_the_lock_files_is_named_and_not_deployed_with(install: Path) -> None:
    """Attack run 124: the deploy's firebase step ran ~/.cache/lockwise/firebase-tools' CLI whatever it held (an
    install from before the lock file moved, one changed since), and deployed the Firestore rules and the console with
    it."""
    assert firebase_tools.problems(install) == []
    assert firebase_tools.main([str(install)]) == 0
    packages = _record(install)
    name = next(n for n in packages if n != firebase_tools.CLI_PACKAGE and not packages[n].get("optional"))
    _rewrite(install, {**packages, name: {**packages[name], "version": "0.0.1-evil", "integrity": "sha512-x"}})
    assert firebase_tools.problems(install) == [f"{name} is 0.0.1-evil, the lock file's {packages[name]['version']}"]
    _rewrite(install, {**packages, "node_modules/left-over": {"version": "1.0.0"}})
    assert firebase_tools.problems(install) == ["node_modules/left-over is not in the lock file"]
    _rewrite(install, {n: e for n, e in packages.items() if n != name})
    assert firebase_tools.problems(install) == [f"{name} is missing"]
    _rewrite(install, packages)
    (install / firebase_tools.CLI_PACKAGE / "package.json").write_text(json.dumps({"version": "13.0.0"}))
    pinned = packages[firebase_tools.CLI_PACKAGE]["version"]
    assert firebase_tools.problems(install) == [f"the CLI says it is 13.0.0, not the pinned {pinned}"]
    assert firebase_tools.main([str(install)]) == 1
    shutil.rmtree(install / "node_modules")
    assert "holds no firebase-tools npm ci installed" in firebase_tools.problems(install)[0]


def test_the_deploy_checks_and_runs_the_cli_where_dev_installed_it(tmp_path: Path) -> None:
    """The firebase step checks the install before it runs its CLI, both under LOCKWISE_TOOLS_HOME as ./dev uses it
    (the step ran ~/.cache/lockwise's whatever the variable said)."""
    args = ["firebase", "--project", "lockwise-prod", "--region", "europe-west1", "--dry-run"]
    env = {**os.environ, "LOCKWISE_TOOLS_HOME": str(tmp_path / "tools")}
    planned = subprocess.run(
        [sys.executable, "-m", "infra.deploy", *args], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    steps = [shlex.split(line) for line in planned.stdout.splitlines() if line.strip()]
    checked = steps.index([sys.executable, "-m", "infra.firebase_tools"])
    assert steps[checked + 1][:2] == [
        str(tmp_path / "tools" / "firebase-tools" / "node_modules" / ".bin" / "firebase"),
        "deploy",
    ]
