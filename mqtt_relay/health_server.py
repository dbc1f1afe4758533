"""A tiny HTTP health endpoint for the relay (``GET /health``, ``HEAD /health``), for the container's health check
and the platform's startup probe.

As the functions answer: every answer JSON, errors ``{"error": {"code", "message"}}``; the report computed at most
once per ``REPORT_REUSE_S`` whatever the number of callers (each runs the outbox's lag query on the relay's own
two-connection pool: 64 looping clients got ~1,450 reports a second and slowed the relay's commands, attack run 58);
a client that sends nothing is closed after ``IDLE_TIMEOUT_S``, any after ``CONNECTION_DEADLINE_S``, and past
``MAX_CONNECTIONS`` at once a new one is closed at once (idle connections held a thread each, 207 threads for 200 of
them); a client gone mid-answer is not a traceback in the log. It was ``http.server``'s HTML error pages, 501 for
HEAD.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

#: how long one report answers every caller
REPORT_REUSE_S = 1.0
#: seconds a connection may wait for its request (or between requests kept alive)
IDLE_TIMEOUT_S = 5
#: connections served at once; past it a new one is closed unanswered
MAX_CONNECTIONS = 16
#: seconds a connection lives at most, however it sends (a byte every few seconds kept each read within
#: ``IDLE_TIMEOUT_S`` and held a place for ever: a review)
CONNECTION_DEADLINE_S = 15

Report = Callable[[], tuple[dict[str, Any], int]]


class _Reports:
    """The last report, reused for ``REPORT_REUSE_S``; one caller computes it while the others wait for it."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any], int] | None = None

    def get(self) -> tuple[dict[str, Any], int]:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= REPORT_REUSE_S:
                body, status = self._report()
                self._last = (now, body, status)
            return self._last[1], self._last[2]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._places = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._places.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: closed, no thread
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._places.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client gone mid-answer, or one that timed out: nothing to tell the log


def serve(port: int, report: Report) -> ThreadingHTTPServer:
    reports = _Reports(report)

    class Handler(BaseHTTPRequestHandler):
        timeout = IDLE_TIMEOUT_S
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self._deadline = threading.Timer(CONNECTION_DEADLINE_S, self._end)
            self._deadline.daemon = True
            self._deadline.start()

        def _end(self) -> None:
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self) -> None:
            self._deadline.cancel()
            super().finish()

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._health(with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._health(with_body=False)

        def _health(self, *, with_body: bool) -> None:
            if urlsplit(self.path).path.rstrip("/") != "/health":
                self._answer({"error": {"code": "no_route", "message": "only /health is served here"}}, 404, with_body)
                return
            body, status = reports.get()
            self._answer(body, status, with_body)

        def _answer(self, body: dict[str, Any], status: int, with_body: bool = True, **headers: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(data)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """``http.server``'s own refusals (an unknown method, a malformed request line, headers too large), in
            JSON; the connection closed after them."""
            self.close_connection = True
            names = {
                400: "malformed_request",
                414: "uri_too_long",
                431: "header_fields_too_large",
                501: "method_not_allowed",
            }
            status = 405 if code == 501 else code  # a method it has no do_ for: only GET and HEAD are served
            error = {"code": names.get(code, "refused"), "message": message or self.responses.get(code, ("",))[0]}
            try:
                self._answer({"error": error}, status, self.command != "HEAD", Allow="GET, HEAD", Connection="close")
            except OSError:
                pass

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (TimeoutError, ConnectionError):
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request lines
            return

    server = _Server(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
