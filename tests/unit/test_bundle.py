"""A built bundle is self-contained: it imports from its own folder alone, and devices' never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.build import build

PROBE = """
import json, sys
import main, lockwise
print(json.dumps({"lockwise": lockwise.__file__, "torch": "torch" in sys.modules, "target": hasattr(main, NAME)}))
"""


@pytest.mark.parametrize("name", ["devices", "embed", "verify"])
def test_bundle_imports_on_its_own(tmp_path: Path, name: str, model_dir: Path) -> None:
    out = build(name, tmp_path / name)
    assert (out / "main.py").exists() and (out / "requirements.txt").exists()
    manifest = json.loads((out / "bundle.json").read_text())
    assert "lockwise/config.py" in manifest["files"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
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
    if name == "devices":
        assert report["torch"] is False


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
