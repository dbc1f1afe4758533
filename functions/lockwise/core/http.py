"""HTTP plumbing shared by the functions: routing, request ids, bounded body reads, JSON responses.

Every handler runs inside ``Api.__call__``, the one place where ``LockwiseError`` becomes an HTTP response and any
other exception becomes a logged 500 that reveals nothing but the request id.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, TypeVar

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WzMethodNotAllowed
from werkzeug.exceptions import NotFound as WzNotFound
from werkzeug.routing import Map, Rule

from lockwise.core import auth, errors, inputs, preconditions, server_errors, whole_requests
from lockwise.core.config import Settings, get_settings
from lockwise.core.headers import SERVICE_TOKEN_HEADER
from lockwise.core.log import event, request_id_var

log = logging.getLogger("lockwise.core.http")

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

JsonBody = dict[str, Any]
Result = flask.Response | tuple[JsonBody | list[Any], int] | JsonBody
Handler = Callable[..., Result]
#: who may call a route, checked before anything else of its request (raises ``Unauthenticated`` and the like)
Caller = Callable[["Ctx"], object]
T = TypeVar("T")

#: the most a route that takes no body reads of one (to tell ``{}`` from anything else)
_NO_BODY_READ = 1024
#: the most a route that takes a small JSON object reads of its body (``Ctx.json`` without a limit of its own: a
#: name, a member's terms, a pairing's code, key and CSR of at most 4,096 characters; a lock's renewal reads as much).
#: At the 2 MB of ``LOCKWISE_MAX_BODY_BYTES``, a body of empty arrays or objects, valid JSON, took 0.35 s of CPU to
#: parse and walk and one of arrays nested 30 deep 0.9 s, each request of an anonymous caller pairing (attack run
#: 125); at this limit 7 ms at most
JSON_BODY_BYTES = 16_384
#: every answer's ``Cache-Control`` but the routes' that name their own
NO_STORE = "no-store"
#: the most of a request's path its log line quotes (a route's longest path is under 200 characters)
PATH_LOGGED = 300


def _quoted_path(path: str) -> str:
    """``path`` as a log line or an error message quotes it: its first ``PATH_LOGGED`` characters."""
    return path if len(path) <= PATH_LOGGED else path[:PATH_LOGGED] + "..."


@dataclass(frozen=True)
class _Route:
    handler: Handler
    query: Collection[str] | None  # the query parameters it takes (checked before it runs); None: its own to read
    body: bool  # it takes a body (False: one other than nothing or ``{}`` is refused before it runs)
    caller: Caller | None  # who may call it, checked first; None: its handler checks (or anyone may)


@dataclass(frozen=True)
class Ctx:
    """What a route handler gets besides its path parameters."""

    request: flask.Request
    request_id: str
    settings: Settings
    _once: dict[str, Any] = field(default_factory=dict, repr=False)

    def once(self, key: str, make: Callable[[], T]) -> T:
        """``make()``'s value, made once a request under ``key`` (the caller, which the router checks first and the
        handler reads again)."""
        if key not in self._once:
            self._once[key] = make()
        value: T = self._once[key]
        return value

    @property
    def target(self) -> str:
        """The request target a lock signs: the path, and ``?query`` when there is one."""
        query = self.request.query_string.decode("latin-1")
        return self.request.path + (f"?{query}" if query else "")

    def query(self, fields: Collection[str]) -> dict[str, str]:
        """The query's parameters, each at most once and each one of ``fields`` (400 ``unknown_field``,
        ``duplicate_field``): a misspelt ``sample_rate`` would have the clip decoded at another rate."""
        try:
            pairs = list(self.request.args.items(multi=True))
        except UnicodeDecodeError as exc:  # gunicorn refuses such a request line first; a test client does not
            raise errors.BadRequest("the query is not UTF-8", code="invalid_text") from exc
        return inputs.only_fields(inputs.unique_fields(pairs, "the query"), fields, "the query")

    def body(self, limit: int | None = None) -> bytes:
        """The raw body, refused with 413 before it is read whole when over ``limit`` (default: the setting)."""
        return read_body(self.request, limit or self.settings.max_body_bytes)

    def json(
        self,
        fields: Collection[str] | None,
        limit: int | None = None,
        *,
        check_strings: bool = True,
        most_values: int | None = inputs.MAX_JSON_VALUES,
    ) -> JsonBody:
        """The body as a JSON object of at most ``fields`` (400 ``malformed_json``, ``expected_object``,
        ``unknown_field`` otherwise). ``None`` takes any field: for routes that check their fields themselves and for
        the bodies whose refusal would do harm (a lock's, the relay's) or break a contract (the original design's,
        whose Pydantic models ignored what they did not name). ``check_strings=False``: the route checks each
        string's text itself (``inputs.check_text``), item by item (``inputs.loads``). Without a ``limit``, 413 past
        ``JSON_BODY_BYTES`` (or the setting, when lower). ``most_values``: ``inputs.loads``'s."""
        read = limit or min(self.settings.max_body_bytes, JSON_BODY_BYTES)
        return parse_json_object(self.body(read), fields, check_strings=check_strings, most_values=most_values)

    @property
    def client_address(self) -> str:
        """The caller's address: ``settings.trusted_proxy_hops`` entries from the right of X-Forwarded-For (what
        the platform's own proxies appended; whatever the client wrote further left is not trusted)."""
        hops = self.settings.trusted_proxy_hops
        forwarded = [a.strip() for a in self.request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
        if hops and len(forwarded) >= hops:
            return forwarded[-hops][:64]
        return str(self.request.remote_addr or "unknown")[:64]

    @property
    def client_network(self) -> str:
        """What a limit per caller counts by: ``client_address``'s block (``address_block``), an IPv6 address's /64,
        which one subscriber holds whole (a client taking a new address of its /64 for each wrong pairing code added
        a row an address and was never limited: attack run 32)."""
        return address_block(self.client_address)

    def service_token(self) -> str:
        """The trusted caller's secret, in ``X-LockWise-Service-Token`` (``Authorization`` stays free for the
        platform's IAM identity token in front of internal services)."""
        token = self.request.headers.get(SERVICE_TOKEN_HEADER, "").strip()
        if not token:
            raise errors.Unauthenticated(f"missing {SERVICE_TOKEN_HEADER}", code="missing_service_token")
        return token

    def is_service(self, expected: str | None) -> bool:
        """Whether the request presents the trusted callers' secret (``service_token``), refusing nothing when it does
        not: for what such a caller is shown more of."""
        return auth.holds_service_token(self.request.headers.get(SERVICE_TOKEN_HEADER, "").strip(), expected)

    def unmodified_since(self) -> dt.datetime | None:
        """The request's ``If-Unmodified-Since`` (``lockwise.core.preconditions``), None when it sent none; 400
        ``invalid_if_unmodified_since`` when it is no HTTP date."""
        return preconditions.unmodified_since(self.request.headers.get(preconditions.HEADER))

    def bearer_token(self) -> str:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthenticated("missing bearer token", code="missing_token")
        return token.strip()


def address_block(address: str) -> str:
    """``address``'s block as ``Ctx.client_network`` counts it: ``2001:db8:1:2::/64`` for any address of that /64;
    an IPv4 client's own address whatever IPv6 form carries it (mapped, compatible, SIIT, the NAT64 well-known
    prefix, 6to4, Teredo: they made every IPv4 client behind one translator a single /64, attack run 33); a port a
    proxy wrote after it (``203.0.113.7:5678``, ``[2001:db8::1]:443``) left out (each port was counted apart)."""
    host = address.strip()
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    carried = _carried_ipv4(ip)
    if carried is not None:
        return str(carried)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))  # without a zone id


#: IPv6 prefixes of 96 bits whose last 32 carry an IPv4 client: the NAT64 well-known prefix (RFC 6052), SIIT's
#: translated form (RFC 6145), IPv4-compatible addresses (deprecated, RFC 4291; ``::`` and ``::1`` are not)
_IPV4_CARRIERS = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if it carries one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's, not the server's
    if ip.sixtofour is not None:
        return ip.sixtofour
    plain = ipaddress.IPv6Address(int(ip))  # without a zone id
    if any(plain in n for n in _IPV4_CARRIERS) and int(plain) > 1:
        return ipaddress.IPv4Address(int(plain) & 0xFFFFFFFF)
    return None


def read_body(request: flask.Request, limit: int) -> bytes:
    """The body as sent, at most ``limit`` bytes. One sent with a ``Content-Encoding`` is refused, 415 naming it: a
    body is never decoded here, and a gzip body was read as the raw audio or JSON it is not (a plain one labelled
    gzip was taken: attack run 13; RFC 9110 section 8.4.1)."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise errors.UnsupportedMediaType(
            f"Content-Encoding {coding[:40]!r} is not supported: send the body uncompressed",
            code="unsupported_content_encoding",
        )
    length = request.content_length
    if length is not None and length > limit:
        raise errors.PayloadTooLarge(f"body of {length} bytes exceeds the limit of {limit} bytes")
    try:
        data: bytes = request.stream.read(limit + 1)
    except server_errors.BODY_ERRORS as exc:  # a malformed chunk, a client gone before its Content-Length
        raise errors.BadRequest(f"the request body could not be read: {exc}"[:200], code="malformed_body") from exc
    if len(data) > limit:
        raise errors.PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
    if length is not None and len(data) < length:  # the client stopped sending (half-closed) before its
        # Content-Length: gunicorn's reader returns what came without an error, and the part was carried out as the
        # whole (attack run 58: 19 of 5,000 bytes, an unlock)
        raise errors.BadRequest(
            f"the request body ended after {len(data)} of its Content-Length's {length} bytes", code="malformed_body"
        )
    return data


def parse_json_object(
    raw: bytes,
    fields: Collection[str] | None,
    *,
    check_strings: bool = True,
    most_values: int | None = inputs.MAX_JSON_VALUES,
) -> JsonBody:
    if not raw:
        raise errors.BadRequest("request body is empty; a JSON object is expected", code="empty_body")
    # nesting, count, number and text limits: one boundary for every JSON body
    value = inputs.loads(raw, check_strings=check_strings, most_values=most_values)
    if not isinstance(value, dict):
        raise errors.BadRequest("body must be a JSON object", code="expected_object")
    return value if fields is None else inputs.only_fields(value, fields)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(
        # NaN and Infinity are not JSON (RFC 8259): a value that reaches here is a bug, answered as one (a 500),
        # never a body a client's parser refuses
        json.dumps(body, separators=(",", ":"), default=str, allow_nan=False),
        status=status,
        mimetype="application/json",
        headers=headers,
    )


def _request_id(request: flask.Request) -> tuple[str, str | None, str | None]:
    """The request's id, always a new one, and what the caller said of it, for the request's log line: its own
    ``X-Request-Id`` and the trace id of ``X-Cloud-Trace-Context`` (which Google's front end passes on as the caller
    sent it, or makes). The caller's id was the request's when it gave one, so anyone could have their requests
    logged under an id another request had, one a user quoted to support say (attack run 75); the trace header is the
    caller's to choose as well."""
    given = request.headers.get("X-Request-Id", "")
    trace = request.headers.get("X-Cloud-Trace-Context", "").split("/", 1)[0]
    return (
        uuid.uuid4().hex,
        given if _REQUEST_ID_RE.fullmatch(given) else None,
        trace if _REQUEST_ID_RE.fullmatch(trace) else None,
    )


class Api:
    """A small router over werkzeug's URL map; one instance per function."""

    def __init__(
        self, service: str, settings: Callable[[], Settings] | None = None, *, caller: Caller | None = None
    ) -> None:
        """``caller``: who may call a route that does not name its own (``route``)."""
        self.service = service
        self._caller = caller
        self._settings = settings or (lambda: get_settings(service))
        self._map = Map(strict_slashes=False, merge_slashes=False)
        self._routes: dict[str, _Route] = {}
        if flask.has_app_context():  # loaded by functions-framework: its own routes' errors answer as ours do
            flask.current_app.register_error_handler(HTTPException, self._platform_error)
            self._take_static_route(flask.current_app)
        server_errors.answer_in_json()  # and so do the requests its web server refuses before Flask sees them
        whole_requests.serve_whole_requests()  # and a slow client holds none of its threads

    def _take_static_route(self, app: flask.Flask) -> None:
        """Flask's own ``/static/<path:filename>`` rule, which functions-framework's app keeps and matches before the
        function's routes, answered by our router (404 ``no_route``): it served a ``static`` folder of the working
        directory to anyone, and OPTIONS on it was an empty 200 (attack run 88)."""
        if "static" not in app.view_functions:
            return
        for rule in app.url_map.iter_rules("static"):
            rule.provide_automatic_options = False  # type: ignore[attr-defined]  # (set by Flask) OPTIONS to the view below
        app.view_functions["static"] = lambda **_: self(flask.request)

    def _platform_error(self, exc: HTTPException) -> flask.Response:
        """A request functions-framework's routes refuse before our function runs (a path its ``<path:path>`` rule
        does not match, such as one holding a newline, or ``/robots.txt``): answered by our router, as JSON."""
        return self(flask.request)

    def route(
        self,
        method: str,
        path: str,
        *,
        query: Collection[str] | None = (),
        body: bool | None = None,
        caller: Caller | None | EllipsisType = ...,
    ) -> Callable[[Handler], Handler]:
        """Register a handler. ``query``: the query parameters it takes, any other refused (400 ``unknown_field``)
        before it runs; None for a handler that reads the query itself (``Ctx.query``) or takes any (a lock's or
        the relay's request, whose refusal would do harm; the original design's, whose FastAPI ignored them; health
        checks). ``body``: whether it takes a body (by default all but GET and DELETE do); one that does not
        refuses any but an empty one or ``{}`` before it runs. A query or body sent to a route that took none was
        ignored and the request carried out without it (attack run 58: a pairing code asked for with ``ttl_s``).
        ``caller``: who may call it (the ``Api``'s by default; None: its handler checks, as a lock's signed request
        does over its body, or anyone may), checked before its path parameters, query and body: a request without a
        valid token is 401, whatever else is wrong with it (it was 400 for an unknown field, which told a caller
        without an account what each route takes)."""

        def register(fn: Handler) -> Handler:
            endpoint = f"{method} {path}"
            self._map.add(Rule(path, methods=[method], endpoint=endpoint))
            takes_body = method not in ("GET", "DELETE") if body is None else body
            checked = self._caller if isinstance(caller, EllipsisType) else caller
            self._routes[endpoint] = _Route(fn, query, takes_body, checked)
            return fn

        return register

    def __call__(self, request: flask.Request) -> flask.Response:
        """Answer ``request`` in a context of its own: what it sets (its id, the session it acts for:
        ``lockwise.core.audit``) ends with it, and is not the next request's on the same thread."""
        return contextvars.copy_context().run(self._answer, request)

    def _answer(self, request: flask.Request) -> flask.Response:
        request_id, callers_id, trace_id = _request_id(request)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        refused: dict[str, Any] = {}  # the error answered, for the request's line (``_dispatch``)
        try:
            response = self._dispatch(request, request_id, refused)
            server_errors.leave_rest_of_body(request)
            status = response.status_code
            response.headers["X-Request-Id"] = request_id
            # no cache keeps an answer unless its route says so (the CRL): Firebase Hosting's CDN keeps a function's
            # 404 for ten minutes unless the answer says otherwise (its manage-cache page), so a lock's URL asked
            # for before the lock was shared could still be "not found" from the CDN after; and an answer naming
            # a user's locks or members is for no browser's or proxy's cache
            response.headers.setdefault("Cache-Control", NO_STORE)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            return response
        finally:
            # the path cut to its first characters: whole, a path of the request line's 64 KiB was written twice in
            # the line of each request, 120 KB a request, sent without a credential (attack run 106)
            path = _quoted_path(request.path)
            # one line a request, a refused one's error on it (WARNING, a 5xx's ERROR): a line of its own for the
            # error made each refusal two, an unauthenticated 401 or 404 flood's log twice the lines and ~1.6 times
            # the bytes (attack run 130, denial of wallet: Cloud Logging bills by volume)
            level = logging.ERROR if status >= 500 else logging.WARNING if refused else logging.INFO
            event(
                log,
                "request",
                level=level,
                **refused,
                service=self.service,
                method=request.method,
                path=path,
                status=status,
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
                httpRequest={"requestMethod": request.method, "requestUrl": path, "status": status},
                callers_request_id=callers_id,
                trace_id=trace_id,
            )
            request_id_var.reset(token)

    def _dispatch(self, request: flask.Request, request_id: str, refused: dict[str, Any]) -> flask.Response:
        """The answer to ``request``; an error's code and message put in ``refused`` for the request's line."""
        try:
            adapter = self._map.bind("localhost")
            try:
                endpoint, params = adapter.match(request.path, method=request.method)
            except WzNotFound as exc:
                raise errors.NotFound(f"no route for {_quoted_path(request.path)}", code="no_route") from exc
            except WzMethodNotAllowed as exc:
                allowed = sorted(set(exc.valid_methods or ()) - {"HEAD", "OPTIONS"})
                raise errors.MethodNotAllowed(
                    f"{request.method} is not allowed on {_quoted_path(request.path)}", allowed=allowed
                ) from exc
            ctx = Ctx(request=request, request_id=request_id, settings=self._settings())
            route = self._routes[str(endpoint)]
            if route.caller is not None:
                route.caller(ctx)
            for name, value in params.items():  # path parameters cross the same input boundary as bodies
                inputs.check_text(value, name)
            if route.query is not None:
                ctx.query(route.query)
            if not route.body:
                _no_body(ctx)
            return _to_response(route.handler(ctx, **params))
        except errors.LockwiseError as err:
            refused.update(code=err.code, error=err.message)
            return json_response(errors.error_body(err, request_id), err.status, err.headers())
        except Exception:
            log.exception("unhandled error")
            internal = errors.LockwiseError("internal error; quote the request id when reporting it")
            return json_response(errors.error_body(internal, request_id), 500)


def _no_body(ctx: Ctx) -> None:
    """400 for a body sent to a route that takes none: nothing and ``{}`` (what some clients send with every POST)
    pass."""
    raw = ctx.body(_NO_BODY_READ)
    if raw:
        parse_json_object(raw, ())


def _to_response(result: Result) -> flask.Response:
    if isinstance(result, flask.Response):
        return result
    if isinstance(result, tuple):
        body, status = result
        return json_response(body, status)
    return json_response(result)
