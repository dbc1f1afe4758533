"""Firestore for the app's live view (lock state, activity, enrollment status), spoken over its REST API (v1).

The mirror needs five calls: a commit of ordered writes, the versions of documents (a batch read of none of their
fields), a document read, a collection listing and a health read.
They go over the standard library's ``http.client`` (``lockwise.core.google_api``; already imported by the web
server), not the google-cloud-firestore client, which imports gRPC and protobuf: ~0.3 s on the first write or
health check of a cold instance, measured, and gRPC, protobuf and google-api-core in every bundle. The messages it
sends are made in ``lockwise.core.firestore_json``; ``tests/integration/test_firebase.py`` reads what it writes
with Google's library.

Production authenticates with Application Default Credentials (google-auth: the metadata server on Cloud Run, or a
key file) and the datastore scope; google-auth is imported only there (``google_api.default_credentials``).
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from typing import Any

from lockwise.core import google_api
from lockwise.core.errors import LockwiseError
from lockwise.core.firestore_json import decode_fields
from lockwise.core.google_api import Authorize

PRODUCTION_HOST = "firestore.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/datastore"
TIMEOUT_S = 3.0


class FirestoreError(LockwiseError):
    """Firestore answered with an error status, or could not be reached."""

    status, default_code = 503, "firestore_unavailable"


class FirestoreRefused(FirestoreError):
    """Firestore answered 400: the request itself is wrong (an invalid document name or value), so sending it again
    never succeeds."""


class FirestoreConflict(FirestoreError):
    """Firestore refused a commit because a document was not at the version a write's precondition named
    (``FAILED_PRECONDITION``, ``ALREADY_EXISTS``) or the commit met another one (``ABORTED``): the same writes
    may be taken once the documents' versions are read again."""


#: the statuses of a commit refused for the documents' state, not for what it says (``FirestoreConflict``)
CONFLICTS = frozenset({"FAILED_PRECONDITION", "ALREADY_EXISTS", "ABORTED"})
#: the one field a versions read asks for: no document has it, so the answer holds names and versions only
_NO_FIELD = "lockwise_version_only"


class Client:
    """One project's default database. Safe to share between threads (``google_api.GoogleApi``'s pool of kept-alive
    connections)."""

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
        self._api = google_api.GoogleApi("Firestore", host, authorize=authorize, tls=tls, timeout_s=timeout_s)

    def name(self, path: str) -> str:
        """The full resource name of the document or collection at ``path`` (``locks/abc``), as given (it once
        stripped a leading or trailing slash, so ``users/V/`` named ``users/V``; now Firestore refuses such a
        path, and ``lockwise.core.mirror`` queues none)."""
        return f"{self.database}/documents/{path}"

    def commit(self, writes: list[dict[str, Any]]) -> None:
        """Apply ``writes`` (``lockwise.core.firestore_json``'s ``Write`` messages) in order, all or none."""
        if writes:
            self._call("POST", f"/v1/{self.database}/documents:commit", {"writes": writes})

    def versions(self, paths: list[str]) -> dict[str, str | None]:
        """Each document's ``updateTime`` (its version, as a write's precondition names it), None for one that does
        not exist: one batch read of none of their fields."""
        if not paths:
            return {}
        names = {self.name(path): path for path in paths}
        body = {"documents": list(names), "mask": {"fieldPaths": [_NO_FIELD]}}
        status, found = self._call_json("POST", f"/v1/{self.database}/documents:batchGet", body)
        if not isinstance(found, list):
            raise FirestoreError(f"Firestore answered {status} to a batch read with JSON that is not a list")
        versions: dict[str, str | None] = {}
        for item in found:  # each of the shape Firestore answers, or not its answer (attack run 92: an item of
            # another shape raised a TypeError, which the mirror took for Firestore refusing its writes for good)
            doc = item.get("found") if isinstance(item, dict) else None
            missing = item.get("missing") if isinstance(item, dict) else None
            if isinstance(doc, dict) and _text(doc.get("name")) in names and _text(doc.get("updateTime")):
                versions[names[doc["name"]]] = doc["updateTime"]
            elif _text(missing) in names:
                versions[names[_text(missing)]] = None
        if len(versions) != len(names):
            raise FirestoreError("Firestore's batch read did not answer for every document")
        return versions

    def get(self, path: str) -> dict[str, Any] | None:
        """The document's fields as plain values, or None when it does not exist."""
        found = self._call("GET", _target(self.name(path)), missing_ok=True)
        return None if found is None else decode_fields(found.get("fields", {}))

    def list_versions(self, collection_path: str, page_size: int) -> list[tuple[str, str]]:
        """The full names and versions (``updateTime``) of up to ``page_size`` documents of the collection, none of
        their fields (the mask names a field no document has: one naming only ``__name__`` is what the emulator
        takes, not what production's documentation promises)."""
        query = urllib.parse.urlencode({"pageSize": page_size, "mask.fieldPaths": _NO_FIELD})
        found = self._call("GET", f"{_target(self.name(collection_path))}?{query}")
        documents = (found or {}).get("documents", [])
        listed = [
            (doc.get("name"), doc.get("updateTime")) if isinstance(doc, dict) else (None, None)
            for doc in (documents if isinstance(documents, list) else [None])
        ]
        if not all(_text(name) and _text(version) for name, version in listed):
            raise FirestoreError("Firestore answered a listing with documents of another shape")
        return [(str(name), str(version)) for name, version in listed]

    def query(
        self,
        collection_id: str,
        page_size: int,
        *,
        group: bool = False,
        order_by: str | None = None,
        start: str | None = None,
        after: tuple[str | None, str] | None = None,
        names_only: bool = False,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``page_size`` documents (full name, fields as plain values) of the collection ``collection_id`` at
        the root, or of every collection of that name (``group``), in order of ``order_by`` (a string field) then
        name: those whose field is ``start`` or later, or those after ``after`` (the last one's field, name)."""
        order = ([{"field": {"fieldPath": order_by}}] if order_by else []) + [{"field": {"fieldPath": "__name__"}}]
        query: dict[str, Any] = {
            "from": [{"collectionId": collection_id, "allDescendants": group}],
            "orderBy": order,
            "limit": page_size,
        }
        if names_only:
            query["select"] = {"fields": [{"fieldPath": "__name__"}]}
        if after is not None:
            value, name = after
            values = ([] if order_by is None else [{"stringValue": value}]) + [{"referenceValue": name}]
            query["startAt"] = {"values": values, "before": False}
        elif start is not None and order_by is not None:
            query["startAt"] = {"values": [{"stringValue": start}], "before": True}
        status, found = self._call_json("POST", f"/v1/{self.database}/documents:runQuery", {"structuredQuery": query})
        if not isinstance(found, list):
            raise FirestoreError(f"Firestore answered {status} to a query with JSON that is not a list")
        return [
            (str(item["document"]["name"]), decode_fields(item["document"].get("fields", {})))
            for item in found
            if isinstance(item, dict) and isinstance(item.get("document"), dict) and "name" in item["document"]
        ]

    def close(self) -> None:
        self._api.close()

    def _call(
        self, method: str, target: str, body: dict[str, Any] | None = None, *, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        status, found = self._call_json(method, target, body, missing_ok=missing_ok)
        if found is not None and not isinstance(found, dict):
            raise FirestoreError(f"Firestore answered {status} with JSON that is not an object")
        return found

    def _call_json(
        self, method: str, target: str, body: dict[str, Any] | None = None, *, missing_ok: bool = False
    ) -> tuple[int, Any]:
        """The answer's status and its JSON (None: a missing document, with ``missing_ok``)."""
        try:
            status, data = self._api.call(method, target, body)
        except google_api.Unavailable as exc:
            raise FirestoreError(str(exc)) from exc
        if status == 404 and missing_ok:
            return status, None
        if status >= 400:
            error = f"Firestore answered {status}: {_error_message(data)}"
            if _error_status(data) in CONFLICTS:
                raise FirestoreConflict(error)
            raise (FirestoreRefused if status == 400 else FirestoreError)(error)
        try:
            return status, json.loads(data) if data else {}
        except (ValueError, RecursionError) as exc:  # something between us and Firestore answered (a proxy's error
            # page; JSON nested past the parser's depth: attack run 92)
            raise FirestoreError(f"Firestore answered {status} with a body that is not JSON") from exc


def _text(value: object) -> str:
    """``value`` when it is a string, else "" (no name or version Firestore answers)."""
    return value if isinstance(value, str) else ""


def _target(name: str) -> str:
    """The URL path of a resource name: each segment percent-encoded (a document id may hold any character but /)."""
    return "/v1/" + urllib.parse.quote(name, safe="/()")


def _error_status(data: bytes) -> str | None:
    """The canonical code of an error answer (``FAILED_PRECONDITION``), if it names one."""
    try:
        return str(json.loads(data)["error"]["status"])
    except (ValueError, KeyError, TypeError):
        return None


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return data[:300].decode(errors="replace")


def make_client(project_id: str, emulator_host: str | None) -> Client:
    """The client for ``project_id``: the emulator's at ``emulator_host`` when set, else production's with
    Application Default Credentials."""
    if emulator_host:
        return Client(project_id, emulator_host, authorize=google_api.emulator_owner)
    tls = ssl.create_default_context()  # loads the system's CAs (~30 ms): once, for Firestore and token refreshes
    authorize = google_api.default_credentials(tls, scope=SCOPE, host=PRODUCTION_HOST)
    return Client(project_id, PRODUCTION_HOST, authorize=authorize, tls=tls)


def ping(client: Client) -> None:
    """A cheap read that fails when Firestore cannot be reached (the document need not exist)."""
    client.get("_health/ping")
