"""The relay serves only its deployment's database (``lockwise.core.deployment``; attack run 116): a staging relay
whose ``DATABASE_URL`` named production's database leased one of production's relay slots and claimed its commands
for staging's broker, where no production lock listens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from lockwise.core import log as lwlog
from lockwise.core import migrate
from mqtt_relay import slots
from tests.waiting import wait_for


def test_a_staging_relay_pointed_at_productions_database_leases_no_slot_and_says_why(
    e2e: dict[str, Any], relays: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LOCKWISE_MODE", "LOCKWISE_PROJECT_ID", "DATABASE_URL"):  # production's migration job has run
        monkeypatch.setenv(name, e2e["env"][name])
    monkeypatch.setattr(lwlog, "configure", lambda *_args, **_kwargs: None)
    assert migrate.main([]) == 0
    relay = relays(listening=False, LOCKWISE_PROJECT_ID="demo-lockwise-staging")
    report = f"http://127.0.0.1:{relay.port}/health"
    health = wait_for(  # a Response is false for a 503: its JSON is what is waited for
        lambda: (
            (h := requests.get(report, timeout=5).json())["checks"]["database"].get("error") == "wrong_deployment" and h
        ),
        what="the staging relay's health naming the wrong deployment",
    )
    assert health["status"] == "starting"
    with e2e["db"].connection() as con:
        leased = con.run(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND CAST(classid AS bigint) = :c",
            c=slots._LOCK_CLASS,
        )
    assert leased == [[0]]
