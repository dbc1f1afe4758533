"""infra/pins.py: every requirements file pins what its requirements need, as installed in this virtualenv.

The production rehearsal (tests/rehearsal/conftest.py ``install``) checks the other half: a bundle's fresh
virtualenv holds exactly its pins, nothing unpinned.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from infra import pin_hashes, pins
from infra.local.services import FIREBASE_TOOLS_VERSION


def test_every_requirements_file_pins_everything_its_requirements_install() -> None:
    """A deployable built next month installs the Flask, Werkzeug and protobuf that were tested, not the newest."""
    for path in pins.FILES:
        assert pins.block(path) == pins.current(path), f"{path}: run python -m infra.pins --write"
    assert pins.main([]) == 0


def test_a_function_bundle_pins_its_frameworks_dependencies() -> None:
    """functions-framework asks for Flask and Werkzeug by range: the verify bundle pins the versions installed."""
    wanted = pins.installs(pins.REPO / "functions" / "verify" / "requirements.txt")
    for name in ("flask", "werkzeug", "protobuf", "cffi"):
        assert wanted[canonicalize_name(name)] == metadata.version(name)
    assert not {"torch", "speechbrain", "pytest"} & set(wanted)


def test_a_dependency_needed_on_one_platform_keeps_its_condition() -> None:
    """torch asks for CUDA libraries on Linux x86_64 only; a Python-version condition every supported Python meets
    is left out, and one no supported platform meets (Windows) takes nothing."""
    found = pins.closure([Requirement("torch")])
    cublas = found[canonicalize_name("nvidia-cublas-cu12")]
    assert pins._marker(cublas) == 'sys_platform == "linux" and platform_machine == "x86_64"'
    assert pins._marker(found[canonicalize_name("sympy")]) == ""
    assert pins._holds(Marker('python_version >= "3.10"'), frozenset()) == pins.EVERYWHERE
    assert not pins._holds(Marker('sys_platform == "win32"'), frozenset())


def test_extras_are_decided_as_pip_decides_them() -> None:
    """A review: the ``extra ==`` clauses were cut out of the marker's text, which broke on ``extra == "a" or extra
    == "b"`` and kept a platform condition an extra asked for made moot. The marker is evaluated instead."""
    either = Marker('extra == "a" or extra == "b"')
    assert pins._holds(either, frozenset({"b"})) == pins.EVERYWHERE and not pins._holds(either, frozenset())
    gpu = Marker('platform_machine == "x86_64" or extra == "gpu"')
    assert pins._holds(gpu, frozenset({"gpu"})) == pins.EVERYWHERE
    assert pins._holds(gpu, frozenset()) == frozenset({pins.MACHINES.index("x86_64")})
    assert pins._holds(Marker('"test" == extra'), frozenset({"test"})) == pins.EVERYWHERE


def test_on_another_machine_the_pins_of_what_it_does_not_install_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: pins were worked out on the running machine alone, so on aarch64 the check failed and a rewrite
    dropped torch's CUDA pins. What this machine does not install keeps the file's pin; what it should install and
    lacks is an error."""
    real = pins._installed
    monkeypatch.setattr(pins, "HERE", pins.MACHINES.index("aarch64"))
    monkeypatch.setattr(pins, "_installed", lambda name: None if name.startswith("nvidia") else real(name))
    dev = pins.REPO / "requirements-dev.txt"
    assert pins.block(dev) == pins.current(dev)
    monkeypatch.setattr(pins, "HERE", pins.MACHINES.index("x86_64"))
    with pytest.raises(pins.PinError, match="nvidia"):
        pins.block(dev)


def test_a_file_that_pins_too_little_is_found_and_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("# the database driver\npg8000==" + metadata.version("pg8000") + "\n")
    monkeypatch.setattr(pins, "FILES", (path,))
    assert pins.main([]) == 1
    assert pins.main(["--write"]) == 0
    assert pins.main([]) == 0
    text = path.read_text()
    assert text.startswith("# the database driver\npg8000==")  # the hand-written part is kept
    assert f"scramp=={metadata.version('scramp')}\n" in text.split(pins.MARK)[1]


def test_a_requirement_not_installed_or_at_another_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "requirements.txt"
    monkeypatch.setattr(pins, "FILES", (path,))
    path.write_text("pg8000==0.0.1\n")
    assert pins.main([]) == 2
    path.write_text("no-such-distribution-here==1.0\n")
    assert pins.main([]) == 2


def test_firebase_tools_is_installed_from_its_lock_file_at_the_version_the_stack_names() -> None:
    """npm ci installs firebase-tools and its 624 packages from infra/local/firebase-tools' lock file (npm install
    took the newest of each within firebase-tools' ranges); ./dev, the stack and the lock name one version."""
    folder = pins.REPO / "infra" / "local" / "firebase-tools"
    package = json.loads((folder / "package.json").read_text())
    lock = json.loads((folder / "package-lock.json").read_text())
    assert package["dependencies"] == {"firebase-tools": FIREBASE_TOOLS_VERSION}  # exact, no range
    assert lock["packages"][""]["dependencies"] == package["dependencies"]  # npm ci refuses a lock out of step
    assert lock["packages"]["node_modules/firebase-tools"]["version"] == FIREBASE_TOOLS_VERSION
    assert all("integrity" in entry for name, entry in lock["packages"].items() if name and not entry.get("link"))
    # nothing installed that nothing needs (``npm prune --package-lock-only`` drops such an entry)
    assert [name for name, entry in lock["packages"].items() if entry.get("extraneous")] == []
    dev = (pins.REPO / "dev").read_text()
    assert f"FIREBASE_TOOLS_VERSION={FIREBASE_TOOLS_VERSION}\n" in dev and "npm ci" in dev


def test_every_deployed_pin_has_the_hashes_of_its_files_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """infra.pin_hashes: the bundles' pins carry their files' hashes; a pin moved without recording them is found
    offline (by ./dev lint), and so is a hash kept for a pin nobody has."""
    assert pin_hashes.main([]) == 0
    store = pin_hashes.load()
    assert all(len(digest) == 64 for digests in store.values() for digest in digests)
    monkeypatch.setattr(pin_hashes, "load", lambda: {**store, "flask==0.1": ["0" * 64]})
    assert pin_hashes.main([]) == 1
    monkeypatch.setattr(pin_hashes, "load", lambda: {k: v for k, v in store.items() if not k.startswith("werkzeug==")})
    assert pin_hashes.main([]) == 1


def test_a_bundles_requirements_get_each_pins_hashes_and_keep_their_comments() -> None:
    store = {"pg8000==1.31.6": ["a" * 64, "b" * 64], "scramp==1.5.0": ["c" * 64]}
    text = "# the driver\npg8000==1.31.6  # why\n\nscramp==1.5.0 ; python_version >= '3.8'\n"
    assert pin_hashes.with_hashes(text, store) == (
        "# the driver\n# why\n"
        f"pg8000==1.31.6 --hash=sha256:{'a' * 64} --hash=sha256:{'b' * 64}\n"
        f"\nscramp==1.5.0 ; python_version >= '3.8' --hash=sha256:{'c' * 64}\n"
    )
    with pytest.raises(pin_hashes.MissingHashes):
        pin_hashes.with_hashes("tzdata==2026.6\n", store)
    with pytest.raises(pin_hashes.MissingHashes):
        pin_hashes.with_hashes("tzdata>=2026\n", {"tzdata>=2026": ["d" * 64]})


@pytest.mark.parametrize(
    ("filename", "taken"),
    [
        ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", True),
        ("numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl", True),
        ("numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", False),
        ("numpy-2.4.6-cp311-cp311-win_amd64.whl", False),
        ("numpy-2.4.6-cp311-cp311-macosx_14_0_arm64.whl", False),
        ("numpy-2.4.6.tar.gz", True),
        ("numpy-2.4.5.tar.gz", False),
        ("protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl", True),
        ("cryptography-50.0.2-cp312-abi3-manylinux_2_34_x86_64.whl", False),
        ("flask-3.1.3-py3-none-any.whl", True),
        ("flask-3.1.3-py38-none-any.whl", True),
        ("flask-3.1.3-py312-none-any.whl", False),
        ("flask-3.1.3-py2.py3-none-any.whl", True),
        ("numpy-2.4.6-cp311-cp311-linux_x86_64.whl", True),
        ("numpy-2.4.6-cp311-cp311-manylinux2014_aarch64.whl", True),
        ("protobuf-7.36.2-cp38-abi3-manylinux2014_aarch64.whl", True),
        ("protobuf-7.36.2-cp310-cp310-manylinux2014_x86_64.whl", False),
    ],
)
def test_only_the_files_a_deployment_can_install_are_recorded(filename: str, taken: bool) -> None:
    version = "7.36.2" if filename.startswith("protobuf") else "50.0.2" if filename.startswith("crypto") else None
    version = version or ("3.1.3" if filename.startswith("flask") else "2.4.6")
    assert pin_hashes._deployable(filename, version) is taken
