"""Firestore for the app's live view (lock state, activity, enrollment status), spoken over its REST API (v1).

The mirror needs four calls: a commit of ordered writes, a document read, a collection listing and a health read.
They go over the standard library's ``http.client`` (already imported by the web server), not the
google-cloud-firestore client, which imports gRPC and protobuf: ~0.3 s on the first write or health check of a cold
instance, measured, and gRPC, protobuf and google-api-core in every bundle. The messages it sends are made in
``lockwise.core.firestore_json``; ``tests/integration/test_firebase.py`` reads what it writes with Google's library.

Production authenticates with Application Default Credentials (google-auth: the metadata server on Cloud Run, or a
key file) and the datastore scope; google-auth is imported only there. The emulator takes the token ``owner``, which
passes security rules as an admin client does.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

from lockwise.core.errors import LockwiseError
from lockwise.core.firestore_json import decode_fields

PRODUCTION_HOST = "firestore.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/datastore"
TIMEOUT_S = 3.0
#: kept-alive connections a client holds between requests (more are closed after use)
MAX_IDLE = 4
#: the exceptions that mean a kept-alive connection was closed by the other side before this request was sent
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class FirestoreError(LockwiseError):
    """Firestore answered with an error status, or could not be reached."""

    status, default_code = 503, "firestore_unavailable"


class FirestoreRefused(FirestoreError):
    """Firestore answered 400: the request itself is wrong (an invalid document name or value), so sending it again
    never succeeds."""


#: adds the request's credentials to its headers (the bearer token, refreshed when it has expired)
Authorize = Callable[[dict[str, str]], None]


class Client:
    """One project's default database. Safe to share between threads: each request takes a kept-alive connection
    from a small pool (or opens one) and gives it back when the answer was read whole."""

    def __init__(
        self,
        project_id: str,
        host: str,
        *,
        authorize: Authorize,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.database = f"projects/{project_id}/databases/(default)"
        self._host, self._tls, self._timeout_s, self._authorize = host, tls, timeout_s, authorize
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def name(self, path: str) -> str:
        """The full resource name of the document or collection at ``path`` (``locks/abc``), as given (it once
        stripped a leading or trailing slash, so ``users/V/`` named ``users/V``; now Firestore refuses such a
        path, and ``lockwise.core.mirror`` queues none)."""
        return f"{self.database}/documents/{path}"

    def commit(self, writes: list[dict[str, Any]]) -> None:
        """Apply ``writes`` (``lockwise.core.firestore_json``'s ``Write`` messages) in order, all or none."""
        if writes:
            self._call("POST", f"/v1/{self.database}/documents:commit", {"writes": writes})

    def get(self, path: str) -> dict[str, Any] | None:
        """The document's fields as plain values, or None when it does not exist."""
        found = self._call("GET", _target(self.name(path)), missing_ok=True)
        return None if found is None else decode_fields(found.get("fields", {}))

    def list_names(self, collection_path: str, page_size: int) -> list[str]:
        """The full names of up to ``page_size`` documents of the collection (read whole: a field mask naming only
        ``__name__`` is what the emulator takes, not what production's documentation promises)."""
        query = urllib.parse.urlencode({"pageSize": page_size})
        found = self._call("GET", f"{_target(self.name(collection_path))}?{query}")
        return [str(doc["name"]) for doc in (found or {}).get("documents", [])]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for con in idle:
            con.close()

    def _call(
        self, method: str, target: str, body: dict[str, Any] | None = None, *, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            self._authorize(headers)
        except Exception as exc:  # noqa: BLE001 - google-auth's refresh fails in its own types (RefreshError, ...)
            raise FirestoreError(f"Firestore credentials could not be refreshed: {type(exc).__name__}") from exc
        con, reused = self._connection()
        try:
            try:
                resp = _send(con, method, target, payload, headers)
            except _STALE:
                if not reused:
                    raise
                con.close()  # the pool's connection had been closed by the server: once more on a new one
                con = self._new_connection()
                resp = _send(con, method, target, payload, headers)
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            con.close()
            raise FirestoreError(f"Firestore could not be reached: {type(exc).__name__}") from exc
        with self._lock:
            kept = not resp.will_close and len(self._idle) < MAX_IDLE
            if kept:
                self._idle.append(con)
        if not kept:
            con.close()
        if resp.status == 404 and missing_ok:
            return None
        if resp.status >= 400:
            refused = FirestoreRefused if resp.status == 400 else FirestoreError
            raise refused(f"Firestore answered {resp.status}: {_error_message(data)}")
        try:
            found = json.loads(data) if data else {}
        except ValueError as exc:  # something between us and Firestore answered (a proxy's error page)
            raise FirestoreError(f"Firestore answered {resp.status} with a body that is not JSON") from exc
        if not isinstance(found, dict):
            raise FirestoreError(f"Firestore answered {resp.status} with JSON that is not an object")
        return found

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new_connection(), False

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._tls is None:
            return http.client.HTTPConnection(self._host, timeout=self._timeout_s)
        return http.client.HTTPSConnection(self._host, timeout=self._timeout_s, context=self._tls)


def _target(name: str) -> str:
    """The URL path of a resource name: each segment percent-encoded (a document id may hold any character but /)."""
    return "/v1/" + urllib.parse.quote(name, safe="/()")


def _send(
    con: http.client.HTTPConnection, method: str, target: str, payload: bytes | None, headers: dict[str, str]
) -> http.client.HTTPResponse:
    con.request(method, target, body=payload, headers=headers)
    return con.getresponse()


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return data[:300].decode(errors="replace")


def make_client(project_id: str, emulator_host: str | None) -> Client:
    """The client for ``project_id``: the emulator's at ``emulator_host`` when set, else production's with
    Application Default Credentials."""
    if emulator_host:
        return Client(project_id, emulator_host, authorize=_emulator_owner)
    tls = ssl.create_default_context()  # loads the system's CAs (~30 ms): once, for Firestore and token refreshes
    return Client(project_id, PRODUCTION_HOST, authorize=default_credentials(tls), tls=tls)


def _emulator_owner(headers: dict[str, str]) -> None:
    headers["Authorization"] = "Bearer owner"


def default_credentials(
    tls: ssl.SSLContext | None = None, scope: str = SCOPE, host: str = PRODUCTION_HOST
) -> Authorize:
    """Application Default Credentials with ``scope`` (Firestore's by default) for ``host``, refreshed when expired
    (one refresh at a time; an HTTPS token endpoint is reached with ``tls``, a context of the system's CAs when
    None)."""
    import google.auth

    from lockwise.core.google_auth import StdlibRequest

    credentials, _project = google.auth.default(scopes=[scope])
    request, lock = StdlibRequest(tls), threading.Lock()

    def authorize(headers: dict[str, str]) -> None:
        with lock:
            credentials.before_request(request, "POST", f"https://{host}/", headers)  # type: ignore[no-untyped-call]

    return authorize


def ping(client: Client) -> None:
    """A cheap read that fails when Firestore cannot be reached (the document need not exist)."""
    client.get("_health/ping")
