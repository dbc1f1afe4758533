"""Requests read whole in the web server's event loop before a thread takes them: a slow client holds no thread.

functions-framework serves each function through gunicorn's threaded worker (``gthread``, four threads a core),
whose threads read the request themselves. A client that sends its request slowly holds a thread for as long as it
likes: 20 clients each sending one header line every 2 s left the devices function answering nobody (a health check
timed out after 10 s; measured on the local stack). A deployed function has Google's front end before it; the local
stack and a self-hosted deployment have nothing in front.

:class:`WholeRequestWorker` reads each request into memory in gunicorn's event loop (the thread that accepts
connections, which never waits on one of them) and hands the connection to a thread only once the request is whole,
judged by gunicorn's own parser: its head parsed by gunicorn's ``Request``, its body in to its ``Content-Length`` or
to its last chunk and trailers (each chunk size line checked by gunicorn's chunked reader). A request gunicorn would
refuse is handed over as soon as the bytes that make it wrong are in, so the thread refuses it at once, as before.
The loop answers itself, in the API's JSON shape, and closes the connection: 408 for a request not whole by its
deadline (``HEAD_S`` for the head; then ``BODY_GRACE_S`` plus 1 s for every ``MIN_BODY_RATE`` bytes of body that
come, as Apache's ``mod_reqtimeout`` does, and never past ``BODY_MAX_S``), 431 for a head over ``MAX_HEAD_BYTES``,
413 for a body over ``MAX_BODY_BYTES``, 503 while ``MAX_HELD_BYTES`` are held for all connections together. A client
that asked for ``100 Continue`` gets it from the loop, once (the thread, which sends its own, is told it was sent). A
connection that sent nothing of a request (at most the one empty line RFC 9112 has a server ignore before one) is
closed without an answer when its time is up, as gunicorn closes an idle one: ``HEAD_S`` for a new connection,
gunicorn's keep-alive for one answered before (a 408 there could be taken for the answer to the client's next request).

:func:`serve_whole_requests` makes functions-framework's gunicorn use it (``main.py`` runs it through
``lockwise.core.http.Api`` as it loads, in the master, before gunicorn starts).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from lockwise.core import server_errors

log = logging.getLogger("lockwise.core.whole_requests")

#: the head (request line and headers) must be in this long after the connection could send it
HEAD_S = 10.0
#: the body then has this long, plus 1 s for every ``MIN_BODY_RATE`` bytes that come ...
BODY_GRACE_S = 10.0
MIN_BODY_RATE = 8 * 1024
#: ... and never more than this after the head (the deployed functions' own request timeout is 30-60 s)
BODY_MAX_S = 60.0
#: a longer head is refused 431 (gunicorn's limits: 100 fields of 8,190 bytes; functions-framework lifts the request
#: line's)
MAX_HEAD_BYTES = 64 * 1024
#: a longer body is refused 413 (the largest a function takes at its default settings: an enrollment of five 15 s
#: clips of 48 kHz stereo in base64, 19.2 MB, ``lockwise.voice.audio.max_body_bytes``; a 16 MiB limit refused
#: enrollments the function takes: attack run 20. Each function refuses a body over its own limit; Cloud Run's is 32 MB)
MAX_BODY_BYTES = 24 * 1024 * 1024
#: past this much held for all connections together, a connection that sends more is refused 503
MAX_HELD_BYTES = 128 * 1024 * 1024
#: a chunked body of more chunks is refused (walking one costs the event loop a few microseconds: 16 MiB of 1-byte
#: chunks held it for 6.7 s in an attack run; a client that sends chunks sends kilobytes at a time)
MAX_CHUNKS = 16_384
#: a closing connection's end: what the client still sends is read and dropped for this long, up to this much
LINGER_S = 2.0
LINGER_BYTES = 64 * 1024
RECV_BYTES = 256 * 1024
#: out of file descriptors, the event loop stops accepting for at least this long (nginx: 500 ms; it accepts again at
#: its next turn after it, within a second), serving the connections it holds meanwhile
ACCEPT_PAUSE_S = 0.5

try:
    from gunicorn.http.body import ChunkedReader, LengthReader
    from gunicorn.http.errors import NoMoreData
    from gunicorn.http.message import Request
    from gunicorn.http.unreader import IterUnreader
    from gunicorn.http2.negotiation import prior_knowledge_allowed
    from gunicorn.workers.gthread import DEFAULT_WORKER_DATA_TIMEOUT, ThreadWorker
except ImportError:  # not served by gunicorn (Flask's test client, a platform without it)
    ThreadWorker = object


def _recv(sock: socket.socket) -> bytes | None:
    """What a readable socket holds (b"": the client closed it or it failed; None: nothing after all)."""
    try:
        return sock.recv(RECV_BYTES)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _bare_lf(buf: bytearray, lf: int) -> bool:
    """Whether a LF at or after ``lf`` in ``buf`` has no CR before it."""
    while lf >= 0:
        if lf == 0 or buf[lf - 1] != 0x0D:
            return True
        lf = buf.find(b"\n", lf + 1)
    return False


class Refused(Exception):
    """The loop answers the request itself: ``status``, ``reason``, ``message``."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class Filling:
    """What a connection has sent of its request so far, and by when the rest must come."""

    cfg: Any
    peer: Any
    deadline: float  # (until it starts, by when it must: then it is closed without an answer, as an idle one is)
    buf: bytearray = field(default_factory=bytearray)
    kept_alive: bool = False  # a connection that was answered before (else a new one: its head has HEAD_S from it)
    line_checked: bool = False  # the request line went through gunicorn's parser once it was in
    searched: int = 0  # how far the buffer was searched for the head's end (then for the trailers' end)
    head_end: int = -1  # index just past the head, once gunicorn's parser took it
    head_at: float = 0.0
    body_length: int | None = None  # by Content-Length; None with a chunked body
    chunks: Any = None  # gunicorn's ChunkedReader for this request, to check each chunk size line
    chunk_count: int = 0  # chunks wholly in
    last_at: float = 0.0  # when the last bytes came
    next_chunk: int = 0  # where the next chunk size line starts
    in_trailers: int = -1  # where the trailers start, once the last chunk is in
    whole: bool = False  # a thread may take it: whole, or wrong in bytes already in (the thread refuses it)
    continue_wanted: bool = False  # the client waits for "100 Continue" before its body

    @property
    def started(self) -> bool:
        """Something of a request came: more than the one empty line RFC 9112 has a server ignore before one (and
        gunicorn's parser does)."""
        return len(self.buf) > 2 or not b"\r\n".startswith(self.buf)

    def add(self, data: bytes, now: float) -> None:
        """Take ``data``; raises :class:`Refused` when the loop must answer."""
        starting = not self.started
        self.buf += data
        self.last_at = now
        if not self.started:
            return
        if starting and self.kept_alive:  # its head has HEAD_S from its first byte
            self.deadline = now + HEAD_S
        if self.head_end < 0:
            self._try_head(now)
        if self.head_end >= 0 and not self.whole:
            self._try_body()
            body = len(self.buf) - self.head_end
            self.deadline = self.head_at + min(BODY_MAX_S, BODY_GRACE_S + body / MIN_BODY_RATE)

    def _parse(self, head: bytes) -> Any:
        """gunicorn's ``Request`` over ``head`` (None: it needs more; ``whole`` set: it refuses these bytes)."""
        unreader = IterUnreader([head])
        try:
            req = Request(self.cfg, unreader, self.peer)
        except NoMoreData:
            return None
        except Exception:  # noqa: BLE001 - gunicorn refuses it from these bytes: so will the thread, at once
            self.whole = True
            return None
        req.lockwise_rest = len(unreader.take_buffered())
        return req

    def _try_head(self, now: float) -> None:
        start, self.searched = max(0, self.searched - 3), len(self.buf)
        # gunicorn's parser runs over the head once a line ends twice (CRLF CRLF, or a bare LF it refuses) ...
        ends = [i + n for i, n in ((self.buf.find(b"\n\r\n", start), 3), (self.buf.find(b"\n\n", start), 2)) if i >= 0]
        if not ends:
            # ... and before, over what is in, once the request line is and at a bare LF: it refuses them from
            # these bytes (the head's end is not in: at most MAX_HEAD_BYTES of it, or refused below)
            # (the request line's LF: past the one empty line RFC 9112 has a server ignore before it, whose LF
            # checked nothing, so that a malformed line after one waited for the head's end: attack run 106)
            lf = self.buf.find(b"\n", max(start, 2 if self.buf.startswith(b"\r\n") else 0))
            if lf >= 0 and (not self.line_checked or _bare_lf(self.buf, lf)):
                self.line_checked = True
                self._parse(bytes(self.buf[: MAX_HEAD_BYTES + 1]))
                if self.whole:
                    return
            if len(self.buf) > MAX_HEAD_BYTES:
                raise self._head_too_long()
            return
        end = min(ends)
        if end > MAX_HEAD_BYTES:  # (refused as when it comes in pieces, however many reads brought it)
            raise self._head_too_long()
        req = self._parse(bytes(self.buf[:end]))
        if req is None:
            return
        self.head_end, self.head_at = end - req.lockwise_rest, now
        if req.version >= (1, 1) and not any(name == "HOST" for name, _ in req.headers):
            # RFC 9112 section 3.2: 400 for an HTTP/1.1 request without Host (gunicorn took it, and refuses two
            # itself; Google's front end always sends one: attack run 106)
            raise Refused(400, "Bad Request", "an HTTP/1.1 request names its host in a Host header")
        if (
            "#" in req.uri
        ):  # RFC 9112 section 3.2: no fragment in a request target (gunicorn dropped it: attack run 106)
            raise Refused(400, "Bad Request", "a request target holds no fragment ('#')")
        reader = req.body.reader
        if isinstance(reader, LengthReader):
            if reader.length > MAX_BODY_BYTES:
                raise Refused(413, "Content Too Large", f"body over {MAX_BODY_BYTES} bytes")
            self.body_length = reader.length
        elif isinstance(reader, ChunkedReader):
            self.chunks, self.next_chunk = reader, self.head_end
        else:  # a body gunicorn reads another way: the thread reads it, as before
            self.whole = True
            return
        self.continue_wanted = bool(req._expected_100_continue)

    def _head_too_long(self) -> Refused:
        line = 2 if self.buf.startswith(b"\r\n") else 0  # (past the empty line gunicorn ignores before a request)
        if self.buf.find(b"\n", line, line + MAX_HEAD_BYTES) < 0:
            return Refused(414, "URI Too Long", f"request line over {MAX_HEAD_BYTES} bytes")
        return Refused(431, "Request Header Fields Too Large", f"request head over {MAX_HEAD_BYTES} bytes")

    def _try_body(self) -> None:
        if self.chunks is None:  # (what follows the body is the next request's)
            self.whole = len(self.buf) - self.head_end >= (self.body_length or 0)
            return
        if len(self.buf) - self.head_end > MAX_BODY_BYTES:
            raise Refused(413, "Content Too Large", f"body over {MAX_BODY_BYTES} bytes")
        while self.in_trailers < 0:  # walk the chunks: each size line as gunicorn's chunked reader reads it
            eol = self.buf.find(b"\r\n", self.next_chunk)
            if eol < 0:
                if self.buf.find(b"\n", self.next_chunk) >= 0:  # (bare: no CRLF in the line)
                    # a size line ended by a bare LF, as a client ending its lines so sends them: gunicorn's reader
                    # reads on for a CRLF that never comes, and a thread would wait with it (it was a 408 after 10 s)
                    raise Refused(400, "Bad Request", "a chunk size line ends in a bare LF, not CRLF")
                if len(self.buf) - self.next_chunk > self.chunks.limit_chunk_size_line:
                    self.whole = True  # gunicorn refuses a line this long
                return
            line = bytes(self.buf[self.next_chunk : eol + 2])
            try:  # (an empty trailer section after it, so that the last chunk's line parses alone too)
                size, _ = self.chunks.parse_chunk_size(IterUnreader([]), data=line + b"\r\n")
            except Exception:  # noqa: BLE001 - a size line gunicorn refuses
                self.whole = True
                return
            if size == 0:
                self.in_trailers = self.searched = eol + 2
                break
            end = eol + 2 + size
            if end - self.head_end > MAX_BODY_BYTES:  # declared: refused now, not once it is in (attack run 20)
                raise Refused(413, "Content Too Large", f"body over {MAX_BODY_BYTES} bytes")
            if len(self.buf) < end + 2:
                return
            self.next_chunk = end + 2  # (the thread refuses a chunk whose CRLF is missing)
            if self.buf[end : end + 2] != b"\r\n":
                self.whole = True
                return
            self.chunk_count += 1  # (once it is whole: a chunk read in many pieces is one chunk)
            if self.chunk_count > MAX_CHUNKS:
                raise Refused(400, "Bad Request", f"a chunked body of more than {MAX_CHUNKS} chunks")
        # the trailers: searched from where the last read left off, as gunicorn's chunked reader does
        new, self.searched = max(self.in_trailers, self.searched), len(self.buf)
        if self.buf.startswith(b"\r\n", self.in_trailers) or self.buf.find(b"\r\n\r\n", max(0, new - 3)) >= 0:
            self.whole = True
            return
        if _bare_lf(self.buf, self.buf.find(b"\n", new)):
            self.whole = True  # gunicorn refuses a bare LF there
            return
        if len(self.buf) - self.in_trailers > MAX_HEAD_BYTES:
            raise Refused(431, "Request Header Fields Too Large", f"trailers over {MAX_HEAD_BYTES} bytes")


class WholeRequestWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, but a thread takes a connection only once its request is in (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filling: dict[Any, Filling] = {}
        self.held = 0  # bytes held for all of them
        self.lingering: dict[Any, list[float]] = {}  # connections closing: [deadline, bytes drained]
        self.accept_paused_until = 0.0

    def enqueue_req(self, conn: Any) -> None:
        """Called for a new connection, a kept-alive one that became readable and one with read-ahead left: read
        its request in the event loop first (a TLS connection, which only a thread may unwrap, and one that may
        speak HTTP/2 without asking, which the parser sniffs with a blocking read, go straight on)."""
        if self.cfg.is_ssl or getattr(conn, "lockwise_whole", False) or prior_knowledge_allowed(self.cfg, conn.client):
            conn.lockwise_whole = False
            super().enqueue_req(conn)
            return
        if "close" not in vars(conn):  # its graceful close lingers in the loop, not blocking it (close_graceful)
            conn.close = partial(self._close_gracefully, conn, conn.close)
        # a kept-alive connection that sent an empty line and no more stays as long as gunicorn keeps an idle one; a
        # new one has the time its request's head has
        kept_alive = conn.parser is not None
        idle_s = self.cfg.keepalive if kept_alive else HEAD_S
        filling = Filling(self.cfg, conn.client, deadline=time.monotonic() + idle_s, kept_alive=kept_alive)
        conn.sock.setblocking(False)
        self.filling[conn] = filling
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
        if conn.parser is not None:  # a kept-alive connection: what the last request's read left over comes first
            self._take(conn, filling, conn.parser.unreader.take_buffered())

    def accept(self, listener: Any) -> None:
        """gunicorn's, but out of file descriptors it stops accepting for ``ACCEPT_PAUSE_S`` instead of ending the
        worker (every connection it holds with it: attack run, at ``ulimit -n 1024``); it slept 50 ms in the loop at
        each try, holding up every connection's reading."""
        try:
            super().accept(listener)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            log.warning("cannot accept a connection (%s): not accepting for %.1f s", exc.strerror, ACCEPT_PAUSE_S)
            self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        """gunicorn's (its loop asks for accepting again at each turn while below ``worker_connections``), but not
        before a pause ends (``accept``)."""
        if enabled and time.monotonic() < self.accept_paused_until:
            return
        super().set_accept_enabled(enabled)

    def _readable(self, conn: Any, _sock: Any) -> None:
        filling = self.filling.get(conn)
        if filling is None or (data := _recv(conn.sock)) is None:
            return
        if data:
            self._take(conn, filling, data)
        elif filling.head_end >= 0:  # gone mid-body: the thread answers what gunicorn answers (it reads the end)
            self._hand_over(conn)
        else:  # gone before its head was in
            self._forget(conn)
            self._close(conn)

    def _take(self, conn: Any, filling: Filling, data: bytes) -> None:
        if not data:
            return
        self.held += len(data)
        had_head = filling.head_end >= 0
        try:
            filling.add(data, time.monotonic())
        except Refused as refused:
            self._refuse(conn, refused.status, refused.reason, refused.message)
            return
        except Exception:  # noqa: BLE001 - never the event loop's end: gunicorn's thread reads it, as before
            log.exception("reading a request in the event loop failed; a thread reads it")
            filling.whole = True
        if filling.continue_wanted and not had_head and not filling.whole:
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            conn.lockwise_continued = True  # (handle_request: the thread does not send it again)
        if filling.whole:
            self._hand_over(conn)
        # past the cap, the connection idle the longest goes, not the one that came last
        while self.held > MAX_HELD_BYTES and self.filling:
            idlest = min(self.filling, key=lambda c: self.filling[c].last_at)
            self._refuse(idlest, 503, "Service Unavailable", "too many requests being received; try again shortly")

    def _hand_over(self, conn: Any) -> None:
        filling = self._forget(conn)
        conn.init()  # the plain HTTP/1 parser: no I/O without TLS or HTTP/2 by prior knowledge (enqueue_req)
        conn.parser.unreader.unread(bytes(filling.buf))
        conn.data_ready = True
        conn.lockwise_whole = conn.lockwise_in_memory = True
        conn.sock.setblocking(True)
        self.enqueue_req(conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """gunicorn's, but a request the loop read whole has what its handler left of the body in memory: it is
        dropped to its end, however long, and the connection kept. gunicorn stops after 64 KiB (a slow client's
        trickle) and closes the connection after an answer that said keep-alive, so a request sent behind one left
        unread (a 401 before the body is read) got no answer (attack run 20)."""
        in_memory, conn.lockwise_in_memory = getattr(conn, "lockwise_in_memory", False), False
        if not keepalive or not in_memory:
            return bool(super()._keepalive_after(conn, keepalive))
        deadline = time.monotonic() + DEFAULT_WORKER_DATA_TIMEOUT
        return bool(conn.parser.finish_body(deadline=deadline, max_bytes=MAX_BODY_BYTES + 1))

    def handle_request(self, req: Any, conn: Any) -> Any:
        """gunicorn's, without a second ``100 Continue`` where the loop sent one for this request."""
        if getattr(conn, "lockwise_continued", False):
            conn.lockwise_continued = False
            req._expected_100_continue = False
        return super().handle_request(req, conn)

    def _forget(self, conn: Any) -> Filling:
        """Stop reading ``conn``'s request in the loop; what it sent so far is returned."""
        filling = self.filling.pop(conn)
        self.held -= len(filling.buf)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        return filling

    def _close(self, conn: Any, graceful: bool = False) -> None:
        """As gunicorn's ``finish_request`` closes: the connection leaves the count (a lingering close counts it
        again until its end, ``_close_gracefully``)."""
        self.nr_conns -= 1
        conn.close(graceful=graceful)

    def _refuse(self, conn: Any, status: int, reason: str, message: str) -> None:
        self._forget(conn)
        with contextlib.suppress(OSError):
            conn.sock.send(server_errors.error_response(status, reason, message))
        self._close(conn, graceful=True)

    def _close_gracefully(self, conn: Any, close: Callable[..., None], graceful: bool = False) -> None:
        """As gunicorn's ``close_graceful`` (a FIN, then what the client still sends read and dropped for up to
        ``LINGER_S``, so that the answer is not cut off by a reset), but in the event loop, never waiting in it: it
        waited there, and clients that kept their end open held up every other connection (attack run)."""
        if not graceful:
            close()
            return
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))
        except (OSError, ValueError, KeyError):
            close()
            return
        self.lingering[conn] = [time.monotonic() + LINGER_S, 0]
        self.nr_conns += 1  # (an open file all the same: it counts towards worker_connections until its end)

    def _drain(self, conn: Any, _sock: Any) -> None:
        if (data := _recv(conn.sock)) is None:
            return
        linger = self.lingering.get(conn)
        if linger is None:
            return
        linger[1] += len(data)
        if not data or linger[1] >= LINGER_BYTES:
            self._end_linger(conn)

    def _end_linger(self, conn: Any) -> None:
        del self.lingering[conn]
        self.nr_conns -= 1
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def murder_pending(self) -> None:
        """Also answer 408 and close every connection whose request is not in by its deadline, after reading what
        it sent last, and end the lingering closes past theirs (the event loop runs this at least once a second)."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, f in self.filling.items() if f.deadline <= now]:
            self._readable(conn, conn.sock)  # what came while the loop was busy counts
            filling = self.filling.get(conn)
            if filling is None or filling.deadline > now:
                continue
            if not filling.started:  # no request to answer: an idle connection, closed as gunicorn closes one
                self._forget(conn)
                self._close(conn)
                continue
            log.info("request not in by its deadline: %d bytes received, closed", len(filling.buf))
            self._refuse(conn, 408, "Request Timeout", "the request did not arrive in time")
        for conn in [c for c, (deadline, _) in self.lingering.items() if deadline <= now]:
            self._end_linger(conn)


def serve_whole_requests() -> None:
    """Make functions-framework's gunicorn serve with :class:`WholeRequestWorker` (once per process; nothing
    without gunicorn, or where functions-framework chose another worker, e.g. its request-timeout one)."""
    if ThreadWorker is object:  # gunicorn is not there: nothing to serve with
        return
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
