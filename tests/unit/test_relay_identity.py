"""The relay asks the metadata server for an identity token (audience, Metadata-Flavor) and reuses it."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

from mqtt_relay.identity import IdTokens
from tests.http_stubs import StubHandler, serving


def test_token_is_fetched_with_the_audience_and_cached() -> None:
    calls: list[dict[str, Any]] = []

    class Metadata(StubHandler):
        def do_GET(self) -> None:  # noqa: N802
            calls.append({"query": parse_qs(urlparse(self.path).query), "flavor": self.headers.get("Metadata-Flavor")})
            self.answer(200, b"eyJ.token.sig\n")

    with serving(Metadata) as url:
        tokens = IdTokens("https://devices-relay.example.run.app", url=f"{url}/identity")
        assert tokens.header() == {"Authorization": "Bearer eyJ.token.sig"}
        assert tokens.header() == {"Authorization": "Bearer eyJ.token.sig"}
    assert len(calls) == 1
    assert calls[0]["flavor"] == "Google"
    assert calls[0]["query"]["audience"] == ["https://devices-relay.example.run.app"]
