"""The files each deployable's pins may install, by SHA-256: ``infra/pin-hashes.json``, written from PyPI's index
and put beside every pin of a bundle's ``requirements.txt`` by ``infra.build``. pip then installs a bundle in
hash-checking mode: a recorded file whose bytes changed, or an index or mirror serving other bytes for it, stops
the build instead of deploying; a file added to a release after it was recorded is passed over (pip takes only
files whose hashes are listed). The repository's own requirements files stay without
hashes (``./dev``'s virtualenv installs them together with the tools, which are not hashed).

    python -m infra.pin_hashes           # check, offline: every pin of every deployable has its hashes, no more
    python -m infra.pin_hashes --fetch   # record them from the index (PyPI's simple API, its JSON form)

Only the files a deployment can take are recorded: wheels for CPython 3.11 on Linux (x86_64, aarch64) or for any
Python, and the source archive.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from infra import pins

#: what deploys (the development file is not hashed)
DEPLOYED = tuple(path for path in pins.FILES if path.name == "requirements.txt")
STORE = pins.REPO / "infra" / "pin-hashes.json"
INDEX = "https://pypi.org/simple"


class MissingHashes(Exception):
    """A pin with no recorded files (``python -m infra.pin_hashes --fetch``)."""


def _pin(line: str) -> tuple[str, str] | None:
    """(``name==version``, the requirement's text) of a requirement line; None for comments and blank lines."""
    text = pins.requirement_text(line)
    if not text:
        return None
    requirement = Requirement(text)
    version = pins.exact_version(requirement)
    if version is None:
        raise MissingHashes(f"{text!r} is not pinned to one version")
    return f"{canonicalize_name(requirement.name)}=={version}", text


def pinned(path: Path) -> set[str]:
    """Every ``name==version`` ``path`` pins."""
    return {pin[0] for line in path.read_text().splitlines() if (pin := _pin(line))}


def load() -> dict[str, list[str]]:
    return dict(json.loads(STORE.read_text())) if STORE.is_file() else {}


def with_hashes(text: str, store: dict[str, list[str]]) -> str:
    """``text`` (a requirements file) with each pin's recorded hashes beside it, as pip's hash-checking mode reads
    them; its comments kept on lines of their own."""
    out = []
    for line in text.splitlines():
        pin = _pin(line)
        if pin is None:
            out.append(line)
            continue
        key, requirement = pin
        if not store.get(key):
            raise MissingHashes(f"no hashes recorded for {key}: python -m infra.pin_hashes --fetch")
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        if comment:
            out.append(f"# {comment}")
        out.append(" ".join([requirement, *(f"--hash=sha256:{digest}" for digest in store[key])]))
    return "\n".join(out) + "\n"


def _deployable(filename: str, version: str) -> bool:
    """A file of ``version`` a deployment could install (see the module's docstring)."""
    try:
        _, wheel_version, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        try:
            return parse_sdist_filename(filename)[1] == Version(version)
        except InvalidSdistFilename:
            return False
    if wheel_version != Version(version):
        return False
    return any(
        _runs_on_311(tag.interpreter, tag.abi)
        and (tag.platform == "any" or ("linux" in tag.platform and tag.platform.endswith(("x86_64", "aarch64"))))
        for tag in tags
    )


def _runs_on_311(interpreter: str, abi: str) -> bool:
    """Whether CPython 3.11 takes a wheel of this interpreter and ABI tag: ``cp311``'s own ABI, CPython's stable ABI
    built for 3.x up to 3.11, or no ABI for Python 3 (``py3``) or 3.x up to 3.11 (``py38``), as pip takes them."""
    version = interpreter[2:]
    minor = int(version[1:]) if version.startswith("3") and version[1:].isdigit() else None
    if interpreter.startswith("cp"):
        return (abi == "cp311" and version == "311") or (abi in ("abi3", "none") and minor is not None and minor <= 11)
    if interpreter.startswith("py"):
        return abi == "none" and (version == "3" or (minor is not None and minor <= 11))
    return False


def fetch(key: str, index: str = INDEX) -> list[str]:
    """The SHA-256 of each file of ``key`` (``name==version``) a deployment could install, from ``index``."""
    name, version = key.split("==")
    request = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - the index's https address
        files: list[dict[str, Any]] = json.load(response)["files"]
    digests = sorted(
        {f["hashes"]["sha256"] for f in files if _deployable(f["filename"], version) and not f.get("yanked")}
    )
    if not digests:
        raise MissingHashes(f"{index} lists no file of {key} a deployment could install")
    return digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", action="store_true", help="record the hashes of every deployed pin from the index")
    parser.add_argument("--index", default=INDEX, help="a simple index speaking PEP 691's JSON (default: PyPI)")
    args = parser.parse_args(argv)
    wanted = set().union(*(pinned(path) for path in DEPLOYED))
    store = load()
    if args.fetch:
        store = {key: store[key] if key in store else fetch(key, args.index) for key in sorted(wanted)}
        STORE.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
        return 0
    missing, stale = sorted(wanted - store.keys()), sorted(store.keys() - wanted)
    if missing or stale:
        sys.stderr.write(
            f"infra.pin_hashes: no hashes for {missing or 'none'}; hashes of pins no deployable has: {stale or 'none'}"
            " (python -m infra.pin_hashes --fetch)\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
