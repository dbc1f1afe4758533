"""The Firestore client for the app's live view (lock state, activity, enrollment status).

``google.cloud.firestore`` is imported lazily: it pulls in gRPC, which a cold start should pay for only when a
request really writes to Firestore. Against the emulator the client uses anonymous credentials.
"""

from __future__ import annotations

import os
from typing import Any


def make_client(project_id: str, emulator_host: str | None) -> Any:
    """A ``google.cloud.firestore.Client`` for ``project_id`` (the emulator's when ``emulator_host`` is set)."""
    from google.cloud import firestore

    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        os.environ["FIRESTORE_EMULATOR_HOST"] = emulator_host
        return firestore.Client(project=project_id, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    return firestore.Client(project=project_id)


def ping(client: Any, timeout_s: float = 3.0) -> None:
    """A cheap read that fails when Firestore cannot be reached."""
    client.collection("_health").document("ping").get(timeout=timeout_s)
