"""How the simulated lock sends its HTTP requests, as docs/FIRMWARE.md ("Conventions") asks of firmware: it follows
no redirect. The API sends none; one that came from anyone else (a proxy, whoever answered in the server's place)
had the lock send its signed headers there, with the method and path they sign, or its pairing code in a body the
redirect kept (307, 308), read wherever it pointed, over plain HTTP too (attack run 115: a signed GET of the lock's
configuration went on with its signature, good at the server for the clock skew, its nonce never spent there)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from email.message import Message
from typing import IO, Any


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as it is: its status, not the request sent again elsewhere."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        return None


_OPENER = urllib.request.build_opener(NoRedirect)


def open_url(req: urllib.request.Request, timeout: float) -> Any:
    """``urllib.request.urlopen`` without redirects: an answer of 300 or more raises ``HTTPError``."""
    return _OPENER.open(req, timeout=timeout)


def send(req: urllib.request.Request, timeout: float) -> tuple[int, Any]:
    """``(status, its JSON body, or None when it has none or is not JSON)``: a redirect's status too."""
    try:
        with open_url(req, timeout) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _json(data: bytes) -> Any:
    try:
        return json.loads(data or b"null")
    except ValueError:
        return None
