"""Each built bundle serves on its own: functions-framework started in the bundle folder, without the source tree."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from infra.build import build
from infra.local import services

pytestmark = pytest.mark.bundle


@pytest.mark.parametrize("name", ["devices", "verify", "embed"])
def test_bundle_serves_its_health_endpoint_alone(name: str, tmp_path: Path, stack_env: dict[str, str]) -> None:
    bundle = build(name, tmp_path / "bundle" / name)
    server = services.start_function(name, services.free_port(), stack_env, tmp_path, source_dir=bundle)
    try:
        with urllib.request.urlopen(f"{server.url}/{name}/health", timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        assert resp.status == 200 and body["status"] == "ok"
        assert body["checks"]["database"]["ok"]
    finally:
        server.stop()
