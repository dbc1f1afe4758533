"""Each function's health endpoint and the authenticated ``/devices/me`` through functions-framework."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import ANY
from urllib.parse import urlsplit, urlunsplit

import pytest

from infra.local import services
from lockwise.core.config import get_settings
from lockwise.core.db import Connection, Database
from lockwise.core.runtime import get_runtime
from tests import tcp_cut
from tests.devices_world import sign_in, verify_email
from tests.tcp_cut import TcpCut
from tests.waiting import wait_for


def trusted(stack_env: dict[str, str]) -> dict[str, str]:
    """The headers of a trusted caller (the service token), shown a health report whole."""
    return {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}


@pytest.mark.parametrize("name", ["embed", "verify", "devices"])
def test_health_reports_version_and_dependencies(make_client: Any, name: str, stack_env: dict[str, str]) -> None:
    resp = make_client(name).get(f"/{name}/health", headers=trusted(stack_env))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["service"] == name and body["status"] == "ok"
    assert body["release"] and body["version"]
    assert body["checks"]["database"]["ok"] and body["checks"]["firestore"]["ok"]
    # embed's voice activity model, its session made by the probe (an unusable graph would answer 503 here, not
    # a 500 at the first enrollment)
    if name == "embed":
        assert (
            body["checks"]["voice_activity"]["ok"] and body["checks"]["voice_activity"]["package"] == "silero-vad 6.2.3"
        )
    else:
        assert "voice_activity" not in body["checks"]


@pytest.mark.parametrize("name", ["embed", "verify", "devices"])
def test_health_shows_anyone_whether_it_serves_and_only_trusted_callers_what_it_runs(
    make_client: Any, name: str, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The health routes take no credential, and they showed anyone the release and code version running, the
    schema's migration and which dependency was down: what a caller timing an attack reads (left open since attack
    run 85). Anyone is told whether the function serves, by its status code too; the service token is shown the
    rest, and a wrong one is anyone."""
    client = make_client(name)
    for headers in ({}, {"X-LockWise-Service-Token": "not-" + stack_env["LOCKWISE_SERVICE_TOKEN"]}):
        resp = client.get(f"/{name}/health", headers=headers)
        assert (resp.status_code, resp.get_json()) == (200, {"service": name, "status": "ok", "age_s": ANY}), headers
    assert set(client.get(f"/{name}/health", headers=trusted(stack_env)).get_json()) > {"release", "checks"}
    monkeypatch.setenv("DATABASE_URL", f"postgresql://x:y@127.0.0.1:{services.free_port()}/none")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    down = make_client(name).get(f"/{name}/health")
    assert (down.status_code, down.get_json()) == (503, {"service": name, "status": "degraded", "age_s": ANY})
    get_runtime.cache_clear()  # its degraded report is not the next test's


@pytest.mark.parametrize("name", ["embed", "verify", "devices"])
def test_health_is_degraded_while_the_database_lacks_a_migration_of_this_code(
    make_client: Any, name: str, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance deployed ahead of the migration job failed on what the schema lacked while its health said ok
    (attack run 62). Its health names the migration the database is at, and is 503 ``schema_behind`` while the code
    was bundled with a later one."""
    from lockwise.core import migrate

    healthy = make_client(name).get(f"/{name}/health", headers=trusted(stack_env)).get_json()["checks"]["database"]
    assert healthy["ok"] and healthy["migration"] == max(migrate.bundled_versions()) > 60
    ahead = migrate.bundled_versions() | {10_000}  # this code, a release ahead of the database
    monkeypatch.setattr(migrate, "bundled_versions", lambda: ahead)
    get_runtime.cache_clear()
    resp = make_client(name).get(f"/{name}/health", headers=trusted(stack_env))
    assert resp.status_code == 503, resp.get_json()
    assert (resp.get_json()["checks"]["database"]["ok"], resp.get_json()["checks"]["database"]["error"]) == (
        False,
        "schema_behind",
    )
    get_runtime.cache_clear()  # its degraded report is not the next test's


def test_health_is_degraded_when_the_database_is_down(
    make_client: Any, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://x:y@127.0.0.1:{services.free_port()}/none")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    resp = make_client("devices").get("/devices/health", headers=trusted(stack_env))
    # and for the operators, in the logs: what is down
    logged = [r for r in caplog.records if r.getMessage() == "health degraded"]
    assert logged and logged[0].fields["checks"]["database"]["error"] == "database_unavailable"  # type: ignore[attr-defined]
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == {
        "ok": False,
        "error": "database_unavailable",
        "latency_ms": pytest.approx(body["checks"]["database"]["latency_ms"]),
    }


@pytest.mark.parametrize("name", ["embed", "verify", "devices"])
def test_no_answer_is_for_a_cache_to_keep_but_the_crls(stack_env: Any, name: str) -> None:
    """Firebase Hosting's CDN, in front of the functions at the production base URL, keeps a function's 404 for ten
    minutes when the answer does not say otherwise, and a browser or proxy may keep any answer that does not: every
    answer says ``no-store`` (a found one, a refusal before the function runs, a 401, 404, 405), and is not to be
    sniffed as anything but its type. The lock CA's public CRL keeps its own 30 s."""
    import functions_framework

    from tests.conftest import REPO

    app = functions_framework.create_app(target=name, source=str(REPO / "functions" / name / "main.py"))  # type: ignore[no-untyped-call]
    client = app.test_client()
    answers = {
        "health": client.get(f"/{name}/health"),
        "no route": client.get(f"/{name}/no-such-route"),
        "platform's refusal": client.get("/robots.txt"),
        "method": client.delete(f"/{name}/health"),
        "no token": client.get("/embed/enrollment" if name == "embed" else "/devices/me"),
    }
    assert {what: resp.status_code for what, resp in answers.items()} == {
        "health": 200,
        "no route": 404,
        "platform's refusal": 404,
        "method": 405,
        "no token": 401 if name != "verify" else 404,
    }
    for what, resp in answers.items():
        assert resp.headers.get("Cache-Control") == "no-store", what
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", what
    if name == "devices":
        crl = client.get("/devices/lock-ca/crl")
        assert crl.status_code == 200 and crl.headers["Cache-Control"] == "max-age=30"


def test_me_requires_a_token(make_client: Any) -> None:
    client = make_client("devices")
    resp = client.get("/devices/me")
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "missing_token"
    resp = client.get("/devices/me", headers={"Authorization": "Bearer garbage"})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_token"


def test_an_unauthenticated_body_of_megabytes_is_not_echoed_back_or_logged_whole(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A name of 1.5 MB above a NUL character, sent to the pairing route (which takes no credential): its 400 quoted
    the path to the character, that name whole, and so did the request's log line (attack run 94). The route now
    reads 16 KiB at most (attack run 125): a name of 15,000 characters is the largest refused so, 1.5 MB is 413."""
    from lockwise.core.log import JsonFormatter

    devices = make_client("devices")
    large = devices.post(
        "/devices/provision", data=json.dumps({"A" * 1_500_000: {"code": "\u0000"}}), content_type="application/json"
    )
    assert large.status_code == 413 and len(large.get_data()) < 2_000
    body = json.dumps({"A" * 15_000: {"code": "\u0000"}})
    with caplog.at_level(logging.INFO):
        resp = devices.post("/devices/provision", data=body, content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_text"
    assert len(resp.get_data()) < 2_000
    lines = [JsonFormatter("devices").format(r) for r in caplog.records]
    assert any(json.loads(line).get("code") == "invalid_text" for line in lines)  # the request's line (attack run 130)
    assert max(len(line) for line in lines) < 4_000


def test_me_records_the_user_in_postgres(make_client: Any, sign_up: Any, stack_env: dict[str, str]) -> None:
    """The user's row, and their address once their token says it is verified (an unverified one is anyone's)."""
    devices = make_client("devices")
    account = sign_up(email="me@example.com")
    resp = devices.get("/devices/me", headers={"Authorization": f"Bearer {account['idToken']}"})
    assert resp.status_code == 200
    assert resp.get_json() == {"uid": account["localId"], "email": "me@example.com"}

    def recorded() -> Any:
        with get_runtime("devices").db.connection() as con:
            return con.run("SELECT email FROM users WHERE uid = :u", u=account["localId"])

    assert recorded() == [[None]]
    host = stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    verify_email(host, stack_env["LOCKWISE_PROJECT_ID"], account["localId"])
    verified = sign_in(host, "me@example.com")
    assert devices.get("/devices/me", headers={"Authorization": f"Bearer {verified['idToken']}"}).status_code == 200
    assert recorded() == [["me@example.com"]]


@pytest.mark.parametrize("name", ["embed", "verify", "devices"])
def test_every_refusal_is_the_json_error_body_even_before_the_function_runs(stack_env: Any, name: str) -> None:
    """functions-framework's own routes refuse some paths before our function sees them (a newline in a segment
    does not match its ``<path:path>`` rule; it answers /robots.txt itself): those too get the JSON error body with
    a request id, never Flask's HTML page. A 405 names the allowed methods."""
    import functions_framework

    from tests.conftest import REPO

    app = functions_framework.create_app(target=name, source=str(REPO / "functions" / name / "main.py"))  # type: ignore[no-untyped-call]
    client = app.test_client()
    for path in (f"/{name}/%0A/x", "/%0A", f"/{name}/health%0A", "/robots.txt", "/favicon.ico", f"/{name}/a%0Ab/c"):
        resp = client.get(path)
        assert resp.status_code in (401, 404), (path, resp.status_code)
        assert resp.content_type == "application/json", (path, resp.get_data()[:80])
        error = resp.get_json()["error"]
        assert error["code"] and error["request_id"] == resp.headers["X-Request-Id"], path
    refused = client.delete(f"/{name}/health")
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET"
    assert refused.get_json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("name", ["embed", "verify", "devices"])
def test_flasks_own_static_route_is_ours_too(
    stack_env: Any, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 88: functions-framework's Flask app keeps Flask's ``/static/<path:filename>`` rule, matched before
    the function's routes: OPTIONS on it answered 200 with an empty HTML body, and a ``static`` folder in the
    working directory was served to anyone, no caller checked. Our router answers it, as any path it has no route
    for."""
    import functions_framework

    from tests.conftest import REPO

    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "leak.txt").write_text("a file nobody serves")
    monkeypatch.chdir(tmp_path)  # where Flask looks for its static folder
    app = functions_framework.create_app(target=name, source=str(REPO / "functions" / name / "main.py"))  # type: ignore[no-untyped-call]
    client = app.test_client()
    for method in ("GET", "HEAD", "OPTIONS"):
        resp = client.open("/static/leak.txt", method=method)
        assert (resp.status_code, resp.content_type) == (404, "application/json"), (method, resp.get_data()[:80])
        assert b"nobody serves" not in resp.get_data()


def test_database_connections_send_each_statement_at_once(stack_env: dict[str, str]) -> None:
    """TCP_NODELAY on every PostgreSQL socket (pg8000 leaves Nagle on): without it a statement with a large parameter
    waited ~40 ms for the server's delayed ACK. The connection still works (and carries the host for TLS)."""
    import socket

    db = Database(stack_env["DATABASE_URL"])
    try:
        with db.connection() as con:
            assert con.run("SELECT length(CAST(:b AS bytea))", b=b"x" * 20_000) == [[20_000]]
            raw = con._usock  # type: ignore[attr-defined]  # pg8000's socket under its buffered file
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        db.close()


def test_database_connections_without_tls_skip_pg8000s_tls_probe(
    stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg8000's default builds a TLS context (loading the system CAs, ~30 ms) and asks the server for TLS on every
    connection; a URL without ``sslmode=require`` must not, and one with it gets TLS (this server has none: refused)."""
    import ssl

    from lockwise.core import errors

    def no_context(*_a: object, **_k: object) -> ssl.SSLContext:
        raise AssertionError("a TLS context was built for a connection without TLS")

    plain = Database(stack_env["DATABASE_URL"])
    try:
        with monkeypatch.context() as patched:
            patched.setattr(ssl, "create_default_context", no_context)
            with plain.connection() as con:  # a new connection, built under the patch
                assert con.run("SELECT 1") == [[1]]
    finally:
        plain.close()
    url = stack_env["DATABASE_URL"]
    tls = Database(url + ("&" if "?" in url else "?") + "sslmode=require")
    with pytest.raises(errors.Unavailable):
        tls.connect()  # asked for TLS, and this server offers none: no silent fallback to the clear


def test_a_refused_request_gives_its_connection_back_to_the_pool(stack_env: dict[str, str]) -> None:
    """A 4xx raised while a connection is borrowed, or a statement PostgreSQL refused, leaves the connection in the
    pool (it used to be dropped: every refused request then paid a new connection, ~6 ms of SCRAM and a backend
    process, which any unsigned request to verify could trigger). A connection with a transaction left open, or one
    that saw any other exception, is closed."""
    from pg8000.exceptions import DatabaseError

    from lockwise.core import errors

    db = Database(stack_env["DATABASE_URL"], pool_size=1)

    def backend() -> int:
        with db.connection() as con:
            return int(con.run("SELECT pg_backend_pid()")[0][0])

    try:
        first = backend()
        with pytest.raises(errors.Unauthenticated), db.connection():
            raise errors.Unauthenticated("request is not signed by a lock")
        assert backend() == first, "a 4xx dropped the connection"
        with pytest.raises(DatabaseError), db.transaction() as con:
            con.run("SELECT 1 / 0")
        assert backend() == first, "a refused statement in a transaction (rolled back) dropped the connection"
        with pytest.raises(DatabaseError), db.connection() as con:
            con.run("SELECT 1 / 0")
        assert backend() == first, "a refused statement outside a transaction dropped the connection"
        with pytest.raises(errors.NotFound), db.connection() as con:
            con.run("START TRANSACTION")
            raise errors.NotFound("gone")
        second = backend()
        assert second != first, "a connection with its transaction still open went back to the pool"
        with pytest.raises(RuntimeError), db.connection():
            raise RuntimeError("not ours")
        assert backend() != second, "a connection that saw an unknown exception went back to the pool"
    finally:
        db.close()


def test_pooled_connections_the_server_ended_are_replaced_not_failed(stack_env: dict[str, str]) -> None:
    """A database restart or failover ends every idle pooled connection; the next requests used to meet them one by
    one (each a 503 ``database_unavailable`` as its first statement failed). Each is now noticed as it is taken from
    the pool and replaced: the next transactions run, on one still alive or on a new one."""

    db = Database(stack_env["DATABASE_URL"], pool_size=3)
    admin = Database(stack_env["DATABASE_URL"], pool_size=1)
    try:
        with db.connection() as a, db.connection() as b, db.connection() as c:
            ended = {int(con.run("SELECT pg_backend_pid()")[0][0]) for con in (a, b)}
            alive = int(c.run("SELECT pg_backend_pid()")[0][0])
        with admin.connection() as con:  # as a restart does to each of them
            for pid in ended:
                assert con.run("SELECT pg_terminate_backend(:p)", p=pid) == [[True]]
            wait_for(lambda: not con.run("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(:p)", p=list(ended)))
        served = []
        for _ in range(3):
            with db.transaction() as con:
                served.append(int(con.run("SELECT pg_backend_pid()")[0][0]))
        assert set(served) == {alive}, served  # the ended two closed on the way, the live one reused
        with admin.connection() as con:  # now every idle one ended: a new connection is made
            assert con.run("SELECT pg_terminate_backend(:p)", p=alive) == [[True]]
            wait_for(lambda: not con.run("SELECT 1 FROM pg_stat_activity WHERE pid = :p", p=alive))
        with db.transaction() as con:
            fresh = int(con.run("SELECT pg_backend_pid()")[0][0])
        assert fresh not in ended | {alive}
    finally:
        db.close()
        admin.close()


@contextmanager
def _two_pooled_through_a_cut(url: str) -> Iterator[tuple[TcpCut, Database, set[int]]]:
    """A pool (1 s socket timeout) reaching PostgreSQL through a ``TcpCut``, two connections idle in it, and their
    backends' pids."""
    target = urlsplit(url)
    with TcpCut((target.hostname or "127.0.0.1", target.port or 5432)) as cut:
        netloc = target.netloc.rsplit(":", 1)[0] + f":{cut.port}"
        db = Database(urlunsplit(target._replace(netloc=netloc)), pool_size=3, connect_timeout_s=1.0)
        try:
            with db.connection() as a, db.connection() as b:
                pooled = {_backend(a), _backend(b)}
            yield cut, db, pooled
        finally:
            db.close()


def _backend(con: Connection) -> int:
    return int(con.run("SELECT pg_backend_pid()")[0][0])


@pytest.mark.parametrize("mode", [tcp_cut.RESET, tcp_cut.SILENT])
def test_pooled_connections_lost_without_a_word_are_replaced_not_failed(stack_env: dict[str, str], mode: str) -> None:
    """A failover that gives the server's address to a new machine (a reset on the next byte) or a NAT that forgot
    an idle flow (bytes go nowhere) ends no connection the poll could see: the next request's first statement failed
    (503 ``database_unavailable``, after the socket's timeout when silent). A connection idle past the pool's window
    is now asked one round trip first, and it and every other idle one replaced when it does not answer."""
    with _two_pooled_through_a_cut(stack_env["DATABASE_URL"]) as (cut, db, lost):
        cut.cut(mode)
        time.sleep(0.6)  # past the pool's window (0.5 s by default)
        started = time.monotonic()
        with db.transaction() as con:
            served = _backend(con)
        took = time.monotonic() - started
        assert served not in lost
        assert cut.flows == 3  # one round trip lost, then one new connection: the other idle one not tried
        # one timeout at most (silent), not one per idle connection; a reset is seen at once (under one timeout)
        assert took < db.connect_timeout_s * (1.8 if mode == tcp_cut.SILENT else 0.9), took


@pytest.mark.parametrize("mode", [tcp_cut.RESET, tcp_cut.SILENT])
def test_a_busy_pools_lost_connections_cost_no_transaction(stack_env: dict[str, str], mode: str) -> None:
    """Connections used within the pool's window are lent unasked (a busy instance pays no round trip), so a loss
    that happens meanwhile is met by a statement: a transaction that meets it as it begins is begun again on a new
    connection (nothing has run yet), and the lost connection takes every idle one with it. A block outside a
    transaction (a read, the signature check) cannot be run again safely: it is answered 503 once, and the next
    one is served on a new connection."""
    from lockwise.core import errors

    with _two_pooled_through_a_cut(stack_env["DATABASE_URL"]) as (cut, db, lost):
        cut.cut(mode)
        with db.transaction() as con:  # at once: within the window
            served = _backend(con)
        assert served not in lost and cut.flows == 3  # the other lost one dropped unasked
        with db.connection() as con:
            assert _backend(con) == served
        cut.cut(mode)
        with pytest.raises(errors.Unavailable), db.connection() as con:
            con.run("SELECT 1")
        with db.connection() as con:
            assert con.run("SELECT 1") == [[1]]


def _kept(admin: Database, uid: str) -> bool:
    with admin.connection() as con:
        return bool(con.run("SELECT 1 FROM users WHERE uid = :u", u=uid))


@pytest.mark.parametrize("lost", ["timed_out", "reset"])
def test_a_commit_whose_answer_is_lost_after_the_server_made_it_is_answered_as_made(
    stack_env: dict[str, str], lost: str
) -> None:
    """The server takes a transaction's COMMIT and its answer never comes back (a stall, a path gone): before, the
    caller was told 503 "nothing done" while the change stood (attack run 37: a door opened after its lock was
    told the attempt failed; a lock paired after the app was told it did not). Now the pool asks the server on a new
    connection, and the block returns as after any commit."""
    admin = Database(stack_env["DATABASE_URL"], pool_size=1)
    uid = f"settle-{lost}-{time.monotonic_ns()}"
    with _two_pooled_through_a_cut(stack_env["DATABASE_URL"]) as (cut, db, _):
        with db.transaction() as con:
            con.run("INSERT INTO users (uid) VALUES (:u)", u=uid)
            cut.cut_at(b"COMMIT\x00", forwarded=True)
            if lost == "reset":
                threading.Timer(0.2, cut.drop).start()  # the path gone while the answer is awaited
        assert _kept(admin, uid)
    admin.close()


def test_a_commit_the_server_never_took_is_a_503_and_its_session_cannot_make_it_later(
    stack_env: dict[str, str],
) -> None:
    """The COMMIT is lost on its way: the server's session still holds the transaction open (and could take a
    COMMIT that arrives late). The pool ends that session before it looks the transaction up, so the answer, 503
    ``database_unavailable`` (nothing done), stays true; before, the session held its row locks up to a minute."""
    from lockwise.core import errors

    admin = Database(stack_env["DATABASE_URL"], pool_size=1)
    uid = f"settle-never-{time.monotonic_ns()}"
    with _two_pooled_through_a_cut(stack_env["DATABASE_URL"]) as (cut, db, _):
        with pytest.raises(errors.Unavailable) as refused, db.transaction() as con:
            con.run("INSERT INTO users (uid) VALUES (:u)", u=uid)
            held_by = _backend(con)
            cut.cut_at(b"COMMIT\x00", forwarded=False)
        assert refused.value.code == "database_unavailable"
        with admin.connection() as con:
            assert not con.run("SELECT 1 FROM pg_stat_activity WHERE pid = :p", p=held_by)
        assert not _kept(admin, uid)
    admin.close()


def test_a_commit_whose_fate_cannot_be_known_now_is_a_503_that_says_so(stack_env: dict[str, str]) -> None:
    """Lost on its way, and the server unreachable for the look-up: the caller is told the change may have been made
    (503 ``commit_unconfirmed``), not that nothing was done."""
    from lockwise.core import errors

    uid = f"settle-unknown-{time.monotonic_ns()}"
    with _two_pooled_through_a_cut(stack_env["DATABASE_URL"]) as (cut, db, _):
        with pytest.raises(errors.Unavailable) as refused, db.transaction() as con:
            con.run("INSERT INTO users (uid) VALUES (:u)", u=uid)
            cut.cut_at(b"COMMIT\x00", forwarded=True)
            cut.refusing = True
        assert refused.value.code == "commit_unconfirmed"


def test_a_commit_lost_as_a_backend_crashes_is_not_taken_for_the_transaction_given_its_id_after(
    stack_env: dict[str, str], postgres: services.Postgres
) -> None:
    """A backend's crash makes PostgreSQL end every session and recover from the WAL on disk, and the server keeps
    its start time. A transaction whose COMMIT was lost as it crashed, its records not yet on disk, is gone, and its
    id is given again to a later transaction. The look-up found that one committed and answered the lost one as made
    (a door decision or a pairing told done, and nothing recorded). Now the look-up also compares the server's run
    (a crash's recovery resets its statistics): 503 ``commit_unconfirmed``. Here the WAL writer is stopped, so the
    transaction's records stay in memory, and its kill is the crash."""
    import pg8000.native

    from lockwise.core import errors

    def superuser() -> Any:
        return pg8000.native.Connection(
            "postgres", unix_sock=f"{postgres.socket_dir}/.s.PGSQL.{postgres.port}", database=postgres.database
        )

    con = superuser()
    try:
        walwriter = int(con.run("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'")[0][0])
        # the recovery replays the WAL since the last checkpoint: up to 5 minutes of the session's tests' writes
        # (checkpoint_timeout), which once took it past the wait below, and every test after met a server still
        # recovering (10 failed, 10 errors in a full run); from here it replays this test's own
        con.run("CHECKPOINT")
    finally:
        con.close()
    uid = f"settle-crash-{time.monotonic_ns()}"
    wait_s = 12.0  # the COMMIT's wait for its answer: the crash, its recovery and the ids after it come within it
    given: list[int] = []
    given_at: list[float] = []
    failed: list[BaseException] = []

    def crash_then_give_its_id_again(xid: int) -> None:
        try:
            os.kill(walwriter, signal.SIGKILL)
            deadline = time.monotonic() + wait_s - 2.0  # CI's recovery once took over 3.5 s
            while True:  # until the crash has ended the old sessions and recovery is done
                time.sleep(0.1)
                try:
                    con = superuser()
                    break
                except Exception:  # noqa: BLE001 - shutting down, or in recovery
                    if time.monotonic() > deadline:
                        raise
            try:
                while not given or given[-1] < xid:  # the ids after the crash, each committed
                    con.run("START TRANSACTION")
                    given.append(int(con.run("SELECT pg_current_xact_id()::text")[0][0]))
                    con.run("COMMIT")
                given_at.append(time.monotonic())
            finally:
                con.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    target = urlsplit(stack_env["DATABASE_URL"])
    with TcpCut((target.hostname or "127.0.0.1", target.port or 5432)) as cut:
        netloc = target.netloc.rsplit(":", 1)[0] + f":{cut.port}"
        db = Database(urlunsplit(target._replace(netloc=netloc)), pool_size=2, connect_timeout_s=wait_s)
        crash: threading.Timer | None = None
        os.kill(walwriter, signal.SIGSTOP)
        try:
            with pytest.raises(errors.Unavailable) as refused, db.transaction() as con:
                con.run("INSERT INTO users (uid) VALUES (:u)", u=uid)
                xid = int(con.run("SELECT pg_current_xact_id()::text")[0][0])
                cut.cut_at(b"COMMIT\x00", forwarded=False)
                sent_at = time.monotonic()
                crash = threading.Timer(0.2, crash_then_give_its_id_again, args=(xid,))
                crash.start()
        finally:
            if crash is None:
                os.kill(walwriter, signal.SIGCONT)
            else:
                crash.join()
            db.close()
    assert not failed, failed
    assert given[-1] == xid, (given, xid)  # precondition: the crash gave the lost transaction's id again,
    assert given_at[0] - sent_at < db.connect_timeout_s - 0.5  # before the COMMIT's wait ended and it was looked up
    assert refused.value.code == "commit_unconfirmed"
    admin = Database(stack_env["DATABASE_URL"], pool_size=1)
    assert not _kept(admin, uid)
    admin.close()


def test_while_the_database_does_not_answer_one_request_waits_to_find_out_and_the_others_are_503_at_once(
    stack_env: dict[str, str],
) -> None:
    """A server that stops answering (paused, a path gone silent) held every request for its own timeouts, and a
    request waiting for a pool slot behind them up to 30 s more (attack run 37: 5 of 12 clients over 15 s, the
    health check 29 s, in a 30 s pause). Once a request has found it not answering, one at a time waits to find out
    whether it answers again and the others are 503 at once; the first that gets an answer ends that."""
    from lockwise.core import errors

    with _two_pooled_through_a_cut(stack_env["DATABASE_URL"]) as (cut, db, _):
        cut.cut(tcp_cut.SILENT)
        cut.silencing = True
        time.sleep(0.6)  # past the pool's window: the idle connection is asked a round trip first
        with pytest.raises(errors.Unavailable), db.connection():
            pass  # found out: its round trip, then a new connection, each outwaited the 1 s timeout

        def borrow(took: list[float]) -> None:
            started = time.monotonic()
            try:
                with db.connection():
                    pass
            except errors.Unavailable:
                took.append(time.monotonic() - started)

        took: list[float] = []
        borrowers = [threading.Thread(target=borrow, args=(took,)) for _ in range(3)]
        for borrower in borrowers:
            borrower.start()
        for borrower in borrowers:
            borrower.join(10)
        assert len(took) == 3
        waited, *at_once = sorted(took, reverse=True)
        assert waited >= db.connect_timeout_s * 0.9  # the one finding out
        assert max(at_once) < 0.6, took  # before: each waited its own timeout (1 s)

        cut.silencing = False  # it answers again: the next request is served, and so is the one after it
        for _ in range(2):
            with db.connection() as con:
                assert con.run("SELECT 1") == [[1]]


@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_statement_that_outwaits_the_socket_costs_its_own_connection_only(
    stack_env: dict[str, str], in_transaction: bool
) -> None:
    """A statement waiting on a lock (a second attempt at a door whose first holds the lockout row) past the socket's
    timeout is a 503 and its connection closed (its read stopped mid-message); the server is slow, not gone, so the
    other idle connections stay pooled."""
    from lockwise.core import errors

    holder = Database(stack_env["DATABASE_URL"], pool_size=1)
    db = Database(stack_env["DATABASE_URL"], pool_size=2, connect_timeout_s=1.0)
    try:
        with db.connection() as a, db.connection() as b:
            pass
        with holder.connection() as held:
            held.run("SELECT pg_advisory_lock(20261202)")
            try:
                borrowed = db.transaction() if in_transaction else db.connection()
                with pytest.raises(errors.Unavailable, match="did not answer in time"), borrowed as con:
                    assert con is a  # (in a transaction, its ROLLBACK then fails on the timed-out socket too)
                    con.run("SELECT pg_advisory_lock(20261202)")
            finally:
                held.run("SELECT pg_advisory_unlock(20261202)")
        assert db.idle == [b]
        with db.connection() as con:
            assert con is b and con.run("SELECT 1") == [[1]]
    finally:
        db.close()
        holder.close()


@pytest.mark.parametrize("in_transaction", [False, True])
def test_the_server_stops_a_statement_at_its_timeout_and_the_connection_is_kept(
    stack_env: dict[str, str], in_transaction: bool
) -> None:
    """A statement waiting on a lock used to wait until the socket gave up, with the server still waiting after the
    caller had gone (a write outside a transaction was then made after its 503, once the lock came free): the
    server now stops it itself (``statement_timeout``, below the socket's), a 503 ``database_busy`` to try again,
    and the connection, whose protocol is intact, is kept."""
    from lockwise.core import errors

    holder = Database(stack_env["DATABASE_URL"], pool_size=1)
    db = Database(stack_env["DATABASE_URL"], pool_size=1, statement_timeout_s=0.3)
    try:
        with db.connection() as con:
            assert con.run("SHOW statement_timeout") == [["300ms"]]
            assert con.run("SHOW idle_in_transaction_session_timeout") == [["1min"]]
            kept = con
            pid = con.run("SELECT pg_backend_pid()")[0][0]
        with holder.connection() as held:
            held.run("SELECT pg_advisory_lock(20261204)")
            try:
                borrowed = db.transaction() if in_transaction else db.connection()
                started = time.monotonic()
                with pytest.raises(errors.Unavailable, match="did not answer in time; try again") as caught:
                    with borrowed as con:
                        con.run("SELECT pg_advisory_lock(20261204)")
                assert caught.value.code == "database_busy" and time.monotonic() - started < 3
                # the server is no longer waiting for the lock on the caller's behalf
                waiting = held.run("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p", p=pid)
                assert waiting == [[None]] or waiting == [["Client"]]
            finally:
                held.run("SELECT pg_advisory_unlock(20261204)")
        assert db.idle == [kept]
        with db.connection() as con:
            assert con is kept and con.run("SELECT pg_try_advisory_lock(20261204)") == [[True]]
            con.run("SELECT pg_advisory_unlock(20261204)")
    finally:
        db.close()
        holder.close()


def test_a_deadlock_is_a_503_to_try_again_not_a_500(stack_env: dict[str, str]) -> None:
    """Two transactions taking the same two locks in opposite orders: PostgreSQL stops one (40P01), which pg8000
    raised as a DatabaseError, answered 500 ``internal`` with no hint that a second try succeeds. The other commits;
    both connections stay pooled."""
    import threading

    from lockwise.core import errors

    db = Database(stack_env["DATABASE_URL"], pool_size=2)
    both_hold_one = threading.Barrier(2, timeout=10)
    outcomes: dict[int, str] = {}

    def take(first: int, second: int) -> None:
        try:
            with db.transaction() as con:
                con.run("SELECT pg_advisory_xact_lock(:k)", k=first)
                both_hold_one.wait()
                con.run("SELECT pg_advisory_xact_lock(:k)", k=second)
            outcomes[first] = "committed"
        except errors.Unavailable as exc:
            outcomes[first] = f"{exc.code}: {exc.message}"

    try:
        threads = [threading.Thread(target=take, args=pair) for pair in ((20261205, 20261206), (20261206, 20261205))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes.values()) == [
            "committed",
            "database_busy: the database stopped a transaction that ran into another; try again",
        ]
        assert len(db.idle) == 2
    finally:
        db.close()


def test_a_server_that_can_no_longer_write_is_a_503_and_its_connections_are_replaced(
    stack_env: dict[str, str],
) -> None:
    """After a failover the old primary, now a standby, refuses every write (25006, read-only): each pooled
    connection made to it would fail the same way, so all of them go."""
    from lockwise.core import errors

    db = Database(stack_env["DATABASE_URL"], pool_size=2)
    try:
        with db.connection() as a, db.connection() as b:
            pass
        with pytest.raises(errors.Unavailable, match="cannot write now") as caught, db.transaction() as con:
            assert con is a
            con.run("SET TRANSACTION READ ONLY")  # as every transaction on a standby is
            con.run("CREATE TEMP TABLE failover_probe (x int)")
        assert caught.value.code == "database_unavailable"
        assert db.idle == []
        with db.connection() as con:
            assert con not in (a, b) and con.run("SELECT 1") == [[1]]
    finally:
        db.close()


def test_a_request_waiting_on_a_busy_table_is_a_json_503_and_writes_nothing(
    make_client: Any, sign_up: Any, impatient_devices: Database
) -> None:
    """An app request whose first write waits on rows another session holds (a long migration, a stuck
    transaction): the server stops the statement, the app gets 503 ``database_busy`` (not a 500), nothing is written,
    and the same request succeeds once the table is free."""
    account, holder = sign_up(), impatient_devices
    client = make_client("devices")
    headers = {"Authorization": f"Bearer {account['idToken']}"}
    with holder.transaction() as held:
        held.run("LOCK TABLE users IN SHARE MODE")  # reads go on, writes wait
        resp = client.get("/devices/me", headers=headers)
        assert resp.status_code == 503, resp.get_data(as_text=True)
        assert resp.get_json()["error"]["code"] == "database_busy"
        # when to try again, in the header and the body alike
        assert resp.headers["Retry-After"] == "1" and resp.get_json()["error"]["details"] == {"retry_after_s": 1}
    with holder.connection() as con:
        assert con.run("SELECT count(*) FROM users WHERE uid = :u", u=account["localId"]) == [[0]]
    resp = client.get("/devices/me", headers=headers)
    assert resp.status_code == 200 and resp.get_json()["uid"] == account["localId"]


def test_a_server_refusing_a_connection_at_startup_is_a_503_not_a_500(stack_env: dict[str, str]) -> None:
    """pg8000 raises what the server refuses at startup (a database that does not exist here; starting up, too
    many clients in a failover) as a DatabaseError, which the API answered 500 ``internal``."""
    from lockwise.core import errors

    url = urlsplit(stack_env["DATABASE_URL"])
    with pytest.raises(errors.Unavailable) as caught:
        Database(urlunsplit(url._replace(path="/no_such_database"))).connect()
    assert caught.value.code == "database_unavailable"


FORKED_WORKER = """
import json, os, time
from lockwise.core.runtime import get_runtime
rt = get_runtime("verify")  # main.py's module scope, in gunicorn's master
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the worker: no request yet
    deadline = time.monotonic() + 10
    while not rt.db.idle and time.monotonic() < deadline:
        time.sleep(0.005)
    opened = list(rt.db.idle)
    with rt.db.connection() as con:  # the first request's
        reused = bool(opened) and con is opened[0]
    os.write(write, json.dumps({"opened": len(opened), "reused": reused}).encode())
    os._exit(0)
os.close(write)
child = json.loads(os.read(read, 1000))
os.waitpid(pid, 0)
print(json.dumps({"master": len(rt.db.idle), **child}))
"""


def test_a_forked_worker_opens_its_database_connection_as_it_boots(stack_env: dict[str, str]) -> None:
    """The worker connects while its model loads, so its first request does not wait for the handshakes (8-9 ms
    of the first request locally, more over TLS to a managed database); the master, which forks, opens none."""
    env = {**os.environ, "PYTHONPATH": str(services.FUNCTIONS_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", FORKED_WORKER], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"master": 0, "opened": 1, "reused": True}


def test_a_database_down_at_boot_is_left_to_the_first_request(caplog: pytest.LogCaptureFixture) -> None:

    db = Database(f"postgresql://lockwise:x@127.0.0.1:{services.free_port()}/lockwise", connect_timeout_s=1)
    with caplog.at_level(logging.WARNING, logger="lockwise.core.db"):
        db.open_one()  # does not raise
    assert db.idle == []
    assert "no database connection opened ahead (database_unavailable)" in caplog.text


def test_unsigned_requests_to_verify_reuse_one_database_connection(make_client: Any, stack_env: dict[str, str]) -> None:
    client = make_client("verify")
    db = get_runtime("verify").db
    pids = set()
    for _ in range(5):
        resp = client.post("/verify", data=b"RIFF", headers={"Content-Type": "audio/wav"})
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "missing_lock_signature"
        with db.connection() as con:
            pids.add(con.run("SELECT pg_backend_pid()")[0][0])
    assert len(pids) == 1, f"each refused request opened a new database connection: {len(pids)} backends"


def test_a_prepared_statements_rows_are_not_kept_once_another_statement_ran(stack_env: dict[str, str]) -> None:
    """A pooled connection's prepared statement kept its last run's rows (pg8000's statement holds its result) until
    it ran again on that connection: each of up to ``MAX_PREPARED`` statements a connection, a door's known
    recordings (up to ~1,500 fingerprints of ~19 KB) among them, stayed in memory between requests (attack run 114:
    20 MB of rows here). Only the connection's last result is kept, as for an unnamed statement."""
    import gc
    import tracemalloc

    db = Database(stack_env["DATABASE_URL"], pool_size=1)
    try:
        with db.connection() as con:  # prepared once, before counting
            con.run("SELECT repeat('x', :n) FROM generate_series(1, 2)", n=1)
            con.run("SELECT CAST(:a AS int)", a=1)
        gc.collect()
        tracemalloc.start()
        try:
            with db.connection() as con:
                rows = con.run("SELECT repeat('x', :n) FROM generate_series(1, 20)", n=1_000_000)
                assert len(rows) == 20 and len(rows[0][0]) == 1_000_000
                del rows
                assert con.run("SELECT CAST(:a AS int)", a=2) == [[2]]
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    finally:
        db.close()
    assert kept < 2_000_000, f"{kept:,} bytes kept once the rows' statement was done"


def test_a_statement_with_parameters_is_prepared_once_per_connection_and_then_one_round_trip(
    stack_env: dict[str, str],
) -> None:
    """pg8000 runs an unnamed statement in three round trips; the pool's connections prepare each statement once and
    run it in one. Results, column names and constraint errors are as before; a statement made stale by a migration
    is prepared anew."""
    from contextlib import closing

    from pg8000.exceptions import DatabaseError

    from lockwise.core.db import rows_as_dicts, sqlstate

    class Counting:  # pg8000's buffered socket, counting what it sends to the server
        def __init__(self, inner: Any) -> None:
            self.inner, self.flushes = inner, 0

        def flush(self) -> None:
            self.flushes += 1
            self.inner.flush()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    db = Database(stack_env["DATABASE_URL"], pool_size=1)
    table = "prepared_probe"
    try:
        with db.connection() as con:
            con.run(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
            counting = Counting(con._sock)  # type: ignore[attr-defined]
            con._sock = counting  # type: ignore[attr-defined]
            insert = f"INSERT INTO {table} (id, name) VALUES (:i, :n) RETURNING id"
            assert con.run(insert, i=1, n="a") == [[1]]
            first = counting.flushes
            assert con.run(insert, i=2, n="b") == [[2]]
            assert counting.flushes - first == 1, "a prepared statement's run is one round trip"
            prepared = con.run("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :s", s=f"%{table}%")
            assert prepared == [[1]]
            # planned for each run's values, as the unnamed statement was, never a generic plan
            assert con.run("SHOW plan_cache_mode") == [["force_custom_plan"]]
            with pytest.raises(DatabaseError) as refused:
                con.run(insert, i=2, n="again")
            assert sqlstate(refused.value) == "23505"
            assert con.run(insert, i=3, n="c") == [[3]], "the statement stays prepared after a refused row"
            select = f"SELECT * FROM {table} WHERE id = :i"
            assert rows_as_dicts(con, select, i=3) == [{"id": 3, "name": "c"}]
            con._sock = counting.inner  # type: ignore[attr-defined]
        with closing(db.connect()) as other:  # a migration, from elsewhere, changes what the prepared SELECT returns
            other.run(f"ALTER TABLE {table} ADD COLUMN note text DEFAULT 'n'")
        # inside a transaction the stale statement's error is the caller's (the server aborted the transaction)
        with pytest.raises(DatabaseError) as stale, db.transaction() as con:
            con.run(select, i=3)
        assert sqlstate(stale.value) == "0A000"
        selects = "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :s"
        with db.connection() as con:
            assert rows_as_dicts(con, select, i=3) == [{"id": 3, "name": "c", "note": "n"}], "prepared anew"
            # and the stale one is closed on the server: it stayed there, one more each migration, for the
            # connection's life (attack run 114's leftover)
            assert con.run(selects, s=f"SELECT * FROM {table} WHERE%") == [[1]]
        with closing(db.connect()) as other:
            other.run(f"ALTER TABLE {table} ADD COLUMN extra int DEFAULT 7")
        with db.connection() as con:  # outside a transaction the refused run is made again at once
            assert rows_as_dicts(con, select, i=3) == [{"id": 3, "name": "c", "note": "n", "extra": 7}]
            assert con.run(selects, s=f"SELECT * FROM {table} WHERE%") == [[0]]
            assert rows_as_dicts(con, select, i=3) == [{"id": 3, "name": "c", "note": "n", "extra": 7}]
            assert con.run(selects, s=f"SELECT * FROM {table} WHERE%") == [[1]]
    finally:
        with closing(db.connect()) as other:
            other.run(f"DROP TABLE IF EXISTS {table}")
        db.close()
