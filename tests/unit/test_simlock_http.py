"""The reference lock (``simlock``) follows no redirect with a signed request, as docs/FIRMWARE.md ("Conventions")
asks of firmware, and connects over TLS whatever its pairing answer says (attack run 115)."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from lockwise.devices import lock_auth
from simlock.lock import LockConfig, SimulatedLock


class Server:
    """An HTTP server on this machine that records each request's headers and answers ``status`` (with
    ``location``) and ``body`` (JSON)."""

    def __init__(self, status: int = 200, location: str = "", body: Any = None) -> None:
        payload = json.dumps({} if body is None else body).encode()
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                server.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = answer  # noqa: N815 (http.server's names)

            def log_message(self, *_: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """``elsewhere``, and ``api``, whose every answer is a redirect there."""
    elsewhere = Server()
    api = Server(302, f"{elsewhere.url}/devices/lock/config")
    yield api, elsewhere
    for s in (api, elsewhere):
        s.http.shutdown()


def a_lock(monkeypatch: pytest.MonkeyPatch) -> tuple[SimulatedLock, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    config = LockConfig(
        lock_id=str(uuid.uuid4()),
        identity="lk-test",
        cert_pem="",
        key_pem="",
        host="127.0.0.1",
        port=1,
        ca_file="",
        signing_key_b64=base64.b64encode(seed).decode(),
    )
    monkeypatch.setattr(SimulatedLock, "_new_client", lambda _self: None)  # never connected here
    return SimulatedLock(config), key


def test_the_reference_lock_follows_no_redirect_with_its_signed_headers(
    monkeypatch: pytest.MonkeyPatch, servers: tuple[Server, Server]
) -> None:
    api, elsewhere = servers
    lock, key = a_lock(monkeypatch)
    status, _answer = lock.signed_request(api.url, "GET", "/devices/lock/config")
    [(method, path, headers)] = api.seen
    assert (method, path) == ("GET", "/devices/lock/config")
    # what a redirect's target was sent: a signature the server takes for the lock's GET /devices/lock/config for as
    # long as the clock skew allows, its nonce never spent there (the lock's request ended at the redirect)
    for h in (h for _m, _p, h in elsewhere.seen if "x-lockwise-signature" in h):
        signed = lock_auth.message("GET", "/devices/lock/config", h["x-lockwise-timestamp"], h["x-lockwise-nonce"], b"")
        key.public_key().verify(base64.b64decode(h["x-lockwise-signature"]), signed)  # raises if not
        assert h["x-lockwise-lock"] == lock.config.lock_id
    assert elsewhere.seen == [], "the signed request was sent on to where the redirect pointed"
    assert status == 302


def test_the_reference_lock_pairs_over_tls_only() -> None:
    """A pairing answer that does not say ``tls`` true is no pairing: the broker takes TLS alone, and a lock that read
    the field as a choice sent its session in clear to whoever answered in the server's place."""
    from simlock.lock import provision

    def answer(tls: Any) -> dict[str, Any]:
        mqtt = {"client_id": "lk-x", "certificate": "", "host": "broker.example", "port": 8883, "tls": tls}
        return {"lock_id": str(uuid.uuid4()), "server_public_key": "", "mqtt": mqtt}

    for tls in (False, None, "true", 1):
        server = Server(201, body=answer(tls))
        try:
            with pytest.raises(ValueError, match="TLS only"):
                provision(server.url, "CODE", "")
        finally:
            server.http.shutdown()
    server = Server(201, body=answer(True))
    try:
        assert provision(server.url, "CODE", "").host == "broker.example"
    finally:
        server.http.shutdown()
