"""The local console's rewrite to the functions (``infra.local.console``), over real sockets: a body goes through by
its Content-Length only, and what it cannot forward is refused in the API's shape (attack run 58: a chunked body
dropped, a length of -1 read until the client closed, ``abc`` closed unanswered, HTML error pages)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local import console as console_module
from infra.local.console import Console
from tests.raw_http import read_answer


@pytest.fixture
def console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Console, list[bytes]]]:
    received: list[bytes] = []

    class Function(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            data = json.dumps({"got": len(received[-1])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    function = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Function)
    threading.Thread(target=function.serve_forever, daemon=True).start()
    bundle = tmp_path / "firebase.js"
    bundle.write_text("// the SDK bundle stands here")
    monkeypatch.setattr(console_module, "SDK_BUNDLE", bundle)
    served = Console(0, {"devices": f"http://127.0.0.1:{function.server_address[1]}"}, {}).start()
    assert served._server is not None
    served.port = served._server.server_address[1]
    try:
        yield served, received
    finally:
        served.stop()
        function.shutdown()


def exchange(console: Console, request: bytes, *, half_close: bool = False) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", console.port), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def test_a_body_goes_through_by_its_length_and_what_cannot_is_refused_in_json(
    console: tuple[Console, list[bytes]],
) -> None:
    served, received = console
    head = b"POST /devices/locks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    status, _, body = exchange(served, head + b"Content-Length: 2\r\n\r\n{}")
    assert (status, json.loads(body), received) == (200, {"got": 2}, [b"{}"])
    for request, status_wanted, code in (
        (head + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411, "length_required"),
        (head + b"Content-Length: -1\r\n\r\n{}", 400, "malformed_request"),
        (head + b"Content-Length: abc\r\n\r\n{}", 400, "malformed_request"),
        (b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 404, "no_route"),
        (head + b"Content-Length: 10000000000000\r\n\r\n{}", 413, "payload_too_large"),  # a MemoryError
        (head + b"Content-Length: 50\r\n\r\n{}", 400, "malformed_body"),  # half-closed before its length
    ):
        status, headers, body = exchange(served, request, half_close=True)
        assert (status, headers["content-type"]) == (status_wanted, "application/json"), request
        assert json.loads(body)["error"]["code"] == code
    assert received == [b"{}"]  # none of them reached the function


def test_the_local_console_lets_its_page_reach_the_emulators_and_nothing_more() -> None:
    """Attack run 105: firebase.json's policy names the origins the deployed page reaches (its own and the Firebase
    APIs); served locally, the page reaches the emulators instead, added to ``connect-src`` alone."""
    deployed = console_module.hosting_headers()["Content-Security-Policy"]
    local = console_module.served_headers(console_module.emulator_init("p", "127.0.0.1:9099", "127.0.0.1:8080"))
    policy = {d.split(" ", 1)[0]: d for d in (part.strip() for part in local["Content-Security-Policy"].split(";"))}
    assert policy["connect-src"] == (
        "connect-src 'self' https://identitytoolkit.googleapis.com https://securetoken.googleapis.com"
        " https://firestore.googleapis.com http://127.0.0.1:9099 http://127.0.0.1:8080"
    )
    assert policy["default-src"] == "default-src 'none'" and policy["form-action"] == "form-action 'none'"
    assert {d for d in policy.values() if not d.startswith("connect-src")} == {
        d.strip() for d in deployed.split(";") if not d.strip().startswith("connect-src")
    }
    assert console_module.served_headers({})["Content-Security-Policy"] == deployed  # no emulators: as deployed
