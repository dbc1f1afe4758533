"""The authorization matrix of the devices function: each endpoint, each role, a stranger, a revoked member, a guest
outside their window, a lock acting for another lock, and app users on the relay's endpoints."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from lockwise.core import users
from lockwise.core.runtime import get_runtime
from lockwise.devices import lock_auth
from simlock.lock import new_tls_key
from tests.devices_world import (
    ROLES,
    World,
    bearer,
    build_world,
    create_lock,
    every_page,
    hand_over,
    invited,
    join,
    new_lock_key,
    provision,
)

OK_ALL_MEMBERS = {"owner": 200, "admin": 200, "member": 200, "guest_in": 200, "guest_out": 200}
DENIED_OUTSIDERS = {"stranger": 404, "revoked": 404}


@pytest.fixture
def world(make_client: Any, sign_up: Any) -> World:
    return build_world(make_client("devices"), sign_up)


def fresh_user(world: World, sign_up: Any) -> str:
    account = sign_up()
    assert (
        world.devices.get("/devices/me", headers={"Authorization": f"Bearer {account['idToken']}"}).status_code == 200
    )
    return str(account["localId"])


Case = tuple[str, str, Callable[[World, Any], dict[str, Any] | None], dict[str, int]]

CASES: list[Case] = [
    ("GET", "/devices/locks/{lock}", lambda w, s: None, {**OK_ALL_MEMBERS, **DENIED_OUTSIDERS}),
    (
        "PATCH",
        "/devices/locks/{lock}",
        lambda w, s: {"name": "Renamed"},
        {"owner": 200, "admin": 403, "member": 403, "guest_in": 403, "guest_out": 403, **DENIED_OUTSIDERS},
    ),
    (
        "POST",
        "/devices/locks/{lock}/provisioning",
        lambda w, s: None,
        {"owner": 201, "admin": 403, "member": 403, "guest_in": 403, "guest_out": 403, **DENIED_OUTSIDERS},
    ),
    (
        "GET",
        "/devices/locks/{lock}/members",
        lambda w, s: None,
        {"owner": 200, "admin": 200, "member": 403, "guest_in": 403, "guest_out": 403, **DENIED_OUTSIDERS},
    ),
    (
        "POST",
        "/devices/locks/{lock}/members",
        lambda w, s: {"uid": fresh_user(w, s), "role": "member"},
        {"owner": 202, "admin": 202, "member": 403, "guest_in": 403, "guest_out": 403, **DENIED_OUTSIDERS},
    ),
    (
        "POST",
        "/devices/locks/{lock}/members",
        lambda w, s: {"uid": fresh_user(w, s), "role": "admin"},
        {"owner": 202, "admin": 403, "member": 403, "guest_in": 403, "guest_out": 403, **DENIED_OUTSIDERS},
    ),
    (
        "POST",
        "/devices/locks/{lock}/commands",
        lambda w, s: {"action": "unlock"},
        {"owner": 202, "admin": 202, "member": 202, "guest_in": 202, "guest_out": 403, **DENIED_OUTSIDERS},
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), CASES, ids=[f"{c[0]} {c[1]} {i}" for i, c in enumerate(CASES)]
)
def test_endpoint_allows_exactly_the_right_roles(
    world: World, sign_up: Any, method: str, path: str, body: Any, expected: dict[str, int]
) -> None:
    assert set(expected) == set(ROLES)
    for role in ROLES:
        resp = world.devices.open(
            method, path.format(lock=world.lock_id), json=body(world, sign_up), headers=world.headers(role)
        )
        assert resp.status_code == expected[role], f"{role}: {resp.status_code} {resp.get_json()}"
        if resp.status_code >= 400:
            assert resp.get_json()["error"]["code"]


def test_guest_outside_window_is_refused_with_a_reason(world: World) -> None:
    resp = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "unlock"}, headers=world.headers("guest_out")
    )
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "outside_access_window"


def test_a_guest_outside_their_window_sees_the_lock_but_not_its_live_state(world: World) -> None:
    """Attack run: a guest whose window had not opened read the door's state, online and last seen from the API,
    which Firestore refused them (the live view is a guest's only inside their window)."""
    for role, inside in (("guest_in", True), ("guest_out", False), ("member", True)):
        one = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers(role)).get_json()
        listed = world.devices.get("/devices/locks", headers=world.headers(role)).get_json()["locks"]
        assert (one["state"] is not None) is inside, role
        assert [(lock["id"], lock["state"] is not None) for lock in listed] == [(world.lock_id, inside)], role


def test_a_members_locks_are_listed_a_page_at_a_time(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """An account is a member of every lock whose invitation it accepted, without limit, and ``GET /devices/locks``
    read and answered them all at once (attack run 54). It now answers a page of at most ``limit`` (100 by default
    and at most) with the next page's token, oldest first; a lock made while paging comes on a later page, never
    twice; a lock left is listed no more."""
    from lockwise.core import pages

    owner, member = world.accounts["owner"], world.accounts["member"]
    made = [world.lock_id]
    for n in range(4):
        made.append(create_lock(world.devices, owner, name=f"Door {n}")["lock"]["id"])
        if n < 3:
            join(world.devices, made[-1], owner, member, {"role": "member"})

    def pages_of(account: dict[str, Any], limit: str) -> list[list[str]]:
        return [
            [lock["id"] for lock in body["locks"]]
            for body in every_page(world.devices, "/devices/locks", account, limit)
        ]

    assert pages_of(owner, "2") == [made[0:2], made[2:4], made[4:5]]
    assert pages_of(member, "3") == [made[0:3], made[3:4]]  # her fourth lock is one she never joined
    assert pages_of(member, "4") == [made[0:4]]
    first = world.devices.get("/devices/locks", query_string={"limit": "2"}, headers=bearer(owner)).get_json()
    late = create_lock(world.devices, owner, name="Made while paging")["lock"]["id"]
    rest = world.devices.get(
        "/devices/locks", query_string={"page_token": first["next_page_token"]}, headers=bearer(owner)
    ).get_json()
    assert [lock["id"] for lock in first["locks"] + rest["locks"]] == [*made, late]
    assert rest["next_page_token"] is None
    gone = world.devices.delete(f"/devices/locks/{made[1]}/members/{member['localId']}", headers=bearer(member))
    assert gone.status_code == 204, gone.get_json()
    assert pages_of(member, "2") == [[made[0], made[2]], [made[3]]]
    monkeypatch.setattr(pages, "MAX_LIMIT", 2)  # the default page, without 100 locks
    default = world.devices.get("/devices/locks", headers=bearer(owner)).get_json()
    assert [lock["id"] for lock in default["locks"]] == made[0:2] and default["next_page_token"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "101"}, "invalid_limit"),
        ({"limit": "1.5"}, "invalid_limit"),
        ({"limit": "-1"}, "invalid_limit"),
        ({"limit": "\u0661"}, "invalid_limit"),  # an Arabic-Indic one: a digit to str.isdigit, not to us
        ({"page_token": "%%%"}, "invalid_page_token"),
        ({"page_token": "bm90IGEgdG9rZW4"}, "invalid_page_token"),  # "not a token"
        # a time and an id that is not a UUID; then a UUID and a time without its offset
        ({"page_token": "MjAyNi0xMi0wNlQwMDowMDowMCswMDowMHwx"}, "invalid_page_token"),
        (
            {"page_token": "MjAyNi0xMi0wNlQwMDowMDowMHwwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDA"},
            "invalid_page_token",
        ),
        ({"page_token": "x" * 201}, "invalid_page_token"),
        ({"page": "2"}, "unknown_field"),
    ],
)
def test_a_page_asked_for_wrongly_is_a_400_naming_it(world: World, query: dict[str, str], code: str) -> None:
    resp = world.devices.get("/devices/locks", query_string=query, headers=world.headers("owner"))
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == code, resp.get_json()


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/devices/locks", {"query_string": {"limit": "0"}}),
        ("GET", "/devices/invitations", {"query_string": {"page": "2"}}),
        ("POST", "/devices/locks/{lock}/provisioning", {"json": {"ttl_s": 999999}}),
        ("DELETE", "/devices/locks/{lock}/members/a%00b", {}),  # a path parameter that is not text
        ("GET", "/devices/me", {"data": b'{"x": 1}', "content_type": "application/json"}),
    ],
)
def test_a_request_without_a_token_is_401_whatever_else_is_wrong_with_it(
    world: World, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    """The router refused a request's query, body or path parameter (400) before the handler read its token: a
    caller without an account was told what each route takes. Its token is checked first now."""
    resp = world.devices.open(method, path.format(lock=world.lock_id), **kwargs)
    assert resp.status_code == 401, resp.get_json()
    signed_in = world.devices.open(method, path.format(lock=world.lock_id), headers=world.headers("owner"), **kwargs)
    assert signed_in.status_code == 400, signed_in.get_json()


def test_the_locks_voice_threshold_is_shown_to_its_owner_only(world: World) -> None:
    """How strict a door's voice check is was shown to every member and guest; only the owner may change it."""
    assert (
        world.devices.patch(
            f"/devices/locks/{world.lock_id}", json={"voice_threshold": 0.9}, headers=world.headers("owner")
        ).status_code
        == 200
    )
    for role in ("owner", "admin", "member", "guest_in", "guest_out"):
        one = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers(role)).get_json()
        (listed,) = world.devices.get("/devices/locks", headers=world.headers(role)).get_json()["locks"]
        expected = {"voice_threshold": 0.9} if role == "owner" else {}
        assert {k: v for k, v in one.items() if k == "voice_threshold"} == expected, role
        assert {k: v for k, v in listed.items() if k == "voice_threshold"} == expected, role


def test_the_locks_owner_is_named_to_those_who_manage_its_members_only(world: World, sign_up: Any) -> None:
    """Attack run 112: every member and guest was told the owner's uid with the lock (``owner_uid``), which the live
    view keeps from them (the lock's document names nobody; the feed names a guest only those it is about): a guest
    the owner's co-host let in learnt the account of the host, the same at each of her places. The owner and admins,
    who list the lock's members, are told it."""
    guest = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(guest)).status_code == 200
    join(world.devices, world.lock_id, world.accounts["admin"], guest, {"role": "guest"})
    callers = {role: world.headers(role) for role in ("owner", "admin", "member", "guest_in", "guest_out")}
    for role, headers in {**callers, "the co-host's guest": bearer(guest)}.items():
        one = world.devices.get(f"/devices/locks/{world.lock_id}", headers=headers).get_json()
        (listed,) = world.devices.get("/devices/locks", headers=headers).get_json()["locks"]
        expected = {"owner_uid": world.uid("owner")} if role in ("owner", "admin") else {}
        assert {k: v for k, v in one.items() if k == "owner_uid"} == expected, role
        assert {k: v for k, v in listed.items() if k == "owner_uid"} == expected, role


def test_command_status_is_visible_to_issuer_and_managers_only(world: World) -> None:
    created = world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": "lock"}, headers=world.headers("member")
    ).get_json()["command"]
    path = f"/devices/locks/{world.lock_id}/commands/{created['id']}"
    expected = {
        "owner": 200,
        "admin": 200,
        "member": 200,
        "guest_in": 404,
        "guest_out": 404,
        "stranger": 404,
        "revoked": 404,
    }
    for role, status in expected.items():
        assert world.devices.get(path, headers=world.headers(role)).status_code == status, role


def test_member_management_rules(world: World, sign_up: Any) -> None:
    lock = world.lock_id
    # an admin cannot remove the owner or another admin's peer role; the owner cannot be removed at all
    resp = world.devices.delete(f"/devices/locks/{lock}/members/{world.uid('owner')}", headers=world.headers("admin"))
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "cannot_remove_owner"
    resp = world.devices.delete(f"/devices/locks/{lock}/members/{world.uid('owner')}", headers=world.headers("owner"))
    assert resp.status_code == 403
    admin_account = sign_up()
    join(world.devices, lock, world.accounts["owner"], admin_account, {"role": "admin"})
    second_admin = admin_account["localId"]
    resp = world.devices.delete(f"/devices/locks/{lock}/members/{second_admin}", headers=world.headers("admin"))
    assert resp.status_code == 403
    # a member cannot remove someone else, but can leave
    resp = world.devices.delete(
        f"/devices/locks/{lock}/members/{world.uid('guest_in')}", headers=world.headers("member")
    )
    assert resp.status_code == 403
    resp = world.devices.delete(f"/devices/locks/{lock}/members/{world.uid('member')}", headers=world.headers("member"))
    assert resp.status_code == 204
    assert world.devices.get(f"/devices/locks/{lock}", headers=world.headers("member")).status_code == 404
    # an admin cannot promote to admin; the owner can
    body = {"role": "admin"}
    path = f"/devices/locks/{lock}/members/{world.uid('guest_in')}"
    assert world.devices.patch(path, json=body, headers=world.headers("admin")).status_code == 403
    resp = world.devices.patch(path, json=body, headers=world.headers("owner"))
    assert resp.status_code == 200 and resp.get_json()["member"]["role"] == "admin"


def test_an_admin_whose_access_ends_grants_nothing_that_outlives_it(
    world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run: an admin the owner let in until a set time invited their own second account as a member with no
    end, and kept the door through it once their own access had ended. What such an admin grants (an invitation, a
    member's or guest's new terms) must now end by the time their own access does; an admin with no end is not
    limited."""
    lock, now = world.lock_id, dt.datetime.now(dt.UTC)
    ends = now + dt.timedelta(hours=1)
    admin = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(admin)).status_code == 200
    join(
        world.devices,
        lock,
        world.accounts["owner"],
        admin,
        {"role": "admin", "access": {"expires_at": ends.isoformat()}},
    )
    second_account = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(second_account)).status_code == 200
    second = str(second_account["localId"])

    def invite(grant: dict[str, Any]) -> Any:
        return world.devices.post(
            f"/devices/locks/{lock}/members", json={"uid": second, **grant}, headers=bearer(admin)
        )

    def refused(resp: Any) -> bool:
        return bool(resp.status_code == 403 and resp.get_json()["error"]["code"] == "grant_outlives_granter")

    later, sooner = (ends + dt.timedelta(minutes=1)).isoformat(), (ends - dt.timedelta(minutes=1)).isoformat()
    assert refused(invite({"role": "member"}))
    assert refused(invite({"role": "member", "access": {"expires_at": later}}))
    assert refused(invite({"role": "guest", "access": {"weekdays": ["mon"]}}))
    assert refused(invite({"role": "guest", "access": {"valid_until": later}}))
    # changing someone already in: the same limit, on the terms the change gives them
    path = f"/devices/locks/{lock}/members/{world.uid('guest_in')}"
    assert refused(world.devices.patch(path, json={"role": "member"}, headers=bearer(admin)))
    assert refused(world.devices.patch(path, json={"role": "guest"}, headers=bearer(admin)))
    resp = world.devices.patch(path, json={"role": "guest", "access": {"valid_until": sooner}}, headers=bearer(admin))
    assert resp.status_code == 200, resp.get_json()
    resp = invite({"role": "member", "access": {"expires_at": sooner}})
    assert resp.status_code == 202, resp.get_json()
    accepted = world.devices.post(
        f"/devices/invitations/{resp.get_json()['invitation']['id']}/accept", headers=bearer(second_account)
    )
    assert accepted.status_code == 201 and "expires_at" in accepted.get_json()["member"]["access"]
    # the owner, and an admin with no end, grant without an end
    assert world.devices.patch(path, json={"role": "member"}, headers=world.headers("admin")).status_code == 200
    other = fresh_user(world, sign_up)
    resp = world.devices.post(
        f"/devices/locks/{lock}/members", json={"uid": other, "role": "member"}, headers=world.headers("owner")
    )
    assert resp.status_code == 202
    # an invitation the world's admin sent with no end stands only until the owner gives that admin an end
    third, sent = invited(world, sign_up, by="admin")
    limited = {"role": "admin", "access": {"expires_at": ends.isoformat()}}
    admin_path = f"/devices/locks/{lock}/members/{world.uid('admin')}"
    assert world.devices.patch(admin_path, json=limited, headers=world.headers("owner")).status_code == 200
    accepting = world.devices.post(f"/devices/invitations/{sent}/accept", headers=bearer(third))
    assert accepting.status_code == 404
    # once the admin's access has ended, what they granted has too
    monkeypatch.setattr(get_runtime("devices"), "clock", lambda: ends + dt.timedelta(minutes=1))
    listed = world.devices.get(f"/devices/locks/{lock}/members", headers=world.headers("owner")).get_json()
    assert second not in {m["uid"] for m in listed["members"]}
    resp = world.devices.post(
        f"/devices/locks/{lock}/commands", json={"action": "unlock"}, headers=bearer(second_account)
    )
    assert resp.status_code == 404


def test_an_account_about_to_be_deleted_leaves_every_lock_and_an_owner_is_told_to_hand_theirs_over_first(
    world: World, stack_env: dict[str, str]
) -> None:
    """Attack run: an account deleted in Firebase stayed a member everywhere, and the door still opened to its voice.
    ``DELETE /devices/me`` (the app calls it before deleting the account) leaves every lock as a removal does; an
    owner is refused, naming their locks, so that no lock is left without anyone to manage it."""
    from tests.integration.test_devices_live_view import rest_get

    lock, owner = world.lock_id, world.headers("owner")
    other = world.devices.post("/devices/locks", json={"name": "Back door"}, headers=owner).get_json()["lock"]["id"]
    join(world.devices, other, world.accounts["owner"], world.accounts["member"], {"role": "admin"})
    pending = world.devices.post(
        f"/devices/locks/{lock}/members", json={"uid": world.uid("stranger"), "role": "member"}, headers=owner
    )
    assert pending.status_code == 202
    get_runtime("devices").flush_mirror(force=True)
    host, token = stack_env["FIRESTORE_EMULATOR_HOST"], world.accounts["member"]["idToken"]
    assert rest_get(host, f"locks/{lock}", token) == 200

    refused = world.devices.delete("/devices/me", headers=owner)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "owns_locks"
    assert refused.get_json()["error"]["details"]["locks"] == sorted([lock, other])
    assert world.devices.get(f"/devices/locks/{lock}", headers=owner).get_json()["role"] == "owner"

    assert world.devices.delete("/devices/me", headers=world.headers("member")).status_code == 204
    for lock_id in (lock, other):
        assert world.devices.get(f"/devices/locks/{lock_id}", headers=world.headers("member")).status_code == 404
        listed = world.devices.get(f"/devices/locks/{lock_id}/members", headers=owner).get_json()["members"]
        assert world.uid("member") not in [m["uid"] for m in listed]
    assert rest_get(host, f"locks/{lock}", token) == 403  # the live view's access ended with it
    with get_runtime("devices").db.connection() as con:
        assert con.run("SELECT email FROM users WHERE uid = :u", u=world.uid("member")) == [[None]]
    assert world.devices.delete("/devices/me", headers=world.headers("stranger")).status_code == 204
    assert world.devices.get("/devices/invitations", headers=world.headers("stranger")).get_json() == {
        "invitations": [],
        "address_unconfirmed": False,
        "next_page_token": None,
    }
    assert world.devices.delete("/devices/me", headers=world.headers("stranger")).status_code == 204  # idempotent


def test_only_the_owner_deletes_or_transfers(world: World) -> None:
    lock = world.lock_id
    for role in ("admin", "member", "guest_in"):
        assert world.devices.delete(f"/devices/locks/{lock}", headers=world.headers(role)).status_code == 403
        resp = world.devices.post(
            f"/devices/locks/{lock}/transfer", json={"uid": world.uid(role)}, headers=world.headers(role)
        )
        assert resp.status_code == 403
    for role in ("stranger", "revoked"):
        assert world.devices.delete(f"/devices/locks/{lock}", headers=world.headers(role)).status_code == 404
    accepted = hand_over(world.devices, lock, world.accounts["owner"], world.accounts["member"])
    assert accepted.status_code == 200 and accepted.get_json()["role"] == "owner"
    assert world.devices.get(f"/devices/locks/{lock}", headers=world.headers("owner")).get_json()["role"] == "admin"
    # the previous owner, now admin, can no longer delete; the new owner can
    assert world.devices.delete(f"/devices/locks/{lock}", headers=world.headers("owner")).status_code == 403
    assert world.devices.delete(f"/devices/locks/{lock}", headers=world.headers("member")).status_code == 204


def test_a_lock_changes_hands_only_when_the_member_it_is_offered_to_accepts(world: World) -> None:
    """Attack run 20: an owner handed a lock to a member at once, without their consent (its device still the
    giver's), and every attempt at it was charged to the new owner's voice budgets, their own door answering 429; it
    counted towards their locks and kept their account from being deleted. A transfer is now an offer the member
    accepts, declines or lets lapse; the owner may withdraw it; a new offer replaces the last."""
    lock, devices = world.lock_id, world.devices
    path = f"/devices/locks/{lock}/transfer"

    def offer(to: str) -> Any:
        return devices.post(path, json={"uid": world.uid(to)}, headers=world.headers("owner"))

    def accept(role: str) -> Any:
        return devices.post(f"{path}/accept", headers=world.headers(role))

    def role_of(role: str) -> str:
        return str(devices.get(f"/devices/locks/{lock}", headers=world.headers(role)).get_json()["role"])

    def code(resp: Any) -> tuple[int, str]:
        return resp.status_code, resp.get_json()["error"]["code"]

    offered = offer("member")
    assert offered.status_code == 202, offered.get_json()
    assert offered.get_json()["transfer"]["to_uid"] == world.uid("member")
    assert (role_of("owner"), role_of("member")) == ("owner", "member")  # nothing changes until accepted
    assert devices.get(path, headers=world.headers("member")).get_json() == offered.get_json()
    assert code(devices.get(path, headers=world.headers("admin"))) == (404, "transfer_not_found")
    assert code(accept("admin")) == (404, "transfer_not_found")  # not theirs to take
    assert devices.delete(path, headers=world.headers("member")).status_code == 204  # declined
    assert code(accept("member")) == (404, "transfer_not_found")
    assert offer("member").status_code == 202
    assert devices.delete(path, headers=world.headers("owner")).status_code == 204  # withdrawn
    assert code(accept("member")) == (404, "transfer_not_found")
    assert offer("member").status_code == 202 and offer("admin").status_code == 202  # the second replaces the first
    assert code(accept("member")) == (404, "transfer_not_found")
    with get_runtime("devices").db.transaction() as con:  # lapsed
        con.run("UPDATE lock_transfer_offers SET expires_at = now() - interval '1 second'")
    assert code(accept("admin")) == (404, "transfer_not_found")
    assert offer("admin").status_code == 202
    taken = accept("admin")
    assert taken.status_code == 200 and taken.get_json()["role"] == "owner"
    assert (role_of("owner"), role_of("admin")) == ("admin", "owner")
    assert code(devices.get(path, headers=world.headers("admin"))) == (404, "transfer_not_found")  # taken once
    again = accept("admin")  # its answer lost: the owner's acceptance changes nothing (attack run 39)
    assert again.status_code == 200 and again.get_json() == taken.get_json()
    assert (role_of("owner"), role_of("admin")) == ("admin", "owner")


def test_an_offer_ends_when_its_member_leaves_or_the_lock_is_paired_again(world: World) -> None:
    """A review of the offers: one made to a member outlived their removal (invited again, as a guest, they took the
    lock on it), and one outlived the giver pairing the lock to another device (the taker took a lock whose device
    the giver chose after the offer). Both end the offer; so does a lapse (a lapsed one is not withdrawn either)."""
    lock, devices = world.lock_id, world.devices
    path = f"/devices/locks/{lock}/transfer"

    def offer() -> None:
        made = devices.post(path, json={"uid": world.uid("member")}, headers=world.headers("owner"))
        assert made.status_code == 202, made.get_json()

    def taken() -> tuple[int, str]:
        resp = devices.post(f"{path}/accept", headers=world.headers("member"))
        return resp.status_code, resp.get_json().get("error", {}).get("code", "")

    offer()
    removed = devices.delete(f"/devices/locks/{lock}/members/{world.uid('member')}", headers=world.headers("owner"))
    assert removed.status_code == 204
    join(devices, lock, world.accounts["owner"], world.accounts["member"], {"role": "guest"})
    assert taken() == (404, "transfer_not_found")
    offer()
    issued = devices.post(f"/devices/locks/{lock}/provisioning", headers=world.headers("owner"))
    assert issued.status_code == 201, issued.get_json()
    provision(devices, issued.get_json()["code"])
    assert taken() == (404, "transfer_not_found")
    offer()
    with get_runtime("devices").db.transaction() as con:
        con.run("UPDATE lock_transfer_offers SET expires_at = now() - interval '1 second'")
    withdrawn = devices.delete(path, headers=world.headers("owner"))
    assert (withdrawn.status_code, withdrawn.get_json()["error"]["code"]) == (404, "transfer_not_found")
    view = devices.get(f"/devices/locks/{lock}", headers=world.headers("member")).get_json()
    assert view["role"] == "guest"


@pytest.mark.parametrize("change", ["demoted", "expired and invited back", "given other terms"])
def test_an_offer_is_taken_only_by_the_membership_it_was_made_to(world: World, change: str) -> None:
    """Attack run 21: an offer outlived its member's demotion to a Saturday-only guest, and their access expiring
    and being granted again as a guest: the guest took the whole lock on the old offer. An offer keeps the member's
    row as it was; any change to it since voids the offer."""
    lock, devices = world.lock_id, world.devices
    path = f"/devices/locks/{lock}/transfer"
    taker = "admin" if change == "demoted" else "member"
    assert devices.post(path, json={"uid": world.uid(taker)}, headers=world.headers("owner")).status_code == 202
    member_path = f"/devices/locks/{lock}/members/{world.uid(taker)}"
    if change == "demoted":
        cut = {"role": "guest", "access": {"weekdays": ["sat"]}}
        assert devices.patch(member_path, json=cut, headers=world.headers("owner")).status_code == 200
    elif change == "given other terms":
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat()
        terms = {"role": "member", "access": {"expires_at": later}}
        assert devices.patch(member_path, json=terms, headers=world.headers("owner")).status_code == 200
    else:
        with get_runtime("devices").db.transaction() as con:  # their access expired (as if time had passed)
            con.run(
                "UPDATE lock_members SET expires_at = now() - interval '1 minute'"
                " WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
                l=lock,
                u=world.uid(taker),
            )
        grant = {"role": "guest", "access": {"weekdays": ["sat"]}}
        join(devices, lock, world.accounts["owner"], world.accounts[taker], grant)
    taken = devices.post(f"{path}/accept", headers=world.headers(taker))
    assert (taken.status_code, taken.get_json()["error"]["code"]) == (404, "transfer_not_found")
    assert devices.get(f"/devices/locks/{lock}", headers=world.headers("owner")).get_json()["role"] == "owner"


def test_an_offer_does_not_tell_the_owner_how_many_locks_a_member_owns(
    world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 21: an offer answered 409 ``too_many_locks`` for a member owning the most locks an account may:
    the owner learnt it. The offer is made; the member learns it when they accept."""
    rt = get_runtime("devices")
    monkeypatch.setattr(rt, "settings", dataclasses.replace(rt.settings, locks_per_owner=1))
    devices, path = world.devices, f"/devices/locks/{world.lock_id}/transfer"
    assert create_lock(devices, world.accounts["member"])["lock"]["id"]  # the member owns one: the most
    assert devices.post(path, json={"uid": world.uid("member")}, headers=world.headers("owner")).status_code == 202
    taken = devices.post(f"{path}/accept", headers=world.headers("member"))
    assert (taken.status_code, taken.get_json()["error"]["code"]) == (409, "too_many_locks")


def test_a_pairing_code_pairs_nothing_once_its_issuer_no_longer_owns_the_lock(world: World) -> None:
    """Attack run: an owner's pairing code, issued before they gave the lock away and were removed from it, still
    paired the lock to a device of theirs (201, the lock's credentials replaced). A transfer ends the lock's open
    codes, and a code is redeemed only while whoever issued it owns the lock (a code issued as a transfer commits)."""
    lock, path = world.lock_id, f"/devices/locks/{world.lock_id}/provisioning"
    issued = world.devices.post(path, headers=world.headers("owner"))
    assert issued.status_code == 201, issued.get_json()
    resp = hand_over(world.devices, lock, world.accounts["owner"], world.accounts["admin"])
    assert resp.status_code == 200, resp.get_json()
    resp = world.devices.delete(f"/devices/locks/{lock}/members/{world.uid('owner')}", headers=world.headers("admin"))
    assert resp.status_code == 204, resp.get_json()
    _key, public = new_lock_key()
    pairing = {"code": issued.get_json()["code"], "public_key": public, "csr": new_tls_key()[1]}
    resp = world.devices.post("/devices/provision", json=pairing)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_provisioning_code"
    with get_runtime("devices").db.connection() as con:  # as if issued while the transfer committed: still open
        con.run(
            "UPDATE provisioning_codes SET expires_at = now() + interval '10 minutes' WHERE lock_id = CAST(:l AS uuid)",
            l=lock,
        )
    resp = world.devices.post("/devices/provision", json=pairing)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_provisioning_code"
    with get_runtime("devices").db.connection() as con:
        assert con.run("SELECT count(*) FROM lock_credentials WHERE lock_id = CAST(:l AS uuid)", l=lock)[0][0] == 1
    issued = world.devices.post(path, headers=world.headers("admin"))  # the new owner's code pairs the lock
    assert issued.status_code == 201, issued.get_json()
    credentials, _key, _tls = provision(world.devices, issued.get_json()["code"])
    assert credentials["lock_id"] == lock


def test_users_see_only_their_locks(world: World) -> None:
    for role in ROLES:
        locks = world.devices.get("/devices/locks", headers=world.headers(role)).get_json()["locks"]
        ids = [lock["id"] for lock in locks]
        assert (world.lock_id in ids) == (role not in ("stranger", "revoked")), role


def test_relay_endpoints_refuse_app_users_and_locks(world: World) -> None:
    event = {"events": [{"topic": f"lockwise/{world.lock_id}/status", "payload": "online"}]}
    for role in ("owner", "stranger"):
        resp = world.devices.post("/devices/relay/events", json=event, headers=world.headers(role))
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "missing_service_token"
        forged = {**world.headers(role), "X-LockWise-Service-Token": "guess"}
        resp = world.devices.post("/devices/relay/events", json=event, headers=forged)
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_service_token"
    assert world.devices.post("/devices/relay/events", json=event).status_code == 401
    assert world.devices.post("/devices/relay/flush", headers=world.headers("owner")).status_code == 401


def test_lock_cannot_act_as_another_lock(world: World, sign_up: Any) -> None:
    other = build_world(world.devices, sign_up)
    path = "/devices/lock/config"
    # lock B signs a request that claims to come from lock A
    headers = lock_auth.sign_headers(other.lock_key, world.lock_id, "GET", path, b"")
    resp = world.devices.get(path, headers=headers)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "bad_lock_signature"
    # its own request works, once
    headers = lock_auth.sign_headers(other.lock_key, other.lock_id, "GET", path, b"")
    resp = world.devices.get(path, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["lock_id"] == other.lock_id
    resp = world.devices.get(path, headers=headers)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "replayed_request"


def test_lock_signature_checks(world: World) -> None:
    path = "/devices/lock/config"
    import time

    stale = lock_auth.sign_headers(world.lock_key, world.lock_id, "GET", path, b"", now=time.time() - 3600)
    assert world.devices.get(path, headers=stale).get_json()["error"]["code"] == "stale_request"
    unknown_key, _ = new_lock_key()
    forged = lock_auth.sign_headers(unknown_key, world.lock_id, "GET", path, b"")
    assert world.devices.get(path, headers=forged).get_json()["error"]["code"] == "bad_lock_signature"
    assert world.devices.get(path).get_json()["error"]["code"] == "missing_lock_signature"
    assert world.devices.get(path, headers=world.headers("owner")).status_code == 401
    import uuid

    # a lock id nobody paired answers as a wrong key does: which lock ids exist is not revealed
    ghost = lock_auth.sign_headers(world.lock_key, str(uuid.uuid4()), "GET", path, b"")
    assert world.devices.get(path, headers=ghost).get_json()["error"]["code"] == "bad_lock_signature"
    # the lock itself, once paired again elsewhere, learns its key was revoked (it proves it held it)
    code = world.devices.post(f"/devices/locks/{world.lock_id}/provisioning", headers=world.headers("owner"))
    provision(world.devices, code.get_json()["code"])
    revoked = lock_auth.sign_headers(world.lock_key, world.lock_id, "GET", path, b"")
    assert world.devices.get(path, headers=revoked).get_json()["error"]["code"] == "unknown_lock"
    assert world.devices.get(path, headers=forged).get_json()["error"]["code"] == "bad_lock_signature"


def test_a_member_expired_by_the_functions_clock_cannot_be_made_owner(
    world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transfer judges the new owner's membership at the same moment as every other check of the request (the
    runtime's clock), not the machine's: it used its own wall clock."""
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    account = sign_up()
    assert world.devices.get("/devices/me", headers=bearer(account)).status_code == 200
    grant = {"role": "member", "access": {"expires_at": expires.isoformat()}}
    join(world.devices, world.lock_id, world.accounts["owner"], account, grant)
    monkeypatch.setattr(get_runtime("devices"), "clock", lambda: expires + dt.timedelta(hours=1))
    # the owner's sign-in is a day old on the moved clock, and an offer needs one of the last hour
    # (``users.require_recent_sign_in``): the window widened for this test of the member's expiry alone
    monkeypatch.setattr(users, "RECENT_SIGN_IN", dt.timedelta(days=2))
    resp = world.devices.post(
        f"/devices/locks/{world.lock_id}/transfer", json={"uid": account["localId"]}, headers=world.headers("owner")
    )
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "member_not_found"
    view = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("owner")).get_json()
    assert view["role"] == "owner"


def test_invitations_live_and_expire_on_the_functions_clock(
    world: World, sign_up: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invitation's lifetime and its sender's standing are judged at the request's moment (the runtime's clock),
    as every membership check is: they were judged on the database's clock and the machine's."""
    rt = get_runtime("devices")
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    monkeypatch.setattr(rt, "clock", lambda: start)
    invitee, admin, guest = sign_up(), sign_up(), sign_up()
    for account in (invitee, admin, guest):
        assert world.devices.get("/devices/me", headers=bearer(account)).status_code == 200
    members_url = f"/devices/locks/{world.lock_id}/members"

    def invite(account: dict[str, Any], by: dict[str, Any]) -> Any:
        return world.devices.post(members_url, json={"uid": account["localId"], "role": "guest"}, headers=bearer(by))

    def waiting(account: dict[str, Any]) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = world.devices.get("/devices/invitations", headers=bearer(account)).get_json()[
            "invitations"
        ]
        return listed

    sent = invite(invitee, world.accounts["owner"])
    assert sent.status_code == 202
    [seen] = waiting(invitee)
    lifetime = dt.timedelta(seconds=rt.settings.invitation_ttl_s)
    assert dt.datetime.fromisoformat(seen["expires_at"]) == start + lifetime

    # past its lifetime by the runtime's clock (the database's is a week behind): gone for both sides, not to be
    # accepted, and no longer in the way of a new one
    monkeypatch.setattr(rt, "clock", lambda: start + lifetime + dt.timedelta(seconds=1))
    assert waiting(invitee) == []
    accepted = world.devices.post(f"/devices/invitations/{seen['id']}/accept", headers=bearer(invitee))
    assert accepted.status_code == 404 and accepted.get_json()["error"]["code"] == "invitation_not_found"
    assert world.devices.get(members_url, headers=world.headers("owner")).get_json()["invitations"] == []
    assert invite(invitee, world.accounts["owner"]).status_code == 202

    # an admin whose membership ends in a day invites a guest: it stands until then, by the runtime's clock
    monkeypatch.setattr(rt, "clock", lambda: start)
    ends = start + dt.timedelta(days=1)
    join(
        world.devices,
        world.lock_id,
        world.accounts["owner"],
        admin,
        {"role": "admin", "access": {"expires_at": ends.isoformat()}},
    )
    ending = {"uid": guest["localId"], "role": "guest", "access": {"expires_at": ends.isoformat()}}  # as theirs
    assert world.devices.post(members_url, json=ending, headers=bearer(admin)).status_code == 202
    [from_admin] = waiting(guest)
    monkeypatch.setattr(rt, "clock", lambda: ends + dt.timedelta(seconds=1))
    assert waiting(guest) == []
    accepted = world.devices.post(f"/devices/invitations/{from_admin['id']}/accept", headers=bearer(guest))
    assert accepted.status_code == 404 and accepted.get_json()["error"]["code"] == "invitation_not_found"


def test_refused_requests_are_logged_a_few_a_minute_and_every_one_counted(world: World) -> None:
    """Each refused request was an append-only audit row in a transaction of its own: a guest outside her window
    (or a member answered ``role_too_low``) added one per request, as fast as she sent them (attack run 26: 60
    refusals, 60 rows). The first ``DENIALS_LOGGED_PER_MINUTE`` a minute per actor, lock and action are logged;
    every one is counted."""
    from lockwise.core import audit

    url, guest = f"/devices/locks/{world.lock_id}/commands", world.headers("guest_out")
    statuses = {world.devices.post(url, json={"action": "unlock"}, headers=guest).status_code for _ in range(60)}
    assert statuses == {403}
    actor = f"user:{world.uid('guest_out')}"
    with get_runtime("devices").db.connection() as con:
        counted = [
            int(n)
            for (n,) in con.run(
                "SELECT n FROM audit_denial_counts WHERE actor = :a AND lock_id = CAST(:l AS uuid) ORDER BY minute",
                a=actor,
                l=world.lock_id,
            )
        ]
        logged = con.run(
            "SELECT details FROM audit_log WHERE actor = :a AND lock_id = CAST(:l AS uuid) AND outcome = 'denied'"
            " ORDER BY id",
            a=actor,
            l=world.lock_id,
        )
    assert sum(counted) == 60 and len(counted) <= 2  # a minute's edge may fall inside the burst
    assert len(logged) == sum(min(n, audit.DENIALS_LOGGED_PER_MINUTE) for n in counted)
    assert all(d["code"] == "outside_access_window" for (d,) in logged)
    assert sum("further_this_minute" in d for (d,) in logged) == sum(
        n >= audit.DENIALS_LOGGED_PER_MINUTE for n in counted
    )


def test_a_members_refusals_at_many_locks_are_logged_a_few_a_minute_together(world: World) -> None:
    """Attack run 130 (denial of wallet): refusals were logged one by one and counted on a row per actor, lock and
    action, ten a minute each, so a member at many locks (an account's 200 memberships, at locks its own sybils
    own) refused at each of ten actions wrote 20,000 audit rows and 2,000 counts a minute, each kept 400 days, from
    requests answered 403. The first ``DENIALS_LOGGED_PER_MINUTE`` of an actor's minute are logged, wherever; the
    counts take a row a lock and action up to ``DENIAL_COUNTS_PER_MINUTE`` a minute, the rest one row; every refusal
    is counted."""
    from lockwise.core import audit

    member = world.accounts["member"]
    locks = [world.lock_id]
    for name in ("Back door", "Garage", "Shed"):
        lock = create_lock(world.devices, world.accounts["owner"], name)["lock"]["id"]
        join(world.devices, lock, world.accounts["owner"], member, {"role": "member"})
        locks.append(lock)
    for _ in range(2):  # three actions at four locks: twelve locks and actions, two refusals each
        for lock in locks:
            for refused in (
                world.devices.patch(f"/devices/locks/{lock}", json={"name": "x"}, headers=bearer(member)),
                world.devices.delete(f"/devices/locks/{lock}", headers=bearer(member)),
                world.devices.post(
                    f"/devices/locks/{lock}/transfer", json={"uid": world.uid("admin")}, headers=bearer(member)
                ),
            ):
                assert (refused.status_code, refused.get_json()["error"]["code"]) == (403, "role_too_low")
    actor = audit.user_actor(world.uid("member"))
    with get_runtime("devices").db.connection() as con:
        counts = con.run(
            "SELECT minute, lock_id::text, action, n FROM audit_denial_counts WHERE actor = :a ORDER BY minute",
            a=actor,
        )
        (logged,) = con.run("SELECT count(*) FROM audit_log WHERE actor = :a AND outcome = 'denied'", a=actor)[0]
    minutes: dict[Any, list[int]] = {}
    for minute, _lock, _action, n in counts:
        minutes.setdefault(minute, []).append(int(n))
    assert sum(sum(ns) for ns in minutes.values()) == 24  # every one counted
    assert len(minutes) <= 2  # a minute's edge may fall inside the burst
    assert logged == sum(min(sum(ns), audit.DENIALS_LOGGED_PER_MINUTE) for ns in minutes.values())
    assert all(len(ns) <= audit.DENIAL_COUNTS_PER_MINUTE + 1 for ns in minutes.values()), minutes
    first = [(lock, action) for minute, lock, action, _ in counts if minute == min(minutes)]
    assert (world.lock_id, "lock.update") in first  # the first refusals' own rows
    assert len(minutes) == 2 or (audit.OTHER_LOCK, audit.OTHERS) in first


def test_a_refusal_to_change_a_lock_does_not_wait_for_the_door_deciding(world: World, relay_db: Any) -> None:
    """Attack run 75: an owner's change asks the lock's row ``FOR UPDATE``, which a voice decision holds ``FOR
    SHARE`` through its forward pass; a removed member's or a guest's refused rename waited for it (0.3 s late while
    the door decided, 503 ``database_busy`` past the statement timeout): a stranger's did not, so whoever had once
    been let in learnt when someone was at the door. Only one who may make the change waits now."""
    lock = world.lock_id
    with relay_db.transaction() as con:  # the door deciding (a decision's hold on the lock's row)
        con.run("SELECT 1 FROM locks WHERE id = CAST(:l AS uuid) FOR SHARE", l=lock)
        for role, status, code in [
            ("revoked", 404, "lock_not_found"),
            ("guest_in", 403, "role_too_low"),
            ("guest_out", 403, "role_too_low"),
            ("member", 403, "role_too_low"),
        ]:
            renamed = world.devices.patch(f"/devices/locks/{lock}", json={"name": "x"}, headers=world.headers(role))
            assert (renamed.status_code, renamed.get_json()["error"]["code"]) == (status, code), role
            deleted = world.devices.delete(f"/devices/locks/{lock}", headers=world.headers(role))
            offered = world.devices.post(
                f"/devices/locks/{lock}/transfer", json={"uid": world.uid("admin")}, headers=world.headers(role)
            )
            for refused in (deleted, offered):
                assert (refused.status_code, refused.get_json()["error"]["code"]) == (status, code), role
        accepted = world.devices.post(f"/devices/locks/{lock}/transfer/accept", headers=world.headers("revoked"))
        assert (accepted.status_code, accepted.get_json()["error"]["code"]) == (404, "lock_not_found")
        for role in ("guest_in", "guest_out", "member", "admin"):  # no offer to them (attack run 76: they waited)
            accepted = world.devices.post(f"/devices/locks/{lock}/transfer/accept", headers=world.headers(role))
            assert (accepted.status_code, accepted.get_json()["error"]["code"]) == (404, "transfer_not_found"), role
    with relay_db.connection() as con:  # each refusal of a member counted (they went unrecorded)
        counted = con.run(
            "SELECT action, sum(n) FROM audit_denial_counts WHERE actor = :a AND lock_id = CAST(:l AS uuid)"
            " GROUP BY action ORDER BY action",
            a=f"user:{world.uid('member')}",
            l=lock,
        )
    assert [(action, int(n)) for action, n in counted] == [
        ("lock.delete", 1),
        ("lock.transfer_offer", 1),
        ("lock.update", 1),
    ]


def test_removing_another_member_is_refused_to_guests_and_members_whoever_it_names(world: World, sign_up: Any) -> None:
    """Attack run 75: the member named in a removal was looked up before the caller's right to remove anyone, so a
    guest or a member told the lock's members (403 ``role_too_low``), its owner (403 ``cannot_remove_owner``) and
    everyone else (404 ``member_not_found``) apart. All three are the same 403 now; leaving stays anyone's."""
    nobody = fresh_user(world, sign_up)
    for caller in ("guest_in", "guest_out", "member"):
        for named in (world.uid("owner"), world.uid("admin"), world.uid("revoked"), nobody, "made-up-uid"):
            refused = world.devices.delete(
                f"/devices/locks/{world.lock_id}/members/{named}", headers=world.headers(caller)
            )
            assert (refused.status_code, refused.get_json()["error"]["code"]) == (403, "role_too_low"), (caller, named)
    left = world.devices.delete(
        f"/devices/locks/{world.lock_id}/members/{world.uid('guest_out')}", headers=world.headers("guest_out")
    )
    assert left.status_code == 204


def test_an_acceptance_tapped_twice_at_once_makes_the_owner_both_times(world: World, relay_db: Any) -> None:
    """Attack run 77: the acceptance's first, unlocked look at the caller took the lock's row ``KEY SHARE``, and two
    acceptances at once each waited for the other's ``FOR UPDATE`` on it: a deadlock, answered 503 (or, the offer read
    after the first had committed, a 404 to its new owner). Before that change both were 200 (attack run 39), as they
    are again: whoever comes second finds the caller the owner."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock, devices = world.lock_id, world.devices
    path = f"/devices/locks/{lock}/transfer"
    giver, taker = "owner", "member"
    for held in (True, False, False, False):
        assert devices.post(path, json={"uid": world.uid(taker)}, headers=world.headers(giver)).status_code == 202
        both = threading.Barrier(2)

        def accept(role: str = taker, go: threading.Barrier = both) -> tuple[int, str]:
            go.wait()
            resp = devices.post(f"{path}/accept", headers=world.headers(role))
            return resp.status_code, resp.get_json().get("role", resp.get_json().get("error", {}).get("code"))

        with ThreadPoolExecutor(2) as pool:
            if held:  # the door deciding while both wait for the lock's row
                with relay_db.transaction() as con:
                    con.run("SELECT 1 FROM locks WHERE id = CAST(:l AS uuid) FOR SHARE", l=lock)
                    answers = [pool.submit(accept) for _ in range(2)]
                    waiting_for_a_row(relay_db, 2)
            else:
                answers = [pool.submit(accept) for _ in range(2)]
            assert [a.result(30) for a in answers] == [(200, "owner"), (200, "owner")], held
        giver, taker = taker, giver


def waiting_for_a_row(db: Any, n: int, timeout_s: float = 10.0) -> None:
    """Until ``n`` sessions wait for a row lock (or fail when they never do)."""
    import time

    deadline, con = time.monotonic() + timeout_s, db.connect()  # (its own: the pool's one holds the row)
    try:
        while (waiting := con.run("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")[0][0]) < n:
            assert time.monotonic() < deadline, f"{waiting} of {n} sessions came to wait for a row"
            time.sleep(0.02)
    finally:
        con.close()
