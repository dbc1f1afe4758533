"""Local HTTP servers standing in for a service the code under test calls (a devices function, the metadata server,
the Hugging Face Hub): a handler base that answers in one call, and a server run for the length of a ``with``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

Server = TypeVar("Server", bound=ThreadingHTTPServer)


class StubHandler(BaseHTTPRequestHandler):
    """A handler that logs nothing, reads a request's body by its length, and answers in one call."""

    def body(self) -> bytes:
        """The request's body (none without a ``Content-Length``)."""
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(
        self,
        status: int,
        body: bytes | Mapping[str, Any] | list[Any] = b"",
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        send_body: bool = True,
    ) -> None:
        """Answer with ``status`` and ``body`` (bytes as they are, anything else as JSON with its content type), its
        ``Content-Length`` and ``headers``; without ``send_body`` (a HEAD) the headers alone."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        kind = content_type or (None if isinstance(body, bytes) else "application/json")
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        return


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free local port for the ``with``'s length; yields its base URL."""
    with running(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield url_of(server)


@contextmanager
def running(server: Server) -> Iterator[Server]:
    """Serve with ``server`` (a subclass that carries state) in a thread for the ``with``'s length."""
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"
