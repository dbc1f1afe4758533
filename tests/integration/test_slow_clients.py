"""Clients that send their requests slowly hold none of a function's threads (``lockwise.core.whole_requests``).

Attack run: 20 clients each sending a header line every 2 s left the devices function answering nobody, since
gunicorn's threads read requests themselves. The function here is served as deployed, by functions-framework.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local import services
from lockwise.core import whole_requests
from tests.raw_http import read_answer
from tests.waiting import wait_for

#: more slow clients than the function has threads (functions-framework: four a core)
SLOW_CLIENTS = 48


@pytest.fixture
def devices(tmp_path: Path, stack_env: dict[str, str]) -> Iterator[services.FunctionServer]:
    server = services.start_function("devices", services.free_port(), stack_env, tmp_path)
    yield server
    server.stop()


def connect(server: services.FunctionServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the first answer on ``sock``."""
    status, _, body = read_answer(sock)
    return status, json.loads(body)


def health(server: services.FunctionServer) -> int:
    with urllib.request.urlopen(f"{server.url}/devices/health", timeout=10) as resp:
        return int(resp.status)


#: ways to send a request and never finish it (attack runs): each kind, many times over, must hold no thread
UNFINISHED = {
    "a header line every second, never the blank line": b"GET /devices/health HTTP/1.1\r\nHost: x\r\n",
    "a body announced, never sent": b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{",
    "100 Continue asked for, the body never sent": (
        b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 100\r\n\r\n"
    ),
    "a chunk size of 18 digits, the chunk never sent": (
        b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000005\r\n{"
    ),
    "a chunk size line of 5,000 bytes, never ended": (
        b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"a" * 5000
    ),
    "the last chunk, its trailers never ended": (
        b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n"
    ),
}


def test_clients_sending_slowly_do_not_keep_others_from_an_answer(devices: services.FunctionServer) -> None:
    stop = threading.Event()
    socks: list[socket.socket] = []
    kinds = list(UNFINISHED.values())

    def unfinished(start: bytes) -> None:
        sock = connect(devices)
        socks.append(sock)
        sock.sendall(start)
        while start.startswith(b"GET") and not stop.wait(1):
            sock.sendall(b"X-Slow: 1\r\n")

    threads = [
        threading.Thread(target=unfinished, args=(kinds[i % len(kinds)],), daemon=True) for i in range(SLOW_CLIENTS)
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)
        assert len(socks) == SLOW_CLIENTS
        assert health(devices) == 200  # a thread for it: before, this timed out
        with connect(devices) as sock:  # and a request with a body, refused by the function itself
            body = b'{"code": "not-a-code"}'
            sock.sendall(
                b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            status, error = answer(sock)
        assert 400 <= status < 500 and error["error"]["code"]
    finally:
        stop.set()
        for sock in socks:
            sock.close()


#: requests the event loop or gunicorn's parser refuses from their first bytes -> status, error code
REFUSED_AT_ONCE = [
    # over 4,300 digits, which Python's int() refuses: the first cut ended the worker with it
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"0" * 4400 + b"5\r\n\r\nhello", 400, "malformed_request"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 413, "payload_too_large"),
    (b"GET /" + b"a" * 70_000, 414, "request_line_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000, 431, "header_fields_too_large"),
    (b"BAD\r\nHost: x\r\n", 400, "malformed_request"),  # a bad request line: refused before the head is in
    # 16 MiB of 1-byte chunks held the event loop for 6.7 s (attack run): a body of that many chunks is refused
    (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1\r\nx\r\n" * (whole_requests.MAX_CHUNKS + 1),
        400,
        "malformed_request",
    ),
    # a chunk declared over the body limit: refused at its size line, not 10 s later for want of its bytes
    (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{whole_requests.MAX_BODY_BYTES + 1:x}\r\n".encode()
        + b"x" * 100,
        413,
        "payload_too_large",
    ),
    (b"GET / HTTP/1.1\nHost: x\n\n", 400, "malformed_request"),  # bare LF: refused at once, not at the deadline
    # a chunk size line ended by a bare LF, the whole body sent: refused at once, not 408 at the deadline
    (
        b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\n{}\n0\n\n",
        400,
        "malformed_request",
    ),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "malformed_request"),
    # HTTP/1.1 without Host: RFC 9112 section 3.2 has it refused (attack run 106)
    (b"GET /devices/health HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "malformed_request"),
]


def test_a_request_refused_from_its_first_bytes_is_answered_at_once(devices: services.FunctionServer) -> None:
    for request, status, code in REFUSED_AT_ONCE:
        with connect(devices) as sock:
            sock.settimeout(5)  # well inside the deadlines: answered without waiting for more
            sock.sendall(request)
            got, body = answer(sock)
        assert (got, body["error"]["code"]) == (status, code), request[:80]
    assert health(devices) == 200


def test_a_request_not_in_by_its_deadline_is_answered_408_and_closed(devices: services.FunctionServer) -> None:
    """The head must be in ``HEAD_S`` after the connection; a body then keeps its deadline only by coming in."""
    with connect(devices) as no_end, connect(devices) as stalled_body, connect(devices) as silent:
        t0 = time.monotonic()
        no_end.sendall(b"GET /devices/health HTTP/1.1\r\nHost: x\r\n")
        stalled_body.sendall(b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        for sock, limit in ((no_end, whole_requests.HEAD_S), (stalled_body, whole_requests.BODY_GRACE_S)):
            status, body = answer(sock)
            assert (status, body["error"]["code"]) == (408, "request_timeout")
            assert sock.recv(1) == b""  # closed
            assert time.monotonic() - t0 < limit + 5
        # a connection that sent nothing has no request to answer: closed without a word, as an idle one is
        assert silent.recv(1) == b""
        assert time.monotonic() - t0 < whole_requests.HEAD_S + 5
    assert health(devices) == 200


def test_an_empty_line_after_a_request_keeps_the_connection_idle(devices: services.FunctionServer) -> None:
    """Some clients send an empty line after a request's body; RFC 9112 has a server ignore one before the next
    request. It is ignored, and a kept-alive connection that sends no more is closed as an idle one is (gunicorn's
    keep-alive, 2 s), without an answer: it was answered 408 after 10 s, an answer the client could take for its
    next request's."""
    request = b"GET /devices/health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(devices) as trailing, connect(devices) as going_on:
        trailing.sendall(request + b"\r\n")
        assert answer(trailing)[0] == 200
        t0 = time.monotonic()
        going_on.sendall(request)
        assert answer(going_on)[0] == 200
        going_on.sendall(b"\r\n")
        time.sleep(0.5)
        going_on.sendall(request)  # the request after the empty line is answered
        assert answer(going_on)[0] == 200
        trailing.settimeout(whole_requests.HEAD_S - 3)  # well before a 408 would come
        assert trailing.recv(1) == b""  # closed, nothing sent
        assert time.monotonic() - t0 < whole_requests.HEAD_S - 3  # 2 s here; a 408 came at HEAD_S


def test_requests_sent_together_on_one_connection_are_each_answered(devices: services.FunctionServer) -> None:
    """Keep-alive and pipelining still work: what one request's read took of the next is handed on with it."""
    one = b"GET /devices/health HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = (
        b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n4\r\n{"co\r\n10\r\nde": "not-a-code\r\n2\r\n"}\r\n0\r\n\r\n'
    )
    with connect(devices) as sock:
        sock.sendall(one + chunked + one)
        got = b""
        deadline = time.monotonic() + 20
        while got.count(b"HTTP/1.1 ") < 3 and time.monotonic() < deadline:
            got += sock.recv(65536)
    statuses = [int(part.split(b" ", 1)[0]) for part in got.split(b"HTTP/1.1 ")[1:]]
    assert statuses[0] == 200 and 400 <= statuses[1] < 500 and statuses[2] == 200, got[:500]


@pytest.mark.parametrize("unread", [2, 70_000, 1_000_000])
def test_a_request_behind_one_whose_body_was_left_unread_is_answered(
    devices: services.FunctionServer, unread: int
) -> None:
    """A request refused before its body is read (401 here) leaves the body unread; the answer says keep-alive, and
    gunicorn dropped the rest only up to 64 KiB, then closed the connection: the request sent behind it got no
    answer (attack run 20). The loop had the whole body in memory: it is dropped to its end and the next request is
    answered."""
    body = b"{" + b" " * (unread - 2) + b"}"
    first = (
        f"POST /devices/locks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    second = b"GET /devices/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with connect(devices) as sock:
        sock.sendall(first + second)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    answers = got.split(b"HTTP/1.1 ")[1:]
    assert [int(a.split(b" ", 1)[0]) for a in answers] == [401, 200], got[:600]
    assert b"connection: close" not in answers[0].lower()  # the first answer kept the connection


def test_a_client_that_waits_for_100_continue_gets_it_once(devices: services.FunctionServer) -> None:
    """The loop sends ``100 Continue`` while it reads the request; the thread that answers it sent one more."""
    body = b'{"code": "not-a-code"}'
    with connect(devices) as sock:
        sock.sendall(
            b"POST /devices/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        got = b""
        while len(got) < len(interim) and (chunk := sock.recv(len(interim) - len(got))):
            got += chunk
        assert got == interim
        sock.sendall(body)
        status, headers, _ = read_answer(sock)
    assert 400 <= status < 500 and headers.get("content-type", "").startswith("application/json")


def test_connections_that_close_slowly_hold_up_nobody(devices: services.FunctionServer) -> None:
    """A connection that is not kept alive is closed gracefully (a FIN, then what the client still sends read for up
    to 2 s): gunicorn waited for that in its event loop, so clients that kept their end open after the answer held
    up every other connection for 2 s each (attack run: fresh requests took 17-19 s)."""
    kept_open = [connect(devices) for _ in range(10)]
    try:
        for sock in kept_open:
            sock.settimeout(5)  # the answers took 14 s when the closes were waited for one after another
            sock.sendall(b"GET /devices/nowhere HTTP/1.0\r\n\r\n")
        assert [answer(sock)[0] for sock in kept_open] == [404] * 10  # answered, and never closed from this end
        assert health(devices) == 200
    finally:
        for sock in kept_open:
            sock.close()


def test_out_of_file_descriptors_the_worker_pauses_accepting_and_serves_the_rest(
    tmp_path: Path, stack_env: dict[str, str]
) -> None:
    """A function at its file limit neither ends its worker (it did, with every connection it held) nor spins on
    the connections waiting to be accepted: it stops accepting for ``ACCEPT_PAUSE_S`` at a time (it slept 50 ms in
    its event loop at each try, 20 tries a second), answers the connections it holds, and accepts again once
    descriptors are free."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the function's processes
    try:
        server = services.start_function("devices", services.free_port(), stack_env, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    log_file = tmp_path / "devices.log"
    clients: list[socket.socket] = []
    try:
        assert health(server) == 200
        clients = [connect(server) for _ in range(300)]  # past the limit: the rest wait in the listen backlog
        wait_for(lambda: "cannot accept a connection" in log_file.read_text(), what="the function ran out")
        before = log_file.read_text().count("cannot accept a connection")
        t0 = time.monotonic()
        time.sleep(2)
        held = clients[0]  # accepted before it ran out: served (so the worker that holds it did not end)
        held.sendall(b"GET /devices/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(held)[0] == 200
        tries = log_file.read_text().count("cannot accept a connection") - before
        assert tries <= (time.monotonic() - t0) / whole_requests.ACCEPT_PAUSE_S + 2, tries
        for sock in clients:
            sock.close()
        clients = []
        assert health(server) == 200  # accepting again
    finally:
        for sock in clients:
            sock.close()
        server.stop()
