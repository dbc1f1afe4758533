"""A built bundle is self-contained: it imports from its own folder alone; no function bundle imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.build import build

PROBE = """
import importlib._bootstrap_external as loaders, json, os, sys
compiled = []  # the modules imported from source: compiled here, not by the build
_source_to_code = loaders.SourceLoader.source_to_code
def source_to_code(self, data, path, *, _optimize=-1):
    compiled.append(os.path.relpath(path))
    return _source_to_code(self, data, path, _optimize=_optimize)
loaders.SourceLoader.source_to_code = source_to_code
import main, lockwise
print(json.dumps({"lockwise": lockwise.__file__, "target": hasattr(main, NAME),
                  "compiled": [p for p in compiled if not p.startswith("..")],
                  **{m: m in sys.modules for m in ("torch", "speechbrain", "jwt", "grpc", "google.auth")}}))
"""


@pytest.mark.parametrize("name", ["devices", "embed", "verify"])
def test_bundle_imports_on_its_own(tmp_path: Path, name: str, model_dir: Path) -> None:
    out = build(name, tmp_path / name)
    assert (out / "main.py").exists() and (out / "requirements.txt").exists()
    manifest = json.loads((out / "bundle.json").read_text())
    assert "lockwise/core/config.py" in manifest["files"]
    for source in out.rglob("*.py"):  # an upload or an unzip keeps no modification times: the bytecode must not care
        os.utime(source, (source.stat().st_atime, source.stat().st_mtime + 3600))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["LOCKWISE_MODE"] = "local"
    env["LOCKWISE_MODEL_DIR"] = str(model_dir)  # embed and verify load their model at import
    result = subprocess.run(
        [sys.executable, "-c", PROBE.replace("NAME", repr(name))],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["target"]
    assert report["lockwise"].startswith(str(out)), "the bundle used the source tree's lockwise package"
    # the build compiled the bundle (the deployment's Python is the build's): a cold start compiles none of it
    assert report["compiled"] == [], f"imported from source, not the bundle's bytecode: {report['compiled']}"
    # embed and verify serve the ONNX export: no bundle imports torch or SpeechBrain
    assert report["torch"] is False and report["speechbrain"] is False
    # a cold start imports no PyJWT (the first app request does; verify serves none) and no google-auth (production's
    # Firestore credentials do); Firestore is spoken over REST: no bundle carries gRPC or the Firestore client library
    assert report["jwt"] is False and report["google.auth"] is False and report["grpc"] is False
    pins = (out / "requirements.txt").read_text().lower()
    assert "google-cloud-firestore" not in pins and "grpcio" not in pins
    if name in ("embed", "verify"):  # both carry the GE2E export, the encoder when no model directory is set
        assert "models/ge2e/manifest.json" in manifest["files"]
    # embed checks each enrollment sample for a voice (Silero VAD's graph, with its licence); nothing else carries it
    assert ("models/vad/silero_vad_16k_sequence.onnx" in manifest["files"]) is (name == "embed")
    assert ("models/vad/LICENSE" in manifest["files"]) is (name == "embed")


def test_builds_of_the_same_source_are_the_same_bytes_wherever_they_are_built(tmp_path: Path) -> None:
    first = json.loads((build("verify", tmp_path / "a" / "verify") / "bundle.json").read_text())
    second = json.loads((build("verify", tmp_path / "elsewhere" / "b") / "bundle.json").read_text())
    assert any(name.endswith(".pyc") for name in first["files"])
    assert first["files"] == second["files"]


def test_relay_context_imports_on_its_own(tmp_path: Path) -> None:
    out = build("relay", tmp_path / "relay")
    assert (out / "Dockerfile").exists() and (out / "requirements.txt").exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (
        "import json, sys, mqtt_relay.relay, lockwise; print(json.dumps([lockwise.__file__, 'torch' in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=out, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    where, torch = json.loads(result.stdout.strip().splitlines()[-1])
    assert where.startswith(str(out)) and torch is False
    dockerfile = (out / "Dockerfile").read_text()
    assert "USER relay" in dockerfile and "HEALTHCHECK" in dockerfile


def test_voice_bundles_fall_back_to_their_own_ge2e(tmp_path: Path) -> None:
    out = build("verify", tmp_path / "verify")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOCKWISE_MODEL_DIR", "LOCKWISE_ENCODER")}
    env["LOCKWISE_MODE"] = "local"
    probe = (
        "import json, sys, main\n"
        "print(json.dumps([main.encoder.name, str(main.encoder.model_dir), 'torch' in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=out, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    name, folder, torch = json.loads(result.stdout.strip().splitlines()[-1])
    assert name == "ge2e" and folder == str(out / "models" / "ge2e") and torch is False


def test_a_bundle_installs_only_the_files_its_pins_recorded(tmp_path: Path) -> None:
    """Each bundle's pins carry the hashes of the files they may install (infra.pin_hashes): pip installs the
    migration job's bundle in hash-checking mode, and refuses it once one pin's recorded files are not the ones the
    index serves (a file whose bytes changed after the pin was recorded)."""
    out = build("migrate", tmp_path / "migrate")
    lines = (out / "requirements.txt").read_text().splitlines()
    assert lines[:2] == ["--require-hashes", "--only-binary :all:"]  # wheels alone (attack run 124)
    pins = [line for line in lines if line and not line.startswith(("#", "--"))]
    assert pins and all(" --hash=sha256:" in line for line in pins)

    def install(requirements: str) -> subprocess.CompletedProcess[str]:
        (out / "requirements.txt").write_text(requirements)
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
        pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q"]
        return subprocess.run([*pip, "-r", "requirements.txt"], cwd=out, capture_output=True, text=True, timeout=600)

    assert install("\n".join(lines) + "\n").returncode == 0
    swapped = [
        line.split(" --hash")[0] + " --hash=sha256:" + "0" * 64 if line.startswith("scramp==") else line
        for line in lines
    ]
    refused = install("\n".join(swapped) + "\n")
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr
