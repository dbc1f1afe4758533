"""The relay's health endpoint (``mqtt_relay.health_server``), over real sockets: the functions' rules for answers,
and a bound on what callers can make it do (attack run 58: HTML error pages, 501 for HEAD, a report and a database
query per request, a thread per idle connection for ever)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mqtt_relay import health_server


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, list[float]]]:
    monkeypatch.setattr(health_server, "IDLE_TIMEOUT_S", 1)
    monkeypatch.setattr(health_server, "MAX_CONNECTIONS", 3)
    made: list[float] = []

    def report() -> tuple[dict[str, Any], int]:
        made.append(time.monotonic())
        return {"status": "ok", "n": len(made)}, 200

    server = health_server.serve(0, report)
    try:
        yield server.server_address[1], made
    finally:
        server.shutdown()
        server.server_close()


def ask(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_every_answer_is_json_and_head_is_served(served: tuple[int, list[float]]) -> None:
    port, _ = served
    status, headers, body = ask(port, "GET", "/health?probe=1")
    assert (status, headers["content-type"], json.loads(body)["status"]) == (200, "application/json", "ok")
    status, headers, body = ask(port, "HEAD", "/health")
    assert (status, body, headers["content-type"]) == (200, b"", "application/json")
    for method, path, code, status_wanted in (
        ("GET", "/metrics", "no_route", 404),
        ("POST", "/health", "method_not_allowed", 405),
        ("OPTIONS", "/health", "method_not_allowed", 405),
    ):
        status, headers, body = ask(port, method, path)
        assert status == status_wanted and headers["content-type"] == "application/json", (method, path, body)
        assert json.loads(body)["error"]["code"] == code


def test_one_report_answers_every_caller_for_a_second(served: tuple[int, list[float]]) -> None:
    port, made = served
    answers = [json.loads(ask(port, "GET", "/health")[2])["n"] for _ in range(20)]
    assert len(made) == 1 and set(answers) == {1}
    time.sleep(health_server.REPORT_REUSE_S + 0.1)
    assert json.loads(ask(port, "GET", "/health")[2])["n"] == 2


def test_idle_connections_are_closed_and_bounded(served: tuple[int, list[float]]) -> None:
    port, _ = served
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    time.sleep(0.2)
    extra = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert extra.recv(1) == b"", "past the bound a connection is closed at once"
    extra.close()
    for sock in idle:  # each closed by the server once idle past its timeout
        started = time.monotonic()
        assert sock.recv(1) == b"" and time.monotonic() - started < 3
        sock.close()
    assert ask(port, "GET", "/health")[0] == 200  # their places free again


def test_a_connection_that_sends_a_byte_now_and_then_is_closed_all_the_same(
    served: tuple[int, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read within the idle timeout, it held a place for ever (a review)."""
    port, _ = served
    monkeypatch.setattr(health_server, "CONNECTION_DEADLINE_S", 2)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        closed = False
        for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 20:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.4)  # within the idle timeout (1 s here)
            if time.monotonic() - started > 4:
                break
        if not closed:
            sock.settimeout(3)
            closed = sock.recv(1) == b""
    assert closed and time.monotonic() - started < 5


def test_the_relays_certificate_end_is_logged_once_a_day_from_30_days_before(caplog: pytest.LogCaptureFixture) -> None:
    """Issued for a year, the relays' broker certificates' end was said nowhere; then only in a health report that
    nothing polls on Cloud Run (attack run 57, a review). The upkeep logs it from 30 days before, once a day."""
    import datetime as dt
    from types import SimpleNamespace

    from mqtt_relay.relay import Relay

    def relay(days: float) -> Any:
        ends = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
        return SimpleNamespace(certificate_expires=ends, _expiry_warned=None, lease=SimpleNamespace(client_id="r-1"))

    far, near = relay(200), relay(20)
    with caplog.at_level("WARNING", logger="mqtt_relay"):
        assert Relay._certificate(far)["ok"] and Relay._certificate(far)["days_left"] == 199
        assert not caplog.records
        for _ in range(3):
            report = Relay._certificate(near)
        assert not report["ok"] and report["days_left"] == 19
    assert [r.getMessage() for r in caplog.records] == [
        "the relay's broker certificate ends soon: issue new ones (python -m infra.lock_ca relay-certs)"
    ]
