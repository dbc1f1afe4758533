"""Requests the web server refuses, and bodies it cannot read, answered in the API's JSON error shape.

functions-framework serves each function through gunicorn, whose HTTP parser refuses a malformed request line, an
oversized or invalid header, a bad chunk or an unknown transfer coding itself, with an HTML page
(``gunicorn.util.write_error``), before Flask or our router ever see the request. Every other refusal of the API is
``{"error": {"code", "message", "request_id"}}``; so are these once :func:`answer_in_json` has run (the function's
``main.py`` runs it through ``lockwise.core.http.Api`` as it loads, in the master, before gunicorn forks a worker).
Behind Google's front end most of these never reach the instance; served anywhere else (the local stack, a
self-hosted deployment) they do.

A body the parser refuses only once it is read (a malformed chunk, a client gone mid-body) raises from the stream:
:data:`BODY_ERRORS` are those exceptions, which the router answers 400 ``malformed_body``. What a handler leaves of
a body stays unread (:func:`leave_rest_of_body`).
"""

from __future__ import annotations

import json
import socket
import uuid

import flask

from lockwise.core import errors

try:
    from gunicorn.http.errors import NoMoreData, ParseException
except ImportError:  # not served by gunicorn
    BODY_ERRORS: tuple[type[Exception], ...] = ()
else:
    BODY_ERRORS = (ParseException, NoMoreData)

#: gunicorn's statuses for a request it refuses -> our stable error codes
CODES = {
    400: "malformed_request",
    403: "forbidden",
    408: "request_timeout",
    413: "payload_too_large",
    414: "request_line_too_long",
    417: "expectation_failed",
    431: "header_fields_too_large",
    500: "internal",
    501: "unsupported_transfer_coding",
    503: "overloaded",
}
#: the parser's message quotes what it refused (the request line, a header): kept short
MESSAGE_MAX = 200


def error_response(status: int, reason: str, message: str) -> bytes:
    """The whole HTTP answer (status line, headers, JSON body) for a request gunicorn refused."""
    code = CODES.get(status, "bad_request" if 400 <= status < 500 else "internal")
    text = message[:MESSAGE_MAX] if message else reason
    if status == 500:  # (a 501 or 503 says what it refuses or why)
        text = "internal error; quote the request id when reporting it"
    # a 503 says when to try again, as the API's own do (``errors.Unavailable``): told nothing, a lock read a
    # missing ``Retry-After`` as 0 and tried again at once (a review of FIRMWARE.md against the code)
    err = errors.Unavailable(text, code=code) if status == 503 else errors.LockwiseError(text, code=code)
    body = json.dumps(errors.error_body(err, uuid.uuid4().hex), separators=(",", ":")).encode()
    reason = reason.encode("latin-1", "replace").decode("latin-1")
    extra = "".join(f"{name}: {value}\r\n" for name, value in err.headers().items())
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def answer_in_json() -> None:
    """Make gunicorn answer the requests it refuses as the API does (once per process; nothing without gunicorn)."""
    try:
        from gunicorn import util
    except ImportError:  # not served by gunicorn (Flask's test client, a platform without it)
        return
    if getattr(util.write_error, "lockwise_json", False):
        return

    def write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
        util.write_nonblock(sock, error_response(status_int, reason, mesg))

    write_error.lockwise_json = True  # type: ignore[attr-defined]
    util.write_error = write_error


def leave_rest_of_body(request: flask.Request) -> None:
    """Leave what the handler left of the body unread, and say it was read: functions-framework reads the whole
    body after every response, unbounded, into memory (a malformed chunk there was its text 500), and that read
    now finds nothing. The answer goes out at once; gunicorn then discards the rest (its own drain, capped for a
    connection kept alive) or closes the connection. (Reading the rest here first, up to 1 MiB, held the answer
    back until the client sent it: a refused request whose body never came got no answer at all. Attack run.)"""
    request._cached_data = b""  # werkzeug's Request.get_data returns this instead of reading the stream
