"""What the real stack sends a lock, measured in bytes as sent, after the people around it pushed what they choose to
its longest, against docs/FIRMWARE.md's "Sizes" (attack run 117; each answer built with the longest of every part the
server takes, the largest lock CA and broker host included: tests/unit/test_lock_answer_sizes.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lockwise.core.runtime import get_runtime
from lockwise.devices import lock_auth
from simlock.lock import new_tls_key
from tests.devices_world import World, build_world, new_lock_key
from tests.unit.test_lock_answer_sizes import EMOJI, stated


@pytest.fixture
def world(make_client: Any, sign_up: Any) -> World:
    return build_world(make_client("devices"), sign_up)


def signed(world: World, method: str, path: str, body: bytes = b"") -> dict[str, str]:
    content_type = "application/json" if body else ""
    return lock_auth.sign_headers(world.lock_key, world.lock_id, method, path, body, content_type=content_type)


def test_what_a_lock_is_sent_is_within_its_stated_sizes_after_its_owner_names_it_at_length(world: World) -> None:
    devices, lock = world.devices, f"/devices/locks/{world.lock_id}"
    assert devices.patch(lock, json={"name": EMOJI * 101}, headers=world.headers("owner")).status_code == 400
    renamed = devices.patch(lock, json={"name": EMOJI * 100}, headers=world.headers("owner"))
    assert renamed.status_code == 200, renamed.get_json()

    config = devices.get("/devices/lock/config", headers=signed(world, "GET", "/devices/lock/config"))
    assert config.status_code == 200 and config.get_json()["name"] == EMOJI * 100
    assert 1_300 < len(config.get_data()) <= stated("`GET /devices/lock/config` answer")

    body = json.dumps({"csr": new_tls_key()[1]}).encode()
    renewed = devices.post(
        "/devices/lock/certificate", data=body, headers=signed(world, "POST", "/devices/lock/certificate", body)
    )
    assert renewed.status_code == 201, renewed.get_json()
    assert len(renewed.get_data()) <= stated("`POST /devices/lock/certificate` answer")

    for role in ("owner", "admin", "member", "guest_in"):
        sent = devices.post(f"{lock}/commands", json={"action": "unlock"}, headers=world.headers(role))
        assert sent.status_code == 202, sent.get_json()
    with get_runtime("devices").db.connection() as con:
        payloads = [
            row[0] for row in con.run("SELECT payload FROM commands WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
        ]
    assert len(payloads) == 4 and max(len(p.encode()) for p in payloads) <= stated("a command on")

    code = devices.post(f"{lock}/provisioning", headers=world.headers("owner")).get_json()["code"]
    paired = devices.post(
        "/devices/provision", json={"code": code, "public_key": new_lock_key()[1], "csr": new_tls_key()[1]}
    )
    assert paired.status_code == 201, paired.get_json()
    assert len(paired.get_data()) <= stated("`POST /devices/provision` answer")
