"""The Firestore REST client (lockwise.core.firestore): its writes are the ones Google's client library makes for the
same call (compared as protobuf messages), values survive the round trip, a connection the server closed is replaced,
errors name Firestore's answer, and production credentials come from the metadata server through google-auth.
tests/integration/test_firebase.py writes to the real emulator and reads back with the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import write as write_pb
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.local import services
from lockwise.core import firestore, firestore_json
from tests.http_stubs import StubHandler, running

pytestmark = pytest.mark.usefixtures("no_lazy_speechbrain_modules")  # hypothesis walks sys.modules

NAME = "projects/p/databases/(default)/documents/locks/a"
keys = st.sampled_from(["state", "access", "9uid", "a.b", "we`ird", "back\\slash", "_x", "ünï", "member_uids"])
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8
)
documents = st.dictionaries(keys, values, max_size=4)


def as_proto(rest: dict[str, Any]) -> Any:
    return json_format.ParseDict(rest, write_pb.Write.pb()())


def library(pbs: list[Any]) -> Any:
    (pb,) = pbs
    return write_pb.Write.pb(pb)


@settings(max_examples=150, deadline=None)
@given(documents)
def test_a_set_is_the_library_s_set(data: dict[str, Any]) -> None:
    assert as_proto(firestore_json.set_write(NAME, data)) == library(_helpers.pbs_for_set_no_merge(NAME, data))


@settings(max_examples=150, deadline=None)
@given(documents.filter(bool))
def test_a_merge_is_the_library_s_merge_true(data: dict[str, Any]) -> None:
    ours = as_proto(firestore_json.merge_write(NAME, data))
    assert ours == library(_helpers.pbs_for_set_with_merge(NAME, data, merge=True))


@settings(max_examples=150, deadline=None)
@given(documents.filter(bool))
def test_replacing_fields_is_the_library_s_merge_of_those_fields(data: dict[str, Any]) -> None:
    fields = [firestore_json.render_path((key,)) for key in data]
    ours = as_proto(firestore_json.replace_fields_write(NAME, data))
    assert ours == library(_helpers.pbs_for_set_with_merge(NAME, data, merge=fields))


def test_a_delete_is_the_library_s_delete() -> None:
    assert as_proto(firestore_json.delete_write(NAME)) == library([_helpers.pb_for_delete(NAME, None)])


@pytest.mark.parametrize(
    ("parts", "path"),
    [(("a", "b_1"), "a.b_1"), (("9uid",), "`9uid`"), (("a.b",), "`a.b`"), (("x`y\\z",), "`x\\`y\\\\z`")],
)
def test_field_paths_quote_what_is_not_a_plain_name(parts: tuple[str, ...], path: str) -> None:
    assert firestore_json.render_path(parts) == path


@settings(max_examples=200, deadline=None)
@given(documents)
def test_values_survive_encoding_and_decoding(data: dict[str, Any]) -> None:
    assert firestore_json.decode_fields(json.loads(json.dumps(firestore_json.encode_fields(data)))) == data


def test_a_timestamp_is_the_library_s_timestamp() -> None:
    """A feed entry's ``expires_at`` (Firestore's TTL policy reads timestamps only), through the queue's JSON."""
    import datetime as dt

    when = dt.datetime(2027, 3, 1, 12, 30, 45, 123000, tzinfo=dt.UTC)
    queued = json.loads(json.dumps({"kind": "state", "expires_at": firestore_json.timestamp(when)}))
    ours = as_proto(firestore_json.set_write(NAME, queued))
    assert ours == library(_helpers.pbs_for_set_no_merge(NAME, {"kind": "state", "expires_at": when}))
    # any other map is a map, one whose only key is another name too
    assert firestore_json.encode({"__timestamp__": "x", "y": 1})["mapValue"]


def test_a_value_json_cannot_hold_is_refused() -> None:
    with pytest.raises(TypeError, match="bytes"):
        firestore_json.encode(b"raw")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    requests: list[tuple[str, str, dict[str, str]]]
    answer: tuple[int, dict[str, Any] | bytes] = (200, {})  # bytes: sent as they are
    close_after_answer = False


class Handler(StubHandler):
    """Answers every request with ``server.answer``; with ``close_after_answer`` it drops the connection after
    answering without saying so (what a front end does to a connection left idle too long)."""

    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def _take(self) -> None:
        body = self.body().decode()
        self.server.requests.append((self.command, self.path, {**dict(self.headers), "body": body}))
        status, obj = self.server.answer
        self.answer(status, obj, content_type="application/json")
        self.close_connection = self.server.close_after_answer

    do_GET = do_POST = _take  # noqa: N815 - http.server's naming


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.requests = []
    with running(srv):
        yield srv


def client_of(server: Server) -> firestore.Client:
    return firestore.make_client("p", f"127.0.0.1:{server.server_port}")


def test_requests_reuse_one_connection_and_carry_the_emulator_s_owner_token(server: Server) -> None:
    client = client_of(server)
    server.answer = (200, {"fields": {"state": {"stringValue": "locked"}}})
    assert client.get("locks/a") == {"state": "locked"}
    client.commit([firestore_json.set_write(client.name("locks/a"), {"n": 1})])
    assert server.connections == 1
    (get, commit) = server.requests
    assert get[:2] == ("GET", "/v1/projects/p/databases/(default)/documents/locks/a")
    assert commit[:2] == ("POST", "/v1/projects/p/databases/(default)/documents:commit")
    assert json.loads(commit[2]["body"])["writes"][0]["update"]["fields"] == {"n": {"integerValue": "1"}}
    assert {get[2]["Authorization"], commit[2]["Authorization"]} == {"Bearer owner"}


def test_a_connection_the_server_dropped_is_replaced_and_the_request_sent_again(server: Server) -> None:
    client = client_of(server)
    server.close_after_answer = True
    assert client.get("locks/a") == {}
    assert client.get("locks/a") == {}, "the second request went out on the dropped connection and failed"
    assert server.connections == 2 and len(server.requests) == 2


def test_a_missing_document_reads_as_none_and_an_error_names_firestore_s_answer(server: Server) -> None:
    client = client_of(server)
    server.answer = (404, {"error": {"code": 404, "message": "not found"}})
    assert client.get("locks/a") is None
    server.answer = (400, {"error": {"code": 400, "message": "Invalid field path"}})
    with pytest.raises(firestore.FirestoreError, match="400: Invalid field path"):
        client.commit([firestore_json.delete_write(client.name("locks/a"))])
    server.answer = (404, {"error": {"code": 404, "message": "no such database"}})
    with pytest.raises(firestore.FirestoreError, match="404"):
        client.list_versions("locks", 10)


@pytest.mark.parametrize(
    ("status", "code", "raised"),
    [
        (400, "FAILED_PRECONDITION", firestore.FirestoreConflict),  # a version that moved on: read again, not set aside
        (409, "ALREADY_EXISTS", firestore.FirestoreConflict),
        (409, "ABORTED", firestore.FirestoreConflict),
        (400, "INVALID_ARGUMENT", firestore.FirestoreRefused),  # never taken: set aside
        (503, "UNAVAILABLE", firestore.FirestoreError),
    ],
)
def test_a_commit_refused_for_a_version_is_a_conflict_not_a_refusal(
    server: Server, status: int, code: str, raised: type[Exception]
) -> None:
    server.answer = (status, {"error": {"code": status, "message": "no", "status": code}})
    with pytest.raises(raised) as caught:
        client_of(server).commit([firestore_json.delete_write("x")])
    assert type(caught.value) is raised


def test_versions_are_read_in_one_batch_and_an_answer_that_leaves_one_out_is_an_error(server: Server) -> None:
    client = client_of(server)
    base = "projects/p/databases/(default)/documents"
    found = {"found": {"name": f"{base}/locks/a", "updateTime": "2026-12-05T20:00:00.123456Z"}}
    server.answer = (200, json.dumps([found, {"missing": f"{base}/users/u"}]).encode())
    assert client.versions(["locks/a", "users/u"]) == {"locks/a": "2026-12-05T20:00:00.123456Z", "users/u": None}
    ((method, target, sent),) = server.requests
    assert (method, target) == ("POST", "/v1/projects/p/databases/(default)/documents:batchGet")
    assert json.loads(sent["body"])["documents"] == [f"{base}/locks/a", f"{base}/users/u"]
    assert client.versions([]) == {} and len(server.requests) == 1  # nothing to read: no request
    server.answer = (200, json.dumps([found]).encode())
    with pytest.raises(firestore.FirestoreError, match="every document"):
        client.versions(["locks/a", "users/u"])
    server.answer = (200, {"found": found})
    with pytest.raises(firestore.FirestoreError, match="not a list"):
        client.versions(["locks/a"])


@pytest.mark.parametrize("raw", [b"<html>bad gateway</html>", b"[1, 2]"])
def test_an_answer_that_is_not_a_json_object_is_a_firestore_error(server: Server, raw: bytes) -> None:
    server.answer = (200, raw)  # what a misbehaving proxy in between may send
    with pytest.raises(firestore.FirestoreError, match="200"):
        client_of(server).get("locks/a")


def test_credentials_that_cannot_be_refreshed_are_a_firestore_error(server: Server) -> None:
    def refuse(headers: dict[str, str]) -> None:
        raise RuntimeError("metadata server unreachable")

    client = firestore.Client("p", f"127.0.0.1:{server.server_port}", authorize=refuse)
    with pytest.raises(firestore.FirestoreError, match="credentials could not be refreshed: RuntimeError"):
        client.get("locks/a")
    assert server.requests == [], "nothing is sent without credentials"


def test_an_unreachable_firestore_is_a_firestore_error() -> None:
    with pytest.raises(firestore.FirestoreError, match="could not be reached"):  # nothing listens on a free port
        firestore.make_client("p", f"127.0.0.1:{services.free_port()}").get("locks/a")


class MetadataServer(Server):
    token_requests = 0


class Metadata(StubHandler):
    """Stand-in for the Cloud Run metadata server: a short-lived access token per request."""

    server: MetadataServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.headers.get("Metadata-Flavor") != "Google":
            return self._send(403, "text/plain", b"missing Metadata-Flavor")
        path = self.path.split("?")[0]
        if "/service-accounts/" in path and path.endswith("/token"):
            self.server.token_requests += 1
            n = self.server.token_requests
            body = json.dumps({"access_token": f"token-{n}", "expires_in": 1, "token_type": "Bearer"})
            return self._send(200, "application/json", body.encode())
        if "/service-accounts/" in path:  # the account's details (by alias, then by email), read before each token
            body = json.dumps({"email": "functions@p.iam.gserviceaccount.com", "aliases": ["default"]})
            return self._send(200, "application/json", body.encode())
        if path == "/computeMetadata/v1/project/project-id":
            return self._send(200, "text/plain", b"p")
        return self._send(200, "application/text", b"")  # the ping google-auth sends to detect the server

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.answer(status, body, content_type=kind, headers={"Metadata-Flavor": "Google"})


def test_production_credentials_come_from_the_metadata_server_and_are_refreshed(tmp_path: Path) -> None:
    """google-auth reads where the metadata server is when it is imported, so the client runs in a process of its
    own. The token lives 1 s here: google-auth refreshes a token that expires within its refresh margin, so each
    request asks for a new one; the request carries the newest."""
    srv = MetadataServer(("127.0.0.1", 0), Metadata)
    host = f"127.0.0.1:{srv.server_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_"))}
    env.update(HOME=str(tmp_path), GCE_METADATA_HOST=host, GCE_METADATA_IP=host, PYTHONPATH=str(services.FUNCTIONS_DIR))
    script = (
        "from lockwise.core import firestore, google_api\n"
        "authorize = google_api.default_credentials(None, firestore.SCOPE, firestore.PRODUCTION_HOST)\n"
        "seen = []\n"
        "for _ in range(2):\n"
        "    headers = {}\n"
        "    authorize(headers)\n"
        "    seen.append(headers['authorization'])\n"
        "print(seen)\n"
    )
    with running(srv):
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['Bearer token-1', 'Bearer token-2']"
