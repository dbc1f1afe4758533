"""What a bundle ships: its source folders' Python, migrations, requirements and Dockerfile, and nothing else they
hold (attack run 101)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra import build, pins

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of what the bundles are built from, which the build reads instead of the checkout."""
    repo = tmp_path / "repo"
    for part in ("functions/devices", "functions/verify", "functions/lockwise", "mqtt_relay", "infra/bundles/migrate"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(build.GE2E_DIR, repo / "functions" / "models" / "ge2e")
    monkeypatch.setattr(build, "REPO", repo)
    monkeypatch.setattr(build, "FUNCTIONS_DIR", repo / "functions")
    monkeypatch.setattr(build, "SHARED_PACKAGE", repo / "functions" / "lockwise")
    monkeypatch.setattr(build, "GE2E_DIR", repo / "functions" / "models" / "ge2e")
    return repo


@pytest.mark.parametrize(
    ("name", "stray"),
    [
        ("devices", "functions/devices/.env"),  # a developer's service token, database URL
        ("verify", "functions/verify/rejected/rejected-1.wav"),  # LOCKWISE_DEBUG_REJECTED_DIR=rejected, local stack
        ("devices", "functions/lockwise/core/lock-ca.key"),
        ("relay", "mqtt_relay/relay-certs.json"),
        ("migrate", "infra/bundles/migrate/notes.ipynb"),
        ("devices", "functions/devices/.venv/lib/site.py"),  # git ignores it: the release stayed "clean"
        ("devices", "functions/lockwise/devices/.locks.py.swp"),
    ],
)
def test_a_file_that_is_not_the_bundles_source_stops_its_build_by_name(
    source: Path, tmp_path: Path, name: str, stray: str
) -> None:
    """Attack run 101: the build copied every file of the function's folder and the shared package, so a ``.env``,
    the rejected voices a ``LOCKWISE_DEBUG_REJECTED_DIR`` relative to the local stack's working directory
    (``functions/verify``) saves, a ``.venv`` or a key left there was deployed with the code; one git ignores left
    the release labelled clean. Now it stops the build, naming the file, and leaves no bundle behind."""
    (source / stray).parent.mkdir(parents=True, exist_ok=True)
    (source / stray).write_text("LOCKWISE_SERVICE_TOKEN=dev\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        build.build(name, out)
    shown = stray.split("/.venv/")[0] + "/.venv" if "/.venv/" in stray else stray
    assert shown in str(stopped.value)
    assert not out.exists()


def test_a_symbolic_link_in_the_source_stops_the_build_by_name(source: Path, tmp_path: Path) -> None:
    """Attack run 124: copytree follows links, so a link named like a module shipped the bytes of whatever it named
    (a file in a home folder, another checkout's), where the release names the link's text alone."""
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text("OPEN_EVERY_DOOR = True\n")
    (source / "functions" / "lockwise" / "core" / "overrides.py").symlink_to(elsewhere)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="functions/lockwise/core/overrides.py"):
        build.build("devices", out)
    assert not out.exists()


def test_caches_tools_leave_in_the_source_are_left_out_of_the_bundle(source: Path, tmp_path: Path) -> None:
    for cache in (
        "functions/devices/.pytest_cache/v/cache/nodeids",
        "functions/lockwise/.ruff_cache/content",
        "functions/devices/.hypothesis/examples/a",
        "functions/lockwise/core/.mypy_cache/x.json",
        "functions/lockwise/core/__pycache__/config.cpython-311.pyc",
    ):
        (source / cache).parent.mkdir(parents=True, exist_ok=True)
        (source / cache).write_text("x")
    out = build.build("devices", tmp_path / "out")
    shipped = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not any(part.startswith(".") for p in shipped for part in p.split("/")), shipped
    assert {"main.py", "requirements.txt", "bundle.json", "lockwise/core/migrations/0001_core.sql"} <= shipped
    assert {Path(p).suffix for p in shipped} == {".py", ".pyc", ".sql", ".txt", ".json"}


def test_a_build_ships_only_the_pinned_model_files(tmp_path: Path) -> None:
    """Attack run 101: the model files are git-ignored and were copied unchecked, under the checkout's release tag: a
    stale export, another model's cohort or a VAD graph from elsewhere shipped (the runtime checks a file against the
    manifest beside it only)."""
    ge2e, vad = tmp_path / "ge2e", tmp_path / "vad"
    shutil.copytree(build.GE2E_DIR, ge2e)
    shutil.copytree(build.VAD_DIR, vad)
    build.check_models(ge2e, vad)  # as ./dev setup made them

    def refused(why: str) -> None:
        with pytest.raises(SystemExit, match=why):
            build.check_models(ge2e, vad)

    weights = (ge2e / "ge2e.npz").read_bytes()
    (ge2e / "ge2e.npz").write_bytes(weights + b"\0")
    refused("ge2e.npz")
    manifest = json.loads((ge2e / "manifest.json").read_text())
    (ge2e / "manifest.json").write_text(json.dumps({**manifest, "sha256": hashlib.sha256(weights + b"\0").hexdigest()}))
    build.check_models(ge2e, vad)  # weights and manifest agree (a rewritten pair is not caught: see check_models)
    source = {**manifest["source"], "sha256": "0" * 64}
    (ge2e / "manifest.json").write_text(json.dumps({**manifest, "source": source}))
    refused("GE2E's source weights")
    (ge2e / "manifest.json").write_text(json.dumps(manifest))
    (ge2e / "ge2e.npz").write_bytes(weights)
    (vad / "silero_vad_16k_sequence.onnx").write_bytes(b"another graph")
    refused("Silero VAD's graph")


def copy_export(parent: Path, *, model_id: str, into: tuple[str, ...] = build.VOICE_FUNCTIONS) -> None:
    """What the deploy copies into the voice bundles after their build: an ONNX export naming its weights."""
    for voice in into:
        (parent / voice / "model").mkdir(exist_ok=True)
        (parent / voice / "model" / "ecapa.onnx").write_bytes(b"graph")
        (parent / voice / "model" / "manifest.json").write_text(json.dumps({"model_id": model_id}))


@pytest.fixture
def pinned_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The model_id of the weights a lock file pins (the checkout's pins none until a build machine records them)."""
    lock = tmp_path / "ecapa.lock.json"
    lock.write_text(json.dumps({"revision": "0" * 40, "files": {"embedding_model.ckpt": "c0ffee" * 10 + "abcd"}}))
    monkeypatch.setattr(build, "MODEL_LOCK", lock)
    return "ecapa-c0ffeec0ffeec0ff"


def test_a_bundle_changed_after_its_build_is_neither_recorded_nor_deployed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pinned_weights: str
) -> None:
    """Attack run 124: the deploy's record step listed each bundle's files again from whatever the folders held, and
    the functions step checked the release's name alone, so a file of .build edited, added or removed after the build
    (a module patched in place, a ``.pyc`` whose hash-checked source still matches, a stray model) was deployed under
    the release's name, its commit not what ran. Now the record step takes nothing but the ONNX export the deploy
    copies into the voice bundles' model/, and the functions step nothing its manifest does not list."""
    parent = tmp_path / "build"
    for name in build.TARGETS:
        if name == "devices":
            build.build(name, parent / name)  # as built: bytecode and hashed requirements
        else:
            (parent / name / "lockwise").mkdir(parents=True)
            (parent / name / "lockwise" / "x.py").write_text("X = 1\n")
            build.write_manifest(name, parent / name)
    pyc = next((parent / "devices" / "lockwise" / "core").glob("__pycache__/config.*.pyc"))
    copy_export(parent, model_id=pinned_weights)
    (parent / "devices" / "model.onnx").write_bytes(b"not the deploy's")
    assert build.record_release(parent, "r1") == 1
    assert "devices/model.onnx was added since its build" in capsys.readouterr().err
    (parent / "devices" / "model.onnx").unlink()
    original = pyc.read_bytes()
    pyc.write_bytes(original[:16] + b"\0" + original[17:])  # same header: the source's hash still matches
    assert build.record_release(parent, "r1") == 1
    assert f"devices/{pyc.relative_to(parent / 'devices')} changed since its build" in capsys.readouterr().err
    assert not (parent / build.RELEASE_FILE).exists()
    pyc.write_bytes(original)
    assert build.record_release(parent, "r1") == 0  # the export copied into embed and verify is theirs
    assert build.expect_release(parent, "r1") == 0

    def refused(said: str) -> None:
        assert build.expect_release(parent, "r1") == 1
        assert said in capsys.readouterr().err

    module = parent / "relay" / "lockwise" / "x.py"
    module.write_text("X = 2\n")
    refused("relay/lockwise/x.py changed since its build")
    module.write_text("X = 1\n")
    (parent / "verify" / "model" / "ecapa.data").write_bytes(b"weights")  # after the record: not the release's
    refused("verify/model/ecapa.data was added since its build")
    (parent / "verify" / "model" / "ecapa.data").unlink()
    module.unlink()
    refused("relay/lockwise/x.py is missing")
    module.write_text("X = 1\n")
    shutil.copy(parent / "embed" / "bundle.json", parent / "verify" / "bundle.json")
    refused("is the bundle of 'embed', not of 'verify'")
    (parent / "verify" / "bundle.json").unlink()
    refused("has no bundle.json infra.build wrote")
    build.write_manifest("verify", parent / "verify")
    assert build.expect_release(parent, "r1") == 0


def test_a_bundle_installs_wheels_alone_each_checked_by_its_hash(tmp_path: Path) -> None:
    """Attack run 124: infra.pin_hashes records each pin's source archive beside its wheels, and pip's hash-checking
    mode checks the archive but not the build dependencies it then fetches to build it, and runs (pypa/pip#13984): on
    a platform without a wheel for a pin, a deploy ran whatever the index served as setuptools or maturin. A bundle's
    requirements now open with --require-hashes and --only-binary :all:, which pip reads from the file (the
    Dockerfiles and Cloud Run's buildpack alike): offered a source archive alone, it takes none, never reaching its
    hash. Asked of pip itself, offline."""
    out = build.build("migrate", tmp_path / "migrate")
    wanted = pins.installs(out / "requirements.txt")  # the rehearsal's reader passes the options over
    assert wanted == pins.installs(build.REPO / "infra" / "bundles" / "migrate" / "requirements.txt")
    archives = tmp_path / "archives"
    archives.mkdir()
    for name, version in wanted.items():
        (archives / f"{name}-{version}.tar.gz").write_bytes(b"a source archive, built by running its code")
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", "--no-cache-dir"]
    tried = subprocess.run(
        [*pip, "--disable-pip-version-check", "--find-links", str(archives), "-r", "requirements.txt"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tried.returncode != 0
    assert "DO NOT MATCH THE HASHES" not in tried.stderr, tried.stderr[-2000:]  # the archive was never taken
    assert "No matching distribution found" in tried.stderr, tried.stderr[-2000:]


def test_the_onnx_export_recorded_is_one_of_the_pinned_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pinned_weights: str
) -> None:
    """Attack run 124: the record step listed whatever the deploy had copied into the voice bundles' model/, and the
    functions check an export's files against the manifest beside them alone, so an export made from other weights (a
    test's random model, a stale export of another pin, in .build/model-onnx or copied by hand) was recorded and
    deployed as the release's; and embed and verify could carry different ones. Now the record needs one export in
    both, naming the weights the lock file pins."""
    parent = tmp_path / "build"
    for name in build.TARGETS:
        (parent / name).mkdir(parents=True)
        build.write_manifest(name, parent / name)

    def refused(said: str) -> None:
        assert build.record_release(parent, "r1") == 1
        assert said in capsys.readouterr().err
        assert not (parent / build.RELEASE_FILE).exists()

    copy_export(parent, model_id="ecapa-0123456789abcdef")  # the random test model's, say
    refused("is of the weights 'ecapa-0123456789abcdef', not the pinned ecapa-c0ffeec0ffeec0ff")
    copy_export(parent, model_id=pinned_weights, into=("embed",))
    refused("embed and verify do not carry one ONNX export")
    (parent / "verify" / "model" / "manifest.json").unlink()
    refused("embed and verify do not carry one ONNX export")
    (parent / "embed" / "model" / "manifest.json").unlink()
    refused("has no manifest infra.model.export_onnx wrote")
    copy_export(parent, model_id=pinned_weights)
    assert build.record_release(parent, "r1") == 0
    assert build.expect_release(parent, "r1") == 0
    build.MODEL_LOCK.write_text(json.dumps({"revision": None, "files": {"embedding_model.ckpt": None}}))
    (parent / build.RELEASE_FILE).unlink()
    refused("pins no embedding_model.ckpt")


@pytest.mark.parametrize(
    "stray",
    ["ge2e/rejected-1.wav", "ge2e/ge2e.npz.bak", "ge2e/old/ge2e.npz", "vad/silero_vad.onnx", "vad/.env"],
)
def test_a_file_no_model_manifest_names_stops_the_build_by_name(tmp_path: Path, stray: str) -> None:
    """Attack run 124: the model folders are git-ignored and were copied whole into the voice bundles, checked by
    the files their manifests name alone, so anything else left there (a recording, a backup of other weights, a
    .env) shipped unchecked under the release's name, though attack run 101 meant them to ship those files only."""
    ge2e, vad = tmp_path / "ge2e", tmp_path / "vad"
    shutil.copytree(build.GE2E_DIR, ge2e)
    shutil.copytree(build.VAD_DIR, vad)
    build.check_models(ge2e, vad)
    (tmp_path / stray).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / stray).write_bytes(b"not the model's")
    with pytest.raises(SystemExit, match=f"{tmp_path / stray} is no file the model's manifests name"):
        build.check_models(ge2e, vad)
