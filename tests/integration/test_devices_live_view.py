"""The app's live view in Firestore: lock documents and activity after state changes, convergence after a Firestore
outage, and the security rules (members read their locks; nobody else reads; clients write nothing)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest

from infra.local import services
from infra.local.firestore_sdk import sdk_client as firestore_client
from lockwise.core import mirror
from lockwise.core.config import get_settings
from lockwise.core.runtime import get_runtime
from lockwise.devices import broker_restarts, lock_events, members
from tests.conftest import PROJECT_ID
from tests.devices_world import (
    World,
    bearer,
    build_world,
    command_nonce,
    create_lock,
    custom_token_sign_in,
    google_sign_in,
    hand_over,
    join,
    pair_again,
    provision,
)
from tests.waiting import wait_for


def relay_event(world: World, service_token: str, topic_kind: str, payload: Any, run: Any = None) -> dict[str, Any]:
    body = {
        "topic": f"lockwise/{world.credentials['mqtt']['client_id']}/{topic_kind}",
        "payload": payload if isinstance(payload, str) else json.dumps(payload),
        **({} if run is None else {"run": run}),
    }
    resp = world.devices.post(
        "/devices/relay/events", json={"events": [body]}, headers={"X-LockWise-Service-Token": service_token}
    )
    assert resp.status_code == 200, resp.get_json()
    result: dict[str, Any] = resp.get_json()["results"][0]
    return result


def wait_until_mirrored(lock_id: str) -> None:
    """Until no write of the lock's documents is queued: another instance's flush (the stack's devices server, on the
    relay's periodic flush) may hold rows this process's request flush skipped, and write them a moment later."""

    def queued() -> int:
        with get_runtime("devices").db.connection() as con:
            ((n,),) = con.run(
                "SELECT count(*) FROM firestore_outbox WHERE doc_path LIKE :p AND refused_at IS NULL",
                p=f"locks/{lock_id}%",
            )
        return int(n)

    wait_for(lambda: queued() == 0 or None, what="the lock's mirror writes flushed")


@pytest.fixture
def world(make_client: Any, sign_up: Any) -> World:
    return build_world(make_client("devices"), sign_up)


def test_state_change_updates_the_lock_document_and_feed(world: World, stack_env: dict[str, str]) -> None:
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    now = time.time()
    assert relay_event(
        world, token, "state", {"state": "unlocked", "battery_pct": 64, "firmware": "2.1", "ts": now}
    ) == {"outcome": "applied"}
    # a redelivered (older or equal) report changes nothing
    assert relay_event(world, token, "state", {"state": "locked", "ts": now - 5})["outcome"] == "stale"
    assert relay_event(world, token, "status", "offline")["outcome"] == "applied"
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])

    def mirrored() -> dict[str, Any] | None:  # relay events are mirrored after the answer, not before it
        doc: dict[str, Any] | None = client.document(f"locks/{world.lock_id}").get().to_dict()
        kinds = {d.to_dict()["kind"] for d in client.collection(f"locks/{world.lock_id}/activity").stream()}
        return doc if doc and doc.get("online") is False and {"state", "offline"} <= kinds else None

    doc = wait_for(mirrored, what="the lock document and feed mirrored")
    assert doc["state"] == "unlocked" and doc["battery_pct"] == 64 and doc["firmware"] == "2.1"
    assert doc["online"] is False and doc["name"] == "Front door"
    assert doc["member_uids"] == [] and doc["access"] == {}  # who and until when: in the access documents
    kinds = [d.to_dict()["kind"] for d in client.collection(f"locks/{world.lock_id}/activity").stream()]
    assert "state" in kinds and "offline" in kinds and "member_removed" in kinds
    soon, late = (dt.datetime.now(dt.UTC) + mirror.FEED_KEPT + dt.timedelta(minutes=m) for m in (-5, 5))
    for entry in client.collection(f"locks/{world.lock_id}/activity").stream():
        assert not {"embedding", "score", "audio"} & set(entry.to_dict())
        # a timestamp Firestore's TTL policy deletes the entry after (infra/firestore.indexes.json)
        assert soon < entry.to_dict()["expires_at"] < late
    view = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("member")).get_json()
    assert view["state"]["state"] == "unlocked" and view["state"]["online"] is False


def test_bad_events_are_rejected_not_failed(world: World, stack_env: dict[str, str]) -> None:
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    assert relay_event(world, token, "state", {"state": "exploded", "ts": time.time()})["outcome"] == "rejected"
    assert relay_event(world, token, "state", "not json")["outcome"] == "rejected"
    assert relay_event(world, token, "status", "sleepy")["outcome"] == "rejected"
    for firmware in ("\u202ex", "1.0\u0007", "1.\u200b0"):  # shown to every member as the lock wrote it
        assert relay_event(world, token, "state", {"state": "locked", "firmware": firmware, "ts": 5})["outcome"] == (
            "rejected"
        )
    assert relay_event(world, token, "ack", {"id": "nope", "nonce": "n", "result": "ok"})["outcome"] == "rejected"
    resp = world.devices.post(
        "/devices/relay/events",
        json={"events": [{"topic": "lockwise/unknown-lock-0001/state", "payload": "{}"}, "junk"]},
        headers={"X-LockWise-Service-Token": token},
    )
    assert [r["outcome"] for r in resp.get_json()["results"]] == ["rejected", "rejected"]
    resp = world.devices.post("/devices/relay/events", json={"events": []}, headers={"X-LockWise-Service-Token": token})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_events"
    # a field this function does not know (a relay deployed ahead of it) is let be, where the app's bodies are
    # refused (400 unknown_field): a batch refused whole would be split and its events dropped by the relay
    event = {"topic": f"lockwise/{world.credentials['mqtt']['client_id']}/status", "payload": "online"}
    resp = world.devices.post(
        "/devices/relay/events",
        json={"events": [event], "relay_version": 2},
        headers={"X-LockWise-Service-Token": token},
    )
    assert resp.status_code == 200 and [r["outcome"] for r in resp.get_json()["results"]] == ["applied"]


def test_a_locks_raw_nul_or_bad_text_is_judged_with_its_event_not_the_batch(
    world: World, stack_env: dict[str, str], make_client: Any, sign_up: Any
) -> None:
    """MQTT payloads may hold NUL bytes and the relay passes them on: the body's text check refused the whole batch
    (400 invalid_text), and the relay split it in halves down to each such event (999 requests for 499 of them in a
    batch of 500, every other lock's events waiting behind), then dropped them unrecorded. Each is now rejected with
    its event and kept for an operator; the other events of the batch are applied."""
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    other = build_world(make_client("devices"), sign_up)
    mine, theirs = world.credentials["mqtt"]["client_id"], other.credentials["mqtt"]["client_id"]
    events = [
        {"topic": f"lockwise/{mine}/status", "payload": "on\x00line"},
        {"topic": f"lockwise/{mine}/state", "payload": '{"state": "locked", "firmware": "a\x00b", "ts": 1}'},
        {"topic": f"lockwise/{mine}/st\x00ate", "payload": "{}"},
        {"topic": f"lockwise/{mine}/status", "payload": "\ud800"},
        {"topic": f"lockwise/{theirs}/state", "payload": json.dumps({"state": "unlocked", "ts": time.time()})},
    ]
    resp = world.devices.post("/devices/relay/events", json={"events": events}, headers=token)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert [r["outcome"] for r in resp.get_json()["results"]] == ["rejected"] * 4 + ["applied"]
    with get_runtime("devices").db.connection() as con:
        kept = con.run(
            "SELECT topic, payload_excerpt FROM lock_event_rejects WHERE topic LIKE :t", t=f"lockwise/{mine}/%"
        )
    assert len(kept) == 4 and any("\\0" in excerpt for _, excerpt in kept), kept


def test_a_batch_judges_each_report_against_the_ones_before_it_in_the_same_batch(
    world: World, stack_env: dict[str, str]
) -> None:
    """A batch reads the lock's row once and writes it once: each event must still see what the events before it
    left (an older report after a newer one is stale, a report without battery keeps the last one, a report after
    "offline" brings the lock back online), exactly as if the events had come one by one."""
    topic = f"lockwise/{world.credentials['mqtt']['client_id']}"
    t = time.time()
    events = [
        (f"{topic}/state", json.dumps({"state": "unlocked", "battery_pct": 10, "firmware": "a", "ts": t})),
        (f"{topic}/state", json.dumps({"state": "jammed", "battery_pct": 99, "ts": t - 1})),
        (f"{topic}/status", "offline"),
        (f"{topic}/state", json.dumps({"state": "locked", "ts": t + 1})),
        (f"{topic}/state", json.dumps({"state": "unlocked", "ts": t + 1})),
    ]
    resp = world.devices.post(
        "/devices/relay/events",
        json={"events": [{"topic": topic_, "payload": payload} for topic_, payload in events]},
        headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
    )
    assert [r["outcome"] for r in resp.get_json()["results"]] == ["applied", "stale", "applied", "applied", "stale"]
    with get_runtime("devices").db.connection() as con:
        (row,) = con.run(
            "SELECT state, battery_pct, firmware, online, EXTRACT(EPOCH FROM reported_at) FROM lock_state"
            " WHERE lock_id = CAST(:l AS uuid)",
            l=world.lock_id,
        )
    assert row[:4] == ["locked", 10, "a", True]
    assert abs(float(row[4]) - (t + 1)) < 1e-3


def test_a_report_that_comes_after_a_newer_one_is_listed_once_as_late_and_changes_no_state(
    world: World, stack_env: dict[str, str]
) -> None:
    """Reports of one lock can reach the back-end out of order (the broker redelivers, a flood passes the relay's
    receive window): a late one must not undo the newer state, yet the app's feed must not lose it, nor list a
    report twice however often it is delivered (a redelivery after a relay restart)."""
    topic = f"lockwise/{world.credentials['mqtt']['client_id']}/state"
    t = round(time.time(), 3)

    def send(*reports: tuple[str, float]) -> list[str]:
        resp = world.devices.post(
            "/devices/relay/events",
            json={"events": [{"topic": topic, "payload": json.dumps({"state": s, "ts": ts})} for s, ts in reports]},
            headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
        )
        assert resp.status_code == 200, resp.get_json()
        return [r["outcome"] for r in resp.get_json()["results"]]

    assert send(("unlocking", t - 2), ("locked", t)) == ["applied", "applied"]
    assert send(("unlocked", t - 1), ("unlocked", t - 1)) == ["stale", "stale"]  # late, and delivered twice
    assert send(("unlocking", t - 2), ("locked", t)) == ["stale", "stale"]  # both delivered again
    assert send(("unlocked", t)) == ["stale"]  # the same moment as the applied one, another state: late too
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    wait_until_mirrored(world.lock_id)
    entries = [d.to_dict() for d in client.collection(f"locks/{world.lock_id}/activity").stream()]
    entries = sorted(
        (e for e in entries if e["kind"] == "state"), key=lambda e: (e["reported_at"], e.get("late", False))
    )
    assert [(e["state"], e.get("late", False)) for e in entries] == [
        ("unlocking", False),  # delivered again after a newer one: known, its entry left as it was
        ("unlocked", True),
        ("locked", False),
        ("unlocked", True),
    ]
    assert [dt.datetime.fromisoformat(e["reported_at"]).timestamp() for e in entries] == pytest.approx(
        [t - 2, t - 1, t, t], abs=1e-3
    )
    with get_runtime("devices").db.connection() as con:  # each report taken once: charged once on the feed budget
        ((listed,),) = con.run("SELECT feed_entries FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    assert listed == 4
    doc = client.document(f"locks/{world.lock_id}").get().to_dict() or {}
    assert doc.get("state") == "locked"
    view = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("member")).get_json()
    assert view["state"]["state"] == "locked"


def test_an_event_the_database_refuses_is_rejected_alone_and_the_rest_of_its_batch_applies(
    world: World, stack_env: dict[str, str]
) -> None:
    """A batch runs under one savepoint; when one event makes PostgreSQL raise (here a trigger refuses one firmware
    string), the batch is rolled back and applied again one savepoint per event: that event alone is rejected and
    undone, the events before and after it are applied once (not twice: a second application would be "stale")."""
    db = get_runtime("devices").db
    with db.transaction() as con:
        con.run(
            "CREATE OR REPLACE FUNCTION test_refuse_firmware() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$"
        )
        con.run(
            "CREATE TRIGGER test_refuse_firmware BEFORE UPDATE ON lock_state FOR EACH ROW"
            " WHEN (NEW.firmware = 'refuse-me') EXECUTE FUNCTION test_refuse_firmware()"
        )
    try:
        topic = f"lockwise/{world.credentials['mqtt']['client_id']}/state"
        feed = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"]).collection(
            f"locks/{world.lock_id}/activity"
        )
        states_before = sum(1 for d in feed.stream() if d.to_dict()["kind"] == "state")
        t = time.time()
        reports = [
            {"state": "locked", "battery_pct": 11, "ts": t},
            {"state": "unlocked", "firmware": "refuse-me", "ts": t + 1},
            {"state": "locked", "battery_pct": 77, "ts": t + 2},
        ]
        resp = world.devices.post(
            "/devices/relay/events",
            json={"events": [{"topic": topic, "payload": json.dumps(r)} for r in reports]},
            headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
        )
        results = resp.get_json()["results"]
        assert [r["outcome"] for r in results] == ["applied", "rejected", "applied"], results
        assert results[1]["reason"] == "the event could not be applied"
        with db.connection() as con:
            (row,) = con.run(
                "SELECT battery_pct, firmware, state FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id
            )
            parked = con.run("SELECT count(*) FROM lock_event_rejects WHERE payload_excerpt LIKE '%refuse-me%'")
        assert row[0] == 77 and row[1] != "refuse-me" and row[2] == "locked"
        assert parked[0][0] >= 1
        wait_for(
            lambda: sum(1 for d in feed.stream() if d.to_dict()["kind"] == "state") == states_before + 2,
            what="two state entries in the feed, none for the refused event",
        )
    finally:
        with db.transaction() as con:
            con.run("DROP TRIGGER IF EXISTS test_refuse_firmware ON lock_state")
            con.run("DROP FUNCTION IF EXISTS test_refuse_firmware()")


@pytest.fixture
def flaky_firestore(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, stack_env: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """A Firestore emulator of this test's own, which the test can stop and start again on the same port."""
    port = services.free_port()
    state: dict[str, Any] = {"emulator": services.start_firestore(workdir / "flaky", port, PROJECT_ID), "port": port}
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{port}")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    yield state
    state["emulator"].stop()


def test_view_converges_after_a_firestore_outage(
    flaky_firestore: dict[str, Any], make_client: Any, sign_up: Any, stack_env: dict[str, str], workdir: Path
) -> None:
    world = build_world(make_client("devices"), sign_up)
    flaky_firestore["emulator"].stop()  # outage
    started = time.monotonic()
    result = relay_event(world, stack_env["LOCKWISE_SERVICE_TOKEN"], "state", {"state": "jammed", "ts": time.time()})
    assert result == {"outcome": "applied"}, "a Firestore outage must not block the PostgreSQL commit"
    assert time.monotonic() - started < 10
    assert get_runtime("devices").mirror.pending() > 0
    view = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("owner")).get_json()
    assert view["state"]["state"] == "jammed"
    newcomer = sign_up()
    world.devices.get("/devices/me", headers={"Authorization": f"Bearer {newcomer['idToken']}"})
    join(world.devices, world.lock_id, world.accounts["owner"], newcomer, {"role": "member"})
    # the emulator keeps data in memory: what it held before the outage is gone, what was queued must arrive
    flaky_firestore["emulator"] = services.start_firestore(workdir / "flaky", flaky_firestore["port"], PROJECT_ID)
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}

    def flushed() -> bool:  # what the relay does every few seconds, until the queue is empty
        resp = world.devices.post("/devices/relay/flush", headers=token)
        return bool(resp.status_code == 200 and resp.get_json()["pending"] == 0)

    wait_for(flushed, timeout=20)
    client = firestore_client(PROJECT_ID, f"127.0.0.1:{flaky_firestore['port']}")
    doc = client.document(f"locks/{world.lock_id}").get().to_dict()
    access = client.document(f"locks/{world.lock_id}/access/{newcomer['localId']}").get()
    assert doc["state"] == "jammed" and access.exists


def test_a_firestore_that_does_not_answer_holds_up_one_request_not_one_every_few_seconds(
    flaky_firestore: dict[str, Any], make_client: Any, sign_up: Any, stack_env: dict[str, str], monkeypatch: Any
) -> None:
    """A Firestore that takes connections and answers nothing (the emulator stopped with SIGSTOP) held an answer
    for the client's timeout (3 s) once every ``mirror.BACKOFF_S`` (5 s) on each instance, for as long as it lasted:
    each request that found the back-off over tried again itself. Now the request that finds it failing is the only
    one that waits; the others leave their rows to a background flush, and every row arrives once it answers."""
    world = build_world(make_client("devices"), sign_up)
    owner, lock = world.headers("owner"), world.lock_id
    tried_by_requests: list[str] = []
    write = mirror._write

    def watched(client: Any, group: Any) -> None:
        if threading.current_thread().name != "mirror-flush":
            tried_by_requests.append(threading.current_thread().name)
        write(client, group)

    monkeypatch.setattr(mirror, "_write", watched)
    group_id = flaky_firestore["emulator"].process.popen.pid
    os.killpg(group_id, signal.SIGSTOP)
    try:
        renamed = 0
        until = time.monotonic() + 2.5 * mirror.BACKOFF_S
        while time.monotonic() < until:
            renamed += 1
            resp = world.devices.patch(f"/devices/locks/{lock}", json={"name": f"Door {renamed}"}, headers=owner)
            assert resp.status_code == 200, resp.get_json()
            time.sleep(0.5)
    finally:
        os.killpg(group_id, signal.SIGCONT)
    # requests went on past each back-off's end (12 or so; a loaded machine's slower requests fit fewer)
    assert renamed >= 6 and len(tried_by_requests) == 1, tried_by_requests  # before: 2-3, one every 5 s
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}

    def flushed() -> bool:
        resp = world.devices.post("/devices/relay/flush", headers=token)
        return bool(resp.status_code == 200 and resp.get_json()["pending"] == 0)

    wait_for(flushed, timeout=30)
    client = firestore_client(PROJECT_ID, f"127.0.0.1:{flaky_firestore['port']}")
    assert client.document(f"locks/{lock}").get().to_dict()["name"] == f"Door {renamed}"


# ------------------------------------------------------------------------------------------------- rules


def rest_get(host: str, path: str, token: str | None) -> int:
    url = f"http://{host}/v1/projects/{PROJECT_ID}/databases/(default)/documents/{path}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def rest_write(host: str, path: str, token: str) -> int:
    url = f"http://{host}/v1/projects/{PROJECT_ID}/databases/(default)/documents/{path}"
    body = json.dumps({"fields": {"state": {"stringValue": "unlocked"}}}).encode()
    req = urllib.request.Request(
        url, data=body, method="PATCH", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def rest_query(host: str, lock_id: str, token: str, where: dict[str, Any] | None = None) -> tuple[int, list[Any]]:
    """A list query of the lock's activity feed through the REST API, as a client under the rules: status, entries."""
    url = f"http://{host}/v1/projects/{PROJECT_ID}/databases/(default)/documents/locks/{lock_id}:runQuery"
    query: dict[str, Any] = {
        "from": [{"collectionId": "activity"}],
        "orderBy": [{"field": {"fieldPath": "at"}, "direction": "DESCENDING"}],
        "limit": 100,
    }
    if where:
        query["where"] = {"fieldFilter": where}
    req = urllib.request.Request(
        url,
        data=json.dumps({"structuredQuery": query}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            rows = json.loads(resp.read())
            return int(resp.status), [r["document"]["fields"] for r in rows if "document" in r]
    except urllib.error.HTTPError as exc:
        return exc.code, []


def ended(access: dict[str, Any] | None) -> bool:
    """Whether a member's access document is one a former member's was written over with (``mirror.access_ended``):
    the rules let nothing be read with it, and Firestore deletes it a day on."""
    if not access or "ended" not in access:
        return False
    assert access["ended"] is True and access["expires_ms"] == 0 and access["role"] == "", access
    assert isinstance(access["purge_at"], dt.datetime), access
    return True


def naming(uid: str) -> dict[str, Any]:
    return {"field": {"fieldPath": "about"}, "op": "ARRAY_CONTAINS", "value": {"stringValue": uid}}


EVERYONE = {"field": {"fieldPath": "audience"}, "op": "EQUAL", "value": {"stringValue": "everyone"}}


def test_rules_let_members_read_and_nobody_else(world: World, stack_env: dict[str, str]) -> None:
    host = stack_env["FIRESTORE_EMULATOR_HOST"]
    lock_doc = f"locks/{world.lock_id}"
    client = firestore_client(PROJECT_ID, host)
    relay_event(world, stack_env["LOCKWISE_SERVICE_TOKEN"], "state", {"state": "locked", "ts": time.time()})
    flushed = wait_for(
        lambda: [e for e in client.collection(f"{lock_doc}/activity").stream() if e.to_dict()["kind"] == "state"],
        what="the lock's report in its feed",
    )
    entry_path = f"{lock_doc}/activity/{flushed[0].id}"  # an entry every member reads (see the next test)
    for role in ("owner", "admin", "member", "guest_in"):
        token = world.accounts[role]["idToken"]
        assert rest_get(host, lock_doc, token) == 200, role
        # a guest, not the lock's reports: the entries naming them (attack run 47; the next test)
        assert rest_get(host, entry_path, token) == (403 if role == "guest_in" else 200), role
    for role in ("stranger", "revoked", "guest_out"):  # guest_out: a window that opens in 30 days
        token = world.accounts[role]["idToken"]
        assert rest_get(host, lock_doc, token) == 403, role
        assert rest_get(host, entry_path, token) == 403, role
    assert rest_get(host, lock_doc, None) == 403
    assert rest_write(host, lock_doc, world.accounts["owner"]["idToken"]) == 403
    # nobody reads when anyone's access ends or their guest window: not on the lock document (a guest once read
    # every member's there: attack run), not in the access documents the rules read, not even their own
    doc = client.document(lock_doc).get().to_dict() or {}
    assert not doc.get("access") and "expires_ms" not in json.dumps(doc, default=str)
    guest = world.accounts["guest_in"]["idToken"]
    for uid in (world.uid("guest_out"), world.uid("member"), world.uid("guest_in")):
        assert rest_get(host, f"{lock_doc}/access/{uid}", guest) == 403
    assert rest_get(host, f"{lock_doc}/access/{world.uid('guest_in')}", world.accounts["owner"]["idToken"]) == 403
    # the rules' data is there, per member, and a removed member's ended (``mirror.access_ended``)
    access = {d.id: d.to_dict() for d in client.collection(f"{lock_doc}/access").stream()}
    granting = sorted(uid for uid, a in access.items() if not a.get("ended"))
    assert granting == sorted(world.uid(r) for r in ("owner", "admin", "member", "guest_in", "guest_out"))
    assert ended(access[world.uid("revoked")])
    assert rest_write(host, f"users/{world.uid('owner')}", world.accounts["owner"]["idToken"]) == 403


def auth_admin_post(host: str, path: str, body: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    """A call to the Auth emulator's Identity Toolkit as the project's admin (the emulator's owner token)."""
    req = urllib.request.Request(
        f"http://{host}/identitytoolkit.googleapis.com/{version}/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer owner"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def test_a_tenants_account_named_as_a_member_reads_nothing(world: World, stack_env: dict[str, str]) -> None:
    """An Identity Platform tenant's account is no account of this service (the API answers its token 401
    wrong_tenant: attack run 73), and its uid is the tenant's to choose: one made with the owner's uid read the
    owner's lock, its feed and the owner's user document under the rules (attack run 107)."""
    host, auth_host = stack_env["FIRESTORE_EMULATOR_HOST"], stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    lock_doc, owner = f"locks/{world.lock_id}", world.uid("owner")
    made = auth_admin_post(
        auth_host, f"projects/{PROJECT_ID}/tenants", {"displayName": "other-brand", "allowPasswordSignup": True}, "v2"
    )
    tenant = made.get("tenantId") or made["name"].rsplit("/", 1)[-1]
    auth_admin_post(  # the tenant's admin makes an account with a uid of their choosing
        auth_host,
        f"projects/{PROJECT_ID}/tenants/{tenant}/accounts",
        {"localId": owner, "email": "twin@example.com", "password": "correct-horse-9"},
    )
    twin = auth_admin_post(
        auth_host,
        "accounts:signInWithPassword?key=fake",
        {"email": "twin@example.com", "password": "correct-horse-9", "tenantId": tenant, "returnSecureToken": True},
    )
    assert twin["localId"] == owner
    assert (
        world.devices.get("/devices/locks", headers={"Authorization": f"Bearer {twin['idToken']}"}).get_json()["error"][
            "code"
        ]
        == "wrong_tenant"
    )
    assert rest_get(host, lock_doc, world.accounts["owner"]["idToken"]) == 200  # the owner's own token reads it
    status, entries = rest_query(host, world.lock_id, world.accounts["owner"]["idToken"])
    assert status == 200 and entries
    assert rest_get(host, lock_doc, twin["idToken"]) == 403
    assert rest_query(host, world.lock_id, twin["idToken"])[0] == 403
    assert rest_get(host, f"users/{owner}", twin["idToken"]) == 403


def test_the_token_of_whoever_made_an_account_reads_nothing_once_its_addresss_owner_took_it_over(
    make_client: Any, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Anyone can sign up with anyone's address; when its owner signs in with Google, Firebase gives them that account
    (its uid kept), and the maker's token, naming no verified address, stays valid up to an hour. The API refuses it
    (401 token_outdated: attack run 79); the rules let it read the lock the owner made and its feed (attack run 107)."""
    devices, host = make_client("devices"), stack_env["FIRESTORE_EMULATOR_HOST"]
    address = f"victim-{uuid.uuid4().hex[:8]}@example.com"
    made_in_advance = sign_up(address)
    victim = google_sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], address)
    assert victim["localId"] == made_in_advance["localId"]
    lock_id = create_lock(devices, victim)["lock"]["id"]
    wait_until_mirrored(lock_id)
    outdated = devices.get(f"/devices/locks/{lock_id}", headers=bearer(made_in_advance))
    assert outdated.status_code == 401 and outdated.get_json()["error"]["code"] == "token_outdated"
    assert rest_get(host, f"locks/{lock_id}", victim["idToken"]) == 200
    status, entries = rest_query(host, lock_id, victim["idToken"])
    assert status == 200 and entries
    assert rest_get(host, f"locks/{lock_id}", made_in_advance["idToken"]) == 403
    assert rest_query(host, lock_id, made_in_advance["idToken"])[0] == 403


def test_a_membership_from_before_the_takeover_is_read_by_the_makers_token_no_more(
    make_client: Any, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run 107's leftover: the access documents say whether a member's address was seen verified, and the
    rules then refuse a token naming none; but a lock was mirrored again only when something at it changed, so the
    maker's token read a lock its membership from before the takeover let it in. The first sight of the address
    verified makes each of the member's locks due a mirror at the relay's next upkeep."""
    devices, host = make_client("devices"), stack_env["FIRESTORE_EMULATOR_HOST"]
    address = f"victim-{uuid.uuid4().hex[:8]}@example.com"
    made_in_advance, owner = sign_up(address), sign_up()
    for account in (made_in_advance, owner):
        assert devices.get("/devices/me", headers=bearer(account)).status_code == 200
    lock_id = create_lock(devices, owner)["lock"]["id"]
    join(devices, lock_id, owner, made_in_advance, {"role": "member"})
    wait_until_mirrored(lock_id)
    assert rest_get(host, f"locks/{lock_id}", made_in_advance["idToken"]) == 200
    victim = google_sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], address)
    assert victim["localId"] == made_in_advance["localId"]
    assert devices.get("/devices/me", headers=bearer(victim)).status_code == 200  # the address seen verified
    runtime = get_runtime("devices")
    members.mirror_access_due(runtime.db)  # the relay's upkeep
    runtime.flush_mirror(force=True)
    wait_until_mirrored(lock_id)
    assert rest_get(host, f"locks/{lock_id}", victim["idToken"]) == 200
    assert rest_get(host, f"locks/{lock_id}", made_in_advance["idToken"]) == 403


def test_the_makers_token_reads_the_users_own_document_no_more_once_its_address_was_seen_verified(
    make_client: Any, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run 107's leftover: the rules refused the maker's token every lock once the address was seen verified,
    but not ``users/{uid}``, so it saw ``voice_enrolled`` flip when the owner enrolled after the takeover. The
    account's standing says so too. (A document the rules let a token read and that is not there is 404; one they
    refuse, 403.)"""
    devices, host = make_client("devices"), stack_env["FIRESTORE_EMULATOR_HOST"]
    address = f"victim-{uuid.uuid4().hex[:8]}@example.com"
    made_in_advance = sign_up(address)
    uid = made_in_advance["localId"]
    assert devices.get("/devices/me", headers=bearer(made_in_advance)).status_code == 200
    assert rest_get(host, f"users/{uid}", made_in_advance["idToken"]) in (200, 404)
    victim = google_sign_in(stack_env["FIREBASE_AUTH_EMULATOR_HOST"], address)
    assert victim["localId"] == uid
    assert devices.get("/devices/me", headers=bearer(victim)).status_code == 200  # the address seen verified
    get_runtime("devices").flush_mirror(force=True)
    assert rest_get(host, f"users/{uid}", victim["idToken"]) in (200, 404)
    assert rest_get(host, f"users/{uid}", made_in_advance["idToken"]) == 403


def test_ack_marks_the_command_and_a_user_unlock_ends_a_voice_lockout(world: World, stack_env: dict[str, str]) -> None:
    command = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("member")
    ).get_json()["command"]
    nonce = command_nonce(command["id"])
    with get_runtime("devices").db.transaction() as con:
        con.run(
            # failures counted before the unlock was made: the unlock answers them
            "INSERT INTO voice_lockouts (lock_id, consecutive_failures, locked_until, updated_at)"
            " VALUES (CAST(:l AS uuid), 7, now() + interval '1 hour', now() - interval '1 minute')",
            l=world.lock_id,
        )
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    ack = {"id": command["id"], "nonce": nonce, "result": "ok"}
    assert relay_event(world, token, "ack", ack) == {"outcome": "applied"}
    assert relay_event(world, token, "ack", ack)["outcome"] == "duplicate"
    assert relay_event(world, token, "ack", {**ack, "nonce": "forged-nonce-value"})["outcome"] == "duplicate"
    got = world.devices.get(f"/devices/locks/{world.lock_id}/commands/{command['id']}", headers=world.headers("member"))
    assert got.get_json()["command"]["status"] == "acked"
    with get_runtime("devices").db.connection() as con:
        assert con.run(
            "SELECT consecutive_failures, locked_until FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid)",
            l=world.lock_id,
        ) == [[0, None]]


def test_access_ends_in_firestore_when_the_api_ends_it_without_any_membership_change(
    world: World, stack_env: dict[str, str]
) -> None:
    """A member given an expiry a few seconds ahead reads the live view until then and not after: the rules compare
    the mirrored expiry with request.time; nothing is written to Firestore in between."""
    host, lock_doc = stack_env["FIRESTORE_EMULATOR_HOST"], f"locks/{world.lock_id}"
    ends = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)  # the two reads before it take ~0.1 s
    resp = world.devices.patch(
        f"/devices/locks/{world.lock_id}/members/{world.uid('member')}",
        json={"role": "member", "access": {"expires_at": ends.isoformat()}},
        headers=world.headers("owner"),
    )
    assert resp.status_code == 200, resp.get_json()
    token = world.accounts["member"]["idToken"]
    assert rest_get(host, lock_doc, token) == 200
    written = firestore_client(PROJECT_ID, host).document(lock_doc).get().update_time
    wait_for(lambda: dt.datetime.now(dt.UTC) > ends + dt.timedelta(seconds=0.5), timeout=10)
    assert world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("member")).status_code == 404
    assert rest_get(host, lock_doc, token) == 403
    assert firestore_client(PROJECT_ID, host).document(lock_doc).get().update_time == written, "no write needed"


def test_a_membership_change_writes_only_the_access_documents_it_changes(
    world: World, sign_up: Any, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 32: every membership change rewrote every member's access document and deleted every former
    member's again, however long gone (88 writes for one PATCH at a lock of 45 members and 41 former ones, F growing
    with each account removed). A change now writes the documents that differ from those last queued (and the lock
    document after them), and the live view's access stays as the API's."""
    lock, owner = world.lock_id, world.headers("owner")
    joined = [sign_up() for _ in range(6)]
    for account in joined:
        join(world.devices, lock, world.accounts["owner"], account, {"role": "member"})
    for account in joined[3:]:
        assert (
            world.devices.delete(f"/devices/locks/{lock}/members/{account['localId']}", headers=owner).status_code
            == 204
        )
    get_runtime("devices").flush_mirror(force=True)
    written: list[tuple[str, str]] = []
    enqueue = mirror.enqueue_many

    def watched(con: Any, writes: Any) -> None:
        written.extend((path, op) for path, op, _ in writes if "/access/" in path)
        enqueue(con, writes)

    monkeypatch.setattr(mirror, "enqueue_many", watched)
    first, second = joined[0]["localId"], joined[1]["localId"]
    guest = {"role": "guest", "access": {"weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}}
    assert world.devices.patch(f"/devices/locks/{lock}/members/{first}", json=guest, headers=owner).status_code == 200
    assert written == [(f"locks/{lock}/access/{first}", "set")]  # before: 12 (every member and former member)
    written.clear()
    assert world.devices.delete(f"/devices/locks/{lock}/members/{second}", headers=owner).status_code == 204
    assert written == [(f"locks/{lock}/access/{second}", "set")]  # ended (``mirror.access_ended``)
    written.clear()
    again = world.devices.patch(f"/devices/locks/{lock}/members/{first}", json=guest, headers=owner)  # no change
    assert again.status_code == 200 and written == []
    get_runtime("devices").flush_mirror(force=True)
    sdk = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    listed = world.devices.get(f"/devices/locks/{lock}/members", headers=owner).get_json()["members"]
    present = {d.id for d in sdk.collection(f"locks/{lock}/access").stream() if not ended(d.to_dict())}
    assert present == {m["uid"] for m in listed}  # the API's members, no more
    assert sdk.document(f"locks/{lock}/access/{first}").get().to_dict()["role"] == "guest"


@pytest.mark.parametrize("how", ["removed", "left"])
def test_a_member_removed_by_a_locks_first_change_since_the_record_began_reads_nothing(
    world: World, stack_env: dict[str, str], how: str
) -> None:
    """Attack run 33: with ``mirrored_access`` empty (as migration 0046 made it), a member removed (or leaving) by
    the lock's first change since kept their access document, and the lock's live view, for good: deletions were
    taken from the record alone. A lock's first mirror with nothing recorded deletes every former member's."""
    host, lock, member = stack_env["FIRESTORE_EMULATOR_HOST"], world.lock_id, world.uid("member")
    get_runtime("devices").flush_mirror(force=True)
    token = world.accounts["member"]["idToken"]
    assert rest_get(host, f"locks/{lock}", token) == 200
    with get_runtime("devices").db.transaction() as con:  # the record as the migrations made it (0046, 0062)
        con.run("DELETE FROM mirrored_access WHERE lock_id = CAST(:l AS uuid)", l=lock)
        con.run("DELETE FROM mirrored_access_locks WHERE lock_id = CAST(:l AS uuid)", l=lock)
    remover = world.headers("owner" if how == "removed" else "member")
    assert world.devices.delete(f"/devices/locks/{lock}/members/{member}", headers=remover).status_code == 204
    get_runtime("devices").flush_mirror(force=True)
    sdk = firestore_client(PROJECT_ID, host)
    assert ended(sdk.document(f"locks/{lock}/access/{member}").get().to_dict())  # before: it stayed
    assert rest_get(host, f"locks/{lock}", token) == 403
    assert rest_get(host, f"locks/{lock}", world.accounts["admin"]["idToken"]) == 200


def test_a_member_let_back_in_after_a_removal_the_record_did_not_see_reads_the_live_view(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 33: an instance still on the code before ``mirrored_access`` (a deploy under way) removed a member
    as it did, the document deleted and the record left; let back in with the same access, the member's document
    equalled the record and was never written: a member the API lets in read nothing. Joining writes it."""
    host, lock, member = stack_env["FIRESTORE_EMULATOR_HOST"], world.lock_id, world.uid("member")
    get_runtime("devices").flush_mirror(force=True)
    with get_runtime("devices").db.transaction() as con:  # the removal as the code before made it
        con.run(
            "UPDATE lock_members SET revoked_at = now(), last_removed_at = now() WHERE lock_id = CAST(:l AS uuid)"
            " AND user_uid = :u",
            l=lock,
            u=member,
        )
    firestore_client(PROJECT_ID, host).document(f"locks/{lock}/access/{member}").delete()
    join(world.devices, lock, world.accounts["owner"], world.accounts["member"], {"role": "member"})
    get_runtime("devices").flush_mirror(force=True)
    assert rest_get(host, f"locks/{lock}", world.accounts["member"]["idToken"]) == 200  # before: 403


def test_at_a_members_access_edge_the_upkeep_writes_their_access_document(
    world: World, stack_env: dict[str, str]
) -> None:
    """The rules refuse new reads at the expiry by themselves, but an open listener is checked again only when a
    document the rules read changes (attack run 12: an expired member's and a guest's open listeners kept receiving
    the lock's state and feed). The mirror is due again at each member's next edge, and the relay's upkeep then
    writes over an expired member's access document (``mirror.access_ended``), as removal does, and rewrites a
    window's."""
    host = stack_env["FIRESTORE_EMULATOR_HOST"]
    sdk = firestore_client(PROJECT_ID, host)
    resp = world.devices.patch(  # a guest inside a window of every day, all day: its edges are the zone's midnights
        f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}",
        json={"role": "guest", "access": {"timezone": "Asia/Kolkata", "weekdays": list(members.WEEKDAY_NAMES)}},
        headers=world.headers("owner"),
    )
    assert resp.status_code == 200, resp.get_json()
    ends = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)  # time for the requests and flush before it
    resp = world.devices.patch(
        f"/devices/locks/{world.lock_id}/members/{world.uid('member')}",
        json={"role": "member", "access": {"expires_at": ends.isoformat()}},
        headers=world.headers("owner"),
    )
    assert resp.status_code == 200, resp.get_json()
    get_runtime("devices").flush_mirror(force=True)
    member_doc = sdk.document(f"locks/{world.lock_id}/access/{world.uid('member')}")
    guest_doc = sdk.document(f"locks/{world.lock_id}/access/{world.uid('guest_in')}")
    assert member_doc.get().exists and guest_doc.get().to_dict()["in_window"] is True
    with get_runtime("devices").db.connection() as con:
        (due,) = con.run("SELECT due_at FROM mirror_refresh_due WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    assert abs((due[0] - ends).total_seconds()) < 0.01  # the nearest edge: the member's expiry
    wait_for(lambda: dt.datetime.now(dt.UTC) > ends, timeout=15)
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
    assert ended(member_doc.get().to_dict())
    assert not ended(guest_doc.get().to_dict())
    with get_runtime("devices").db.connection() as con:
        (due,) = con.run("SELECT due_at FROM mirror_refresh_due WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    midnight = dt.datetime.now(ZoneInfo("Asia/Kolkata")).replace(hour=0, minute=0, second=0, microsecond=0)
    assert due[0] == midnight + dt.timedelta(days=1)  # the guest's next edge


def test_many_locks_due_at_once_are_refreshed_in_rounds_the_relay_asks_for_at_once(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edges that fall together (every whole-day guest of a zone at its midnight) are more than one upkeep's budget
    refreshes: the upkeep says so (``access_due``) and the relay asks again at once, not at its next period; once
    none is left it says so too."""
    extra = [create_lock(world.devices, world.accounts["owner"], name=f"Door {i}")["lock"]["id"] for i in range(3)]
    ours = [world.lock_id, *extra]
    with get_runtime("devices").db.transaction() as con:
        con.run(
            "INSERT INTO mirror_refresh_due (lock_id, due_at) SELECT id, now() - interval '1 second' FROM locks"
            " WHERE id = ANY(CAST(:l AS uuid[])) ON CONFLICT (lock_id) DO UPDATE SET due_at = EXCLUDED.due_at",
            l=ours,
        )
    monkeypatch.setattr(members, "REFRESH_BATCH", 1)
    monkeypatch.setattr(members, "REFRESH_BUDGET_S", 0.0)
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    answers = []
    for _ in range(60):  # other tests' locks may be due too: at most a few dozen
        resp = world.devices.post("/devices/relay/flush", headers=service)
        assert resp.status_code == 200, resp.get_json()
        answers.append(resp.get_json()["access_due"])
        if not answers[-1]:
            break
    assert answers[0] is True and answers[-1] is False and len(answers) >= len(ours)
    with get_runtime("devices").db.connection() as con:
        left = con.run(
            "SELECT count(*) FROM mirror_refresh_due WHERE lock_id = ANY(CAST(:l AS uuid[])) AND due_at <= now()",
            l=ours,
        )
    assert left == [[0]]


def _windows(now: dt.datetime) -> list[dict[str, Any]]:
    """Guest windows around ``now`` in several zones: weekdays today or not, minutes now or not, across midnight."""
    out: list[dict[str, Any]] = []
    for tz in ("UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "Australia/Lord_Howe"):
        local = now.astimezone(ZoneInfo(tz))
        minute, today = local.hour * 60 + local.minute, local.weekday()
        names = members.WEEKDAY_NAMES
        for days in ([names[today]], [names[(today + 1) % 7]], [n for i, n in enumerate(names) if i != today]):
            out.append({"timezone": tz, "weekdays": days})
        for start, end in (
            (max(0, minute - 30), min(1440, minute + 30)),  # now inside
            ((minute + 20) % 1440, (minute + 80) % 1440 or 1440),  # later today or tomorrow
            ((minute - 90) % 1440, (minute - 10) % 1440 or 1440),  # ended ten minutes ago
            ((minute + 60) % 1440, (minute + 30) % 1440 or 1440),  # across midnight, now inside
        ):
            if start != end:
                out.append({"timezone": tz, "day_start_minute": start, "day_end_minute": end})
                if start > end:  # overnight, on yesterday's or today's night (each is the night of its day)
                    for day in (today - 1, today):
                        out.append({"timezone": tz, "weekdays": [names[day % 7]], "day_start_minute": start,
                                    "day_end_minute": end})  # fmt: skip
        out.append({"timezone": tz, "weekdays": [names[today]], "day_start_minute": 0, "day_end_minute": 1440})
    return out


def test_a_lock_mirrored_before_the_access_documents_stays_readable_until_mirrored_again(
    world: World, stack_env: dict[str, str]
) -> None:
    """Deployed over locks whose documents still carry the members' access map (no access documents yet), the rules
    read the map until the relay's periodic flush mirrors the lock (migration 0015 queues every lock): no live view
    goes dark on the deploy, and once mirrored the map is empty and the access documents decide."""
    host, lock_doc = stack_env["FIRESTORE_EMULATOR_HOST"], f"locks/{world.lock_id}"
    client = firestore_client(PROJECT_ID, host)
    member, stranger = world.accounts["member"]["idToken"], world.accounts["stranger"]["idToken"]
    entry = next(  # one the member reads: it names them
        e.id for e in client.collection(f"{lock_doc}/activity").stream() if world.uid("member") in e.to_dict()["about"]
    )
    for d in client.collection(f"{lock_doc}/access").stream():  # the lock as the old back-end left it
        d.reference.delete()
    old_map = {world.uid("member"): {"expires_ms": None, "valid_from_ms": None, "valid_until_ms": None,
                                     "weekdays": None, "day_start_minute": None, "day_end_minute": None,
                                     "utc_offset_min": 0, "offset_until_ms": None}}  # fmt: skip
    client.document(lock_doc).update({"access": old_map, "member_uids": [world.uid("member")]})
    assert rest_get(host, lock_doc, member) == 200 and rest_get(host, f"{lock_doc}/activity/{entry}", member) == 200
    assert rest_get(host, lock_doc, stranger) == 403
    assert rest_get(host, lock_doc, world.accounts["owner"]["idToken"]) == 403  # not in this old map
    with get_runtime("devices").db.transaction() as con:  # what migration 0015 does for every lock
        con.run(
            "INSERT INTO mirror_refresh_due (lock_id, due_at) VALUES (CAST(:l AS uuid), now())"
            " ON CONFLICT (lock_id) DO UPDATE SET due_at = now()",
            l=world.lock_id,
        )
        # and no access document recorded as written (0046 made the record empty)
        con.run("DELETE FROM mirrored_access WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
    doc = client.document(lock_doc).get().to_dict() or {}
    assert doc["access"] == {} and doc["member_uids"] == []
    assert (
        rest_get(host, lock_doc, member) == 200 and rest_get(host, lock_doc, world.accounts["owner"]["idToken"]) == 200
    )


def test_the_feed_tells_each_transfer_offer_and_how_it_ended(world: World, stack_env: dict[str, str]) -> None:
    """Each offer and its end is in the lock's feed, naming the member it was made to (who reads what is about
    them): replaced by another, declined, ended by their removal, by a re-pairing, taken (attack run 21: the feed
    never said an offer had ended when it was replaced, or by a removal or a re-pairing)."""
    devices, lock = world.devices, world.lock_id
    path = f"/devices/locks/{lock}/transfer"

    def offer(role: str) -> None:
        made = devices.post(path, json={"uid": world.uid(role)}, headers=world.headers("owner"))
        assert made.status_code == 202, made.get_json()

    offer("admin")
    offer("member")  # replaces the admin's
    assert devices.delete(path, headers=world.headers("member")).status_code == 204
    offer("member")
    assert devices.delete(f"/devices/locks/{lock}/members/{world.uid('member')}", headers=world.headers("owner"))
    offer("admin")
    issued = devices.post(f"/devices/locks/{lock}/provisioning", headers=world.headers("owner"))
    provision(devices, issued.get_json()["code"])
    assert hand_over(devices, lock, world.accounts["owner"], world.accounts["guest_in"]).status_code == 200
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    entries = [e.to_dict() for e in client.collection(f"locks/{lock}/activity").stream()]
    # compared as a whole, not in order: an offer and the end of the one it replaced share one moment
    told = sorted(
        (e["kind"], e.get("reason") or "", e["target_uid"]) for e in entries if str(e["kind"]).startswith("ownership")
    )
    admin, member, guest = world.uid("admin"), world.uid("member"), world.uid("guest_in")
    assert told == sorted(
        [
            ("ownership_offered", "", admin),
            ("ownership_offer_ended", "replaced", admin),
            ("ownership_offered", "", member),
            ("ownership_offer_declined", "", member),
            ("ownership_offered", "", member),
            ("ownership_offer_ended", "member_left", member),
            ("ownership_offered", "", admin),
            ("ownership_offer_ended", "paired_again", admin),
            ("ownership_offered", "", guest),
            ("ownership_transferred", "", guest),
        ]
    ), told


def test_a_guest_made_owner_reads_the_live_view_outside_their_old_window(
    world: World, stack_env: dict[str, str]
) -> None:
    """A transfer clears the new owner's guest window and expiry in PostgreSQL and in the rules' data alike (the
    mirror was once left as it was: the new owner was refused their own lock's live view; attack run)."""
    host, lock_doc, guest = stack_env["FIRESTORE_EMULATOR_HOST"], f"locks/{world.lock_id}", world.uid("guest_in")
    today = members.WEEKDAY_NAMES[dt.datetime.now(dt.UTC).weekday()]
    other_days = [d for d in members.WEEKDAY_NAMES if d != today]
    resp = world.devices.patch(
        f"/devices/locks/{world.lock_id}/members/{guest}",
        json={"role": "guest", "access": {"timezone": "UTC", "weekdays": other_days}},
        headers=world.headers("owner"),
    )
    assert resp.status_code == 200, resp.get_json()
    token = world.accounts["guest_in"]["idToken"]
    assert rest_get(host, lock_doc, token) == 403  # outside the window today
    moved = hand_over(world.devices, world.lock_id, world.accounts["owner"], world.accounts["guest_in"])
    assert moved.status_code == 200, moved.get_json()
    deadline = time.monotonic() + 5
    while rest_get(host, lock_doc, token) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rest_get(host, lock_doc, token) == 200
    assert rest_get(host, lock_doc, world.accounts["owner"]["idToken"]) == 200  # the old owner, now an admin


@pytest.fixture
def roomy_change_budget(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget of changes a lock (``lockwise.devices.changes``) that a test of many windows does not reach (the
    budget's own test: ``test_devices_flows``)."""
    rt = get_runtime("devices")
    monkeypatch.setattr(rt, "settings", dataclasses.replace(rt.settings, lock_changes_per_minute=1000))


def test_rules_decide_guest_windows_as_the_api_does(
    roomy_change_budget: None, world: World, stack_env: dict[str, str]
) -> None:
    """For each window, the guest reads the lock document from Firestore exactly when the API's own check
    (``Membership.in_window``) says they are inside it; also the absolute bounds and a stale zone offset."""
    host, lock_doc = stack_env["FIRESTORE_EMULATOR_HOST"], f"locks/{world.lock_id}"
    path = f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}"
    token = world.accounts["guest_in"]["idToken"]
    now = dt.datetime.now(dt.UTC)
    bounds = [
        {"valid_until": (now - dt.timedelta(minutes=1)).isoformat()},
        {"valid_from": (now - dt.timedelta(minutes=1)).isoformat()},
    ]
    outcomes = []
    for access in _windows(now) + bounds:
        resp = world.devices.patch(path, json={"role": "guest", "access": access}, headers=world.headers("owner"))
        assert resp.status_code == 200, (access, resp.get_json())
        with get_runtime("devices").db.connection() as con:
            inside = members.get(con, world.lock_id, world.uid("guest_in")).in_window(dt.datetime.now(dt.UTC))  # type: ignore[union-attr]
        read = rest_get(host, lock_doc, token)
        outcomes.append((access, inside, read))
    wrong = [(a, inside, read) for a, inside, read in outcomes if read != (200 if inside else 403)]
    assert not wrong, wrong
    assert {inside for _, inside, _ in outcomes} == {True, False}
    # zone offsets past their validity (the next one's too) are refused until the back-end mirrors new ones (fail
    # closed)
    world.devices.patch(
        path,
        json={"role": "guest", "access": {"timezone": "Europe/Berlin", "weekdays": list(members.WEEKDAY_NAMES)}},
        headers=world.headers("owner"),
    )
    assert rest_get(host, lock_doc, token) == 200
    access = firestore_client(PROJECT_ID, host).document(f"{lock_doc}/access/{world.uid('guest_in')}")
    stale = int(time.time() * 1000) - 1000
    access.update({"offset_until_ms": stale, "next_offset_until_ms": stale})
    assert rest_get(host, lock_doc, token) == 403
    # when the zone's offset is due to change, the relay's periodic flush mirrors the new one
    with get_runtime("devices").db.transaction() as con:
        con.run("UPDATE mirror_refresh_due SET due_at = now() - interval '1 second'")
        con.run(  # the offset last mirrored is the stale one, as the document's
            "UPDATE mirrored_access SET access = jsonb_set(access, '{offset_until_ms}', to_jsonb(CAST(:t AS bigint)))"
            " WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
            t=stale,
            l=world.lock_id,
            u=world.uid("guest_in"),
        )
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
    assert rest_get(host, lock_doc, token) == 200
    with get_runtime("devices").db.connection() as con:
        (due,) = con.run(
            "SELECT due_at > now() FROM mirror_refresh_due WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id
        )
    assert due == [True]


def test_the_rules_judge_a_window_by_the_zones_next_offset_once_its_clocks_change(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 95: the rules had the zone's offset until its next change only, and refused every guest of the zone
    from the change until the upkeep mirrored their lock again, inside their window too (all locks with a guest of
    the zone due at that instant). They now carry the offset after the change as well, and judge the window by it
    from the change on; past the change after that, they refuse until mirrored again."""
    host, lock_doc = stack_env["FIRESTORE_EMULATOR_HOST"], f"locks/{world.lock_id}"
    token = world.accounts["guest_in"]["idToken"]
    now = dt.datetime.now(dt.UTC)
    minute = now.hour * 60 + now.minute  # in UTC; the window below is read at an offset of +120 minutes
    start, end = (minute + 120 - 20) % 1440, (minute + 120 + 20) % 1440 or 1440
    resp = world.devices.patch(
        f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}",
        json={
            "role": "guest",
            "access": {"timezone": "Europe/Berlin", "day_start_minute": start, "day_end_minute": end},
        },
        headers=world.headers("owner"),
    )
    assert resp.status_code == 200, resp.get_json()
    wait_until_mirrored(world.lock_id)
    access = firestore_client(PROJECT_ID, host).document(f"{lock_doc}/access/{world.uid('guest_in')}")
    assert set(access.get().to_dict()) >= {"next_offset_min", "next_offset_until_ms"}
    ms = int(time.time() * 1000)
    # the clocks changed a second ago, from +0 to +120, and the upkeep has not mirrored the lock yet: inside
    access.update({"utc_offset_min": 0, "offset_until_ms": ms - 1000, "next_offset_min": 120,
                   "next_offset_until_ms": ms + 3_600_000})  # fmt: skip
    assert rest_get(host, lock_doc, token) == 200
    # the offset before the change no longer decides: at +0 she is outside, at +120 (before the change) inside
    access.update({"utc_offset_min": 120, "next_offset_min": 0})
    assert rest_get(host, lock_doc, token) == 403
    access.update({"utc_offset_min": 120, "offset_until_ms": ms + 3_600_000})
    assert rest_get(host, lock_doc, token) == 200
    # past the change after that too: refused until mirrored again
    access.update({"utc_offset_min": 0, "offset_until_ms": ms - 2000, "next_offset_min": 120,
                   "next_offset_until_ms": ms - 1000})  # fmt: skip
    assert rest_get(host, lock_doc, token) == 403


def test_a_lock_reporting_in_a_loop_fills_its_feed_only_to_its_budget(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run: one lock reporting ~1,000 times a second made as many Firestore feed entries. Past its budget a
    report still changes the lock's row; it is not listed, and the next entry listed says how many were left out.
    Attack run 54: each report was also a write to the lock's document (a lock at the broker's pace, 20 a second,
    made 1.73M a day, 20 times what Firestore sustains on one document): past the budget the document is left
    behind, and the relay's upkeep writes it once the window is over."""
    topic = f"lockwise/{world.credentials['mqtt']['client_id']}"
    budget = get_settings("devices").feed_reports_per_minute
    start = dt.datetime.now(dt.UTC)
    rt = get_runtime("devices")
    monkeypatch.setattr(rt, "clock", lambda: start)

    def report(events: list[tuple[str, str]]) -> list[str]:
        resp = world.devices.post(
            "/devices/relay/events",
            json={"events": [{"topic": f"{topic}/{kind}", "payload": payload} for kind, payload in events]},
            headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
        )
        assert resp.status_code == 200, resp.get_json()
        return [r["outcome"] for r in resp.get_json()["results"]]

    t = start.timestamp()
    states = ("locked", "unlocked")
    flood = [("state", json.dumps({"state": states[i % 2], "ts": t - 100 + i})) for i in range(budget + 15)]
    assert report(flood[:20]) == ["applied"] * 20  # two batches: the budget is the lock's, not the batch's
    assert report([*flood[20:], ("status", "offline")]) == ["applied"] * (budget - 5 + 1)
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])

    def feed() -> list[dict[str, Any]]:
        return [d.to_dict() for d in client.collection(f"locks/{world.lock_id}/activity").stream()]

    def reports() -> list[dict[str, Any]]:
        return [e for e in feed() if e["kind"] in ("state", "online", "offline")]

    wait_until_mirrored(world.lock_id)

    def document() -> tuple[bool, str]:
        doc = client.document(f"locks/{world.lock_id}").get().to_dict() or {}
        return doc["online"], doc["state"]

    assert document() == (True, states[(budget - 1) % 2])  # as the last report listed left it
    assert len(reports()) == budget
    with rt.db.connection() as con:
        (row,) = con.run(
            "SELECT state, online, feed_entries, feed_unlisted, doc_behind FROM lock_state"
            " WHERE lock_id = CAST(:l AS uuid)",
            l=world.lock_id,
        )
    assert row == [states[(budget + 14) % 2], False, budget, 16, True]
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
    wait_until_mirrored(world.lock_id)
    assert document() == (True, states[(budget - 1) % 2])  # the window is not over
    monkeypatch.setattr(rt, "clock", lambda: start + lock_events.FEED_WINDOW)
    assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
    wait_until_mirrored(world.lock_id)
    assert document() == (False, states[(budget + 14) % 2])  # the last report the lock sent, though not listed
    assert len(reports()) == budget
    # the next window lists again, and its first entry counts what was left out
    assert report([("status", "online")]) == ["applied"]
    listed = wait_for(
        lambda: [e for e in reports() if e.get("unlisted_before")] or None, what="the entry after the window"
    )
    assert [(e["kind"], e["unlisted_before"]) for e in listed] == [("online", 16)]
    wait_until_mirrored(world.lock_id)
    assert len(reports()) == budget + 1


def test_an_owners_locks_reporting_in_a_loop_fill_their_feeds_only_to_the_owners_budget(
    world: World, stack_env: dict[str, str], make_client: Any, sign_up: Any
) -> None:
    """Attack run 110: the feed's budget was a lock's alone, and an account owns up to 100 locks, made and paired for
    free (50 pairings a day): 100 locks reporting in a loop listed 3,000 entries a minute and wrote as many lock
    documents, 8.6M Firestore writes a day, each entry kept 90 days, where one member's commands are 60 a minute
    over all their locks. An owner's locks together now list at most ``LOCKWISE_FEED_REPORTS_PER_OWNER_MINUTE``;
    past it a report is applied and left out as past its lock's own budget, and another owner's lock in the same
    batch lists as before. Five locks of one owner, each over its own budget: 150 listed before, 120 now."""
    settings = get_settings("devices")
    per_lock, per_owner = settings.feed_reports_per_minute, settings.feed_reports_per_owner_minute
    devices, owner = make_client("devices"), sign_up()
    assert devices.get("/devices/me", headers=bearer(owner)).status_code == 200
    locks = max(2, per_owner // per_lock + 1)
    topics: dict[str, str] = {}  # lock id -> its topics' root
    for i in range(locks):
        created = create_lock(devices, owner, name=f"Door {i}")
        credentials, _, _ = provision(devices, created["provisioning"]["code"])
        topics[created["lock"]["id"]] = f"lockwise/{credentials['mqtt']['client_id']}"
    topics[world.lock_id] = f"lockwise/{world.credentials['mqtt']['client_id']}"  # another owner's
    t = dt.datetime.now(dt.UTC).timestamp()
    events = [
        {"topic": f"{root}/state", "payload": json.dumps({"state": ("locked", "unlocked")[i % 2], "ts": t - 100 + i})}
        for i in range(per_lock + 1)
        for root in topics.values()
    ]
    resp = devices.post(
        "/devices/relay/events",
        json={"events": events},
        headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
    )
    assert resp.status_code == 200, resp.get_json()
    assert [r["outcome"] for r in resp.get_json()["results"]] == ["applied"] * len(events)
    with get_runtime("devices").db.connection() as con:
        rows = con.run(
            "SELECT lock_id::text, feed_entries, feed_unlisted FROM lock_state WHERE lock_id = ANY(CAST(:l AS uuid[]))",
            l=list(topics),
        )
    listed = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
    assert listed.pop(world.lock_id) == (per_lock, 1)  # another owner's lock: its own budget alone
    assert sum(entries for entries, _ in listed.values()) == per_owner
    assert sum(unlisted for _, unlisted in listed.values()) == locks * (per_lock + 1) - per_owner
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    for lock_id in topics:
        wait_until_mirrored(lock_id)
    feeds = {
        lock_id: [d.to_dict() for d in client.collection(f"locks/{lock_id}/activity").stream()] for lock_id in listed
    }
    assert sum(1 for feed in feeds.values() for e in feed if e["kind"] == "state") == per_owner


def test_documents_left_behind_are_written_the_longest_behind_first_and_all_in_one_flush_if_they_fit(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, make_client: Any, sign_up: Any
) -> None:
    """Attack run 55: the upkeep wrote 500 documents left behind a pass, in lock id order, once a flush: 500 locks
    flooding kept a later lock's document behind for good. The longest behind go first, and a flush passes again
    while its passes come back full."""
    from lockwise.devices import upkeep

    other = build_world(make_client("devices"), sign_up)
    rt = get_runtime("devices")
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])

    def left_behind(lock_id: str, state: str, window_ago_s: int) -> None:  # as reports past the budget leave it
        with rt.db.transaction() as con:
            con.run(
                "UPDATE lock_state SET state = :s, doc_behind = true,"
                " feed_window_start = now() - make_interval(secs => :a) WHERE lock_id = CAST(:l AS uuid)",
                s=state,
                a=window_ago_s,
                l=lock_id,
            )

    def shown(lock_id: str) -> str:
        wait_until_mirrored(lock_id)
        return str((client.document(f"locks/{lock_id}").get().to_dict() or {}).get("state"))

    # the longest behind is the lock of the larger id: in id order it would go last
    first, later = sorted((world.lock_id, other.lock_id))
    monkeypatch.setattr(lock_events, "BEHIND_PER_PASS", 1)
    monkeypatch.setattr(upkeep, "BEHIND_PASSES", 1)
    left_behind(first, "jammed", 120)
    left_behind(later, "jammed", 300)
    assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
    assert (shown(later), shown(first)) == ("jammed", "unknown")
    left_behind(later, "unlocked", 300)
    monkeypatch.setattr(upkeep, "BEHIND_PASSES", 4)
    assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
    assert (shown(later), shown(first)) == ("unlocked", "jammed")


def test_the_feed_shows_admins_everything_and_others_the_locks_reports_and_what_names_them(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run: every member, a guest too, read the whole feed: who else came and went (voice attempts, commands)
    and who invited whom, which the API shows admins only. Now a guest or member reads the entries naming them and
    a member the lock's own reports (attack run 47: a guest let in today read every lock and unlock of the feed's
    90 days); the owner and admins everything."""
    host = stack_env["FIRESTORE_EMULATOR_HOST"]
    client = firestore_client(PROJECT_ID, host)
    relay_event(world, stack_env["LOCKWISE_SERVICE_TOKEN"], "state", {"state": "unlocked", "ts": time.time()})
    for role in ("guest_in", "member"):
        resp = world.devices.post(
            f"/devices/locks/{world.lock_id}/commands", json={"action": "lock"}, headers=world.headers(role)
        )
        assert resp.status_code == 202, resp.get_json()
    world.devices.post(
        "/devices/relay/flush", headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    )

    def feed() -> list[dict[str, Any]]:
        return [e.to_dict() for e in client.collection(f"locks/{world.lock_id}/activity").stream()]

    wait_for(lambda: len([e for e in feed() if e["kind"] in ("command", "state")]) >= 3, what="the entries mirrored")
    everything = feed()
    guest, member = world.uid("guest_in"), world.uid("member")
    assert {e["audience"] for e in everything if e["kind"] == "state"} == {"everyone"}
    assert all(e["audience"] == "admins" for e in everything if e["kind"] != "state")
    joined = [e for e in everything if e["kind"] == "member_joined" and e["target_uid"] == guest]
    assert joined and sorted(joined[0]["about"]) == sorted({guest, joined[0]["invited_by"]})

    def kinds(fields: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
        return sorted(
            (f["kind"]["stringValue"], sorted(v["stringValue"] for v in f["about"]["arrayValue"].get("values", [])))
            for f in fields
        )

    for role in ("owner", "admin"):
        status, entries = rest_query(host, world.lock_id, world.accounts[role]["idToken"])
        assert status == 200 and len(entries) == len(everything), role
    for role, uid in (("guest_in", guest), ("member", member)):
        token = world.accounts[role]["idToken"]
        assert rest_query(host, world.lock_id, token)[0] == 403, role  # the whole feed: refused
        status, mine = rest_query(host, world.lock_id, token, naming(uid))
        assert status == 200 and mine and all(uid in about for _, about in kinds(mine)), role
        assert ("command", [uid]) in kinds(mine)
        assert rest_query(host, world.lock_id, token, naming(world.uid("admin")))[0] == 403, role
    status, reports = rest_query(host, world.lock_id, world.accounts["member"]["idToken"], EVERYONE)
    assert status == 200 and {k for k, _ in kinds(reports)} == {"state"}
    # not a guest's: when the household locked and unlocked its door, for the feed's 90 days (attack run 47)
    assert rest_query(host, world.lock_id, world.accounts["guest_in"]["idToken"], EVERYONE)[0] == 403
    # one entry at a time too: the guest's own command, not the member's, nor who joined when
    by_id = {e.id: e.to_dict() for e in client.collection(f"locks/{world.lock_id}/activity").stream()}
    theirs = next(i for i, e in by_id.items() if e["kind"] == "command" and e["actor_uid"] == member)
    own = next(i for i, e in by_id.items() if e["kind"] == "command" and e["actor_uid"] == guest)
    state = next(i for i, e in by_id.items() if e["kind"] == "state")
    token = world.accounts["guest_in"]["idToken"]
    base = f"locks/{world.lock_id}/activity"
    assert rest_get(host, f"{base}/{own}", token) == 200
    assert rest_get(host, f"{base}/{theirs}", token) == 403
    assert rest_get(host, f"{base}/{state}", token) == 403
    assert rest_get(host, f"{base}/{state}", world.accounts["member"]["idToken"]) == 200
    assert rest_get(host, f"{base}/{theirs}", world.accounts["admin"]["idToken"]) == 200
    # an entry written before entries said who reads them: the owner and admins only
    client.document(f"{base}/old-entry").set({"kind": "voice_attempt", "at": "2026-01-01T00:00:00.000Z"})
    assert rest_get(host, f"{base}/old-entry", world.accounts["owner"]["idToken"]) == 200
    assert rest_get(host, f"{base}/old-entry", token) == 403
    # and an owner whose access document predates the role (the transition): what a member reads, no more
    client.document(f"locks/{world.lock_id}/access/{world.uid('owner')}").update({"role": firestore_delete()})
    assert rest_get(host, f"{base}/{theirs}", world.accounts["owner"]["idToken"]) == 403
    assert rest_get(host, f"{base}/{state}", world.accounts["owner"]["idToken"]) == 200


def firestore_delete() -> Any:
    from google.cloud.firestore import DELETE_FIELD

    return DELETE_FIELD


def test_a_write_firestore_refuses_is_set_aside_and_holds_up_nothing(world: World, stack_env: dict[str, str]) -> None:
    """Attack run: a mirror row Firestore refuses (a reserved name of the form __x__) was retried first forever,
    and no lock's view changed again. Now it is set aside with Firestore's answer; the rest are written. Set-aside
    rows are kept 30 days for an operator, then pruned by the relay's flush (they were kept for ever: another
    attack run's account made 300 in 2 s)."""
    from lockwise.core import mirror

    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    poison = f"users/poison-{world.lock_id}"
    with rt.db.transaction() as con:
        mirror.enqueue_many(
            con,
            [
                (poison, "set", {"__poison__": False}),  # a reserved field name
                (mirror.lock_doc(world.lock_id), "merge", {"name": "After the bad one"}),
                (poison, "set", {"__poison__": True}),
            ],
        )
    rt.flush_mirror(force=True)
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    assert (client.document(f"locks/{world.lock_id}").get().to_dict() or {}).get("name") == "After the bad one"
    with rt.db.connection() as con:
        rows = con.run(
            "SELECT id, refused_at IS NOT NULL, last_error FROM firestore_outbox WHERE doc_path = :p ORDER BY id",
            p=poison,
        )
        assert len(rows) == 2 and all(row[1] and "400" in row[2] for row in rows)
        con.run(
            "UPDATE firestore_outbox SET refused_at = now() - interval '30 days 1 minute' WHERE id = :i", i=rows[0][0]
        )
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
    with rt.db.connection() as con:
        kept = con.run("SELECT id FROM firestore_outbox WHERE doc_path = :p", p=poison)
        assert kept == [[rows[1][0]]]  # the one set aside 30 days ago is gone, the newer one kept
        con.run("DELETE FROM firestore_outbox WHERE doc_path = :p", p=poison)
    assert rt.mirror.pending() == 0


def test_refused_events_of_one_lock_are_kept_ten_an_hour_for_a_week(world: World, stack_env: dict[str, str]) -> None:
    """Attack run: a paired lock publishing junk in a loop added 121,000 rows a minute, every one kept forever.
    Attack run 54: 100 a topic and hour, 500 characters each, kept 30 days, were still 216,000 rows of one lock's
    junk: now its topics together keep ``REJECTS_KEPT_PER_HOUR``, a week, their payloads' first 200 characters."""
    identity = world.credentials["mqtt"]["client_id"]
    lock_topics = [f"lockwise/{identity}/{name}" for name in ("state", "ack", "status")]
    for topic in lock_topics:
        resp = world.devices.post(
            "/devices/relay/events",
            json={"events": [{"topic": topic, "payload": "junk" * 100}] * 50},
            headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
        )
        assert [r["outcome"] for r in resp.get_json()["results"]] == ["rejected"] * 50  # each still judged
    with get_runtime("devices").db.connection() as con:
        kept, expiry, longest = con.run(
            "SELECT count(*), min(expires_at - received_at), max(length(payload_excerpt)) FROM lock_event_rejects"
            " WHERE topic = ANY(:t)",
            t=lock_topics,
        )[0]
    assert kept == lock_events.REJECTS_KEPT_PER_HOUR == 10
    assert expiry == dt.timedelta(days=7) and longest == 200


def test_rows_a_request_had_no_time_for_are_written_without_another_flush(
    world: World, stack_env: dict[str, str]
) -> None:
    """A flush that runs out of its budget hands the rest to a background flush. It used to leave them queued for the
    next request or the relay's periodic flush (10 s): the relay benchmark's last reports of a flood waited there."""
    from lockwise.core import mirror

    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    with rt.db.transaction() as con:
        mirror.enqueue_many(
            con,
            [(f"locks/{world.lock_id}/activity/budget-{i}", "set", {"kind": "state", "n": i}) for i in range(1200)],
        )
    assert rt.mirror.flush(limit=50, budget_s=0.0) == 0  # no time at all: every row is left to the background
    wait_for(lambda: rt.mirror.pending() == 0, timeout=60, what="the queue emptied by the background flush alone")
    with rt.db.connection() as con:
        assert con.run("SELECT count(*) FROM firestore_outbox WHERE refused_at IS NOT NULL")[0][0] == 0
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    written = {d.id for d in client.collection(f"locks/{world.lock_id}/activity").stream()}
    assert {f"budget-{i}" for i in range(1200)} <= written  # in Firestore, over more than one commit (500 each)


def test_the_relays_flush_prunes_a_backlog_in_bounded_steps(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expired rows were deleted in one statement a table: a backlog (after the flush had not run for a while) past
    the statement limit failed the flush every time, and the mirror's writes and the guests' window refreshes with
    it. Each flush now deletes in bounded batches a table, in its own transaction; past its time for repeats, a
    backlog drains flush by flush. Within it, a table's batches repeat while full: one batch a table and flush
    was outrun for good by a few accounts' locks posting at their limits (attack run 54)."""
    from lockwise.core import retention

    monkeypatch.setattr(retention, "PRUNE_BATCH", 3)
    service = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}

    def expire_seven() -> None:
        with get_runtime("devices").db.transaction() as con:
            con.run(
                "INSERT INTO pairing_issues (user_uid, created_at, expires_at)"
                " SELECT :u, now() - interval '2 days', now() - interval '1 day' FROM generate_series(1, 7)",
                u=world.uid("owner"),
            )

    def expired() -> int:
        with get_runtime("devices").db.connection() as con:
            return int(con.run("SELECT count(*) FROM pairing_issues WHERE expires_at <= now()")[0][0])

    def left_after_flushes(count: int) -> list[int]:
        left = []
        for _ in range(count):
            assert world.devices.post("/devices/relay/flush", headers=service).status_code == 200
            left.append(expired())
        return left

    expire_seven()
    monkeypatch.setattr(retention, "BUSY_PRUNE_S", 0.0)  # no time for repeats: one batch a flush
    assert left_after_flushes(3) == [4, 1, 0]
    expire_seven()
    monkeypatch.setattr(retention, "BUSY_PRUNE_S", 30.0)
    assert left_after_flushes(1) == [0]


def test_a_slow_flush_of_an_older_access_write_cannot_let_a_removed_member_back_in(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run: two instances flush side by side, each its own rows (SKIP LOCKED). One still writing a member's
    access document (a slow Firestore answer) while the other wrote its later deletion landed last: the removed member
    read the lock's live view until the next membership change. A document's newer row now waits for its older one."""
    from lockwise.core import firestore

    rt = get_runtime("devices")
    host, member = stack_env["FIRESTORE_EMULATOR_HOST"], world.uid("member")
    token = world.accounts["member"]["idToken"]
    rt.flush_mirror(force=True)
    assert rest_get(host, f"locks/{world.lock_id}", token) == 200
    writing, release = threading.Event(), threading.Event()

    class SlowFirestore(firestore.Client):
        def commit(self, writes: list[dict[str, Any]]) -> None:
            writing.set()
            assert release.wait(30)
            super().commit(writes)

    def slow_client() -> firestore.Client:
        return SlowFirestore(PROJECT_ID, host, authorize=lambda headers: headers.update(Authorization="Bearer owner"))

    with rt.db.transaction() as con:  # what a change of the member's access queues: their document's set
        con.run("DELETE FROM mirrored_access WHERE user_uid = :u", u=member)
        members.mirror_access(con, world.lock_id)
    slow = threading.Thread(target=mirror.Flusher(rt.db, slow_client).flush, kwargs={"hand_off": False})
    slow.start()
    assert writing.wait(10), "the other instance's flush is writing the older rows"
    resp = world.devices.delete(f"/devices/locks/{world.lock_id}/members/{member}", headers=world.headers("owner"))
    assert resp.status_code == 204, resp.get_json()
    with rt.db.connection() as con:  # the removal's write waits behind the older set of the same document
        queued = "SELECT count(*) FROM firestore_outbox WHERE doc_path = :p AND data ? 'ended'"
        assert con.run(queued, p=mirror.access_doc(world.lock_id, member))[0][0] == 1
    release.set()
    slow.join(30)
    wait_for(lambda: rt.mirror.pending() == 0 or None, timeout=40, what="every mirror row written")
    client = firestore_client(PROJECT_ID, host)
    assert ended(client.document(mirror.access_doc(world.lock_id, member)).get().to_dict())
    assert rest_get(host, f"locks/{world.lock_id}", token) == 403


def test_the_lock_document_does_not_tell_its_readers_when_others_come_and_go(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 49: every membership change writes the lock document's emptied maps again (``members.mirror_access``),
    a write that changed nothing until each commit stamped ``mirrored_at``: then a guest reading the lock document
    learnt the moment of every other member's removal, acceptance, expiry, and each edge of other guests' windows.
    That write leaves ``mirrored_at`` as it is (``mirror.UNSTAMPED_OPS``)."""
    host, lock_doc = stack_env["FIRESTORE_EMULATOR_HOST"], f"locks/{world.lock_id}"
    guest = world.accounts["guest_in"]["idToken"]

    def read() -> dict[str, Any]:
        url = f"http://{host}/v1/projects/{PROJECT_ID}/databases/(default)/documents/{lock_doc}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {guest}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            found: dict[str, Any] = json.loads(resp.read())
        return {"fields": found["fields"], "updateTime": found["updateTime"]}

    get_runtime("devices").flush_mirror(force=True)
    wait_until_mirrored(world.lock_id)
    before = read()
    assert mirror.MIRRORED_AT in before["fields"]  # the lock's own writes stamp it
    time.sleep(1.1)
    member = world.uid("member")
    removed = world.devices.delete(f"/devices/locks/{world.lock_id}/members/{member}", headers=world.headers("owner"))
    assert removed.status_code == 204
    get_runtime("devices").flush_mirror(force=True)
    wait_until_mirrored(world.lock_id)
    assert read() == before


def test_a_lock_paired_again_shows_as_not_heard_from_not_as_the_replaced_device(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 47: a re-pairing reset only the order of reports; the lock's row and document kept the replaced
    device's state, battery, firmware and "online" (its last will refused with its identity), shown as the new
    device's for ever if it never connected, and commands were sent as to a lock online. Now: not yet heard from."""
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    assert relay_event(world, token, "status", "online")["outcome"] == "applied"
    old = {"state": "unlocked", "battery_pct": 12, "firmware": "old-1.0", "ts": time.time()}
    assert relay_event(world, token, "state", old)["outcome"] == "applied"
    pair_again(world.devices, world)
    seen = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("owner")).get_json()["state"]
    assert (seen["state"], seen["online"], seen["battery_pct"], seen["firmware"]) == ("unknown", False, None, None)
    get_runtime("devices").flush_mirror(force=True)
    wait_until_mirrored(world.lock_id)
    doc = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"]).document(mirror.lock_doc(world.lock_id))
    shown = doc.get().to_dict()
    assert (shown["state"], shown["online"], shown["battery_pct"], shown["firmware"]) == ("unknown", False, None, None)


def test_a_lock_paired_again_lists_the_new_devices_first_reports_whatever_the_replaced_one_sent(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 50 (Low): the replaced device's reports of its last minute used up the feed's budget of reports
    (``LOCKWISE_FEED_REPORTS_PER_MINUTE``), and the new device's first report was left out of the feed, the old
    device's count of unlisted ones shown on the new one's next entry. A pairing starts the budget afresh."""
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}
    now = time.time()
    flood = [
        {"topic": f"lockwise/{world.credentials['mqtt']['client_id']}/state", "payload": json.dumps(report)}
        for report in (
            {"state": "locked", "ts": now - 40 + i} for i in range(get_settings("devices").feed_reports_per_minute + 3)
        )
    ]
    assert world.devices.post("/devices/relay/events", json={"events": flood}, headers=token).status_code == 200
    world.credentials = pair_again(world.devices, world)[0]
    assert (
        relay_event(world, token["X-LockWise-Service-Token"], "state", {"state": "unlocked", "ts": now})["outcome"]
        == "applied"
    )
    get_runtime("devices").flush_mirror(force=True)
    wait_until_mirrored(world.lock_id)
    sdk = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    entries = [e.to_dict() for e in sdk.collection(mirror.lock_collection(world.lock_id, mirror.FEED)).stream()]
    new = [e for e in entries if e.get("kind") == "state" and e.get("state") == "unlocked"]
    assert len(new) == 1, "the new device's first report is not in the feed"
    assert not new[0].get("unlisted_before"), new[0]


def test_numbered_online_and_offline_reports_are_applied_only_when_newer(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack runs: relay replicas share the status subscription and an abandoned session is drained late, so a
    lock's reports reach the function in either order; an older "online" applied after a newer "offline" showed an
    offline lock online until its next report. Numbered reports (the connection's number, its last will naming the
    same) are applied only when newer: online n < offline n < online n+1."""
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]

    def online() -> bool:
        with get_runtime("devices").db.connection() as con:
            return bool(
                con.run("SELECT online FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)[0][0]
            )

    def outcome(payload: str) -> str:
        return str(relay_event(world, token, "status", payload)["outcome"])

    assert outcome("online 1700000000001") == "applied" and online()
    assert outcome("offline 1700000000002") == "applied" and not online()  # the next connection's end came first
    assert outcome("online 1700000000002") == "stale" and not online()  # ... then its start, late
    assert outcome("online 1700000000001") == "stale" and not online()
    assert outcome("offline 1700000000002") == "duplicate"
    assert outcome("online 1700000000003") == "applied" and online()
    assert outcome("offline 1700000000001") == "stale" and online()  # an old session's will, drained late
    for bad in ("online -1", "online 1.5", "offline  7", "online 1234567890123456", "online\n1"):
        assert relay_event(world, token, "status", bad)["outcome"] == "rejected", bad
    assert outcome("offline") == "applied" and not online()  # a bare report (older firmware) applies as it comes


def lock_row(world: World) -> dict[str, Any]:
    with get_runtime("devices").db.connection() as con:
        rows = con.run(
            "SELECT online, status_order, reported_at, last_seen, connected_at, connected_run FROM lock_state"
            " WHERE lock_id = CAST(:l AS uuid)",
            l=world.lock_id,
        )
    names = ("online", "status_order", "reported_at", "last_seen", "connected_at", "connected_run")
    return dict(zip(names, rows[0], strict=True))


def test_a_state_report_of_a_connection_that_has_ended_does_not_bring_its_lock_back_online(
    world: World, stack_env: dict[str, str]
) -> None:
    """A lock's report published just before its goodbye can reach the function after it (the relays share a lock's
    events; an abandoned session's come late): it showed the offline lock online, and its command was sent to it. A
    report naming its connection (``connection``) changes the state but not the status once that connection's end
    is applied, nor when the lock was last seen; one naming a newer connection stands for its ``online``, so an
    older goodbye coming later is stale; one naming none says the lock is online, as before the field. A report
    made more than a minute after the lock was last heard from, naming an ended connection, is from a live one whose
    number went back (a counter not kept across a reboot): it counts, and its numbering from then on."""
    token, base = stack_env["LOCKWISE_SERVICE_TOKEN"], 1700000000000
    ts = iter(range(int(time.time()) - 100, int(time.time())))

    def report(connection: Any = None, at: float | None = None) -> str:
        body = {"state": "unlocked", "ts": at or next(ts), **({} if connection is None else {"connection": connection})}
        return str(relay_event(world, token, "state", body)["outcome"])

    def status(payload: str) -> str:
        return str(relay_event(world, token, "status", payload)["outcome"])

    assert status(f"online {base + 1}") == "applied" and status(f"offline {base + 1}") == "applied"
    before = lock_row(world)
    assert report(base + 1) == "applied", "the state is taken"
    after = lock_row(world)
    assert not after["online"] and after["status_order"] == 2 * (base + 1) + 1, "... the status is not"
    assert after["reported_at"] != before["reported_at"] and after["last_seen"] == before["last_seen"]
    wait_until_mirrored(world.lock_id)
    doc = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"]).document(f"locks/{world.lock_id}").get()
    assert doc.to_dict()["online"] is False
    assert report(base + 2) == "applied"
    after = lock_row(world)
    assert after["online"] and after["status_order"] == 2 * (base + 2), "a newer connection is online"
    assert after["connected_at"] is not None and after["last_seen"] > before["last_seen"]
    assert status(f"online {base + 2}") == "duplicate"  # its own online, come after its report
    assert status(f"offline {base + 1}") == "stale" and lock_row(world)["online"], "an older goodbye, late"
    assert status(f"offline {base + 2}") == "applied" and not lock_row(world)["online"]
    assert report() == "applied" and lock_row(world)["online"], "a report naming no connection: online, as before"
    # a reboot that lost the counter: its "online 7" is stale, and so is its report at first; one made more than a
    # minute after it was last heard from is from a live connection
    assert status(f"offline {base + 3}") == "applied" and status("online 7") == "stale"
    assert report(7, at=time.time()) == "applied" and not lock_row(world)["online"]
    with get_runtime("devices").db.transaction() as con:  # a minute and more goes by
        con.run(
            "UPDATE lock_state SET last_seen = last_seen - interval '61 seconds' WHERE lock_id = CAST(:l AS uuid)",
            l=world.lock_id,
        )
    assert report(7, at=time.time() + 1) == "applied"
    after = lock_row(world)
    assert after["online"] and after["status_order"] == 14
    assert status("offline 7") == "applied" and not lock_row(world)["online"], "its goodbye counts again"
    # a report dated further ahead of the server than a lock's clock may be (attack run 18: a dead lock came back)
    assert report(7, at=time.time() + 90) == "applied" and not lock_row(world)["online"], "a clock too far ahead"
    for bad in (-1, 1.5, True, "7", 10**15, int(time.time() * 1000) + 2 * 86_400_000):
        outcome = relay_event(world, token, "state", {"state": "locked", "ts": time.time(), "connection": bad})
        assert outcome["outcome"] == "rejected", bad


def test_locks_whose_connection_came_before_their_broker_restarted_are_turned_offline(
    world: World, stack_env: dict[str, str]
) -> None:
    """Mosquitto keeps no last will across a crash (``persist_write.c``), so a lock whose power was cut while the
    broker was away sent no ``offline`` and was shown online until it came back; commands made for it were sent
    into its broker session. With the broker's uptime (``broker_uptime_s``, from the relay), the relay's upkeep turns
    offline the locks whose connection the function heard of before the broker started; a report of that
    connection forwarded late does not keep it online (it did when ``last_seen`` was compared: a review), and counts
    as ended afterwards; a lock on a newer connection, and a relay from before the field (no body), change nothing."""
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    service = {"X-LockWise-Service-Token": token}
    base = 1700000000000

    def flush(body: Any = None, **kwargs: Any) -> Any:
        if isinstance(body, dict) and "broker_uptime_s" in body:
            body = {"sent_at": time.time(), **body}  # as the relay sends it
        return world.devices.post("/devices/relay/flush", headers=service, json=body, **kwargs)

    def connected(ago: dt.timedelta) -> None:
        """The lock's connection heard of ``ago`` (only this lock's: nothing else in the shared database is older
        than a broker a year up)."""
        with get_runtime("devices").db.transaction() as con:
            con.run(
                "UPDATE lock_state SET connected_at = now() - make_interval(secs => :a)"
                " WHERE lock_id = CAST(:l AS uuid)",
                a=ago.total_seconds(),
                l=world.lock_id,
            )

    year = 365 * 86400.0
    assert relay_event(world, token, "status", f"online {base + 1}")["outcome"] == "applied"
    connected(dt.timedelta(seconds=year + 5))  # within the slack: the start is dated to within seconds
    assert flush({"broker_uptime_s": year}).status_code == 200 and lock_row(world)["online"]
    assert flush().status_code == 200 and lock_row(world)["online"], "a relay from before the field sends no body"
    connected(dt.timedelta(seconds=year + 60))
    # an upkeep held up (or a relay clock apart): its uptime would date the start late, so it sweeps nothing
    # (attack run 18: 20 s late turned every live lock offline)
    for sent_at in (time.time() - 5, time.time() + 5):
        held_up = flush({"broker_uptime_s": year, "sent_at": sent_at})
        assert held_up.status_code == 200 and lock_row(world)["online"], sent_at
    report = {"state": "locked", "ts": time.time(), "connection": base + 1}
    assert relay_event(world, token, "state", report)["outcome"] == "applied", "its report, forwarded late"
    resp = flush({"broker_uptime_s": year, "a_newer_field": 1})
    assert resp.status_code == 200, resp.get_json()
    after = lock_row(world)
    assert not after["online"] and after["status_order"] == 2 * (base + 1) + 1, "offline, its connection ended"
    wait_until_mirrored(world.lock_id)
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    assert client.document(f"locks/{world.lock_id}").get().to_dict()["online"] is False
    entries = [e.to_dict() for e in client.collection(f"locks/{world.lock_id}/activity").stream()]
    assert [e.get("reason") for e in entries if e["kind"] == "offline"] == ["broker_restart"]
    assert relay_event(world, token, "status", f"online {base + 1}")["outcome"] == "stale"
    report = {"state": "unlocked", "ts": time.time() + 1, "connection": base + 1}
    assert relay_event(world, token, "state", report)["outcome"] == "applied" and not lock_row(world)["online"]
    assert relay_event(world, token, "status", f"online {base + 2}")["outcome"] == "applied"
    assert flush({"broker_uptime_s": year}).status_code == 200 and lock_row(world)["online"], "back: a new connection"
    for bad in ("1", -1, True, year * 11, [1], {"s": 1}):
        for body in ({"broker_uptime_s": bad}, {"broker_uptime_s": year, "sent_at": 1e12 if bad == year * 11 else bad}):
            resp = flush(body)
            assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_broker_uptime", body
    resp = flush(data=b"{", content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "malformed_json"
    assert lock_row(world)["online"]


def test_a_lock_heard_from_on_an_earlier_broker_run_is_turned_offline_whatever_the_clocks(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run 18: two broker restarts within the slack the uptime needs (10 s) left a lock that connected
    between them, and died, shown online. The broker's plugin tags each lock message with its run, and the relay
    sends the current run with the upkeep: a lock whose connection was heard of on an earlier run is turned offline
    however close the clocks put it, one on the current run stays online however old its connection, and a run held
    up (an older one) turns no live lock offline. A report tagged with a newer run counts as heard from on it; a
    connection heard of without a run is judged by the clocks, as before."""
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    service = {"X-LockWise-Service-Token": token}
    base, first = 1700000000000, 1764840000000000
    year = 365 * 86400.0

    def flush(**body: Any) -> Any:
        if "broker_uptime_s" in body:
            body["sent_at"] = time.time()
        return world.devices.post("/devices/relay/flush", headers=service, json=body)

    def connected(ago_s: float) -> None:
        with get_runtime("devices").db.transaction() as con:
            con.run(
                "UPDATE lock_state SET connected_at = now() - make_interval(secs => :a)"
                " WHERE lock_id = CAST(:l AS uuid)",
                a=ago_s,
                l=world.lock_id,
            )

    # connected on the first run 3 s before the second started (a year ago: only this lock's connection is as old in
    # the shared database): the clocks alone keep it online
    assert relay_event(world, token, "status", f"online {base + 1}", run=first)["outcome"] == "applied"
    assert lock_row(world)["connected_run"] == first
    connected(year + 3)
    assert flush(broker_uptime_s=year).status_code == 200 and lock_row(world)["online"], "within the slack"
    assert flush(broker_run=first + 5_000_000, broker_uptime_s=year).status_code == 200
    after = lock_row(world)
    assert not after["online"] and after["status_order"] == 2 * (base + 1) + 1, "an earlier run: offline, ended"
    wait_until_mirrored(world.lock_id)
    client = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    entries = [e.to_dict() for e in client.collection(f"locks/{world.lock_id}/activity").stream()]
    assert [e.get("reason") for e in entries if e["kind"] == "offline"] == ["broker_restart"]

    # back on the current run: its connection a year old by the clocks, it stays online; an older run changes nothing
    second = first + 5_000_000
    assert relay_event(world, token, "status", f"online {base + 2}", run=second)["outcome"] == "applied"
    connected(year + 60)
    assert flush(broker_run=second, broker_uptime_s=year).status_code == 200 and lock_row(world)["online"]
    assert flush(broker_run=first).status_code == 200 and lock_row(world)["online"], "an upkeep held up"
    # a report published on a newer run, on the same connection number: heard from on that run
    report = {"state": "locked", "ts": time.time(), "connection": base + 2}
    assert relay_event(world, token, "state", report, run=second + 1)["outcome"] == "applied"
    assert lock_row(world)["connected_run"] == second + 1
    assert flush(broker_run=second + 1).status_code == 200 and lock_row(world)["online"]
    # an untagged message (with the plugin, only a last will is: attack run 19's "online" will, sent as the broker
    # stopped, cleared the run and the clocks' slack kept the dead lock online) keeps the run known
    assert relay_event(world, token, "status", f"online {base + 3}")["outcome"] == "applied"
    assert lock_row(world)["connected_run"] == second + 1
    connected(year + 60)
    assert flush(broker_run=second + 1, broker_uptime_s=year).status_code == 200 and lock_row(world)["online"]
    assert flush(broker_run=second + 2).status_code == 200 and not lock_row(world)["online"], "judged by its run"
    # a message of an older run forwarded late (a relay's persisted session) says nothing against the newer one
    assert relay_event(world, token, "status", "online", run=second + 3)["outcome"] == "applied"
    assert relay_event(world, token, "status", "online", run=second + 2)["outcome"] == "applied"
    assert lock_row(world)["connected_run"] == second + 3
    assert flush(broker_run=second + 3).status_code == 200 and lock_row(world)["online"]
    # a run no broker numbered (a last will keeps its lock's properties: one far ahead would keep it shown online
    # through every restart) is not taken, and the event is judged untagged, never refused for it
    near = int((time.time() + 300) * 1e6)  # a broker clock a little ahead of the function's
    assert relay_event(world, token, "status", f"online {base + 9}", run=near)["outcome"] == "applied"
    assert lock_row(world)["connected_run"] == near
    ahead = int((time.time() + 20 * 60) * 1e6)
    for n, bad in enumerate((0, -1, True, "5", 2**63, 1.5, ahead)):
        assert relay_event(world, token, "status", f"offline {base + 10 + n}", run=bad)["outcome"] == "applied", bad
        assert relay_event(world, token, "status", f"online {base + 11 + n}", run=bad)["outcome"] == "applied", bad
        assert lock_row(world)["connected_run"] == near, bad
        if bad != ahead:
            resp = flush(broker_run=bad)
            assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_broker_run", bad
    # a row never told a run is judged by the clocks; a broker run ahead of the time is not taken: the uptime judges
    with get_runtime("devices").db.transaction() as con:
        con.run("UPDATE lock_state SET connected_run = NULL WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    connected(year + 60)
    assert flush(broker_run=ahead, broker_uptime_s=year).status_code == 200 and not lock_row(world)["online"]


def test_an_upkeep_turns_offline_every_lock_not_back_a_transaction_at_a_time(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker restart can leave thousands of locks not back: the upkeep turns them offline
    ``NOT_BACK_PER_PASS`` to a transaction, each pass in a new one, until a pass turns fewer; with 2 a pass, five
    locks take three passes, and a lock back on the new run is left online."""
    from tests.devices_world import provision

    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    first, second = 1764840000000000, 1764840005000000  # runs older than the stack's broker's: other locks untouched
    worlds = [world]
    for i in range(5):
        code = create_lock(world.devices, world.accounts["owner"], name=f"Door {i}")["provisioning"]["code"]
        credentials, _key, _tls = provision(world.devices, code)
        worlds.append(World(world.devices, world.accounts, credentials["lock_id"], credentials, _key, _tls))
    for each in worlds:
        assert relay_event(each, token, "status", "online 1", run=first)["outcome"] == "applied"
    assert relay_event(worlds[0], token, "status", "online 2", run=second)["outcome"] == "applied"  # back
    passes: list[int] = []
    real = broker_restarts.not_back_since

    def counted(*args: Any, **kwargs: Any) -> int:
        passes.append(real(*args, **kwargs))
        return passes[-1]

    monkeypatch.setattr(broker_restarts, "NOT_BACK_PER_PASS", 2)
    monkeypatch.setattr(broker_restarts, "not_back_since", counted)
    resp = world.devices.post(
        "/devices/relay/flush", headers={"X-LockWise-Service-Token": token}, json={"broker_run": second}
    )
    assert resp.status_code == 200, resp.get_json()
    assert passes == [2, 2, 1]
    assert [lock_row(each)["online"] for each in worlds] == [True] + [False] * 5


def test_a_new_pairing_numbers_its_connections_afresh_and_no_number_runs_ahead_of_time(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run: the order was kept across a re-pairing, so the device being replaced (or a counter restarted by a
    factory reset) left every numbered report of the new pairing stale for good; one report numbered
    999999999999999 did it. Such a number is refused, and a new pairing starts the order again. So it does for the
    state reports' times (attack run 10: the old device's last report, dated minutes ahead, made the new one's
    reports stale until then)."""
    import dataclasses

    token, now_ms = stack_env["LOCKWISE_SERVICE_TOKEN"], int(time.time() * 1000)
    assert relay_event(world, token, "status", "online 999999999999999")["outcome"] == "rejected"
    assert relay_event(world, token, "status", f"online {now_ms + 3_600_000}")["outcome"] == "applied"  # a fast clock
    ahead = {"state": "unlocked", "ts": now_ms / 1000 + 240}  # within the 5 min a report may be ahead
    assert relay_event(world, token, "state", ahead)["outcome"] == "applied"
    credentials, _key, _tls = pair_again(world.devices, world)
    repaired = dataclasses.replace(world, credentials=credentials)
    assert relay_event(repaired, token, "status", "online 1")["outcome"] == "applied"  # a counter from zero
    assert relay_event(repaired, token, "status", "offline 1")["outcome"] == "applied"
    assert relay_event(repaired, token, "state", {"state": "locked", "ts": time.time()})["outcome"] == "applied"


class RecordingFirestore:
    """A stand-in for Firestore that records what each commit wrote, and can hold a commit until released."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.hold, self.writing, self.names = hold, threading.Event(), list[str]()

    def name(self, path: str) -> str:
        return path

    def commit(self, writes: list[dict[str, Any]]) -> None:
        self.writing.set()
        if self.hold is not None:
            assert self.hold.wait(60)
        self.names += [json.dumps(w) for w in writes]

    def versions(self, paths: list[str]) -> dict[str, str | None]:
        return dict.fromkeys(paths)

    def list_versions(self, collection_path: str, page_size: int) -> list[tuple[str, str]]:
        return []


def test_rows_held_back_behind_a_slow_flush_do_not_hold_up_other_documents(world: World) -> None:
    """Attack run: a pass claimed the oldest 500 rows, all of one document whose older row another instance's flush
    was still writing; it held them back, wrote nothing, and claimed the same 500 again: no other document's row
    behind them was written while that flush lasted (up to 15 min for a big feed's deletion). A pass now claims past
    the rows it holds back."""
    from lockwise.core import firestore

    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    busy = mirror.lock_doc(world.lock_id)
    with rt.db.transaction() as con:
        mirror.enqueue(con, busy, "merge", {"battery_pct": 1})
    release = threading.Event()
    slow = RecordingFirestore(release)
    other_instance = threading.Thread(
        target=mirror.Flusher(rt.db, lambda: cast(firestore.Client, slow)).flush, kwargs={"hand_off": False}
    )
    other_instance.start()
    try:
        assert slow.writing.wait(10)
        with rt.db.transaction() as con:  # a flood of the busy lock's reports, then another user's document
            mirror.enqueue_many(con, [(busy, "merge", {"battery_pct": i}) for i in range(mirror.MAX_BATCH_WRITES)])
            mirror.enqueue(con, f"users/{world.uid('member')}", "set", {"voice_enrolled": True})
        fast = RecordingFirestore()
        mirror.Flusher(rt.db, lambda: cast(firestore.Client, fast)).flush(hand_off=False, budget_s=1.0)
        assert any(world.uid("member") in name for name in fast.names)
        assert not any(world.lock_id in name for name in fast.names)  # the busy lock's rows still wait their turn
    finally:
        release.set()
        other_instance.join(30)
        rt.flush_mirror(force=True)


def test_a_long_feeds_deletion_is_done_a_part_each_pass_and_other_documents_are_written_between(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run: one pass deleted a deleted lock's whole feed (30,000 entries: 38 s), holding the instance's flush,
    and no other lock's view changed meanwhile; a feed a busy lock grows in a year would outlast the pass's limit
    and start again for ever. A pass now deletes a part (one budget for all the collections it finds queued; none
    in a request's own flush) and writes the rest of its rows; a write into the collection queued after its
    deletion still lands after it."""
    from lockwise.core import firestore

    monkeypatch.setattr(mirror, "DELETED_PER_PASS", mirror.MAX_BATCH_WRITES)
    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    wait_for(lambda: not any(t.name == "mirror-flush" for t in threading.enumerate()), timeout=40)
    sdk = firestore_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    feed_path, access_path = f"locks/{world.lock_id}/activity", f"locks/{world.lock_id}/access"
    for start in range(0, 1200, 400):  # a busy lock's months of feed, written straight to the emulator
        batch = sdk.batch()
        for i in range(start, start + 400):
            batch.set(sdk.collection(feed_path).document(f"old-{i:05d}"), {"kind": "state"})
        batch.commit()

    def names(path: str) -> list[str]:
        return sorted(doc.id for doc in sdk.collection(path).list_documents())

    def queued() -> list[str]:
        with rt.db.connection() as con:
            rows = con.run("SELECT doc_path FROM firestore_outbox WHERE refused_at IS NULL ORDER BY id")
        return [str(row[0]) for row in rows]

    feed, access = len(names(feed_path)), len(names(access_path))
    assert feed > 1200 and access >= 2
    other = f"users/{world.uid('member')}"
    with rt.db.transaction() as con:
        mirror.enqueue(con, feed_path, "delete_collection")
        mirror.enqueue(con, access_path, "delete_collection")
        mirror.enqueue(con, f"{feed_path}/after", "set", {"kind": "late"})
        mirror.enqueue(con, other, "set", {"voice_enrolled": True})
    settings = rt.settings
    flusher = mirror.Flusher(
        rt.db, lambda: firestore.make_client(settings.project_id, settings.firestore_emulator_host)
    )
    assert flusher._flush(mirror.MAX_BATCH_WRITES, 0) == (1, 0, True)  # a request's own flush: no deletion
    assert sdk.document(other).get().to_dict().keys() - {mirror.MIRRORED_AT} == {"voice_enrolled"}
    assert (len(names(feed_path)), len(names(access_path))) == (feed, access)
    assert flusher._flush(mirror.MAX_BATCH_WRITES, mirror.DELETED_PER_PASS) == (0, 0, True)
    # one budget for the pass: the feed's first 500, nothing of the access documents, nothing written into them
    assert (len(names(feed_path)), len(names(access_path))) == (feed - 500, access)
    assert "after" not in names(feed_path)
    assert queued() == [feed_path, access_path, f"{feed_path}/after"]
    # a request's flush leaves the deletion to a background flush, which finishes it and writes what waited for it
    assert flusher.flush(deletes=False) == 0  # as Runtime.flush_mirror() calls it
    wait_for(lambda: queued() == [], timeout=60, what="the deletions and the write after them, in the background")
    assert names(feed_path) == ["after"] and names(access_path) == []


def test_a_deleted_locks_long_feed_is_read_by_nobody_while_it_is_deleted(
    world: World, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 46: a deleted lock's access documents (what the rules read) were deleted after its feed, and a busy
    lock's feed takes many passes, so its former members read the rest of it meanwhile. The access documents now go
    right after the lock document."""
    from lockwise.core import firestore

    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    wait_for(lambda: not any(t.name == "mirror-flush" for t in threading.enumerate()), timeout=40)
    host = stack_env["FIRESTORE_EMULATOR_HOST"]
    sdk = firestore_client(PROJECT_ID, host)
    feed = f"locks/{world.lock_id}/activity"
    for start in range(0, 1200, 400):  # a busy lock's feed, written straight to the emulator
        batch = sdk.batch()
        for i in range(start, start + 400):
            batch.set(sdk.collection(feed).document(f"old-{i:05d}"), {"kind": "state", "audience": "everyone"})
        batch.commit()
    entry = f"{feed}/old-01199"
    assert rest_get(host, entry, world.accounts["member"]["idToken"]) == 200
    monkeypatch.setattr(mirror.Flusher, "flush_soon", lambda self: None)  # one pass at a time
    assert world.devices.delete(f"/devices/locks/{world.lock_id}", headers=world.headers("owner")).status_code == 204
    settings = rt.settings
    flusher = mirror.Flusher(
        rt.db, lambda: firestore.make_client(settings.project_id, settings.firestore_emulator_host)
    )
    flusher._flush(mirror.MAX_BATCH_WRITES, mirror.DELETED_PER_PASS)  # one pass of the relay's flush
    assert sdk.document(entry).get().exists  # the feed is not all gone yet
    for role in ("member", "guest_in", "owner"):
        assert rest_get(host, entry, world.accounts[role]["idToken"]) == 403, role


def test_a_redelivery_of_more_reports_than_are_kept_is_taken_once(world: World, stack_env: dict[str, str]) -> None:
    """A relay killed after the devices function took its batch, before it acknowledged it, has the broker deliver it
    again (a lock's line holds up to 500). Only a lock's last ``RECENT_REPORTS`` reports are known by key, and each
    key of the redelivery pushed out the next one's: 99 of 100 reports delivered again were listed in the feed again
    as late and charged to its budget again (attack run 29). Kept by the lock's time of them now: every report
    delivered again is ``stale`` and nothing is listed or charged."""
    count = lock_events.RECENT_REPORTS + 36
    base = time.time() - 60
    batch = [
        {
            "topic": f"lockwise/{world.credentials['mqtt']['client_id']}/state",
            "payload": json.dumps({"state": "locked" if n % 2 else "unlocked", "ts": round(base + n / 10, 3)}),
        }
        for n in range(count)
    ]
    token = {"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]}

    def post() -> list[str]:
        resp = world.devices.post("/devices/relay/events", json={"events": batch}, headers=token)
        assert resp.status_code == 200, resp.get_json()
        return [r["outcome"] for r in resp.get_json()["results"]]

    def charged() -> int:
        with get_runtime("devices").db.connection() as con:
            ((n,),) = con.run(
                "SELECT feed_entries + feed_unlisted FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id
            )
        return int(n)

    assert post() == ["applied"] * count
    before = charged()
    assert post() == ["stale"] * count
    assert charged() == before


def test_a_session_made_from_a_custom_token_reads_and_does_nothing(world: World, stack_env: dict[str, str]) -> None:
    """Attack run 121: the app signs in with an address or a provider, never a custom token; yet a session made from
    one for the owner's uid (``createCustomToken``, by whatever holds a key that signs for the project's Admin SDK: a
    support tool's, a CI job's, a leaked service account key) was the owner, at the API (the lock, a pairing code,
    commands) and under the rules (the live view), with nothing changed on the account to show it. Both refuse it
    now: the API 401 ``custom_token_session``, the rules as they refuse a tenant's."""
    auth_host, host = stack_env["FIREBASE_AUTH_EMULATOR_HOST"], stack_env["FIRESTORE_EMULATOR_HOST"]
    lock_doc = f"locks/{world.lock_id}"
    assert rest_get(host, lock_doc, world.accounts["owner"]["idToken"]) == 200
    minted = custom_token_sign_in(auth_host, world.uid("owner"))
    token = minted["idToken"]
    assert rest_get(host, lock_doc, token) == 403
    assert rest_get(host, f"users/{world.uid('owner')}", token) == 403
    refused = world.devices.get(f"/devices/locks/{world.lock_id}", headers=bearer(minted))
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (401, "custom_token_session")
    code = world.devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=bearer(minted))
    assert code.status_code == 401
