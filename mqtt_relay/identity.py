"""Google identity tokens for calling an internal (IAM-protected) devices service from the relay.

On Cloud Run the relay's service account gets an ID token for ``audience`` from the metadata server; the token is
sent as ``Authorization: Bearer`` next to the LockWise service token, and refreshed before its hour is up.
``GCE_METADATA_HOST`` moves the metadata server, as it does for Google's own client libraries (the production
rehearsal points it at a local stand-in; only a real cloud proves the IAM check behind it).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
import urllib.request

METADATA_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
METADATA_URL = f"http://{os.environ.get('GCE_METADATA_HOST') or 'metadata.google.internal'}{METADATA_PATH}"
REFRESH_AFTER_S = 50 * 60


class IdTokens:
    def __init__(self, audience: str, url: str = METADATA_URL) -> None:
        self.audience = audience
        self.url = url
        self._token: str | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() - self._fetched > REFRESH_AFTER_S:
                query = urllib.parse.urlencode({"audience": self.audience, "format": "full"})
                req = urllib.request.Request(f"{self.url}?{query}", headers={"Metadata-Flavor": "Google"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    self._token = resp.read().decode().strip()
                self._fetched = time.monotonic()
            return {"Authorization": f"Bearer {self._token}"}
