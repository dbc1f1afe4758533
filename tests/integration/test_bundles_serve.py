"""Each built bundle serves on its own: functions-framework started in the bundle folder, without the source tree."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from infra.build import build
from infra.local import services
from tests.raw_http import exchange, read_answer

pytestmark = pytest.mark.bundle


@pytest.mark.parametrize("name", ["devices", "verify", "embed"])
def test_bundle_serves_its_health_endpoint_alone_and_stops_cleanly(
    name: str, tmp_path: Path, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped as the platform stops it (SIGTERM), its worker exits as it should: the voice functions' workers
    aborted at every stop (onnxruntime's telemetry thread, started in gunicorn's master before the fork: see
    ``lockwise.voice.model.onnx_runtime``; the variable it sets is not handed down from this process)."""
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    bundle = build(name, tmp_path / "bundle" / name)
    server = services.start_function(name, services.free_port(), stack_env, tmp_path, source_dir=bundle)
    try:
        trusted = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
        asked = urllib.request.Request(f"{server.url}/{name}/health", headers=trusted)
        with urllib.request.urlopen(asked, timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        assert resp.status == 200 and body["status"] == "ok"
        assert body["checks"]["database"]["ok"]
    finally:
        server.stop()
    assert server.process.popen.returncode == 0
    log = server.process.log_path.read_text(errors="replace")
    assert "terminate called" not in log and "was sent SIG" not in log, log[-2000:]


#: requests gunicorn's parser refuses (before the function runs, or as its body is read) -> status, error code
MALFORMED = [
    (b"NOT AN HTTP REQUEST\r\n\r\n", 400, "malformed_request"),
    (b"GET / HTTP/7.1\r\nHost: x\r\n\r\n", 400, "malformed_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_fields_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400, "malformed_request"),
    (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: brotli, chunked\r\n\r\n0\r\n\r\n",
        501,
        "unsupported_transfer_coding",
    ),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "malformed_request"),
    # a malformed chunk where the handler reads the body, and where it answers without reading it
    (
        b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n",
        400,
        "malformed_body",
    ),
    (b"POST /nowhere HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 404, "no_route"),
]


def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client would, read the first answer (after it gunicorn may refuse the rest of a malformed
    body the handler left unread)."""
    host, port = url.removeprefix("http://").split(":")
    return exchange(host, int(port), request)


def test_a_request_the_web_server_refuses_is_answered_in_json(tmp_path: Path, stack_env: dict[str, str]) -> None:
    """gunicorn answers a malformed request itself, before Flask: as the API does, not with its HTML page."""
    bundle = build("devices", tmp_path / "bundle" / "devices")
    server = services.start_function("devices", services.free_port(), stack_env, tmp_path, source_dir=bundle)
    try:
        for request, status, code in MALFORMED:
            got, headers, body = raw_exchange(server.url, request)
            assert got == status, (request[:60], got, body[:200])
            assert headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert error["code"] == code and error["message"]
            assert len(error["request_id"]) == 32
        # a body announced and never sent: answered at once (a drain of the rest before answering waited for it:
        # attack run); over 16 MiB, by the web server's event loop before the handler (lockwise.core.whole_requests)
        request = b"POST /devices/locks HTTP/1.1\r\nHost: x\r\nContent-Length: 900000000\r\n\r\n{"
        got, _, body = raw_exchange(server.url, request)  # socket.timeout here: no answer within 10 s
        assert got == 413, body[:200]
        # a body that ends (the client half-closes) before its Content-Length: it was carried out as the whole
        # (attack run 58: 19 of 5,000 bytes, an unlock); the whole of the same bytes is judged on its fields
        part = b'{"code": "x"}'
        for length, code in ((5000, "malformed_body"), (len(part), "invalid_public_key")):
            host, port = server.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {length}\r\n\r\n".encode()
                    + part
                )
                sock.shutdown(socket.SHUT_WR)
                got, _, body = read_answer(sock)
            assert (got, json.loads(body)["error"]["code"]) == (400, code), body[:200]
        with urllib.request.urlopen(f"{server.url}/devices/health", timeout=10) as resp:  # and still serves
            assert resp.status == 200
    finally:
        server.stop()
