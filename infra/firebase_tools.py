"""The firebase-tools the deploy runs is the pinned one: ``python -m infra.firebase_tools`` exits 1 naming each
package of the installed tree that is not ``infra/local/firebase-tools/package-lock.json``'s (another version or
integrity hash, a package the lock file has not, one it has missing), or a tree ``npm ci`` did not install.

``./dev setup`` installs it with ``npm ci`` into ``$LOCKWISE_TOOLS_HOME/firebase-tools`` (default
``~/.cache/lockwise``). The deploy's ``firebase`` step ran ``~/.cache/lockwise/firebase-tools``'s CLI whatever it
held: an install from before the lock file moved, or one changed since, deployed the Firestore rules and the
console, and one under another ``LOCKWISE_TOOLS_HOME`` was never the one run (attack run 124). npm records the tree
it installed in ``node_modules/.package-lock.json``; this compares it, and the CLI's own ``package.json``, with the
lock file. It reads what npm recorded, not each file's bytes: ``npm ci`` checked those against the lock file's
integrity hashes when it installed them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCK_FILE = REPO / "infra" / "local" / "firebase-tools" / "package-lock.json"
CLI_PACKAGE = "node_modules/firebase-tools"


def install_dir() -> Path:
    """Where ``./dev setup`` installs firebase-tools (``setup_node``)."""
    return Path(os.environ.get("LOCKWISE_TOOLS_HOME", Path.home() / ".cache" / "lockwise")) / "firebase-tools"


def cli(install: Path | None = None) -> Path:
    return (install or install_dir()) / "node_modules" / ".bin" / "firebase"


def _packages(path: Path) -> dict[str, Any]:
    packages = json.loads(path.read_text()).get("packages")
    if not isinstance(packages, dict):
        raise ValueError(f"{path} lists no packages")
    return {name: entry for name, entry in packages.items() if name and isinstance(entry, dict)}


def problems(install: Path, lock_file: Path = LOCK_FILE) -> list[str]:
    """How the tree installed under ``install`` differs from ``lock_file``."""
    wanted = _packages(lock_file)
    try:
        installed = _packages(install / "node_modules" / ".package-lock.json")
        cli_version = json.loads((install / CLI_PACKAGE / "package.json").read_text()).get("version")
    except (OSError, ValueError) as exc:
        return [f"{install} holds no firebase-tools npm ci installed ({type(exc).__name__}): run ./dev setup"]
    said = []
    for name in sorted(installed.keys() | wanted.keys()):
        got, want = installed.get(name), wanted.get(name)
        if want is None:
            said.append(f"{name} is not in the lock file")
        elif got is None:
            if not want.get("optional"):  # another platform's optional package is not installed here
                said.append(f"{name} is missing")
        elif (got.get("version"), got.get("integrity")) != (want.get("version"), want.get("integrity")):
            said.append(f"{name} is {got.get('version')}, the lock file's {want.get('version')}")
    pinned = wanted.get(CLI_PACKAGE, {}).get("version")
    if cli_version != pinned:
        said.append(f"the CLI says it is {cli_version}, not the pinned {pinned}")
    return said


def main(argv: list[str] | None = None) -> int:
    install = Path(argv[0]) if argv else install_dir()
    found = problems(install)
    if found:
        shown = "; ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        sys.stderr.write(f"firebase-tools: {install} is not the pinned install: {shown}. Run ./dev setup\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
