"""The web console's activity list in a real browser (Debian's Chromium, playwright; the real app.js, the Firebase JS
SDK and the Firestore emulator under the rules), against the devices function over HTTP.

A late acknowledgement's feed entry (``command_ack`` with ``late``) has no lock's time, and app.js read
``e.reported_at.slice(...)`` for every late entry: the whole list's render threw, and the list stayed as it was
while that entry was among the newest (attack run 60)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local import services
from infra.local.console import Console, emulator_init
from lockwise.core.runtime import get_runtime
from tests.conftest import PROJECT_ID, REPO
from tests.devices_world import World, build_world, command_nonce
from tests.integration.test_devices_live_view import relay_event, wait_until_mirrored

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def world(make_client: Any, sign_up: Any) -> World:
    return build_world(make_client("devices"), sign_up)


@pytest.fixture
def console(stack_env: dict[str, str]) -> Iterator[Console]:
    """The console served as Hosting serves it, its API rewrites to this process's devices function over HTTP."""
    import functions_framework
    from werkzeug.serving import make_server

    source = str(REPO / "functions" / "devices" / "main.py")
    app = functions_framework.create_app(target="devices", source=source)  # type: ignore[no-untyped-call]
    server = make_server("127.0.0.1", services.free_port(), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    init = emulator_init(PROJECT_ID, stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["FIRESTORE_EMULATOR_HOST"])
    served = Console(services.free_port(), {"devices": f"http://127.0.0.1:{server.server_port}"}, init).start()
    try:
        yield served
    finally:
        served.stop()
        server.shutdown()


def test_a_late_acknowledgement_leaves_the_activity_list_live(
    world: World, stack_env: dict[str, str], console: Console
) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Chromium is missing: ./dev test installs Debian's chromium (apt-get install chromium)")
    token, lock = stack_env["LOCKWISE_SERVICE_TOKEN"], world.lock_id
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(console.url)
            page.fill("#email", world.accounts["owner"]["email"])
            page.fill("#password", "correct-horse-9")
            page.click("#sign-in-button")
            card = page.locator(f'[data-lock-id="{lock}"]')
            expect(card.locator(".activity li").first).to_be_visible(timeout=20_000)
            # a command the lock carried out while the relay was away: acknowledged after its expiry, marked late
            command = world.devices.post(
                f"/devices/locks/{lock}/commands", json={"action": "unlock"}, headers=world.headers("owner")
            ).get_json()["command"]
            nonce = command_nonce(command["id"])
            with get_runtime("devices").db.transaction() as con:
                con.run(
                    "UPDATE commands SET created_at = now() - interval '2 minutes',"
                    " expires_at = now() - interval '1 minute', status = 'expired' WHERE id = CAST(:i AS uuid)",
                    i=command["id"],
                )
            expect(card.locator(".activity")).to_contain_text("command unlock", timeout=15_000)
            acked = relay_event(world, token, "ack", {"id": command["id"], "nonce": nonce, "result": "ok"})
            assert acked == {"outcome": "applied"}
            # then the door reports itself unlocked, then locked: the feed has entries after the late one
            relay_event(world, token, "state", {"state": "unlocked", "ts": time.time()})
            relay_event(world, token, "state", {"state": "locked", "ts": time.time() + 1})
            world.devices.post("/devices/relay/flush", headers={"X-LockWise-Service-Token": token})
            wait_until_mirrored(lock)
            expect(card.locator(".activity")).to_contain_text("state locked", timeout=15_000)
            expect(card.locator(".activity")).to_contain_text("command ack unlock (late)")
        finally:
            browser.close()
    assert errors == []
