"""Each function's health endpoint and the authenticated ``/devices/me`` through functions-framework."""

from __future__ import annotations

from typing import Any

import pytest

from lockwise.config import get_settings
from lockwise.runtime import get_runtime


@pytest.mark.parametrize("name", ["embed", "verify", "devices"])
def test_health_reports_version_and_dependencies(make_client: Any, name: str) -> None:
    resp = make_client(name).get(f"/{name}/health")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["service"] == name and body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["firestore"]["ok"]


def test_health_is_degraded_when_the_database_is_down(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.local.services import free_port

    monkeypatch.setenv("DATABASE_URL", f"postgresql://x:y@127.0.0.1:{free_port()}/none")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    resp = make_client("devices").get("/devices/health")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == {
        "ok": False,
        "error": "database_unavailable",
        "latency_ms": pytest.approx(body["checks"]["database"]["latency_ms"]),
    }


def test_me_requires_a_token(make_client: Any) -> None:
    client = make_client("devices")
    resp = client.get("/devices/me")
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "missing_token"
    resp = client.get("/devices/me", headers={"Authorization": "Bearer garbage"})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_token"


def test_me_records_the_user_in_postgres(make_client: Any, sign_up: Any) -> None:
    account = sign_up(email="me@example.com")
    resp = make_client("devices").get("/devices/me", headers={"Authorization": f"Bearer {account['idToken']}"})
    assert resp.status_code == 200
    assert resp.get_json() == {"uid": account["localId"], "email": "me@example.com"}
    with get_runtime("devices").db.connection() as con:
        assert con.run("SELECT email FROM users WHERE uid = :u", u=account["localId"]) == [["me@example.com"]]
