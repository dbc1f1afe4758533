"""When the event loop judges a request whole (``lockwise.core.whole_requests.Filling``), byte by byte and in pieces.

The served behaviour (slow clients holding no thread, the loop's own answers) is in
``tests/integration/test_slow_clients.py``; here, that the loop hands a request over exactly when a thread can
read it without waiting, however its bytes are split.
"""

from __future__ import annotations

import pytest
from gunicorn.config import Config

from lockwise.core.whole_requests import HEAD_S, MAX_CHUNKS, Filling, Refused

POST = b"POST / HTTP/1.1\r\nHost: x\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


def feed(request: bytes, piece: int) -> int | None:
    """How many bytes of ``request``, sent ``piece`` at a time, the loop needs to hand it over (None: never)."""
    cfg = Config()
    cfg.set("limit_request_line", 0)  # as functions-framework sets it
    filling = Filling(cfg, ("127.0.0.1", 1), deadline=0.0)
    for start in range(0, len(request), piece):
        filling.add(request[start : start + piece], 0.0)
        if filling.whole:
            return min(start + piece, len(request))
    return None


#: whole requests: handed over with their last byte, not before
WHOLE = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    POST + b"Content-Length: 3\r\n\r\nabc",
    CHUNKED + b"2\r\n{}\r\n0\r\n\r\n",
    CHUNKED + b"2;a=b\r\n{}\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
    CHUNKED + b"0\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # one empty line before it: ignored (RFC 9112 section 2.2)
    b"GET / HTTP/1.0\r\n\r\n",  # HTTP/1.0 need not name its host
]
#: requests not whole yet: a thread would wait on the client
UNFINISHED = [
    b"GET / HTTP/1.1\r\nHost: x\r\n",
    POST + b"Content-Length: 3\r\n\r\nab",
    POST + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    CHUNKED + b"2\r\n{}\r\n",
    CHUNKED + b"000000000000000005\r\n{",  # gunicorn reads an 18-digit size
    CHUNKED + b"5;" + b"a" * 5000,  # a size line gunicorn reads on (up to 8,190 bytes)
    CHUNKED + b"0\r\nX-T: 1\r\n",
]
#: requests gunicorn refuses from these bytes: handed over at once, so that the thread refuses them at once
WRONG = [
    b"BAD\r\nHost: x\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nHost: x\nA: b",
    POST + b"Content-Length: " + b"0" * 4400 + b"5\r\n\r\nhello",  # over what Python's int() takes
    POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    POST + b"Transfer-Encoding: gzip\r\n\r\n",
    CHUNKED + b"2\r\n{}\r\nzz\r\n",
    CHUNKED + b"5 \r\n",
    CHUNKED + b"2\r\n{}xx",
    CHUNKED + b"0\r\nX-T: 1\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # one empty line is ignored, not two
    # a malformed request line after the empty line: the empty line's LF was taken for the request line's, and the
    # line was judged only once the head ended (attack run 106: a 408 after 10 s when the head never did)
    b"\r\nBAD\r\nHost: x\r\n",
    b"\r\nGET / HTTP/1.1 extra\r\nHost: x\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",  # two Host headers: gunicorn's own 400
]


@pytest.mark.parametrize("piece", [1, 3, 7, 4096])
def test_a_request_is_handed_over_when_whole_and_not_before(piece: int) -> None:
    for request in WHOLE:
        assert feed(request, piece) == len(request), request
    for request in UNFINISHED:
        assert feed(request, piece) is None, request


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_a_request_gunicorn_refuses_is_handed_over_without_waiting_for_more(piece: int) -> None:
    for request in WRONG:
        assert feed(request, piece) is not None, request


@pytest.mark.parametrize("kept_alive", [True, False])
def test_an_empty_line_before_a_request_starts_nothing(kept_alive: bool) -> None:
    """A kept-alive connection that sends the empty line some clients send after a body, and no more, is idle: it
    keeps its idle deadline and is closed without an answer (it was answered 408 after waiting 10 s). A request's
    first byte starts it: a kept-alive connection's head then has ``HEAD_S``, a new one's keeps its time."""
    filling = Filling(Config(), ("127.0.0.1", 1), deadline=2.0, kept_alive=kept_alive)
    filling.add(b"\r", 1.0)
    filling.add(b"\n", 1.5)
    assert not filling.started and filling.deadline == 2.0
    filling.add(b"G", 1.8)
    assert filling.started and filling.deadline == (1.8 + HEAD_S if kept_alive else 2.0)
    filling.add(b"ET / HTTP/1.1\r\nHost: x\r\n\r\n", 1.9)
    assert filling.whole


def test_one_chunk_read_in_many_pieces_counts_once() -> None:
    """Each read used to count the chunk being read again: a 1.7 MB chunk in 100-byte segments was refused."""
    size = (MAX_CHUNKS + 10) * 10
    request = CHUNKED + b"%x\r\n" % size + b"a" * size + b"\r\n0\r\n\r\n"
    assert feed(request, 10) == len(request)


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (POST + b"Content-Length: 99999999999999999999\r\n\r\n", 413),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x", 414),
        (b"\r\nGET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x", 414),  # after the empty line gunicorn ignores
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 7_000) for i in range(10)) + b"Host: x", 431),
        (CHUNKED + b"1\r\nx\r\n" * (MAX_CHUNKS + 1), 400),
        # chunk size lines ended by a bare LF: gunicorn's reader waits for a CRLF the client never sends
        (CHUNKED + b"2\n{}\n0\n\n", 400),
        (CHUNKED + b"2\r\n{}\r\n0\n\n", 400),
        (CHUNKED + b"2;a=b\n{}", 400),
        # RFC 9112 section 3.2: an HTTP/1.1 request names its host in exactly one Host header (attack run 106)
        (b"GET / HTTP/1.1\r\nAccept: x\r\n\r\n", 400),
        # nor a fragment in the target (gunicorn dropped it, and the request went on without it)
        (b"GET /devices/health#x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a?b#c HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a# HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
)
@pytest.mark.parametrize("piece", [4096, 1 << 20])
def test_the_loop_refuses_what_it_must_not_hold(request_: bytes, status: int, piece: int) -> None:
    """In pieces or in one read (a head over the limit that came whole in one read was taken)."""
    with pytest.raises(Refused) as refused:
        feed(request_ + b"\r\n\r\n" if status in (414, 431) else request_, piece)
    assert refused.value.status == status
