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
import platform
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
#: the options a bundle's ``requirements.txt`` opens with (``infra.build``), which pip reads and this module passes
#: over: hash-checking mode whatever the lines below carry, and wheels only, since pip builds a source archive with
#: build dependencies it fetches unchecked by any hash (pypa/pip#13984; attack run 124)
INSTALL_OPTIONS = ("--require-hashes", "--only-binary :all:")
MARK = "# ---- below: what the requirements above need, as tested (python -m infra.pins --write; do not edit) ----"


class PinError(Exception):
    """A requirements file that cannot be pinned from this virtualenv (a requirement not installed, say)."""


@dataclass
class Head:
    """What a file asks for by name: its requirements, and the files it includes (``-r``)."""

    requirements: list[Requirement] = field(default_factory=list)
    includes: list[Path] = field(default_factory=list)


def requirement_text(line: str) -> str:
    """A requirements line without its comment and its options (a bundle's ``--hash``: infra.pin_hashes)."""
    return line.split("#", 1)[0].split(" --", 1)[0].strip()


def exact_version(requirement: Requirement) -> str | None:
    """The version ``requirement`` pins with ``==``, if it pins one."""
    versions = [spec.version for spec in requirement.specifier if spec.operator == "=="]
    return versions[0] if len(versions) == 1 else None


def read_head(path: Path) -> Head:
    """The hand-written part of ``path``: every line above :data:`MARK`."""
    head = Head()
    for raw in path.read_text().split(MARK)[0].splitlines():
        line = requirement_text(raw)
        if not line:
            continue
        if line.startswith("-r "):
            head.includes.append((path.parent / line[3:].strip()).resolve())
        elif line in INSTALL_OPTIONS:
            continue
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
    names |= {canonicalize_name(Requirement(requirement_text(line)).name) for line in current(path)}
    return names


#: where these files are installed: CPython 3.11 on Linux (./dev's machines, CI, Cloud Functions, the relay's image)
MACHINES = ("x86_64", "aarch64")
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
        "platform_release": "",
        "platform_version": "",
        "implementation_version": "3.11.7",
    }
    for machine in MACHINES
)
EVERYWHERE = frozenset(range(len(SUPPORTED)))
#: which of them this machine is (None: another; its file is then read, never written, for what it does not install)
HERE = next(
    (i for i, machine in enumerate(MACHINES) if platform.machine() == machine and sys.platform == "linux"), None
)


def _installed(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def _holds(marker: Marker | None, extras: frozenset[str]) -> frozenset[int]:
    """The supported platforms on which an edge with ``marker`` is taken, ``extras`` asked of the package whose
    requirement it is (the marker evaluated, never edited: ``extra ==`` clauses decided as pip decides them)."""
    if marker is None:
        return EVERYWHERE
    return frozenset(
        i
        for i, environment in enumerate(SUPPORTED)
        if any(marker.evaluate({**environment, "extra": extra}) for extra in (extras or frozenset({""})))
    )


def closure(requirements: list[Requirement]) -> dict[NormalizedName, frozenset[int]]:
    """Every distribution ``requirements`` install, each with the supported platforms it is installed on. A
    distribution this machine does not install (its platforms exclude this one: torch's CUDA libraries on aarch64)
    is found, but what it needs is not followed (its metadata is not here); one it should install and does not is a
    ``PinError``."""
    found: dict[NormalizedName, frozenset[int]] = {}
    seen: set[tuple[NormalizedName, frozenset[str], frozenset[int]]] = set()
    stack = [(r.name, frozenset(r.extras), _holds(r.marker, frozenset())) for r in requirements]
    while stack:
        name, extras, where = stack.pop()
        key = (canonicalize_name(name), extras, where)
        if not where or key in seen:
            continue
        seen.add(key)
        found[key[0]] = found.get(key[0], frozenset()) | where
        distribution = _installed(name)
        if distribution is None:
            if HERE is None or HERE in where:
                raise PinError(f"{name} is not installed in {sys.prefix}: run ./dev setup")
            continue
        for text in distribution.requires or []:
            edge = Requirement(text)
            stack.append((edge.name, frozenset(edge.extras), where & _holds(edge.marker, extras)))
    return found


def _marker(where: frozenset[int]) -> str:
    """The condition to write beside a pin: none where every supported platform installs it."""
    if where == EVERYWHERE:
        return ""
    machines = " or ".join(f'platform_machine == "{MACHINES[i]}"' for i in sorted(where))
    return f'sys_platform == "linux" and ({machines})' if len(where) > 1 else f'sys_platform == "linux" and {machines}'


def block(path: Path) -> list[str]:
    """The lines below :data:`MARK` that ``path`` should have, from this virtualenv."""
    head = read_head(path)
    asked = {canonicalize_name(r.name) for r in head.requirements}
    for requirement in head.requirements:  # what is asked for is what is installed
        distribution = _installed(requirement.name)
        if distribution is None:
            raise PinError(f"{requirement.name} is not installed in {sys.prefix}: run ./dev setup")
        if requirement.specifier and not requirement.specifier.contains(distribution.version, prereleases=True):
            raise PinError(f"{path}: {requirement} but {distribution.version} is installed: run ./dev setup")
    elsewhere: set[NormalizedName] = set()
    for included in head.includes:
        elsewhere |= pinned_names(included)
    kept = {
        canonicalize_name(Requirement(requirement_text(line)).name): requirement_text(line) for line in current(path)
    }
    lines = []
    for name, where in sorted(closure(head.requirements).items()):
        if name in asked or name in elsewhere:
            continue
        distribution = _installed(name)
        if distribution is None:  # not for this machine: the file's own pin stands (written on a machine that has it)
            if name not in kept:
                raise PinError(f"{path}: {name} is for {_marker(where)}: write the pins on such a machine")
            lines.append(kept[name])
            continue
        marker = _marker(where)
        pin = f"{name}=={distribution.version}"
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
        requirement = Requirement(requirement_text(line))
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        wanted[canonicalize_name(requirement.name)] = exact_version(requirement) or str(requirement.specifier)
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
