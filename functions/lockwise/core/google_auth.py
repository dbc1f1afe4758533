"""google-auth's HTTP transport over the standard library, for Application Default Credentials in production.

google-auth ships transports for requests and urllib3 only; either would be imported for nothing but the token
refresh (requests ~0.15 s at a cold start, measured). Its credentials need just this callable: one request, the
status, headers and body back, ``TransportError`` when the other side cannot be reached (the metadata server's
detection relies on that). Imported only where production credentials are made (``lockwise.core.google_api``).
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

from google.auth import exceptions, transport

DEFAULT_TIMEOUT_S = 10.0


class StdlibResponse(transport.Response):
    """The answer; its headers are read case-insensitively, as google-auth reads them (``headers["content-type"]``)."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, data: bytes) -> None:
        self._status, self._headers, self._data = status, headers, data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> http.client.HTTPMessage:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


class StdlibRequest(transport.Request):
    """One HTTP(S) request per call, on a fresh connection (token refreshes come once an hour)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> StdlibResponse:
        parts = urllib.parse.urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        con: http.client.HTTPConnection
        if parts.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()  # the system's CAs, loaded once (~30 ms)
            con = http.client.HTTPSConnection(parts.netloc, timeout=timeout or DEFAULT_TIMEOUT_S, context=self._tls)
        else:
            con = http.client.HTTPConnection(parts.netloc, timeout=timeout or DEFAULT_TIMEOUT_S)
        try:
            con.request(method, target, body=body, headers=dict(headers or {}))
            resp = con.getresponse()
            return StdlibResponse(resp.status, resp.headers, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            raise exceptions.TransportError(f"{type(exc).__name__}: {exc}") from exc  # type: ignore[no-untyped-call]
        finally:
            con.close()
