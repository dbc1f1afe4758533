"""The one error-to-HTTP mapping, request ids, and bounded body reads (no services needed)."""

from __future__ import annotations

import json
import logging

import flask
import pytest

from lockwise.core import errors
from lockwise.core.config import Settings
from lockwise.core.http import Api, Ctx, JsonBody, address_block


def make_api(max_body: int = 4096) -> Api:
    settings = Settings.from_env({"LOCKWISE_MAX_BODY_BYTES": str(max_body)})
    api = Api("unit", settings=lambda: settings)

    @api.route("POST", "/unit/echo")
    def echo(ctx: Ctx) -> JsonBody:
        return {"got": ctx.json(("a", "b"))}

    @api.route("GET", "/unit/items/<item_id>")
    def item(ctx: Ctx, item_id: str) -> JsonBody:
        if item_id == "missing":
            raise errors.NotFound("no such item", code="item_not_found")
        if item_id == "slow":
            raise errors.RateLimited("slow down", retry_after_s=30)
        if item_id == "boom":
            raise RuntimeError("SELECT secret FROM table")  # an unexpected failure with internals in it
        return {"id": item_id}

    return api


def call(api: Api, method: str, path: str, **kw: object) -> flask.Response:
    app = flask.Flask("unit")
    with app.test_request_context(path, method=method, **kw):
        return api(flask.request)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.BadRequest("x"), 400, "bad_request"),
        (errors.InvalidAudio("x"), 422, "invalid_audio"),
        (errors.PayloadTooLarge("x"), 413, "payload_too_large"),
        (errors.Unauthenticated("x"), 401, "unauthenticated"),
        (errors.Forbidden("x"), 403, "forbidden"),
        (errors.NotFound("x"), 404, "not_found"),
        (errors.Conflict("x"), 409, "conflict"),
        (errors.RateLimited("x", retry_after_s=3), 429, "rate_limited"),
        (errors.Unavailable("x"), 503, "unavailable"),
    ],
)
def test_each_error_maps_to_one_status_and_code(error: errors.LockwiseError, status: int, code: str) -> None:
    assert (error.status, error.code) == (status, code)
    api = Api("unit", settings=lambda: Settings.from_env({}))

    @api.route("GET", "/unit/raise")
    def raise_it(ctx: Ctx) -> JsonBody:
        raise error

    resp = call(api, "GET", "/unit/raise")  # what a client sees: the one mapping, in http.Api
    assert resp.status_code == status and json.loads(resp.get_data())["error"]["code"] == code


def test_domain_error_becomes_json_with_code_and_request_id() -> None:
    resp = call(make_api(), "GET", "/unit/items/missing")
    assert resp.status_code == 404
    body = json.loads(resp.get_data())
    rid = resp.headers["X-Request-Id"]
    assert body == {"error": {"code": "item_not_found", "message": "no such item", "request_id": rid}}


def test_rate_limit_sets_retry_after() -> None:
    resp = call(make_api(), "GET", "/unit/items/slow")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "30"


def test_every_503_says_when_to_try_again() -> None:
    api = Api("unit", settings=lambda: Settings.from_env({}))

    @api.route("GET", "/unit/busy")
    def busy(ctx: Ctx) -> JsonBody:
        raise errors.Unavailable("database is busy", code="database_busy")

    resp = call(api, "GET", "/unit/busy")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert json.loads(resp.get_data())["error"]["details"] == {"retry_after_s": 1}


def test_unexpected_exception_is_a_500_that_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        resp = call(make_api(), "GET", "/unit/items/boom")
    assert resp.status_code == 500
    text = resp.get_data(as_text=True)
    assert "SELECT" not in text and "RuntimeError" not in text
    assert json.loads(text)["error"]["code"] == "internal"
    assert any("unhandled" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path", ["/unit/items/" + "a" * 60_000, "/" + "\u200b" * 20_000])
def test_a_path_of_the_request_lines_length_is_not_logged_whole(caplog: pytest.LogCaptureFixture, path: str) -> None:
    """A path as long as the request line takes (64 KiB), sent without a credential, was written whole twice in its
    request's log line (``path`` and ``httpRequest.requestUrl``): 120 KB a request (attack run 106)."""
    from lockwise.core.log import JsonFormatter

    with caplog.at_level(logging.INFO):
        status = call(make_api(), "GET", path).status_code
    assert status in (200, 404)
    logged = [r for r in caplog.records if r.getMessage() == "request"]
    assert len(logged) == 1 and logged[0].fields["path"].startswith(path[:100])  # type: ignore[attr-defined]
    assert len(JsonFormatter("unit").format(logged[0])) < 4_000
    # nor in a 404's "request failed" line, whose message quoted 1,000 characters of it (6 KB escaped: attack run 110)
    assert max(len(JsonFormatter("unit").format(r)) for r in caplog.records) < 4_000


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/" + "\U0001f600" * 20_000),  # no route: 404
        ("DELETE", "/unit/items/" + "\U0001f600" * 20_000),  # a route's path, another method: 405
        ("GET", "/" + "\x1b" * 20_000),  # control characters (an ANSI escape's start)
    ],
)
def test_a_requests_log_is_bounded_in_bytes_whatever_characters_its_path_holds(
    capsys: pytest.CaptureFixture[str], method: str, path: str
) -> None:
    """The path was cut to 300 characters and an error's message to 1,000, but a character past ASCII is written
    as a 6- or 12-byte escape: an unauthenticated 404 for a path of emoji wrote 11.3 KB of log, a 405 (a route's
    path with another method, checked before any credential) 19 KB, whose message quoted the path whole (attack run
    120). Measured in the bytes the process writes to stdout."""
    from lockwise.core import log as lwlog

    lwlog.configure("unit")
    try:
        resp = call(make_api(), method, path)
        out = capsys.readouterr().out
    finally:
        logging.getLogger().handlers.clear()
    assert resp.status_code in (404, 405)
    assert len(resp.get_data()) < 5_000  # the 405's answer quoted the path whole too (11.7 KB)
    lines = out.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["request"]  # its error on it (attack run 130)
    assert json.loads(lines[0])["path"].startswith(path[:50])
    assert len(out.encode()) < 4_200  # 4,372-4,389 bytes in two lines before attack run 130


def test_a_refused_request_writes_one_line_with_its_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Attack run 130 (denial of wallet): each refusal wrote a line of its own (``request failed``) before the
    request's, so an unauthenticated 401 or 404 flood wrote two log entries a request, 832 bytes for a 404 of a short
    path, where an answered request writes one (Cloud Logging bills by volume, and each entry takes the platform's
    labels too). One line now, WARNING (a 5xx's ERROR), with the error's code and message: 543 bytes."""
    from lockwise.core import log as lwlog

    lwlog.configure("unit")
    try:
        refused = call(make_api(), "GET", "/nothing")
        answered = call(make_api(), "GET", "/unit/items/1")
        out = capsys.readouterr().out
    finally:
        logging.getLogger().handlers.clear()
    assert (refused.status_code, answered.status_code) == (404, 200)
    first, second = (json.loads(line) for line in out.splitlines())  # one line each
    assert (first["message"], first["severity"], first["status"]) == ("request", "WARNING", 404)
    assert first["code"] == "no_route"
    assert "no route for /nothing" in first["error"]
    assert (second["message"], second["severity"], second["status"]) == ("request", "INFO", 200)
    assert "code" not in second and "error" not in second
    assert len(out.encode()) < 1_100


def test_unknown_route_and_wrong_method_are_json_errors() -> None:
    api = make_api()
    assert json.loads(call(api, "GET", "/unit/nope").get_data())["error"]["code"] == "no_route"
    resp = call(api, "DELETE", "/unit/echo")
    assert resp.status_code == 405 and json.loads(resp.get_data())["error"]["code"] == "method_not_allowed"
    assert resp.headers["Allow"] == "POST"  # RFC 9110: a 405 names the methods the resource has


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_body"),
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "expected_object"),
        (b"\xff\xfe", "malformed_json"),
    ],
)
def test_bad_json_bodies_are_400_with_a_code(data: bytes, code: str) -> None:
    resp = call(make_api(), "POST", "/unit/echo", data=data, content_type="application/json")
    assert resp.status_code == 400
    assert json.loads(resp.get_data())["error"]["code"] == code


def test_a_field_the_route_does_not_take_is_refused_by_name() -> None:
    resp = call(make_api(), "POST", "/unit/echo", json={"a": 1, "bb": 2, "c": None})
    assert resp.status_code == 400
    error = json.loads(resp.get_data())["error"]
    assert error["code"] == "unknown_field" and error["details"] == {"fields": ["bb", "c"]}
    assert "'bb', 'c'" in error["message"] and "it takes a, b" in error["message"]
    assert json.loads(call(make_api(), "POST", "/unit/echo", json={"b": 2}).get_data()) == {"got": {"b": 2}}
    twice = call(make_api(), "POST", "/unit/echo", data=b'{"a": 1, "a": null}', content_type="application/json")
    error = json.loads(twice.get_data())["error"]
    assert twice.status_code == 400 and (error["code"], error["details"]) == ("duplicate_field", {"fields": ["a"]})


def test_a_query_or_body_a_route_does_not_take_is_refused_before_it_runs() -> None:
    """A query or body sent to a route that took none was ignored and the request carried out without it (attack
    run 58: a pairing code asked for with ``ttl_s``, a member list with ``limit``). Refused before the handler, which
    never runs; nothing and ``{}`` pass; a route that reads its own query (``query=None``) takes any."""
    api = Api("unit", settings=lambda: Settings.from_env({}))
    ran: list[str] = []

    @api.route("POST", "/unit/act", body=False)
    def act(ctx: Ctx) -> JsonBody:
        ran.append("act")
        return {}

    @api.route("GET", "/unit/list", query=("limit",))
    def listing(ctx: Ctx) -> JsonBody:
        ran.append("list")
        return {}

    @api.route("GET", "/unit/own", query=None)
    def own(ctx: Ctx) -> JsonBody:
        ran.append("own")
        return {}

    refused = [
        ("POST", "/unit/act", {"data": b'{"ttl_s": 999999}'}, "unknown_field"),
        ("POST", "/unit/act", {"data": b"\x00\x01garbage"}, "malformed_json"),
        ("POST", "/unit/act", {"data": b"[]"}, "expected_object"),
        ("POST", "/unit/act?x=1", {}, "unknown_field"),
        ("GET", "/unit/list?limit=1&page_token=z", {}, "unknown_field"),
        ("GET", "/unit/list?limit=1&limit=2", {}, "duplicate_field"),
        ("GET", "/unit/list", {"data": b'{"limit": 1}'}, "unknown_field"),  # a GET takes no body by default
    ]
    for method, path, kwargs, code in refused:
        resp = call(api, method, path, content_type="application/json", **kwargs)
        assert (resp.status_code, json.loads(resp.get_data())["error"]["code"]) == (400, code), (path, kwargs)
    assert ran == []
    for method, path, kwargs in (
        ("POST", "/unit/act", {}),
        ("POST", "/unit/act", {"data": b"{}"}),
        ("GET", "/unit/list?limit=1", {}),
        ("GET", "/unit/own?anything=1", {}),
    ):
        assert call(api, method, path, **kwargs).status_code == 200, (path, kwargs)
    assert ran == ["act", "act", "list", "own"]
    message = json.loads(call(api, "POST", "/unit/act", data=b'{"a": 1}').get_data())["error"]["message"]
    assert message.endswith("it takes none"), message


def test_a_route_checks_its_caller_before_its_path_query_and_body() -> None:
    """An app route answered a request without a token 400 for a field it does not take, or for a path parameter
    that is not text, before it read the token: a caller without an account learnt what each route takes. The
    caller (the ``Api``'s, or a route's own) is checked first, once a request (the handler reads it again through
    ``Ctx.once``); a route naming ``caller=None`` checks its own, as a lock's signed request does."""
    checked: list[str] = []

    def app_user(ctx: Ctx) -> str:
        def make() -> str:
            checked.append("token")
            if ctx.request.headers.get("Authorization") != "Bearer good":
                raise errors.Unauthenticated("missing bearer token", code="missing_token")
            return "alice"

        return ctx.once("user", make)

    api = Api("unit", settings=lambda: Settings.from_env({}), caller=app_user)

    @api.route("POST", "/unit/items/<item_id>/act", body=False)
    def act(ctx: Ctx, item_id: str) -> JsonBody:
        return {"user": app_user(ctx), "item": item_id}

    @api.route("GET", "/unit/lock", query=None, caller=None)
    def lock_route(ctx: Ctx) -> JsonBody:
        return {"anyone": True}

    for path, kwargs in (
        ("/unit/items/1/act?x=1", {}),
        ("/unit/items/1/act", {"data": b'{"ttl_s": 1}'}),
        ("/unit/items/%00/act", {}),
        ("/unit/items/1/act", {}),
    ):
        resp = call(api, "POST", path, content_type="application/json", **kwargs)
        assert (resp.status_code, json.loads(resp.get_data())["error"]["code"]) == (401, "missing_token"), path
    good = {"Authorization": "Bearer good"}
    wrong = call(api, "POST", "/unit/items/1/act?x=1", headers=good)
    assert (wrong.status_code, json.loads(wrong.get_data())["error"]["code"]) == (400, "unknown_field")
    checked.clear()
    done = call(api, "POST", "/unit/items/1/act", headers=good)
    assert (done.status_code, json.loads(done.get_data()), checked) == (200, {"user": "alice", "item": "1"}, ["token"])
    assert call(api, "GET", "/unit/lock?any=1").status_code == 200
    assert call(api, "GET", "/unit/nowhere").status_code == 404  # no route: no caller to check


def test_oversized_body_is_refused_before_it_is_read() -> None:
    resp = call(make_api(max_body=1024), "POST", "/unit/echo", data=b"x" * 5000, content_type="application/json")
    assert resp.status_code == 413
    assert json.loads(resp.get_data())["error"]["code"] == "payload_too_large"


def test_a_small_json_routes_body_is_refused_past_16_kib_whatever_the_setting() -> None:
    """A route taking a small JSON object (a name, a pairing) read up to the setting's 2 MB: a body of empty arrays
    took 0.35 s of CPU to parse, one nested 30 deep 0.9 s (attack run 125)."""
    api = make_api(max_body=2_000_000)
    arrays = b'{"a": [' + b",".join([b"[]"] * 10_000) + b"]}"  # 30 KB of valid JSON
    resp = call(api, "POST", "/unit/echo", data=arrays, content_type="application/json")
    assert resp.status_code == 413
    assert "16384 bytes" in json.loads(resp.get_data())["error"]["message"]
    within = b'{"a": [' + b",".join([b"[]"] * 4_000) + b"]}"  # 12 KB
    resp = call(api, "POST", "/unit/echo", data=within, content_type="application/json")
    assert resp.status_code == 200 and len(resp.get_json()["got"]["a"]) == 4_000


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", " GZIP ", "gzip, identity", "x-unknown"])
def test_a_body_with_a_content_coding_is_refused_not_read_as_if_plain(coding: str) -> None:
    """Bodies are taken as sent: a gzip body was read as the JSON or audio it is not, and a plain body labelled gzip
    was taken (attack run 13)."""

    def sent_with(content_coding: str) -> flask.Response:
        headers = {"Content-Encoding": content_coding}
        return call(make_api(), "POST", "/unit/echo", json={"a": 1}, headers=headers)

    resp = sent_with(coding)
    error = json.loads(resp.get_data())["error"]
    assert (resp.status_code, error["code"]) == (415, "unsupported_content_encoding")
    assert coding.strip().lower()[:10] in error["message"]
    assert [sent_with(none).status_code for none in ("", "identity", "Identity")] == [200, 200, 200]


def test_the_request_id_is_the_functions_own_and_what_the_caller_said_is_logged_beside_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Attack run 75: the caller's ``X-Request-Id`` was the request's id, so anyone could have their requests logged
    under another request's id (one a user quoted to support); the platform's trace header is the caller's to set
    too."""
    from lockwise.core import log as lwlog

    lwlog.configure("unit-test")
    headers = {"X-Request-Id": "chosen", "X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/1;o=1"}
    resp = call(make_api(), "GET", "/unit/items/missing", headers=headers)
    rid = resp.headers["X-Request-Id"]
    assert len(rid) == 32 and rid not in ("chosen", "105445aa7843bc8bf206b12000100000")
    assert json.loads(resp.get_data())["error"]["request_id"] == rid
    [request] = [r for r in map(json.loads, capsys.readouterr().out.splitlines()) if r["message"] == "request"]
    assert request["request_id"] == rid
    assert request["callers_request_id"] == "chosen"
    assert request["trace_id"] == "105445aa7843bc8bf206b12000100000"
    logging.getLogger().handlers.clear()


def test_request_id_is_generated_when_absent_or_unsafe() -> None:
    resp = call(make_api(), "POST", "/unit/echo", json={"a": 1}, headers={"X-Request-Id": "bad id; with <html>"})
    assert resp.status_code == 200
    rid = resp.headers["X-Request-Id"]
    assert len(rid) == 32 and " " not in rid


def test_a_request_gunicorn_refuses_is_answered_in_the_api_error_shape() -> None:
    """The unit half of tests/integration/test_bundles_serve.py's raw-socket test: the bytes gunicorn now writes."""
    from gunicorn import util

    from lockwise.core import server_errors

    server_errors.answer_in_json()  # idempotent; Api() ran it already
    assert getattr(util.write_error, "lockwise_json", False)
    head, _, body = server_errors.error_response(431, "Request Header Fields Too Large", "x" * 999).partition(
        b"\r\n\r\n"
    )
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert "Content-Type: application/json" in lines and f"Content-Length: {len(body)}" in lines
    assert "Cache-Control: no-store" in lines and "X-Content-Type-Options: nosniff" in lines
    error = json.loads(body)["error"]
    assert error["code"] == "header_fields_too_large" and error["message"] == "x" * server_errors.MESSAGE_MAX
    internal = json.loads(server_errors.error_response(500, "Internal Server Error", "").partition(b"\r\n\r\n")[2])
    assert internal["error"]["code"] == "internal" and "request id" in internal["error"]["message"]
    assert not any(line.startswith("Retry-After") for line in lines)
    # the event loop's 503 (too many bytes held) says when to try again, as every 503 of the API does
    head, _, body = server_errors.error_response(503, "Service Unavailable", "busy").partition(b"\r\n\r\n")
    assert "Retry-After: 1" in head.decode("latin-1").split("\r\n")
    assert json.loads(body)["error"] | {"request_id": ""} == {
        "code": "overloaded",
        "message": "busy",
        "details": {"retry_after_s": 1},
        "request_id": "",
    }


@pytest.mark.parametrize(
    ("address", "block"),
    [
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("203.0.113.7", "203.0.113.7"),
        ("unknown", "unknown"),
        ("fe80::1%eth0", "fe80::/64"),
        ("64:ff9b::203.0.113.7", "203.0.113.7"),  # NAT64
        ("::ffff:0:203.0.113.7", "203.0.113.7"),  # SIIT
        ("::203.0.113.7", "203.0.113.7"),  # IPv4-compatible
        ("2002:cb00:7107::1", "203.0.113.7"),  # 6to4
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),  # Teredo: the client's address
        ("203.0.113.7:5678", "203.0.113.7"),
        ("[2001:db8:1:2::9]:443", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
    ],
)
def test_a_limit_per_caller_counts_an_ipv6_address_by_its_64_and_an_ipv4_one_by_itself(
    address: str, block: str
) -> None:
    assert address_block(address) == block
