"""Fixtures the integration modules about accounts share: the three functions' test clients and a world built with
them (a module that needs other functions, or a voice set-up, defines its own of the same name)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.devices_world import World, build_world


@pytest.fixture
def clients(stack_env: dict[str, str], make_client: Any) -> dict[str, Any]:
    return {name: make_client(name) for name in ("devices", "embed", "verify")}


@pytest.fixture
def world(clients: dict[str, Any], sign_up: Any) -> World:
    return build_world(clients["devices"], sign_up)
