"""Bytes no HTTP client would send, and the first answer to them read off the socket as they come."""

from __future__ import annotations

import socket


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The first answer on ``sock``: status, headers (names in lower case), body by its ``Content-Length``. Read
    until that body is in or the server closes (a kept-alive connection stays open after it; what follows it, e.g.
    gunicorn refusing the rest of a malformed body, is not this answer)."""
    got = b""
    while True:
        head, sep, body = got.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            if len(body) >= length:
                return int(lines[0].split()[1]), headers, body[:length]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole answer: {got[:200]!r}")
        got += chunk


def exchange(host: str, port: int, request: bytes, timeout_s: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a new connection and read the first answer."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(request)
        return read_answer(sock)
