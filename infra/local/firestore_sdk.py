"""The google-cloud-firestore client against the emulator: how tests, benchmarks and the local console read what the
functions wrote. The functions speak Firestore's REST API themselves (``lockwise.core.firestore``); reading their
writes back through Google's own client checks them against the library's meaning of each write, not against ours."""

from __future__ import annotations

import os
from typing import Any


def sdk_client(project_id: str, emulator_host: str) -> Any:
    """A ``google.cloud.firestore.Client`` for the emulator at ``emulator_host``, with anonymous credentials."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator_host
    return firestore.Client(project=project_id, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
