"""Firestore for the app's live view (lock state, activity, enrollment status), spoken over its REST API (v1).

The mirror needs four calls: a commit of ordered writes, a document read, a collection listing and a health read.
They go over the standard library's ``http.client`` (already imported by the web server), not the
google-cloud-firestore client, which imports gRPC and protobuf: ~0.3 s on the first write or health check of a cold
instance, measured, and gRPC, protobuf and google-api-core in every bundle. The writes mean what the client library's
``batch.set``, ``set(..., merge=True)`` and ``set(..., merge=[fields])`` mean: same update masks, same field-path
quoting (``tests/integration/test_firebase.py`` reads what this writes with that library).

Production authenticates with Application Default Credentials (google-auth: the metadata server on Cloud Run, or a
key file) and the datastore scope; google-auth is imported only there. The emulator takes the token ``owner``, which
passes security rules as an admin client does.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from lockwise.core.errors import LockwiseError

PRODUCTION_HOST = "firestore.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/datastore"
TIMEOUT_S = 3.0
#: kept-alive connections a client holds between requests (more are closed after use)
MAX_IDLE = 4
_NON_FINITE = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}
_SIMPLE_FIELD = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
#: the exceptions that mean a kept-alive connection was closed by the other side before this request was sent
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class FirestoreError(LockwiseError):
    """Firestore answered with an error status, or could not be reached."""

    status, default_code = 503, "firestore_unavailable"


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
        """The full resource name of the document or collection at ``path`` (``locks/abc``)."""
        return f"{self.database}/documents/{path.strip('/')}"

    def commit(self, writes: list[dict[str, Any]]) -> None:
        """Apply ``writes`` (made with ``set_write``, ``merge_write``, ``delete_write``) in order, all or none."""
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
        self._authorize(headers)
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
            raise FirestoreError(f"Firestore answered {resp.status}: {_error_message(data)}")
        found: dict[str, Any] = json.loads(data) if data else {}
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
    return Client(project_id, PRODUCTION_HOST, authorize=default_credentials(), tls=ssl.create_default_context())


def _emulator_owner(headers: dict[str, str]) -> None:
    headers["Authorization"] = "Bearer owner"


def default_credentials() -> Authorize:
    """Application Default Credentials with the datastore scope, refreshed when expired (one refresh at a time)."""
    import google.auth

    from lockwise.core.google_auth import StdlibRequest

    credentials, _project = google.auth.default(scopes=[SCOPE])
    request, lock = StdlibRequest(), threading.Lock()

    def authorize(headers: dict[str, str]) -> None:
        with lock:
            credentials.before_request(request, "POST", f"https://{PRODUCTION_HOST}/", headers)  # type: ignore[no-untyped-call]

    return authorize


def ping(client: Client) -> None:
    """A cheap read that fails when Firestore cannot be reached (the document need not exist)."""
    client.get("_health/ping")


# --- writes (the REST ``Write`` message) -------------------------------------------------------------------------


def set_write(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Replace the document with ``data``."""
    return {"update": {"name": name, "fields": encode_fields(data)}}


def merge_write(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Write every leaf of ``data`` and keep the document's other fields (the client library's ``merge=True``: a
    nested map merges into the stored map; an empty map is a leaf)."""
    return _masked(name, data, [render_path(path) for path in leaf_paths(data)])


def replace_fields_write(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``data``'s top-level fields whole (a map loses the keys it no longer has) and keep the others."""
    return _masked(name, data, [render_path((key,)) for key in sorted(data)])


def delete_write(name: str) -> dict[str, Any]:
    return {"delete": name}


def _masked(name: str, data: Mapping[str, Any], paths: list[str]) -> dict[str, Any]:
    return {"update": {"name": name, "fields": encode_fields(data)}, "updateMask": {"fieldPaths": paths}}


def leaf_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The field path of every leaf value, depth first in key order; a non-empty map is not a leaf."""
    paths: list[tuple[str, ...]] = []
    for key, value in sorted(data.items()):
        if isinstance(value, Mapping) and value:
            paths += leaf_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def render_path(parts: tuple[str, ...]) -> str:
    """A field path as the API reads it: dotted, with a name that is not a plain identifier in backquotes."""
    return ".".join(
        part if _SIMPLE_FIELD.fullmatch(part) else "`" + part.replace("\\", "\\\\").replace("`", "\\`") + "`"
        for part in parts
    )


# --- values (the REST ``Value`` message; the mirror's data is JSON, so JSON's types are all it needs) ------------


def encode_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): encode(value) for key, value in data.items()}


def encode(value: Any) -> dict[str, Any]:
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, float):  # JSON has no infinities or NaN: the API reads them as these strings
        return {"doubleValue": value if math.isfinite(value) else _NON_FINITE[str(value)]}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Mapping):
        return {"mapValue": {"fields": encode_fields(value)}}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [encode(item) for item in value]}}
    raise TypeError(f"no Firestore value for {type(value).__name__}")


def decode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: decode(value) for key, value in fields.items()}


def decode(value: Mapping[str, Any]) -> Any:
    """A REST ``Value`` as a plain value (timestamps stay RFC 3339 strings, references full names)."""
    kind, inner = next(iter(value.items()))
    if kind == "integerValue":
        return int(inner)
    if kind == "doubleValue":
        return float(inner)
    if kind == "mapValue":
        return decode_fields(inner.get("fields", {}))
    if kind == "arrayValue":
        return [decode(item) for item in inner.get("values", [])]
    return inner  # nullValue, booleanValue, stringValue, timestampValue, referenceValue, bytesValue (base64)
