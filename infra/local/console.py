"""The web console, served locally as Firebase Hosting serves it: ``infra/hosting`` as static files, the API paths
rewritten to the functions (``firebase.json``'s rewrites: ``/embed``, ``/verify``, ``/devices`` and below), and the
reserved ``/__/firebase/init.json`` answering the project's configuration plus where the emulators listen.

``./dev stack`` runs it in its own process (a thread); tests start it the same way. Standard library only.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

HOSTING = Path(__file__).resolve().parents[1] / "hosting"
FIREBASE_JSON = HOSTING.parents[1] / "firebase.json"
SDK_BUNDLE = HOSTING / "vendor" / "firebase.js"
REWRITES = ("embed", "verify", "devices")
#: the largest body forwarded (the functions' own limit is below it: they answer 413 themselves)
MAX_BODY_BYTES = 64 * 1024 * 1024
#: not forwarded either way (RFC 9110 7.6.1), nor the Host the browser used
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "host")
)


class ConsoleNotBuilt(RuntimeError):
    """The Firebase JS SDK bundle is missing (``./dev setup`` builds it)."""


@dataclass
class Console:
    """``functions``: function name -> base URL (``http://127.0.0.1:8083``); ``init``: what init.json answers."""

    port: int
    functions: dict[str, str]
    init: dict[str, Any]
    host: str = "127.0.0.1"
    _server: http.server.ThreadingHTTPServer | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Console:
        if not SDK_BUNDLE.is_file():
            raise ConsoleNotBuilt(
                f"{SDK_BUNDLE.relative_to(HOSTING.parents[1])} is missing: run ./dev setup (it bundles the pinned "
                "Firebase JS SDK with esbuild)"
            )
        handler = partial(_Handler, self, directory=str(HOSTING))
        self._server = http.server.ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="console", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def emulator_init(project: str, auth_host: str, firestore_host: str) -> dict[str, Any]:
    """init.json for the emulators (the Auth emulator accepts any API key)."""
    fs_host, fs_port = firestore_host.rsplit(":", 1)
    return {
        "projectId": project,
        "apiKey": "local-emulator-key",
        "authDomain": f"{project}.firebaseapp.com",
        "emulators": {"auth": f"http://{auth_host}", "firestore": {"host": fs_host, "port": int(fs_port)}},
    }


@functools.cache
def hosting_headers() -> dict[str, str]:
    """The headers ``firebase.json`` has Hosting add to every file it serves (its ``"**"`` rule)."""
    rules = json.loads(FIREBASE_JSON.read_text())["hosting"].get("headers", [])
    return {h["key"]: h["value"] for rule in rules if rule["source"] == "**" for h in rule["headers"]}


def served_headers(init: dict[str, Any]) -> dict[str, str]:
    """``hosting_headers`` with the emulators ``init`` names (``emulator_init``) allowed to the page's connections:
    the SDK reaches them where the deployed page reaches Google's APIs (the policy's ``connect-src``)."""
    headers = dict(hosting_headers())
    emulators = init.get("emulators")
    policy = headers.get("Content-Security-Policy")
    if not emulators or policy is None:
        return headers
    firestore = emulators["firestore"]
    origins = [emulators["auth"].rstrip("/"), f"http://{firestore['host']}:{firestore['port']}"]
    directives = [d.strip() for d in policy.split(";")]
    headers["Content-Security-Policy"] = "; ".join(
        f"{d} {' '.join(origins)}" if d.split(" ", 1)[0] == "connect-src" else d for d in directives
    )
    return headers


class _Handler(http.server.SimpleHTTPRequestHandler):
    timeout = 30  # a client that sends nothing (or stops mid-body) is closed, not waited for

    def __init__(self, console: Console, *args: Any, **kwargs: Any) -> None:
        self.console = console
        super().__init__(*args, **kwargs)

    def end_headers(self) -> None:
        """Every static answer carries the headers Hosting adds (served_headers: firebase.json's, emulators let in)."""
        if not self._function():
            for key, value in served_headers(self.console.init).items():
                self.send_header(key, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the functions log the API calls; static files need no log

    def _function(self) -> str | None:
        first = urllib.parse.urlsplit(self.path).path.lstrip("/").split("/", 1)[0]
        return first if first in REWRITES else None

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path == "/__/firebase/init.json":
            body = json.dumps(self.console.init).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self._function():
            self._proxy()
        else:
            super().do_GET()

    def do_POST(self) -> None:
        self._proxy_or_404()

    def do_PUT(self) -> None:
        self._proxy_or_404()

    def do_PATCH(self) -> None:
        self._proxy_or_404()

    def do_DELETE(self) -> None:
        self._proxy_or_404()

    def _proxy_or_404(self) -> None:
        if self._function():
            self._proxy()
        else:
            self._refuse(404, "no_route", "only the functions' paths take this method here")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """An error in the API's shape (it was ``http.server``'s HTML page), the connection closed after it."""
        data = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _proxy(self) -> None:
        name = self._function()
        assert name is not None
        target = urllib.parse.urlsplit(self.console.functions[name])
        # a body by its Content-Length only: a chunked one was dropped (Transfer-Encoding is hop-by-hop) and the
        # function answered as if none came; a length of -1 read until the client closed, one not a number closed
        # the connection unanswered (attack run 58)
        if "Transfer-Encoding" in self.headers:
            self._refuse(411, "length_required", "send the body with a Content-Length, not chunked")
            return
        given = (self.headers.get("Content-Length") or "0").strip()
        if not (given.isascii() and given.isdigit()):
            self._refuse(400, "malformed_request", "Content-Length must be a whole number of bytes")
            return
        length = int(given)
        if length > MAX_BODY_BYTES:  # read whole into memory: 10 TB was a MemoryError, unanswered (a review)
            self._refuse(413, "payload_too_large", f"the console forwards bodies of at most {MAX_BODY_BYTES} bytes")
            return
        try:
            body = self.rfile.read(length) if length else None
        except OSError:  # the client stopped sending (the timeout)
            self.close_connection = True
            return
        if body is not None and len(body) < length:  # it half-closed before its length: forwarded, the function
            # waited for the rest (a review)
            self._refuse(400, "malformed_body", f"the body ended after {len(body)} of its {length} bytes")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            self._refuse(502, "function_unavailable", f"{name}: {exc}")
            return
        finally:
            conn.close()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
