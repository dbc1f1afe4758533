"""``If-Unmodified-Since`` on a deletion (``lockwise.core.preconditions``): a deletion sent again after its answer was
lost, once what it meant was gone and something had taken its place, deletes the new one no more (attack run 108: a
removal sent again after the member had joined again removed her again; a voice deletion sent again after its owner
had enrolled again erased the new voice)."""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from typing import Any

import pytest

from lockwise.core.runtime import get_runtime
from tests.devices_world import World, bearer
from tests.integration.test_voice import enroll


def http_date(moment: dt.datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(dt.UTC), usegmt=True)


def code(resp: Any) -> tuple[int, str]:
    body = resp.get_json() or {}
    return resp.status_code, (body.get("error") or {}).get("code", "")


def member_rows(lock_id: str, uid: str) -> list[Any]:
    with get_runtime("devices").db.connection() as con:
        return [
            list(row)
            for row in con.run(
                "SELECT revoked_at IS NULL FROM lock_members WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
                l=lock_id,
                u=uid,
            )
        ]


def test_a_removal_sent_again_after_the_member_joined_again_removes_her_no_more(world: World) -> None:
    lock, owner, uid = world.lock_id, world.headers("owner"), world.uid("member")
    path = f"/devices/locks/{lock}/members/{uid}"
    read_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)  # when the app read the member list
    guarded = {**owner, "If-Unmodified-Since": http_date(read_at)}
    assert world.devices.delete(path, headers=guarded).status_code == 204  # its answer lost, say
    sent = world.devices.post(f"/devices/locks/{lock}/members", json={"uid": uid, "role": "member"}, headers=owner)
    accepted = world.devices.post(
        f"/devices/invitations/{sent.get_json()['invitation']['id']}/accept", headers=world.headers("member")
    )
    assert accepted.status_code == 201
    again = world.devices.delete(path, headers=guarded)  # the late retry
    assert code(again) == (412, "member_changed")
    assert member_rows(lock, uid) == [[True]]  # she stays
    # read again since, the removal is done; and without the header a removal is done as before
    time.sleep(1.1)  # (an HTTP date is whole seconds)
    fresh = {**owner, "If-Unmodified-Since": http_date(dt.datetime.now(dt.UTC))}
    assert world.devices.delete(path, headers=fresh).status_code == 204
    assert member_rows(lock, uid) == [[False]]
    guest = world.uid("guest_in")
    assert world.devices.delete(f"/devices/locks/{lock}/members/{guest}", headers=owner).status_code == 204


@pytest.mark.parametrize(
    "value",
    # the last: past what a date holds once in UTC, a 500 before (attack run 119)
    ["yesterday", "2026-12-07T10:00:00Z", "Mon, 32 Dec 2026 10:00:00 GMT", " ", "Fri, 31 Dec 9999 23:59:59 -0001"],
)
def test_a_precondition_that_is_no_http_date_is_refused_and_nothing_is_removed(world: World, value: str) -> None:
    lock, uid = world.lock_id, world.uid("member")
    refused = world.devices.delete(
        f"/devices/locks/{lock}/members/{uid}", headers={**world.headers("owner"), "If-Unmodified-Since": value}
    )
    assert code(refused) == (400, "invalid_if_unmodified_since")
    assert member_rows(lock, uid) == [[True]]


@pytest.mark.model
def test_a_voice_deletion_sent_again_after_its_owner_enrolled_again_erases_the_new_voice_no_more(
    clients: dict[str, Any], world: World
) -> None:
    account = world.accounts["member"]
    assert enroll(clients, account).status_code == 201
    read_at = dt.datetime.now(dt.UTC)  # when the app read GET /embed/enrollment
    time.sleep(1.1)
    guarded = {**bearer(account), "If-Unmodified-Since": http_date(read_at)}
    assert clients["embed"].delete("/embed/enrollment", headers=guarded).status_code == 204  # its answer lost
    assert enroll(clients, account, gain=0.8).status_code == 201  # she enrolls again
    again = clients["embed"].delete("/embed/enrollment", headers=guarded)  # the late retry
    assert code(again) == (412, "enrollment_changed")
    status = clients["embed"].get("/embed/enrollment", headers=bearer(account)).get_json()
    assert status["enrolled"] is True
    # and a voice read before it was deleted: the deletion is done (nothing changed since)
    enrolled_at = dt.datetime.fromisoformat(status["enrolled_at"])
    later = {**bearer(account), "If-Unmodified-Since": http_date(enrolled_at + dt.timedelta(seconds=1))}
    assert clients["embed"].delete("/embed/enrollment", headers=later).status_code == 204
    assert clients["embed"].get("/embed/enrollment", headers=bearer(account)).get_json()["enrolled"] is False
