"""Requests read whole in the web server's event loop before a thread takes them: a slow client holds no thread.

functions-framework serves each function through gunicorn's threaded worker (``gthread``, four threads a core),
whose threads read the request themselves. A client that sends its request slowly holds a thread for as long as it
likes: 20 clients each sending one header line every 2 s left the devices function answering nobody (a health check
timed out after 10 s; measured on the local stack). Google's front end stands before a deployed function; the local
stack and a self-hosted deployment have nothing in front.

:class:`WholeRequestWorker` reads a request's head, and its body up to ``MAX_BODY_BYTES`` by ``Content-Length``,
(or chunked, to its last chunk), into memory in gunicorn's event loop (the thread that accepts connections, which
never blocks on one), and hands the connection to a thread only once the request is whole. A request not whole by
its deadline (``HEAD_S`` for the head; then ``BODY_GRACE_S``, plus 1 s for every ``MIN_BODY_RATE`` bytes of body
that come, as Apache's ``mod_reqtimeout`` does) is answered 408 in the API's JSON shape and the connection closed;
a head over ``MAX_HEAD_BYTES`` is answered 431. A request with ``Expect: 100-continue`` (its client waits for the
"100 Continue" a thread sends) is handed over at its head, as is everything when ``MAX_HELD_BYTES`` are held.

:func:`serve_whole_requests` makes functions-framework's gunicorn use it (``main.py`` runs it through
``lockwise.core.http.Api`` as it loads, in the master, before gunicorn starts).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from lockwise.core import server_errors

log = logging.getLogger("lockwise.core.whole_requests")

#: the head (request line and headers) must be in this long after the first byte could be sent
HEAD_S = 10.0
#: the body then has this long, plus its length at ``MIN_BODY_RATE``
BODY_GRACE_S = 10.0
#: bytes a second a body must average (a 3 s clip of 44.1 kHz PCM16 is 265 KB: 16 s more at this rate)
MIN_BODY_RATE = 16 * 1024
#: a head longer than this is refused (gunicorn's own limits: 100 fields of 8,190 bytes; functions-framework lifts
#: the request line's)
MAX_HEAD_BYTES = 64 * 1024
#: a body longer than this is handed to a thread at its head (the largest a function takes: five 10 s clips of 48 kHz
#: stereo in base64, 12.8 MB; a function refuses a longer one by its length, unread)
MAX_BODY_BYTES = 16 * 1024 * 1024
#: past this much held for all connections together, a request is handed to a thread as soon as its head is in
MAX_HELD_BYTES = 128 * 1024 * 1024
RECV_BYTES = 256 * 1024
#: a chunk's size line longer than this is malformed (the thread's parser refuses it)
MAX_CHUNK_LINE = 4096

try:
    from gunicorn.http2.negotiation import prior_knowledge_allowed
    from gunicorn.workers.gthread import ThreadWorker
except ImportError:  # not served by gunicorn (Flask's test client, a platform without it)
    ThreadWorker = object

    def prior_knowledge_allowed(cfg: Any, peer_addr: Any) -> bool:
        return False


@dataclass
class Filling:
    """What a connection has sent of its request so far, and by when the rest must come."""

    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    head_end: int = -1  # index just past the head's blank line, once seen
    head_at: float = 0.0  # when the head was in
    body_length: int | None = None  # by Content-Length
    chunked: bool = False  # by its chunks (Transfer-Encoding)
    handed_at_head: bool = False  # 100-continue, no body, or a length the parser must judge
    next_chunk: int = 0  # where the next chunk's size line of a chunked body starts (0: at the body's start)

    def add(self, data: bytes, now: float) -> None:
        self.buf += data
        if self.head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_end, self.head_at = end + 4, now
            self._read_head(bytes(self.buf[: self.head_end]))
        # the body keeps its deadline only by coming in: BODY_GRACE_S, plus 1 s for every MIN_BODY_RATE bytes in
        self.deadline = self.head_at + BODY_GRACE_S + (len(self.buf) - self.head_end) / MIN_BODY_RATE

    def _read_head(self, head: bytes) -> None:
        lengths, coded, continues = set(), False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.add(value.strip())
            elif name == b"transfer-encoding":
                coded = True
            elif name == b"expect" and value.strip().lower() == b"100-continue":
                continues = True  # the client waits for the thread's "100 Continue" before its body
        if continues:
            self.handed_at_head = True
        elif coded:
            self.chunked = True  # (the parser in the thread judges the coding and refuses a bad one)
        elif len(lengths) == 1 and (text := lengths.pop()).isdigit() and int(text) <= MAX_BODY_BYTES:
            self.body_length = int(text)
        else:  # no body, several lengths, a bad one or one too long: the parser or the function refuses it
            self.handed_at_head = True

    def whole(self) -> bool:
        """Enough is in for a thread to read the request without waiting on the client."""
        if self.head_end < 0:
            return False
        if self.handed_at_head:
            return True
        if self.chunked:
            return self._chunks_in()
        return len(self.buf) - self.head_end >= (self.body_length or 0)

    def _chunks_in(self) -> bool:
        """A chunked body is in to its last chunk and trailers, or is malformed (the thread's parser refuses it) or
        over ``MAX_BODY_BYTES``: each chunk's size line is read once (``next_chunk``)."""
        buf = self.buf
        if len(buf) - self.head_end > MAX_BODY_BYTES:
            return True
        while True:
            pos = self.next_chunk or self.head_end
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return len(buf) - pos > MAX_CHUNK_LINE
            size = buf[pos:eol].split(b";", 1)[0].strip()
            if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                return True  # not a chunk size
            if int(size, 16) == 0:  # the last chunk: trailer lines end at a blank line
                return buf.startswith(b"\r\n", eol + 2) or buf.find(b"\r\n\r\n", eol) >= 0
            end = eol + 2 + int(size, 16)
            if len(buf) < end + 2:
                return False
            if buf[end : end + 2] != b"\r\n":
                return True  # a chunk longer than its size says
            self.next_chunk = end + 2

    @property
    def head_in(self) -> bool:
        return self.head_end >= 0

    @property
    def head_too_long(self) -> bool:
        return self.head_end < 0 and len(self.buf) > MAX_HEAD_BYTES


class WholeRequestWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, but a thread takes a connection only once its request is in (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filling: dict[Any, Filling] = {}
        self.held = 0  # bytes held for all of them

    def enqueue_req(self, conn: Any) -> None:
        """Called for a new connection, a kept-alive one that became readable and one with read-ahead left: read
        its request in the event loop first (a TLS connection, which only a thread may unwrap, and one that may
        speak HTTP/2 without asking, which the parser sniffs with a blocking read, go straight on)."""
        if self.cfg.is_ssl or getattr(conn, "lockwise_whole", False) or prior_knowledge_allowed(self.cfg, conn.client):
            conn.lockwise_whole = False
            super().enqueue_req(conn)
            return
        now = time.monotonic()
        filling = Filling(deadline=now + HEAD_S)
        if conn.parser is not None:  # a kept-alive connection: what the last request's read left over comes first
            left = conn.parser.unreader.take_buffered()
            filling.add(left, now)
            self.held += len(left)
        conn.sock.setblocking(False)
        self.filling[conn] = filling
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
        if filling.whole():  # the read-ahead held a whole request
            self._hand_over(conn)

    def _readable(self, conn: Any, _sock: Any) -> None:
        filling = self.filling.get(conn)
        if filling is None:
            return
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its request was in
            self._close(conn)
            return
        filling.add(data, time.monotonic())
        self.held += len(data)
        if filling.head_too_long:
            self._refuse(conn, 431, "Request Header Fields Too Large", f"request head over {MAX_HEAD_BYTES} bytes")
        elif filling.whole() or (filling.head_in and self.held > MAX_HELD_BYTES):
            self._hand_over(conn)

    def _hand_over(self, conn: Any) -> None:
        filling = self.filling.pop(conn)
        self.held -= len(filling.buf)
        self.poller.unregister(conn.sock)
        conn.init()  # the plain HTTP/1 parser: no I/O without TLS or HTTP/2 by prior knowledge (enqueue_req)
        conn.parser.unreader.unread(bytes(filling.buf))
        conn.data_ready = True
        conn.lockwise_whole = True
        conn.sock.setblocking(True)
        self.enqueue_req(conn)

    def _refuse(self, conn: Any, status: int, reason: str, message: str) -> None:
        with contextlib.suppress(OSError):
            conn.sock.send(server_errors.error_response(status, reason, message))
        self._close(conn)

    def _close(self, conn: Any) -> None:
        filling = self.filling.pop(conn, None)
        self.held -= len(filling.buf) if filling else 0
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also answer 408 and close every connection whose request is not in by its deadline (the event loop runs
        this at least once a second)."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, f in self.filling.items() if f.deadline <= now]:
            got = self.filling[conn]
            log.info("request not in by its deadline: %d bytes received, closed", len(got.buf))
            self._refuse(conn, 408, "Request Timeout", "the request did not arrive in time")


def serve_whole_requests() -> None:
    """Make functions-framework's gunicorn serve with :class:`WholeRequestWorker` (once per process; nothing
    without gunicorn, or where functions-framework chose another worker, e.g. its request-timeout one)."""
    try:
        from functions_framework._http import gunicorn as ff_gunicorn
    except ImportError:
        return
    app_class = ff_gunicorn.GunicornApplication
    if getattr(app_class, "lockwise_whole_requests", False):
        return
    load_config: Callable[[Any], None] = app_class.load_config

    def load_config_whole(self: Any) -> None:
        load_config(self)
        if self.cfg.worker_class_str == "gthread":
            self.cfg.set("worker_class", f"{__name__}.{WholeRequestWorker.__name__}")

    setattr(app_class, "load_config", load_config_whole)  # noqa: B010 - mypy refuses assigning to a method
    app_class.lockwise_whole_requests = True
