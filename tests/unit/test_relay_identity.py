"""The relay asks the metadata server for an identity token (audience, Metadata-Flavor) and reuses it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from mqtt_relay.identity import IdTokens


def test_token_is_fetched_with_the_audience_and_cached() -> None:
    calls: list[dict[str, Any]] = []

    class Metadata(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            calls.append({"query": parse_qs(urlparse(self.path).query), "flavor": self.headers.get("Metadata-Flavor")})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"eyJ.token.sig\n")

        def log_message(self, *args: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tokens = IdTokens(
            "https://devices-relay.example.run.app", url=f"http://127.0.0.1:{server.server_port}/identity"
        )
        assert tokens.header() == {"Authorization": "Bearer eyJ.token.sig"}
        assert tokens.header() == {"Authorization": "Bearer eyJ.token.sig"}
    finally:
        server.shutdown()
    assert len(calls) == 1
    assert calls[0]["flavor"] == "Google"
    assert calls[0]["query"]["audience"] == ["https://devices-relay.example.run.app"]
