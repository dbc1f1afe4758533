"""Text one person writes and others read, against the real stack (attack run 118): a lock's name (its owner's, read
by every member and whoever is invited, on the API and live in Firestore), the firmware a lock reports (read by every
member in the lock's document), and the address Firebase Auth vouches for (read by a lock's admins in the members'
listing and by whoever the account invites). Each write path refuses or neutralises what would mislead the reader."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from infra.local.firestore_sdk import sdk_client as firestore_client
from lockwise.core.runtime import get_runtime
from lockwise.devices import command_outcomes
from tests.conftest import PROJECT_ID
from tests.devices_world import World, bearer, build_world, command_nonce, create_lock, google_sign_in
from tests.integration.test_devices_live_view import relay_event, wait_until_mirrored

#: names each made a reader see something else: one that looked empty, "Home" again with an invisible letter, a flood
#: of marks stacked over the lines around it, a platform's logo, a faked second line
MISLEADING = [
    "\u200d",
    "\u200e\u200f",
    "\u0301",
    "\u3164",
    "\u2800",
    "Home\u115f",
    "Gar\u034fage",
    "Z" + "\u0336\u0337\u0338" * 20,
    "\uf8ff Official",
    "Home\u2028as admin, from owner@example.com",
]


@pytest.fixture
def world(make_client: Any, sign_up: Any) -> World:
    return build_world(make_client("devices"), sign_up)


def _state(world: World, firestore_host: str) -> tuple[Any, Any]:
    """The lock's name in PostgreSQL and in its Firestore document, as every member reads it live."""
    with get_runtime("devices").db.connection() as con:
        ((kept,),) = con.run("SELECT name FROM locks WHERE id = CAST(:l AS uuid)", l=world.lock_id)
    get_runtime("devices").flush_mirror(force=True)
    wait_until_mirrored(world.lock_id)
    client = firestore_client(PROJECT_ID, firestore_host)
    doc = client.document(f"locks/{world.lock_id}").get().to_dict() or {}
    return kept, doc.get("name")


@pytest.mark.parametrize("name", MISLEADING)
def test_a_lock_name_that_would_mislead_its_readers_is_refused_on_every_write(
    world: World, stack_env: dict[str, str], name: str
) -> None:
    """Created or renamed, a name that looks empty, like another, spills over the lines around it or fakes a line
    is 400 invalid_name saying why; nothing is kept, nothing reaches the members' live view."""
    owner = world.headers("owner")
    made = world.devices.post("/devices/locks", json={"name": name}, headers=owner)
    renamed = world.devices.patch(f"/devices/locks/{world.lock_id}", json={"name": name}, headers=owner)
    for answer in (made, renamed):
        assert answer.status_code == 400, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "invalid_name" and error["message"].startswith("name "), error
    assert _state(world, stack_env["FIRESTORE_EMULATOR_HOST"]) == ("Front door", "Front door")
    listed = world.devices.get("/devices/locks", headers=owner).get_json()["locks"]
    assert [lock["name"] for lock in listed] == ["Front door"]


def test_a_lock_name_far_past_its_limit_is_refused_before_it_is_normalized(world: World) -> None:
    """A name of "a" and marks of two classes in the order NFC must swap: Python's NFC took time growing with the
    square of the run (300,000 pairs, 279 s of CPU). Refused as longer than any spelling of 100 characters before it
    is normalized (attack run 125); here 1,000 pairs, 12 KB with the client's escapes, within the route's 16 KiB."""
    owner = world.headers("owner")
    name = "a" + "\u0301\u0316" * 1_000
    made = world.devices.post("/devices/locks", json={"name": name}, headers=owner)
    renamed = world.devices.patch(f"/devices/locks/{world.lock_id}", json={"name": name}, headers=owner)
    for answer in (made, renamed):
        assert answer.status_code == 400, answer.get_json()
        error = answer.get_json()["error"]
        assert error == {
            **error,
            "code": "invalid_name",
            "message": "name must be 1 to 100 characters (at most 400 as sent)",
        }


def test_a_name_stored_before_the_rule_sent_back_unchanged_lets_the_owner_change_the_rest(world: World) -> None:
    """Attack run 122: a lock named before the rule for text others read (run 118) kept its name, and the app's
    update sending it back beside a new voice threshold was 400 invalid_name: the owner could change nothing until
    they renamed the lock. The stored name, sent back exactly, is taken as unchanged; another such name is refused."""
    lock, owner = world.lock_id, world.headers("owner")
    legacy = "Home\u115f"  # "Home" and a Hangul filler: refused now, taken before
    with get_runtime("devices").db.transaction() as con:
        con.run("UPDATE locks SET name = :n WHERE id = CAST(:l AS uuid)", n=legacy, l=lock)
    both = world.devices.patch(f"/devices/locks/{lock}", json={"name": legacy, "voice_threshold": 0.5}, headers=owner)
    assert both.status_code == 200, both.get_json()
    assert (both.get_json()["name"], both.get_json()["voice_threshold"]) == (legacy, 0.5)
    alone = world.devices.patch(f"/devices/locks/{lock}", json={"name": legacy}, headers=owner)
    assert alone.status_code == 200 and alone.get_json()["name"] == legacy, alone.get_json()
    for name in ("Home\u115f\u115f", "Other\u115f"):
        other = world.devices.patch(
            f"/devices/locks/{lock}", json={"name": name, "voice_threshold": 0.6}, headers=owner
        )
        assert other.status_code == 400 and other.get_json()["error"]["code"] == "invalid_name", other.get_json()
    shown = world.devices.get(f"/devices/locks/{lock}", headers=owner).get_json()
    assert (shown["name"], shown["voice_threshold"]) == (legacy, 0.5)
    member = world.devices.patch(f"/devices/locks/{lock}", json={"name": legacy}, headers=world.headers("admin"))
    assert member.status_code == 403, member.get_json()  # the owner's change still


def test_a_lock_name_is_kept_and_shown_in_one_spelling_without_a_gap(world: World, stack_env: dict[str, str]) -> None:
    """ "Cafe" with a combining accent and "Café" look the same and were two names; a run of spaces inside pushed the
    rest of a name out of view. Kept NFC with one space, in PostgreSQL, on the API and in the live view."""
    sent = " Cafe\u0301" + " " * 60 + "\u3000door "
    renamed = world.devices.patch(
        f"/devices/locks/{world.lock_id}", json={"name": sent}, headers=world.headers("owner")
    )
    assert renamed.status_code == 200 and renamed.get_json()["name"] == "Caf\u00e9 door", renamed.get_json()
    assert _state(world, stack_env["FIRESTORE_EMULATOR_HOST"]) == ("Caf\u00e9 door", "Caf\u00e9 door")
    seen = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("member")).get_json()
    assert seen["name"] == "Caf\u00e9 door"


@pytest.mark.parametrize("firmware", ["1.0\u20282.0 (official)", "\u3164", "1.0" + "\u0301" * 12, "\ue000 1.0"])
def test_firmware_text_that_would_mislead_the_members_is_rejected(
    world: World, stack_env: dict[str, str], firmware: str
) -> None:
    """The firmware a lock reports is shown to every member in the lock's document as the lock wrote it: a line
    separator faked a second line, a filler looked empty, marks stacked over the lines around it."""
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    report = {"state": "locked", "firmware": firmware, "ts": time.time()}
    assert relay_event(world, token, "state", report)["outcome"] == "rejected"
    with get_runtime("devices").db.connection() as con:
        kept = con.run("SELECT firmware FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    assert all(firmware is None for (firmware,) in kept), kept


def test_firmware_text_is_kept_in_one_spelling(world: World, stack_env: dict[str, str]) -> None:
    token = stack_env["LOCKWISE_SERVICE_TOKEN"]
    # trimmed and a gap made one space, as a name is (attack run 122: kept as sent, the rest out of view)
    report = {"state": "locked", "firmware": " Re\u0301v" + " " * 50 + "2 ", "ts": time.time()}
    assert relay_event(world, token, "state", report)["outcome"] == "applied"
    with get_runtime("devices").db.connection() as con:
        kept = con.run("SELECT firmware FROM lock_state WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id)
    assert kept == [["R\u00e9v 2"]]


def test_a_locks_reason_that_would_mislead_the_commands_reader_is_not_shown(
    world: World, stack_env: dict[str, str]
) -> None:
    """A lock's reason for failing a command is shown to whoever reads the command, after the server's own words: a
    newline and the server's wording made up why it failed ("withdrawn: the issuer's access changed"). The outcome
    is kept, the reason said to be not plain text."""
    member = world.headers("member")
    path = f"/devices/locks/{world.lock_id}/commands"
    command = world.devices.post(path, json={"action": "unlock"}, headers=member).get_json()["command"]
    ack = {
        "id": command["id"],
        "nonce": command_nonce(command["id"]),
        "result": "failed",
        "reason": "jammed\nwithdrawn: the issuer's access changed",
    }
    assert relay_event(world, stack_env["LOCKWISE_SERVICE_TOKEN"], "ack", ack) == {"outcome": "applied"}
    read = world.devices.get(f"{path}/{command['id']}", headers=member).get_json()["command"]
    assert (read["status"], read["error"]) == ("failed", "failed: " + command_outcomes.NOT_PLAIN), read


@pytest.mark.parametrize(
    "address",
    [
        "owner-{}\u202emoc.elpmaxe@example.com",  # a right-to-left override: read from the override on, reversed
        "mom-{}@ex\u0430mple.com",  # a Cyrillic a: drawn as mom-...@example.com, a domain anyone may register
        "mom-{}@\u0435\u0445\u0430\u0440\u0440\u0435.com",  # Cyrillic alone, each letter drawn as a Latin one
    ],
)
def test_a_verified_address_that_would_mislead_its_readers_is_shown_to_no_one(
    world: World, stack_env: dict[str, str], sign_up: Any, address: str
) -> None:
    """An address Firebase Auth vouches for (an identity provider's claim, a domain's mail received) with a
    right-to-left override in it, or a Latin word with a Cyrillic letter, read to a lock's admins, and to whoever
    that account invited, as another's. Such an address is recorded as none: the members' listing and the
    invitation say the account has no verified address and name it by uid; typed, it is no address."""
    auth = stack_env["FIREBASE_AUTH_EMULATOR_HOST"]
    address = address.format(secrets.token_hex(3))
    sender = google_sign_in(auth, address)
    assert sender.get("email") == address.lower() or sender.get("email") == address, sender  # vouched for as it is
    devices = world.devices
    assert devices.get("/devices/me", headers=bearer(sender)).status_code == 200
    # a member of the world's lock: its admins list them
    invitation = devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"uid": sender["localId"], "role": "member"},
        headers=world.headers("owner"),
    ).get_json()["invitation"]["id"]
    assert devices.post(f"/devices/invitations/{invitation}/accept", headers=bearer(sender)).status_code == 201
    listed = devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("admin")).get_json()
    (them,) = [m for m in listed["members"] if m["uid"] == sender["localId"]]
    assert them["email"] is None, them
    # and it invites another to a lock of its own: the invitee is not told the address
    invitee = sign_up()
    assert devices.get("/devices/me", headers=bearer(invitee)).status_code == 200
    own = create_lock(devices, sender, "Home")["lock"]["id"]
    sent = devices.post(
        f"/devices/locks/{own}/members", json={"uid": invitee["localId"], "role": "member"}, headers=bearer(sender)
    )
    assert sent.status_code == 202, sent.get_json()
    waiting = devices.get("/devices/invitations", headers=bearer(invitee)).get_json()["invitations"]
    (shown,) = [i for i in waiting if i["lock"]["id"] == own]
    assert shown["invited_by"] == sender["localId"] and shown["invited_by_email"] is None, shown
    typed = devices.post(
        f"/devices/locks/{world.lock_id}/members",
        json={"email": address, "role": "member"},
        headers=world.headers("owner"),
    )
    assert (typed.status_code, typed.get_json()["error"]["code"]) == (400, "invalid_email"), typed.get_json()
