"""One of Google's JSON APIs (Firestore, Firebase Auth), or its emulator, spoken over the standard library's
``http.client``: each request carries the credentials ``authorize`` adds, kept-alive connections are reused (a
request that finds its pooled connection closed by the server is sent once more on a new one), and what an answer
means is the caller's (``lockwise.core.firestore``, ``lockwise.core.accounts``).

Production authenticates with Application Default Credentials (``default_credentials``: google-auth, imported only
there); the emulators take the token ``owner`` (``emulator_owner``), which passes security rules as an admin client
does.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

#: adds the request's credentials to its headers (the bearer token, refreshed when it has expired)
Authorize = Callable[[dict[str, str]], None]
#: the most of an answer's body read (a Firestore page of 300 documents is well under it)
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: a read of an answer's body takes at most this much (each socket read has the API's timeout as well)
READ_CHUNK_BYTES = 64 * 1024
#: kept-alive connections an API holds between requests (more are closed after use)
MAX_IDLE = 4
#: the exceptions that mean a kept-alive connection was closed by the other side before this request was sent
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class AnswerCut(http.client.HTTPException):
    """An answer's body not read within its deadline, or larger than ``MAX_ANSWER_BYTES``."""


def read_answer(resp: http.client.HTTPResponse, deadline: float, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """``resp``'s body, read a chunk at a time until ``deadline`` (``time.monotonic()``) and at most ``limit``
    bytes (``AnswerCut`` past either): a socket's timeout bounds each read, not the answer, and one trickled a byte
    at a time held a request, or the relay's upkeep, for as long as the trickle lasted (attack run 92: 12 s against
    a timeout of 1 s)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise AnswerCut("the answer was not read in time")
        chunk = resp.read1(READ_CHUNK_BYTES)
        if not chunk:
            resp.read()  # the answer ended: marked so (read1 leaves it open, and a kept-alive connection unusable)
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise AnswerCut("the answer is larger than any this client reads")
        chunks.append(chunk)


class Unavailable(Exception):
    """The API could not be used: its credentials could not be refreshed, it could not be reached, or the connection
    failed mid-answer (the message names the API, which of these, and the exception's type)."""


def emulator_owner(headers: dict[str, str]) -> None:
    headers["Authorization"] = "Bearer owner"


class GoogleApi:
    """The API at ``host`` (HTTPS with ``tls``, plain HTTP without: an emulator). Safe to share between threads."""

    def __init__(
        self, name: str, host: str, *, authorize: Authorize, tls: ssl.SSLContext | None, timeout_s: float
    ) -> None:
        self._name, self._host, self._authorize, self._tls, self._timeout_s = name, host, authorize, tls, timeout_s
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def call(self, method: str, target: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """Send ``body`` (JSON) to ``target``; the answer's status and body. ``Unavailable`` when there is none."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            self._authorize(headers)
        except Exception as exc:  # noqa: BLE001 - google-auth's refresh fails in its own types (RefreshError, ...)
            raise Unavailable(f"{self._name} credentials could not be refreshed: {type(exc).__name__}") from exc
        con, reused = self._connection()
        deadline = time.monotonic() + 2 * self._timeout_s  # the whole call (each socket read: the timeout)
        try:
            try:
                resp = _send(con, method, target, payload, headers)
            except _STALE:
                if not reused:
                    raise
                con.close()  # the pool's connection had been closed by the server: once more on a new one
                con = self._new_connection()
                resp = _send(con, method, target, payload, headers)
            data = read_answer(resp, deadline)
        except (OSError, http.client.HTTPException) as exc:
            con.close()
            raise Unavailable(f"{self._name} could not be reached: {type(exc).__name__}") from exc
        with self._lock:
            kept = not resp.will_close and len(self._idle) < MAX_IDLE
            if kept:
                self._idle.append(con)
        if not kept:
            con.close()
        return resp.status, data

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for con in idle:
            con.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new_connection(), False

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._tls is None:
            return http.client.HTTPConnection(self._host, timeout=self._timeout_s)
        return http.client.HTTPSConnection(self._host, timeout=self._timeout_s, context=self._tls)


def _send(
    con: http.client.HTTPConnection, method: str, target: str, payload: bytes | None, headers: dict[str, str]
) -> http.client.HTTPResponse:
    con.request(method, target, body=payload, headers=headers)
    return con.getresponse()


def default_credentials(tls: ssl.SSLContext | None, scope: str, host: str) -> Authorize:
    """Application Default Credentials with ``scope`` for ``host``, refreshed when expired (one refresh at a time; an
    HTTPS token endpoint is reached with ``tls``, a context of the system's CAs when None)."""
    import google.auth

    from lockwise.core.google_auth import StdlibRequest

    credentials, _project = google.auth.default(scopes=[scope])
    request, lock = StdlibRequest(tls), threading.Lock()

    def authorize(headers: dict[str, str]) -> None:
        with lock:
            credentials.before_request(request, "POST", f"https://{host}/", headers)  # type: ignore[no-untyped-call]

    return authorize
