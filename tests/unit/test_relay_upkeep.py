"""The relay's periodic upkeep call to the devices function: a failed one is seen (no services needed: a local HTTP
server answers as the devices function would; ``tests/e2e/test_relay.py`` runs the relay against the real one)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mqtt_relay.forwarder import Forwarder


@pytest.fixture
def devices() -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    """A devices function that answers each upkeep with the next of its answers (status, body)."""
    answers: list[tuple[int, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            assert self.path == "/devices/relay/flush" and self.headers["X-LockWise-Service-Token"] == "token"
            status, body = answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_upkeep_is_kept_until_one_succeeds(devices: tuple[str, list[tuple[int, bytes]]]) -> None:
    """The relay did not read the upkeep's answer: a prune or an account check failing every time went unseen."""
    url, answers = devices
    forwarder = Forwarder(url, "token", timeout_s=5)
    failed = {"error": {"code": "database_unavailable", "message": "the database is not available"}}
    answers += [(503, json.dumps(failed).encode()), (502, b"<html>bad gateway</html>"), (200, b'{"written": 0}')]
    forwarder.flush_mirror()
    assert forwarder.upkeep_error == "HTTP 503 database_unavailable"
    forwarder.flush_mirror()
    assert forwarder.upkeep_error == "HTTP 502 -"  # not the function's JSON: the status alone
    forwarder.flush_mirror()
    assert forwarder.upkeep_error is None and answers == []


def test_an_unreachable_devices_function_is_an_upkeep_error() -> None:
    forwarder = Forwarder("http://127.0.0.1:9", "token", timeout_s=2)  # the discard port: nothing listens
    forwarder.flush_mirror()
    assert forwarder.upkeep_error == "ConnectionError"
