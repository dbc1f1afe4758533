"""Fixtures the integration modules about accounts share: the three functions' test clients and a world built with
them (a module that needs other functions, or a voice set-up, defines its own of the same name)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.devices_world import World, bearer, build_world, sign_in
from tests.integration.test_gone_accounts import admin_call


@pytest.fixture
def clients(stack_env: dict[str, str], make_client: Any) -> dict[str, Any]:
    return {name: make_client(name) for name in ("devices", "embed", "verify")}


@pytest.fixture
def world(clients: dict[str, Any], sign_up: Any) -> World:
    return build_world(clients["devices"], sign_up)


@pytest.fixture
def operator(stack_env: dict[str, str], sign_up: Any, clients: dict[str, Any]) -> dict[str, str]:
    """The headers of an operator: an account given the custom claim with the Admin SDK, signed in again since."""
    account = sign_up()
    assert clients["devices"].get("/devices/me", headers=bearer(account)).status_code == 200
    claims = json.dumps({"lockwise_operator": True})
    admin_call(stack_env, "accounts:update", {"localId": account["localId"], "customAttributes": claims})
    return bearer(sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], account["email"]))
