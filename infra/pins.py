"""Every deployable installs what was tested: its ``requirements.txt`` pins what it asks for by name (above
:data:`MARK`, edited by hand, each with its reason) and, below it, everything those need, at the versions installed
in ``./dev``'s virtualenv (written by this module). Without the lower block a build took whatever release of Flask,
Werkzeug, protobuf or cffi was newest on its day: the functions deployed next month would not be the ones tested.

    python -m infra.pins            # check: exit 1 naming every file whose pins differ from the virtualenv
    python -m infra.pins --write    # rewrite the lower block of every file from the virtualenv

``requirements-dev.txt`` (the tests, the stack and the tools) has a block too, for what the deployables' files do
not already pin. A dependency a requirement asks for only on some platforms (torch's CUDA libraries: Linux on
x86_64) keeps that condition as an environment marker, so the same file installs elsewhere. ``./dev lint`` runs the
check; the production rehearsal checks that each bundle's virtualenv holds exactly its pins.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

REPO = Path(__file__).resolve().parents[1]
#: the deployables' files first: the dev file's block leaves out what they pin
FILES = (
    REPO / "functions" / "devices" / "requirements.txt",
    REPO / "functions" / "embed" / "requirements.txt",
    REPO / "functions" / "verify" / "requirements.txt",
    REPO / "mqtt_relay" / "requirements.txt",
    REPO / "infra" / "bundles" / "migrate" / "requirements.txt",
    REPO / "requirements-dev.txt",
)
MARK = "# ---- below: what the requirements above need, as tested (python -m infra.pins --write; do not edit) ----"
_EXTRA = re.compile(r"""\s*(?:and\s+)?extra\s*==\s*["'][^"']*["']\s*(?:and\s+)?""")


class PinError(Exception):
    """A requirements file that cannot be pinned from this virtualenv (a requirement not installed, say)."""


@dataclass
class Head:
    """What a file asks for by name: its requirements, and the files it includes (``-r``)."""

    requirements: list[Requirement] = field(default_factory=list)
    includes: list[Path] = field(default_factory=list)


def _text(line: str) -> str:
    """A requirements line without its comment and its options (a bundle's ``--hash``: infra.pin_hashes)."""
    return line.split("#", 1)[0].split(" --", 1)[0].strip()


def read_head(path: Path) -> Head:
    """The hand-written part of ``path``: every line above :data:`MARK`."""
    head = Head()
    for raw in path.read_text().split(MARK)[0].splitlines():
        line = _text(raw)
        if not line:
            continue
        if line.startswith("-r "):
            head.includes.append((path.parent / line[3:].strip()).resolve())
        elif line.startswith("-"):
            raise PinError(f"{path}: {line!r}: only requirements and -r are read here")
        else:
            head.requirements.append(Requirement(line))
    return head


def pinned_names(path: Path) -> set[NormalizedName]:
    """Everything ``path`` pins or asks for, its includes' too."""
    names: set[NormalizedName] = set()
    head = read_head(path)
    for included in head.includes:
        names |= pinned_names(included)
    names |= {canonicalize_name(r.name) for r in head.requirements}
    for raw in path.read_text().partition(MARK)[2].splitlines():
        line = _text(raw)
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def _installed(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError as exc:
        raise PinError(f"{name} is not installed in {sys.prefix}: run ./dev setup") from exc


def _follows(marker: Marker | None, extras: frozenset[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in (extras or frozenset({""})))


def _condition(marker: Marker | None) -> str:
    """The platform part of an edge's marker (its ``extra ==`` part is decided by the path itself)."""
    if marker is None:
        return ""
    text = _EXTRA.sub(" ", str(marker)).strip()
    text = re.sub(r"^(and|or)\s+|\s+(and|or)$", "", text).strip()
    return "" if text in ("", "()") else text


def closure(requirements: list[Requirement]) -> dict[NormalizedName, set[frozenset[str]]]:
    """Every distribution ``requirements`` install here, each with the conditions of the paths reaching it (a set of
    conjunctions of markers; an empty conjunction: installed everywhere)."""
    found: dict[NormalizedName, set[frozenset[str]]] = {}
    seen: set[tuple[NormalizedName, frozenset[str], frozenset[str]]] = set()
    stack: list[tuple[str, frozenset[str], frozenset[str]]] = [
        (r.name, frozenset(r.extras), frozenset()) for r in requirements if _follows(r.marker, frozenset())
    ]
    while stack:
        name, extras, path = stack.pop()
        key = (canonicalize_name(name), extras, path)
        if key in seen:
            continue
        seen.add(key)
        found.setdefault(key[0], set()).add(path)
        for text in _installed(name).requires or []:
            edge = Requirement(text)
            if not _follows(edge.marker, extras):
                continue
            condition = _condition(edge.marker)
            stack.append((edge.name, frozenset(edge.extras), path | {condition} if condition else path))
    return found


#: where these files are installed: CPython 3.11 on Linux (./dev's machines, CI, Cloud Functions, the relay's image)
SUPPORTED = tuple(
    {
        "python_version": "3.11",
        "python_full_version": "3.11.7",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": machine,
        "extra": "",
    }
    for machine in ("x86_64", "aarch64")
)


def _marker(paths: set[frozenset[str]]) -> str:
    """The condition to write beside a pin: none where every supported platform installs it."""
    if any(not conjunction for conjunction in paths):
        return ""
    alternatives = sorted(
        " and ".join(f"({c})" for c in sorted(conjunction)) if len(conjunction) > 1 else next(iter(conjunction))
        for conjunction in paths
    )
    text = alternatives[0] if len(alternatives) == 1 else " or ".join(f"({a})" for a in alternatives)
    return "" if all(Marker(text).evaluate(environment) for environment in SUPPORTED) else text


def block(path: Path) -> list[str]:
    """The lines below :data:`MARK` that ``path`` should have, from this virtualenv."""
    head = read_head(path)
    asked = {canonicalize_name(r.name) for r in head.requirements}
    for requirement in head.requirements:  # what is asked for is what is installed
        version = _installed(requirement.name).version
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            raise PinError(f"{path}: {requirement} but {version} is installed: run ./dev setup")
    elsewhere: set[NormalizedName] = set()
    for included in head.includes:
        elsewhere |= pinned_names(included)
    lines = []
    for name, paths in sorted(closure(head.requirements).items()):
        if name in asked or name in elsewhere:
            continue
        marker = _marker(paths)
        pin = f"{name}=={_installed(name).version}"
        lines.append(f"{pin} ; {marker}" if marker else pin)
    return lines


def installs(path: Path) -> dict[NormalizedName, str]:
    """What ``pip install -r path`` should leave in an empty virtualenv on this machine: each pin whose marker holds
    here, by name, with its version (the production rehearsal compares a bundle's virtualenv with it)."""
    wanted: dict[NormalizedName, str] = {}
    head = read_head(path)
    for included in head.includes:
        wanted |= installs(included)
    lines = [str(r) for r in head.requirements] + current(path)
    for line in lines:
        requirement = Requirement(_text(line))
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        wanted[canonicalize_name(requirement.name)] = pins[0] if pins else str(requirement.specifier)
    return wanted


def current(path: Path) -> list[str]:
    text = path.read_text()
    if MARK not in text:
        return []
    return [line for line in text.split(MARK, 1)[1].splitlines() if line.strip()]


def write(path: Path, lines: list[str]) -> None:
    head = path.read_text().split(MARK)[0].rstrip("\n")
    path.write_text(head + "\n" + MARK + "\n" + "".join(f"{line}\n" for line in lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite each file's lower block from this virtualenv")
    args = parser.parse_args(argv)
    differ = []
    for path in FILES:
        try:
            want = block(path)
        except PinError as exc:
            sys.stderr.write(f"infra.pins: {exc}\n")
            return 2
        if args.write:
            write(path, want)
        elif want != current(path):
            have = current(path)
            gone = [line for line in have if line not in want]
            new = [line for line in want if line not in have]
            name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            differ.append(f"{name}: pins {gone or 'nothing'} where this virtualenv has {new}")
    if differ:
        sys.stderr.write(
            "infra.pins: these files do not pin what is installed (python -m infra.pins --write, then review):\n  "
            + "\n  ".join(differ)
            + "\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
