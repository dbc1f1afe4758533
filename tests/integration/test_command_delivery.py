"""What the relay delivers of the commands outbox (``mqtt_relay.outbox.deliver_due``), against the real database:
nothing for an issuer who lost access, no re-send once a newer command to the lock exists, every message expiring
with its command, and the app's commands to one lock limited per minute. An attack run found each (the broker's
side of message expiry: tests/e2e/test_relay.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lockwise.core.config import get_settings
from lockwise.core.db import Connection, Database
from lockwise.core.runtime import get_runtime
from lockwise.devices import command_outcomes, command_signing, lockout
from mqtt_relay import outbox
from tests.devices_world import World, build_world, create_lock, pair_again, provision


@pytest.fixture
def world(make_client: Any, sign_up: Any) -> World:
    return build_world(make_client("devices"), sign_up)


def deliver(db: Database, world: World, resend_after_s: int = 5) -> list[tuple[command_signing.Command, int]]:
    """One round of the relay: what it published for ``world``'s lock, each with its message expiry."""
    sent: list[tuple[str, str, int]] = []

    def publish(messages: list[tuple[str, str, int]]) -> list[bool]:
        sent.extend(messages)
        return [True] * len(messages)

    outbox.deliver_due(db, publish, resend_after_s=resend_after_s)
    key = world.credentials["server_public_key"]
    ours = [(command_signing.verify(payload, key), ttl) for _topic, payload, ttl in sent]
    return [(c, ttl) for c, ttl in ours if c.lock == world.lock_id]


def send(world: World, role: str, action: str = "unlock", **body: Any) -> Any:
    return world.devices.post(
        f"/devices/locks/{world.lock_id}/commands", json={"action": action, **body}, headers=world.headers(role)
    )


def status(db: Database, command_id: str) -> tuple[str, str | None]:
    with db.connection() as con:
        found, why = con.run("SELECT status, last_error FROM commands WHERE id = CAST(:i AS uuid)", i=command_id)[0]
    return str(found), why


def test_a_removed_members_unlock_is_not_delivered_after_the_removal(world: World, relay_db: Database) -> None:
    waiting = send(world, "member").get_json()["command"]["id"]  # the relay has not run yet
    resp = world.devices.delete(
        f"/devices/locks/{world.lock_id}/members/{world.uid('member')}", headers=world.headers("owner")
    )
    assert resp.status_code == 204
    assert waiting not in [c.id for c, _ in deliver(relay_db, world)]
    assert status(relay_db, waiting)[0] == "failed"


def test_a_members_update_sent_again_unchanged_withdraws_none_of_her_commands(world: World, relay_db: Database) -> None:
    """An update of a member's terms sent again after its answer was lost (the same role and access) withdrew her
    unsent commands, as sent under the access she had, and told the feed of a change. Terms she has already change
    nothing now; other terms still withdraw them."""
    url = f"/devices/locks/{world.lock_id}/members/{world.uid('member')}"
    ends = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    terms = {"role": "member", "access": {"expires_at": ends.isoformat()}}

    def patch(body: dict[str, Any]) -> Any:
        resp = world.devices.patch(url, json=body, headers=world.headers("owner"))
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    def changed() -> list[bool]:  # the audit log's updates of her: True where her terms changed
        with relay_db.connection() as con:
            rows = con.run(
                "SELECT details->>'unchanged' IS NULL FROM audit_log WHERE action = 'member.update' AND target = :u"
                " ORDER BY id",
                u=world.uid("member"),
            )
        return [bool(row[0]) for row in rows]

    first = patch(terms)
    waiting = send(world, "member").get_json()["command"]["id"]
    assert patch(terms) == first and patch(terms) == first
    assert status(relay_db, waiting) == ("pending", None) and changed() == [True, False, False]
    assert waiting in [c.id for c, _ in deliver(relay_db, world)]
    later = send(world, "member").get_json()["command"]["id"]
    patch({"role": "member", "access": {"expires_at": (ends + dt.timedelta(days=1)).isoformat()}})  # other terms
    assert status(relay_db, later) == ("failed", command_outcomes.WITHDRAWN) and changed()[-1]


def test_a_guests_unlock_made_as_her_window_ends_is_not_delivered_after_it(world: World, relay_db: Database) -> None:
    """Attack run 41: a guest's unlock made in the last seconds of her window, held while the lock was away, went out
    after the window ended (the relay checks the command's expiry and the issuer's removal, not a guest's window),
    and a lock acts on a command until its signed expiry. A command now expires when its issuer's permission does."""
    ends = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)).replace(microsecond=0)
    resp = world.devices.patch(
        f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}",
        json={"role": "guest", "access": {"valid_until": ends.isoformat()}},
        headers=world.headers("owner"),
    )
    assert resp.status_code == 200, resp.get_json()
    made = send(world, "guest_in")
    assert made.status_code == 202, made.get_json()
    command = made.get_json()["command"]
    assert dt.datetime.fromisoformat(command["expires_at"]) == ends  # not the 30 s a command is given
    with relay_db.connection() as con:
        ((payload,),) = con.run("SELECT payload FROM commands WHERE id = CAST(:i AS uuid)", i=command["id"])
    assert command_signing.verify(payload, world.credentials["server_public_key"]).expires_at == ends.timestamp()
    time.sleep(max(0.0, (ends - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)  # the lock away until then
    assert send(world, "guest_in").get_json()["error"]["code"] == "outside_access_window"
    assert command["id"] not in [c.id for c, _ in deliver(relay_db, world)]


def test_a_guests_unlock_that_waited_for_her_turn_expires_with_her_window(world: World, relay_db: Database) -> None:
    """Attack run 42: the window was judged by the request's first clock, so a command made after a wait for the
    guest's row (another of her requests holding it) got its full lifetime, past an end that came within it only
    during the wait. The window is now judged by the clock the command is made by."""
    ttl = get_settings("devices").command_ttl_s
    ends = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl + 1.5)).replace(microsecond=0)
    resp = world.devices.patch(
        f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}",
        json={"role": "guest", "access": {"valid_until": ends.isoformat()}},
        headers=world.headers("owner"),
    )
    assert resp.status_code == 200, resp.get_json()
    with ThreadPoolExecutor(1) as pool:
        with relay_db.transaction() as con:  # another of her requests holds her row for 2.5 s
            con.run("SELECT 1 FROM users WHERE uid = :u FOR UPDATE", u=world.uid("guest_in"))
            made = pool.submit(send, world, "guest_in")
            time.sleep(2.5)
        answer = made.result(30)
    assert answer.status_code == 202, answer.get_json()
    assert dt.datetime.fromisoformat(answer.get_json()["command"]["expires_at"]) == ends


@pytest.mark.parametrize("found", ["disabled", "deleted"])
def test_an_unlock_of_an_account_found_disabled_or_deleted_is_not_delivered_after(
    world: World, relay_db: Database, found: str
) -> None:
    """Attack run 36: an account Firebase Auth disabled keeps its memberships (and a deleted owner its locks), so an
    unlock it sent before the relay's account check found it (the lock offline meanwhile, say) still went out."""
    role = "member" if found == "disabled" else "owner"
    waiting = send(world, role).get_json()["command"]["id"]  # the relay has not run yet
    column = "account_disabled = true" if found == "disabled" else "account_gone_at = now()"
    with relay_db.transaction() as con:  # what the relay's account check records
        con.run(f"UPDATE users SET {column} WHERE uid = :u", u=world.uid(role))
    assert waiting not in [c.id for c, _ in deliver(relay_db, world)]
    assert status(relay_db, waiting) == ("failed", command_outcomes.WITHDRAWN)


def test_an_unlock_sent_once_is_not_sent_again_after_its_issuer_is_removed(world: World, relay_db: Database) -> None:
    """Sent once (the lock may have acted on it: its ack is still taken), never re-sent after the removal."""
    sent = send(world, "member").get_json()["command"]["id"]
    assert [c.id for c, _ in deliver(relay_db, world)] == [sent]
    resp = world.devices.delete(
        f"/devices/locks/{world.lock_id}/members/{world.uid('member')}", headers=world.headers("owner")
    )
    assert resp.status_code == 204
    time.sleep(1.1)
    assert deliver(relay_db, world, resend_after_s=1) == []
    assert status(relay_db, sent)[0] == "sent"


def test_nothing_is_sent_to_a_lock_known_offline_so_a_removal_still_withdraws_it(
    world: World, relay_db: Database
) -> None:
    """Sent to an offline lock, a command waited in the broker's session for it, out of reach: a member removed
    meanwhile had their unlock carried out when the lock came back, 8 s after the removal was answered (attack run
    14). A lock known offline is sent nothing: the command stays pending (a removal withdraws it) and goes out once
    the lock reports itself again."""

    def lock_is(online: bool) -> None:
        with relay_db.transaction() as con:
            con.run(
                "UPDATE lock_state SET online = :o, last_seen = now() WHERE lock_id = CAST(:l AS uuid)",
                o=online,
                l=world.lock_id,
            )

    lock_is(False)
    removed, owners = (send(world, role).get_json()["command"]["id"] for role in ("member", "owner"))
    assert deliver(relay_db, world) == []
    assert status(relay_db, removed) == ("pending", None)
    resp = world.devices.delete(
        f"/devices/locks/{world.lock_id}/members/{world.uid('member')}", headers=world.headers("owner")
    )
    assert resp.status_code == 204
    assert status(relay_db, removed) == ("failed", command_outcomes.WITHDRAWN)
    lock_is(True)
    assert [c.id for c, _ in deliver(relay_db, world)] == [owners]


def guest_from_tomorrow(world: World, role: str) -> None:
    """The owner makes ``role`` a guest whose window opens tomorrow: their access narrowed, their commands withdrawn."""
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    resp = world.devices.patch(
        f"/devices/locks/{world.lock_id}/members/{world.uid(role)}",
        json={"role": "guest", "access": {"valid_from": tomorrow}},
        headers=world.headers("owner"),
    )
    assert resp.status_code == 200, resp.get_json()


def test_a_guest_moved_out_of_their_window_has_their_unsent_unlock_withdrawn(world: World, relay_db: Database) -> None:
    waiting = send(world, "guest_in").get_json()["command"]["id"]
    guest_from_tomorrow(world, "guest_in")
    assert waiting not in [c.id for c, _ in deliver(relay_db, world)]
    assert status(relay_db, waiting) == ("failed", "withdrawn: the issuer's access changed")


def test_a_lost_unlock_is_not_sent_again_once_a_newer_command_exists(world: World, relay_db: Database) -> None:
    """The owner taps unlock (its first copy lost on the way), then lock: re-sending the unlock after the lock ran
    left the door unlocked. Only the newest is re-sent; both were sent once, in the order they were made."""
    unlock = send(world, "owner").get_json()["command"]["id"]
    assert [c.id for c, _ in deliver(relay_db, world)] == [unlock]
    lock = send(world, "owner", "lock").get_json()["command"]["id"]
    assert [c.id for c, _ in deliver(relay_db, world)] == [lock]
    time.sleep(1.1)
    assert [c.id for c, _ in deliver(relay_db, world, resend_after_s=1)] == [lock]


def test_an_older_command_is_not_sent_again_once_the_lock_tried_a_newer_one(world: World, relay_db: Database) -> None:
    """A newer command the lock tried and could not carry out (``failed: jammed``) stops the older one's re-sends as
    one it carried out does (the lock recorded its time first and refuses older ones); since a newer ack no longer
    settles an older sent command (it may have been carried out, its ack lost), the older one was re-sent every 5 s
    until it expired (a review). A newer one the lock refused outright (``refused: ...``) stops nothing."""
    unlock = send(world, "owner").get_json()["command"]["id"]
    assert [c.id for c, _ in deliver(relay_db, world)] == [unlock]
    lock = send(world, "owner", "lock").get_json()["command"]["id"]
    for answer, resent in (("refused", [unlock]), ("failed", [])):
        with relay_db.transaction() as con:
            con.run(
                "UPDATE commands SET status = 'failed', last_error = :e WHERE id = CAST(:i AS uuid)",
                e=command_outcomes.lock_said(answer, "jammed"),
                i=lock,
            )
        time.sleep(1.1)
        assert [c.id for c, _ in deliver(relay_db, world, resend_after_s=1)] == resent, answer


def test_each_message_expires_in_the_broker_with_its_command(world: World, relay_db: Database) -> None:
    send(world, "owner")
    ((command, ttl),) = deliver(relay_db, world)
    assert 1 <= ttl <= command.expires_at - command.issued_at and command.expires_at - time.time() <= ttl + 1


def test_each_members_commands_to_one_lock_are_limited_per_minute(world: World, relay_db: Database) -> None:
    """Per member: a guest sending commands in a loop is refused after the budget, and takes nothing from the owner
    (one budget per lock let any guest lock the owner out of the app)."""
    budget = get_settings("devices").app_commands_per_minute
    first = send(world, "guest_in", "lock", idempotency_key="tap-0")
    assert first.status_code == 202
    for _ in range(1, budget):
        assert send(world, "guest_in", "lock").status_code == 202
    refused = send(world, "guest_in", "lock")
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "command_limit"
    assert refused.headers["Retry-After"] == "60"
    retried = send(world, "guest_in", "lock", idempotency_key="tap-0")  # a retry of one already made: answered
    assert retried.status_code == 200 and retried.get_json()["command"]["id"] == first.get_json()["command"]["id"]
    assert send(world, "owner").status_code == 202


def test_a_locks_members_together_send_it_a_bounded_number_of_commands_a_minute(world: World) -> None:
    """Attack run 117: the budget was each member's alone, so a lock's 100 members sent it 3,000 commands in a
    minute, each a nonce the lock keeps in its flash until the command expires (FIRMWARE.md said a few dozen bytes)
    and an ack and a state report it publishes, past the broker's allowance for it. Its members other than the owner
    now share one budget, and the owner's own is kept for the owner."""
    settings = get_settings("devices")
    members_budget, own = settings.lock_commands_per_minute, settings.app_commands_per_minute
    sent = [send(world, role, "lock").status_code for role in ("admin", "member", "guest_in") for _ in range(own)]
    assert sent.count(202) == members_budget < len(sent) and sent[-1] == 429
    last = send(world, "guest_in", "lock")  # her own budget untouched: the lock's is spent
    assert last.status_code == 429 and last.get_json()["error"]["code"] == "command_limit"
    assert "this lock's members" in last.get_json()["error"]["message"]
    assert [send(world, "owner", "lock").status_code for _ in range(own)] == [202] * own  # the owner's are kept
    assert send(world, "owner", "lock").status_code == 429  # and the owner's own budget still holds
    with get_runtime("devices").db.connection() as con:
        ((made,),) = con.run(
            "SELECT count(*) FROM commands WHERE lock_id = CAST(:l AS uuid)"
            " AND created_at > now() - interval '1 minute'",
            l=world.lock_id,
        )
    assert made == members_budget + own


def test_a_guests_and_a_members_loops_leave_the_locks_admins_their_commands(world: World) -> None:
    """Attack run 122: the members' budget was one for all, so a guest's loop and one member's (30 a minute each,
    their own budgets) spent the lock's 60 and its admins were 429 for as long as they kept at it; and the refusal
    told the guest how many commands the owner had sent in the minute, which only admins may learn. Admins keep a
    quarter of it from members and guests, members a quarter from guests, and the refusal names no count."""
    settings = get_settings("devices")
    members_budget, own = settings.lock_commands_per_minute, settings.app_commands_per_minute
    assert send(world, "owner", "lock").status_code == 202
    guest = [send(world, "guest_in", "lock").status_code for _ in range(own)]
    member = [send(world, "member", "lock").status_code for _ in range(own)]
    assert guest.count(202) == members_budget // 2  # her own 30 at the defaults: one guest loses nothing
    assert member.count(202) == members_budget * 3 // 4 - members_budget // 2 and member[-1] == 429
    admin = [send(world, "admin", "lock") for _ in range(own)]
    assert [r.status_code for r in admin].count(202) == members_budget - members_budget * 3 // 4
    assert admin[0].status_code == 202
    refused = admin[-1].get_json()["error"]  # the lock's, not her own: she sent 15
    assert refused["code"] == "command_limit" and not any(c.isdigit() for c in refused["message"]), refused


def test_an_ack_does_not_wait_for_a_voice_decision_holding_the_lockout(
    world: World, stack_env: dict[str, str], impatient_devices: Database
) -> None:
    """A voice decision holds its lock's lockout row through the forward pass (up to 20 s). The ack of an app unlock
    at that lock, which ends a lockout, waited for it past the statement limit and made the relay's whole batch,
    every lock's events in it, a 503. It now applies without waiting and leaves a marker: the decision, failing,
    ends the lockout in its place instead of counting its failure, or, when the ack's batch commits after that
    decision (which counted then), the lock's next attempt ends it first; a failure with no app unlock meanwhile
    still counts."""
    settings = get_settings("verify")

    def ack_of_an_app_unlock() -> dict[str, str]:
        command_id = send(world, "owner").get_json()["command"]["id"]
        with get_runtime("devices").db.connection() as con:  # the test's own session may be holding the row
            ((nonce,),) = con.run("SELECT nonce FROM commands WHERE id = CAST(:i AS uuid)", i=command_id)
        payload = f'{{"id": "{command_id}", "nonce": "{nonce}", "result": "ok"}}'
        return {"topic": f"lockwise/{world.credentials['mqtt']['client_id']}/ack", "payload": payload}

    def acked(ack: dict[str, str]) -> None:
        resp = world.devices.post(
            "/devices/relay/events",
            json={"events": [ack]},
            headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
        )
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["results"][0]["outcome"] == "applied"

    def four_failures() -> None:
        with impatient_devices.transaction() as con:
            con.run(
                "INSERT INTO voice_lockouts (lock_id, consecutive_failures) VALUES (CAST(:l AS uuid), 4)"
                " ON CONFLICT (lock_id) DO UPDATE SET consecutive_failures = 4, locked_until = NULL",
                l=world.lock_id,
            )

    def fail(verifying: Connection) -> int:  # a decision's rejection, as it ends
        return lockout.record_failure(
            verifying,
            world.lock_id,
            dt.datetime.now(dt.UTC),
            after=settings.lockout_after,
            base_s=settings.lockout_base_s,
        )

    def failures() -> tuple[int, bool]:
        with impatient_devices.connection() as con:
            ((count, locked),) = con.run(
                "SELECT consecutive_failures, locked_until IS NOT NULL FROM voice_lockouts"
                " WHERE lock_id = CAST(:l AS uuid)",
                l=world.lock_id,
            )
        return int(count), bool(locked)

    assert settings.lockout_after == 5
    four_failures()
    with impatient_devices.transaction() as verifying:
        lockout.hold(verifying, world.lock_id)  # what a voice decision takes first
        ack = ack_of_an_app_unlock()  # the app unlock made while the decision runs
        acked(ack)  # answered while the row is held
        assert fail(verifying) == 0  # the fifth failure would have locked voice out
    assert failures() == (0, False)
    # a decision begun after the app unlock was made: the failures before it are cleared, its own counts (it had
    # been forgiven too: attack run 45), as when the ack finds the row free and the decision comes after
    four_failures()
    ack = ack_of_an_app_unlock()
    with impatient_devices.transaction() as verifying:
        lockout.hold(verifying, world.lock_id)
        acked(ack)
        assert fail(verifying) == 0
    assert failures() == (1, False)
    with impatient_devices.transaction() as con:  # the count back to none for what follows
        lockout.clear(con, world.lock_id)
    # the app unlock ended the lockout before this attempt began: its failure counts
    with impatient_devices.transaction() as verifying:
        assert fail(verifying) == 0
    assert failures() == (1, False)
    # the ack's batch commits after the decision counted its fifth failure: the next attempt clears it first,
    # the failures counted before the app unlock was made (the decision began before it)
    four_failures()
    with impatient_devices.transaction() as verifying:
        lockout.hold(verifying, world.lock_id)
        ack = ack_of_an_app_unlock()
        assert fail(verifying) == settings.lockout_base_s
        acked(ack)
    assert failures() == (5, True)
    with impatient_devices.transaction() as verifying:
        assert lockout.hold(verifying, world.lock_id).wait_s == 0
    assert failures() == (0, False)
    # not a failure counted after the app unlock was made (its decision began after it), as when the ack finds the
    # row free: a marker committed late cleared a lockout begun since (attack run 43)
    four_failures()
    ack = ack_of_an_app_unlock()
    with impatient_devices.transaction() as verifying:
        lockout.hold(verifying, world.lock_id)
        assert fail(verifying) == settings.lockout_base_s
        acked(ack)
    assert failures() == (5, True)
    with impatient_devices.transaction() as verifying:
        assert lockout.hold(verifying, world.lock_id).wait_s > 0
    assert failures() == (5, True)
    # an app unlock at a lock whose row nobody holds clears it at once and leaves no marker
    four_failures()
    acked(ack_of_an_app_unlock())
    assert failures() == (0, False)
    with impatient_devices.connection() as con:
        assert con.run(
            "SELECT count(*) FROM voice_lockout_clears WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id
        ) == [[0]]


def test_a_locks_commands_go_out_in_the_order_made_across_relay_replicas(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """Attack run: two replicas each claimed one of a lock's two commands (SKIP LOCKED) and published them side by
    side, so "unlock, then lock" could reach the lock as lock, then unlock. A command waits while an older one to
    its lock, not yet sent, is claimed by another replica."""
    unlock = send(world, "owner").get_json()["command"]["id"]
    lock = send(world, "owner", "lock").get_json()["command"]["id"]
    other_replica = Database(stack_env["DATABASE_URL"], pool_size=1)
    try:
        with other_replica.transaction() as claiming:  # has claimed the unlock and is publishing it
            claiming.run("SELECT 1 FROM commands WHERE id = CAST(:i AS uuid) FOR UPDATE", i=unlock)
            assert deliver(relay_db, world) == []  # the lock command waits its turn
    finally:
        other_replica.close()
    assert [c.id for c, _ in deliver(relay_db, world)] == [unlock, lock]


def test_a_command_the_broker_did_not_take_holds_back_its_locks_later_ones(world: World, relay_db: Database) -> None:
    """Attack run: published together, a later command the broker acknowledged while an earlier one timed out was
    marked sent and reached the lock first; the earlier one came after it next round. A lock's commands now go in
    waves, and one not taken stops its lock's later ones until next round."""
    unlock = send(world, "owner").get_json()["command"]["id"]
    lock = send(world, "owner", "lock").get_json()["command"]["id"]
    key = world.credentials["server_public_key"]
    offered: list[list[str]] = []

    def broker_times_out_on(refused: str) -> outbox.Publish:
        def publish(messages: list[tuple[str, str, int]]) -> list[bool]:
            ids = [command_signing.verify(payload, key).id for _topic, payload, _ttl in messages]
            offered.append([i for i in ids if i in (unlock, lock)])
            return [i != refused for i in ids]

        return publish

    outbox.deliver_due(relay_db, broker_times_out_on(unlock), resend_after_s=5)
    assert [ids for ids in offered if ids] == [[unlock]]  # the lock command was not offered behind it
    offered.clear()
    outbox.deliver_due(relay_db, broker_times_out_on(""), resend_after_s=5)
    assert [ids for ids in offered if ids] == [[unlock], [lock]]  # next round: one after the other


def test_a_command_claimed_but_not_published_as_its_issuers_access_narrows_is_withdrawn(
    world: World, relay_db: Database
) -> None:
    """Attack run: the withdrawal passed over the relay's claim on a guest's unlock (not to wait past the statement
    limit); the publish then timed out, the row stayed pending, and the next round published it though the guest's
    window had moved to tomorrow meanwhile. The withdrawal is now recorded on the membership as well."""
    waiting = send(world, "guest_in").get_json()["command"]["id"]
    answers: list[int] = []

    def broker_times_out(messages: list[tuple[str, str, int]]) -> list[bool]:
        tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
        resp = world.devices.patch(  # while the relay holds its claim, the owner moves the guest's window
            f"/devices/locks/{world.lock_id}/members/{world.uid('guest_in')}",
            json={"role": "guest", "access": {"valid_from": tomorrow}},
            headers=world.headers("owner"),
        )
        answers.append(resp.status_code)
        return [False] * len(messages)  # a PUBACK timeout: next round

    outbox.deliver_due(relay_db, broker_times_out, resend_after_s=5)
    assert answers == [200]
    assert waiting not in [c.id for c, _ in deliver(relay_db, world)]
    assert status(relay_db, waiting) == ("failed", "withdrawn: the issuer's access changed")


def test_an_idle_round_publishes_nothing(relay_db: Database) -> None:
    with relay_db.transaction() as con:
        con.run("UPDATE commands SET status = 'expired' WHERE status IN ('pending', 'sent')")
    assert outbox.deliver_due(relay_db, lambda messages: [True] * len(messages), resend_after_s=5) == []


def _ack(
    world: World, stack_env: dict[str, str], db: Database, command_id: str, result: str = "ok", reason: str = ""
) -> str:
    """The outcome of the lock's ack of ``command_id``, through the relay's route."""
    with db.connection() as con:
        ((nonce,),) = con.run("SELECT nonce FROM commands WHERE id = CAST(:i AS uuid)", i=command_id)
    payload = json.dumps({"id": command_id, "nonce": nonce, "result": result, **({"reason": reason} if reason else {})})
    resp = world.devices.post(
        "/devices/relay/events",
        json={"events": [{"topic": f"lockwise/{world.credentials['mqtt']['client_id']}/ack", "payload": payload}]},
        headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
    )
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["results"][0]["outcome"])


def test_an_ack_that_comes_after_its_command_expired_is_recorded_as_late(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """The lock acted in time (a voice grant, or the message before its expiry) and its ack was held up while the
    relay or the broker was away: the command read ``expired`` for good, and the record said the door never opened
    (attack run 13: 29 doors). The ack is now recorded, marked late in the audit log and the feed."""
    command_id = send(world, "owner").get_json()["command"]["id"]
    deliver(relay_db, world)
    with relay_db.transaction() as con:
        con.run(
            "UPDATE commands SET created_at = now() - interval '40 seconds', expires_at = now() - interval '10 seconds'"
            " WHERE id = CAST(:i AS uuid)",
            i=command_id,
        )
        assert outbox.expire(con) >= 1
    assert status(relay_db, command_id) == ("expired", None)
    assert _ack(world, stack_env, relay_db, command_id) == "applied"
    assert status(relay_db, command_id) == ("acked", None)
    shown = world.devices.get(f"/devices/locks/{world.lock_id}/commands/{command_id}", headers=world.headers("owner"))
    assert shown.get_json()["command"]["status"] == "acked"
    with relay_db.connection() as con:
        details = con.run("SELECT details FROM audit_log WHERE action = 'command.ack' AND target = :i", i=command_id)
    assert [d[0] if isinstance(d[0], dict) else json.loads(d[0]) for d in details] == [{"result": "ok", "late": True}]
    assert _ack(world, stack_env, relay_db, command_id) == "duplicate"  # once


def test_a_late_ack_ends_no_lockout_and_one_past_a_day_is_not_taken(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """A late ack of an app unlock is recorded but does not end a voice lockout (one begun since is not the one
    that unlock answered); an ack past a day after its command's expiry is a duplicate; an ack of a withdrawn
    command (a voice grant the lock acted on by its HTTP answer) is taken."""
    late, stale, withdrawn = (send(world, "owner").get_json()["command"]["id"] for _ in range(3))
    with relay_db.transaction() as con:
        con.run(
            "UPDATE commands SET created_at = now() - interval '40 seconds',"
            " expires_at = now() - interval '10 seconds', status = 'expired' WHERE id = CAST(:i AS uuid)",
            i=late,
        )
        con.run(
            "UPDATE commands SET created_at = now() - interval '25 hours',"
            " expires_at = now() - interval '1441 minutes', status = 'expired' WHERE id = CAST(:i AS uuid)",
            i=stale,
        )
        con.run(
            "UPDATE commands SET status = 'failed', last_error = :w WHERE id = CAST(:i AS uuid)",
            i=withdrawn,
            w=command_outcomes.WITHDRAWN,
        )
        con.run(
            "INSERT INTO voice_lockouts (lock_id, consecutive_failures) VALUES (CAST(:l AS uuid), 4)"
            " ON CONFLICT (lock_id) DO UPDATE SET consecutive_failures = 4, locked_until = NULL",
            l=world.lock_id,
        )
    assert _ack(world, stack_env, relay_db, late) == "applied"
    with relay_db.connection() as con:
        assert con.run(
            "SELECT consecutive_failures FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id
        ) == [[4]]
    # an app unlock made before the failures that locked voice out (its ack within its time) ends none of them
    before = send(world, "owner").get_json()["command"]["id"]
    time.sleep(0.05)
    with relay_db.transaction() as con:
        lockout.hold(con, world.lock_id)
        lockout.record_failure(con, world.lock_id, dt.datetime.now(dt.UTC), after=5, base_s=30)
    assert _ack(world, stack_env, relay_db, before) == "applied"
    with relay_db.connection() as con:
        assert con.run(
            "SELECT consecutive_failures FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid)", l=world.lock_id
        ) == [[5]]
    after = send(world, "owner").get_json()["command"]["id"]  # one made after them ends them
    assert _ack(world, stack_env, relay_db, after) == "applied"
    with relay_db.connection() as con:
        assert con.run(
            "SELECT consecutive_failures, locked_until FROM voice_lockouts WHERE lock_id = CAST(:l AS uuid)",
            l=world.lock_id,
        ) == [[0, None]]

    assert _ack(world, stack_env, relay_db, stale) == "duplicate"
    assert status(relay_db, stale) == ("expired", None)
    assert _ack(world, stack_env, relay_db, withdrawn) == "applied"
    assert status(relay_db, withdrawn) == ("acked", None)


def test_an_app_unlock_made_on_a_clock_running_ahead_ends_no_lockout_begun_after_it(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """Whether a failure was counted before an app unlock was made compared the failure's time (the database's
    clock) with the command's ``created_at`` (the devices instance's): an instance 5 s ahead made an unlock whose ack
    ended the lockout the next failure began. The unlock's row now carries the database's time it was written."""
    made = send(world, "owner").get_json()["command"]["id"]
    with relay_db.transaction() as con:  # made on a machine whose clock runs 5 s ahead of the database's
        con.run(
            "UPDATE commands SET created_at = created_at + interval '5 seconds' WHERE id = CAST(:i AS uuid)", i=made
        )
        con.run(
            "INSERT INTO voice_lockouts (lock_id, consecutive_failures) VALUES (CAST(:l AS uuid), 4)"
            " ON CONFLICT (lock_id) DO UPDATE SET consecutive_failures = 4, locked_until = NULL",
            l=world.lock_id,
        )
    with relay_db.transaction() as con:  # the fifth failure, after the unlock was made
        lockout.hold(con, world.lock_id)
        assert lockout.record_failure(con, world.lock_id, dt.datetime.now(dt.UTC), after=5, base_s=30) == 30
    assert _ack(world, stack_env, relay_db, made) == "applied"
    assert status(relay_db, made) == ("acked", None)
    with relay_db.connection() as con:
        assert con.run(
            "SELECT consecutive_failures, locked_until IS NOT NULL FROM voice_lockouts"
            " WHERE lock_id = CAST(:l AS uuid)",
            l=world.lock_id,
        ) == [[5, True]]


def test_a_newer_commands_ack_settles_the_older_ones_the_lock_will_refuse(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """The lock refuses, without an ack, a command signed in an earlier second than one it carried out (FIRMWARE.md
    step 7): such a command read ``expired`` 30 s later although a newer one was done (attack run 13). The newer
    one's ack now marks the older unsent ones failed, superseded (one sent may have been carried out, its ack lost);
    one of the same second stays open (the lock takes it); and an older one's own ack, taken after the newer's (two
    replicas), is still recorded."""
    older, same_second, newer, refused_older, sent_older = (
        send(world, "owner").get_json()["command"]["id"] for _ in range(5)
    )
    with relay_db.transaction() as con:
        con.run(
            "UPDATE commands SET created_at = date_trunc('second', now()) - interval '2 seconds'"
            " WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=[older, refused_older, sent_older],
        )
        con.run("UPDATE commands SET status = 'sent' WHERE id = CAST(:i AS uuid)", i=sent_older)
        con.run(
            "UPDATE commands SET created_at = date_trunc('second', now()) + interval '0.2 seconds'"
            " WHERE id = CAST(:i AS uuid)",
            i=same_second,
        )
        con.run(
            "UPDATE commands SET created_at = date_trunc('second', now()) + interval '0.5 seconds'"
            " WHERE id = CAST(:i AS uuid)",
            i=newer,
        )
    assert _ack(world, stack_env, relay_db, newer) == "applied"
    superseded = status(relay_db, older)
    assert superseded[0] == "failed" and (superseded[1] or "").startswith("superseded")
    assert status(relay_db, refused_older)[0] == "failed"
    assert status(relay_db, same_second) == ("pending", None)
    # one already sent may have been carried out before the newer one, its ack lost (attack run 16: a broker killed
    # before it saved the ack read "failed" for a door that opened): not settled by another's ack
    assert status(relay_db, sent_older) == ("sent", None)
    assert _ack(world, stack_env, relay_db, older) == "applied"  # it was carried out after all: its ack came late
    assert status(relay_db, older) == ("acked", None)
    assert _ack(world, stack_env, relay_db, refused_older, "refused") == "applied"
    assert status(relay_db, refused_older)[0] == "failed"
    assert _ack(world, stack_env, relay_db, refused_older) == "duplicate"  # what the lock said stands
    # a command the lock tried and could not carry out (jammed) supersedes too: it recorded its time first
    jammed_older, jammed = (send(world, "owner").get_json()["command"]["id"] for _ in range(2))
    with relay_db.transaction() as con:
        con.run(
            "UPDATE commands SET created_at = date_trunc('second', now()) - interval '3 seconds'"
            " WHERE id = CAST(:i AS uuid)",
            i=jammed_older,
        )
    assert _ack(world, stack_env, relay_db, jammed, "failed") == "applied"
    assert status(relay_db, jammed_older) == ("failed", command_outcomes.SUPERSEDED)


def test_no_command_made_for_the_replaced_device_goes_to_the_new_one(world: World, relay_db: Database) -> None:
    """Attack run 48: an unlock sent to the lock's old device (which may have carried it out; its ack refused once
    its identity was revoked) stayed ``sent`` through a re-pairing, and the relay's re-send went to the new device,
    which opened the door a second time. The pairing fails the open commands; one it passed over (claimed by a relay
    at that moment) is never sent again to another identity than the one it went to (``commands.sent_to``)."""
    sent = send(world, "owner").get_json()["command"]["id"]
    assert [c.id for c, _ in deliver(relay_db, world)] == [sent]
    waiting = send(world, "member", action="lock").get_json()["command"]["id"]
    pair_again(world.devices, world)
    assert status(relay_db, sent) == status(relay_db, waiting) == ("failed", command_outcomes.PAIRED_AGAIN)
    with relay_db.transaction() as con:  # as if the pairing had passed it over (a relay held it), and as if made
        # by an instance whose clock runs ahead of the pairing's (attack run 49: a comparison of times let it go)
        con.run(
            "UPDATE commands SET status = 'sent', last_error = NULL, sent_at = now() - interval '6 seconds',"
            " created_at = now() + interval '2 seconds' WHERE id = CAST(:i AS uuid)",
            i=sent,
        )
    assert deliver(relay_db, world) == []
    assert status(relay_db, sent) == ("failed", command_outcomes.PAIRED_AGAIN)
    after = send(world, "owner").get_json()["command"]["id"]  # made for the new device: sent to it
    assert [c.id for c, _ in deliver(relay_db, world)] == [after]


def test_an_unlock_published_unanswered_through_a_pairing_never_goes_to_the_new_device(
    world: World, relay_db: Database
) -> None:
    """A review: the pairing fails the open commands ``FOR UPDATE SKIP LOCKED``, passing over one a relay holds. Its
    broker's PUBACK not come (the old device may have it all the same), the row stayed ``pending`` with no
    ``sent_to``, and the next round sent it to the new device. A command published, answered or not, records where
    it went."""
    waiting = send(world, "owner").get_json()["command"]["id"]
    paired: list[int] = []

    def broker_times_out(messages: list[tuple[str, str, int]]) -> list[bool]:
        # while the relay holds its claim (publishing), the owner pairs the lock again
        pair_again(world.devices, world)
        paired.append(1)
        return [False] * len(messages)  # a PUBACK timeout: "next round"

    outbox.deliver_due(relay_db, broker_times_out, resend_after_s=5)
    assert paired == [1]
    assert waiting not in [c.id for c, _ in deliver(relay_db, world)], "made for the replaced device, sent to the new"
    assert status(relay_db, waiting) == ("failed", command_outcomes.PAIRED_AGAIN)


def test_a_command_a_relay_held_unpublished_through_a_pairing_never_goes_to_the_new_device(
    world: World, relay_db: Database
) -> None:
    """Attack run 51 (Medium): a round claimed two commands of the lock; the broker did not take the first, so the
    second was not published that round (a lock gets its commands one after another), and the owner paired the lock
    again while the round held both. The pairing passes over rows a relay holds; the first, published to the old
    device, was failed next round, but the second had gone nowhere (no ``sent_to``) and was sent to the new device
    (in the attack, a voice the replaced device heard: its unlock opened the door through the new one). A command
    records the device it was made for (``commands.made_for``) and goes to that device only."""
    first = send(world, "owner", action="lock").get_json()["command"]["id"]
    second = send(world, "owner").get_json()["command"]["id"]
    published: list[str] = []

    def broker_times_out(messages: list[tuple[str, str, int]]) -> list[bool]:
        published.extend(command_signing.verify(p, world.credentials["server_public_key"]).id for _, p, _ in messages)
        if len(published) == 1:  # while the relay holds both, the owner pairs the lock again
            world.credentials = pair_again(world.devices, world)[0]
        return [False] * len(messages)  # a PUBACK timeout: this lock gets nothing more this round

    outbox.deliver_due(relay_db, broker_times_out, resend_after_s=5)
    assert published == [first]
    assert deliver(relay_db, world) == [], "made for the replaced device, sent to the new"
    assert status(relay_db, first) == status(relay_db, second) == ("failed", command_outcomes.PAIRED_AGAIN)
    after = send(world, "owner").get_json()["command"]["id"]  # made for the new device: sent to it
    assert [c.id for c, _ in deliver(relay_db, world)] == [after]


def test_a_lock_that_answers_nothing_is_sent_only_a_few_messages_until_it_is_heard_from(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """Attack run 54: a lock that ended its connection cleanly, without its ``offline``, is taken for online, and
    every command went into its away session, where Mosquitto keeps expired ones too: an owner's loop grew the
    broker by ~0.5 KB a command, for good. A lock is now published at most ``UNANSWERED`` messages since it was last
    heard from, commands made one by one or at once, re-sends too (attack run 55: counted per command, each re-sent
    every 5 s until it expired); the rest stay pending (and expire unsent) until any event of its device comes."""

    def made(count: int, role: str = "owner") -> list[str]:
        return [send(world, role).get_json()["command"]["id"] for _ in range(count)]

    def sent() -> list[str]:
        return [c.id for c, _ in deliver(relay_db, world, resend_after_s=1)]

    def lock_says(kind: str, payload: str) -> None:
        resp = world.devices.post(
            "/devices/relay/events",
            json={
                "events": [{"topic": f"lockwise/{world.credentials['mqtt']['client_id']}/{kind}", "payload": payload}]
            },
            headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
        )
        assert resp.status_code == 200, resp.get_json()

    for _ in range(outbox.UNANSWERED):  # one by one, each sent as it is made
        one = made(1)
        assert sent() == one
    held = made(2)
    assert sent() == [] and {status(relay_db, c)[0] for c in held} == {"pending"}
    lock_says("state", json.dumps({"state": "locked", "ts": time.time()}))
    assert sent() == held  # each sent once its device said something
    at_once = made(outbox.UNANSWERED, "admin")  # a burst, claimed in one round
    first = at_once[: outbox.UNANSWERED - len(held)]
    assert sent() == first and sent() == []
    with relay_db.connection() as con:
        ((nonce,),) = con.run("SELECT nonce FROM commands WHERE id = CAST(:i AS uuid)", i=first[-1])
    lock_says("ack", json.dumps({"id": first[-1], "nonce": nonce, "result": "ok"}))  # an ack is hearing from it
    rest = at_once[len(first) :]
    assert sent() == rest
    for _ in range(outbox.UNANSWERED - len(rest)):  # the newest sent again, a message each time, up to the allowance
        time.sleep(1.1)
        assert sent() == [rest[-1]]
    time.sleep(1.1)
    assert sent() == [] and status(relay_db, rest[-1])[0] == "sent"


def test_a_members_commands_to_all_their_locks_are_limited_per_minute(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 54: the budget was one lock's only, so an account's 50 locks took 1,500 commands a minute (each
    kept 30 days with a feed entry and an audit row kept for good). All the member's locks together now have one."""
    rt = get_runtime("devices")
    monkeypatch.setattr(
        rt, "settings", dataclasses.replace(rt.settings, app_commands_per_minute=3, app_commands_per_account_minute=4)
    )
    created = create_lock(world.devices, world.accounts["owner"], "Back door")
    other = created["lock"]["id"]
    provision(world.devices, created["provisioning"]["code"])

    def to(lock_id: str) -> Any:
        return world.devices.post(
            f"/devices/locks/{lock_id}/commands", json={"action": "lock"}, headers=world.headers("owner")
        )

    assert [to(world.lock_id).status_code for _ in range(4)] == [202, 202, 202, 429]  # this lock's 3
    assert to(other).status_code == 202
    refused = to(other)  # the account's 4
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "command_limit"
    assert "your locks" in refused.get_json()["error"]["message"] and refused.headers["Retry-After"] == "60"
    assert send(world, "admin").status_code == 202  # another member's budget is their own


def test_what_a_replaced_device_left_unanswered_holds_nothing_back_from_the_new_one(
    world: World, relay_db: Database
) -> None:
    """The messages the lock's old device left unanswered are its own: the device that replaces it, not heard from
    yet, is sent its commands."""
    for _ in range(outbox.UNANSWERED):
        sent = send(world, "owner").get_json()["command"]["id"]
        assert [c.id for c, _ in deliver(relay_db, world)] == [sent]
    assert send(world, "owner").status_code == 202
    assert deliver(relay_db, world) == []  # held: the device answered none of its last ones
    pair_again(world.devices, world)
    new = send(world, "owner").get_json()["command"]["id"]
    assert [c.id for c, _ in deliver(relay_db, world)] == [new]


def test_a_locks_held_commands_take_no_other_locks_place_in_a_round(
    world: World, relay_db: Database, make_client: Any, sign_up: Any
) -> None:
    """Attack run 55: held commands were claimed with the round's others and dropped after, so a silent lock holding
    as many as a round claims (500: 17 members' bursts) kept every other lock's commands from going out."""
    for _ in range(outbox.UNANSWERED):
        send(world, "owner")
        assert len(deliver(relay_db, world)) == 1
    held = [send(world, role).get_json()["command"]["id"] for role in ("owner", "admin", "member") for _ in range(2)]
    other = build_world(make_client("devices"), sign_up)
    theirs = send(other, "owner").get_json()["command"]["id"]
    published: list[str] = []

    def publish(messages: list[tuple[str, str, int]]) -> list[bool]:
        published.extend(json.loads(payload)["cmd"] for _topic, payload, _ttl in messages)
        return [True] * len(messages)

    outbox.deliver_due(relay_db, publish, resend_after_s=5, limit=3)  # fewer places than the lock's held commands
    assert [json.loads(cmd)["id"] for cmd in published] == [theirs]
    assert {status(relay_db, c)[0] for c in held} == {"pending"}


def test_a_lock_deleted_during_a_round_leaves_the_other_locks_counts_as_they_are(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """Attack run 56: a lock being deleted as a round counted what it published made the count's own check of it
    fail once the deletion committed: every lock's count of the round was lost, and the round raised after its
    commands were marked sent."""
    created = create_lock(world.devices, world.accounts["owner"], "Back door")
    other = created["lock"]["id"]
    provision(world.devices, created["provisioning"]["code"])
    mine = send(world, "owner").get_json()["command"]["id"]
    assert (
        world.devices.post(
            f"/devices/locks/{other}/commands", json={"action": "lock"}, headers=world.headers("owner")
        ).status_code
        == 202
    )
    deleting, deleter_db = threading.Event(), Database(stack_env["DATABASE_URL"], pool_size=1)

    def delete_other() -> None:  # as the API deletes a lock: its row held, the delete, then more of its work
        with deleter_db.transaction() as con:
            con.run("SELECT 1 FROM locks WHERE id = CAST(:l AS uuid) FOR UPDATE", l=other)
            deleting.set()
            con.run("DELETE FROM locks WHERE id = CAST(:l AS uuid)", l=other)  # waits for the round's claim
            time.sleep(0.5)

    deleter = threading.Thread(target=delete_other)

    def publish(messages: list[tuple[str, str, int]]) -> list[bool]:
        if not deleter.is_alive() and not deleting.is_set():
            deleter.start()
            assert deleting.wait(5)
            time.sleep(0.3)  # the deletion waits for the claimed commands now
        return [True] * len(messages)

    try:
        outbox.deliver_due(relay_db, publish, resend_after_s=5)
        deleter.join(10)
    finally:
        deleter_db.close()
    with relay_db.connection() as con:
        counts = dict(
            con.run(
                "SELECT lock_id::text, sent FROM lock_unanswered WHERE lock_id = ANY(CAST(:l AS uuid[]))",
                l=[world.lock_id, other],
            )
        )
    assert status(relay_db, mine)[0] == "sent" and counts == {world.lock_id: 1}


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@pytest.mark.parametrize("narrowing", ["weekdays", "valid_until", "demoted"])
def test_an_unlock_in_flight_as_the_owner_narrows_the_issuers_access_is_not_delivered(
    world: World, relay_db: Database, narrowing: str
) -> None:
    """Attack run 61: a guest's unlock read her membership, then waited for her own account row (another of her
    requests held it: the wait attack run 42 found) while the owner narrowed her window (or ended it, or demoted a
    member to a guest of another day) on another instance. The narrowing withdrew her unsent commands before the
    unlock's existed, and the unlock was then made on the membership read before it, and delivered (12 of 148 natural
    races on two instances). Her membership is read again, held, once her row is: refused, 403."""
    role = "member" if narrowing == "demoted" else "guest_in"
    issuer = world.uid(role)
    another_day = [WEEKDAYS[(dt.datetime.now(dt.UTC).weekday() + 3) % 7]]  # far from today in every time zone
    access = {
        "weekdays": {"role": "guest", "access": {"weekdays": another_day}},
        "valid_until": {"role": "guest", "access": {"valid_until": dt.datetime.now(dt.UTC).isoformat()}},
        "demoted": {"role": "guest", "access": {"weekdays": another_day}},
    }[narrowing]
    with ThreadPoolExecutor(1) as pool:
        with relay_db.transaction() as con:  # another of her requests holds her account row a moment
            con.run("SELECT 1 FROM users WHERE uid = :u FOR NO KEY UPDATE", u=issuer)
            made = pool.submit(send, world, role)
            time.sleep(0.5)  # her unlock has read her membership and waits for her row
            narrowed = world.devices.patch(
                f"/devices/locks/{world.lock_id}/members/{issuer}", json=access, headers=world.headers("owner")
            )
            assert narrowed.status_code == 200, narrowed.get_json()
            fresh = send(world, role)  # a tap made now is refused at once
            assert fresh.status_code == 403, fresh.get_json()
        answer = made.result(30)
    assert (answer.status_code, answer.get_json()["error"]["code"]) == (403, "outside_access_window"), answer.get_json()
    assert deliver(relay_db, world) == []


def instance_clock(ahead_s: float) -> Any:
    """A stand-in for the ``datetime`` module of one function instance whose clock runs ``ahead_s`` ahead of the
    database's (behind when negative)."""

    class Skewed(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Skewed:
            return cls.fromtimestamp(time.time() + ahead_s, tz)

    return type("datetime_module", (), {"datetime": Skewed, "UTC": dt.UTC, "timedelta": dt.timedelta})


def test_a_lock_made_after_an_unlock_on_an_instance_running_ahead_is_the_newer(
    world: World, relay_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 69: a command's time (its row's ``created_at``, the signed ``issued_at``) was its instance's clock.
    A member's unlock made on an instance 3 s ahead, then the owner's lock on one that is right: the relay sent the
    lock first and the unlock after it, and the lock, which refuses a command older than the last it carried out,
    was left unlocked. Commands take the database's clock now, so the lock made after is the newer one."""
    from lockwise.devices import commands

    monkeypatch.setattr(commands, "dt", instance_clock(3.0))
    unlock = send(world, "member").get_json()["command"]["id"]
    monkeypatch.setattr(commands, "dt", dt)
    time.sleep(1.1)
    lock = send(world, "owner", "lock").get_json()["command"]["id"]
    sent = [c for c, _ in deliver(relay_db, world)]
    assert [c.id for c in sent] == [unlock, lock]
    assert sent[0].issued_at < sent[1].issued_at


def test_a_lost_unlock_is_not_sent_again_after_a_withdrawal_on_an_instance_running_behind(
    world: World, relay_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack run 69: when a member's commands were withdrawn was the changing instance's clock, compared with their
    commands' times (another instance's): the owner narrowing a member's access on an instance 3 s behind withdrew
    nothing made in the 3 s before, and her unlock, sent once and lost, was sent again. Both are the database's
    clock now."""
    from lockwise.devices import commands

    sent = send(world, "member").get_json()["command"]["id"]
    assert [c.id for c, _ in deliver(relay_db, world)] == [sent]  # (lost on the way)
    monkeypatch.setattr(commands, "dt", instance_clock(-3.0))
    guest_from_tomorrow(world, "member")
    time.sleep(1.1)
    assert deliver(relay_db, world, resend_after_s=1) == []


def on_a_devices_instance_off_by(monkeypatch: pytest.MonkeyPatch, ahead_s: float) -> None:
    """The devices function's instance runs ``ahead_s`` ahead of the database (behind when negative) since it started:
    its clock, and no reading of the database's taken before."""
    from lockwise.core.runtime import utc_now

    runtime = get_runtime("devices")
    monkeypatch.setattr(runtime, "clock", lambda: utc_now() + dt.timedelta(seconds=ahead_s))
    monkeypatch.setattr(runtime, "clock_set_by_database", True)  # (replacing the clock turned it off)
    runtime.database_clock.forget()


def expire(db: Database, world: World, role: str, seconds_from_now: float) -> None:
    """``role``'s access ends ``seconds_from_now`` by the database's clock (in the past when negative)."""
    with db.connection() as con:
        con.run(
            "UPDATE lock_members SET expires_at = clock_timestamp() + make_interval(secs => :s)"
            " WHERE lock_id = CAST(:l AS uuid) AND user_uid = :u",
            s=seconds_from_now,
            l=world.lock_id,
            u=world.uid(role),
        )


def test_a_member_whose_access_ended_makes_no_unlock_on_an_instance_running_behind(
    world: World, relay_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note of stop 65: the devices function decided whose access stands by its instance's clock. On one 50 s
    behind the database, a member whose access had ended 10 s before (by the clock verify decides by) still made an
    unlock, and it was delivered. Its instance's clock is set by the database's now (``Runtime.now``)."""
    on_a_devices_instance_off_by(monkeypatch, -50.0)
    expire(relay_db, world, "member", -10.0)
    made = send(world, "member")
    assert made.status_code == 404 and made.get_json()["error"]["code"] == "lock_not_found", made.get_json()
    assert deliver(relay_db, world) == []


def test_a_members_access_not_yet_ended_stands_on_an_instance_running_ahead(
    world: World, relay_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way round: on an instance 50 s ahead, a member with 30 s of access left (by the database's clock)
    was refused the lock she may still open with her voice, and was not listed as a member."""
    on_a_devices_instance_off_by(monkeypatch, 50.0)
    expire(relay_db, world, "member", 30.0)
    seen = world.devices.get(f"/devices/locks/{world.lock_id}", headers=world.headers("member"))
    assert seen.status_code == 200, seen.get_json()
    listed = world.devices.get(f"/devices/locks/{world.lock_id}/members", headers=world.headers("owner"))
    assert world.uid("member") in [m["uid"] for m in listed.get_json()["members"]], listed.get_json()


def test_a_member_paused_on_an_instance_running_ahead_has_no_unlock_made_after(
    world: World, relay_db: Database
) -> None:
    """Attack run 70: a pause (an expiry in the past) was stored as the instance's now; on one 5 s ahead, that end
    was still to come by the database's clock, by which commands are made and withdrawn since attack run 69, and an
    unlock the member tapped on another instance right after the answer was made and delivered. The pause is stored
    as the database's now."""
    from lockwise.core.runtime import utc_now

    runtime = get_runtime("devices")
    runtime.clock = lambda: utc_now() + dt.timedelta(seconds=5)
    try:
        past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
        resp = world.devices.patch(
            f"/devices/locks/{world.lock_id}/members/{world.uid('member')}",
            json={"role": "member", "access": {"expires_at": past}},
            headers=world.headers("owner"),
        )
        assert resp.status_code == 200, resp.get_json()
    finally:
        runtime.clock = utc_now
    made = send(world, "member")
    assert made.status_code == 404, made.get_json()
    assert deliver(relay_db, world) == []


def test_a_locks_reason_reaches_the_sender_without_its_control_or_format_characters(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """The reason of a refused ack is shown to the member who sent the command as the lock wrote it, and was the one
    text of a lock's kept whole (its firmware and name refuse them): line breaks, an ANSI escape and a right-to-left
    override made the app's line of the outcome read as others (attack run 120). Such a reason is said to be not
    plain text, not shown (the rule for text others read, attack run 118); the ack is taken."""
    command_id = send(world, "owner").get_json()["command"]["id"]
    deliver(relay_db, world)
    reason = "jammed\n\nowner: \x1b[2Jsign in again\u202e"
    assert _ack(world, stack_env, relay_db, command_id, "refused", reason) == "applied"
    shown = world.devices.get(f"/devices/locks/{world.lock_id}/commands/{command_id}", headers=world.headers("owner"))
    assert shown.status_code == 200
    assert shown.get_json()["command"]["error"] == "refused: " + command_outcomes.NOT_PLAIN


def test_a_retired_identity_is_kept_until_the_broker_took_its_clearings(
    world: World, relay_db: Database, stack_env: dict[str, str]
) -> None:
    """Attack run 131 (attack run 127's leftover): the presence a lock's identity kept at the broker stayed there once
    the lock was paired again or deleted. The identity is listed as its credential is revoked or deleted, and as a
    presence comes in from an identity no live credential holds, and the relay's round (``retired.clear_due``) keeps
    the row until the broker acknowledged an empty retained message to each of its topics."""
    from mqtt_relay import retired

    old = world.credentials["mqtt"]["client_id"]
    new = pair_again(world.devices, world)[0]["mqtt"]["client_id"]

    def listed() -> set[str]:
        with relay_db.connection() as con:
            return {str(r[0]) for r in con.run("SELECT identity FROM retired_broker_identities")}

    assert listed() == {old}
    sent: list[str] = []

    def broker_away(cleared: list[str]) -> list[bool]:
        sent.extend(cleared)
        return [topic != retired.topics_of(old)[0] for topic in cleared]  # the status's PUBACK lost

    assert retired.clear_due(relay_db, broker_away) == 0
    assert sent == retired.topics_of(old) and listed() == {old}
    assert retired.clear_due(relay_db, lambda cleared: [True] * len(cleared)) == 1
    assert listed() == set()
    # a presence from an identity no live credential holds (kept from before the list, a late goodbye) ...
    ghost = "0b7a1d0e-0000-4000-8000-000000000131"
    resp = world.devices.post(
        "/devices/relay/events",
        json={"events": [{"topic": f"lockwise/{ghost}/status", "payload": "offline 3"}]},
        headers={"X-LockWise-Service-Token": stack_env["LOCKWISE_SERVICE_TOKEN"]},
    )
    assert resp.status_code == 200 and resp.get_json()["results"][0]["outcome"] == "rejected"
    # ... and the live identity, once its lock is deleted
    assert world.devices.delete(f"/devices/locks/{world.lock_id}", headers=world.headers("owner")).status_code == 204
    assert listed() == {ghost, new}
