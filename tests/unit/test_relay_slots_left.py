"""Which relay slots a replica left (``mqtt_relay.relay.slots_left``): a slot another replica held, free for
``LEFT_AFTER_S``, is emptied without waiting for the scan of every slot (attack run 68); one free for less, as every
slot is while PostgreSQL restarts and each replica leases its own again, is not."""

from __future__ import annotations

from mqtt_relay.relay import LEASE_CHECK_S, LEFT_AFTER_S, slots_left


def test_a_slot_left_free_long_enough_is_taken_as_left_and_one_held_again_is_not() -> None:
    held_once: set[int] = set()
    free_since: dict[int, float] = {}
    assert slots_left({1, 2}, held_once, free_since, 0.0) == []
    assert slots_left({1}, held_once, free_since, 5.0) == []  # slot 2's replica gone, or between two leases
    assert slots_left(set(), held_once, free_since, 5.0 + LEASE_CHECK_S) == []  # the database restarted
    assert slots_left({1, 2}, held_once, free_since, 10.0) == []  # both leased again
    assert free_since == {}
    assert slots_left({1}, held_once, free_since, 11.0) == []
    assert slots_left({1}, held_once, free_since, 11.0 + LEFT_AFTER_S - 0.1) == []
    assert slots_left({1}, held_once, free_since, 11.0 + LEFT_AFTER_S) == [2]
    assert slots_left({1}, set(), {}, 100.0) == []  # never seen held: the scan of every slot's, not this


def test_the_wait_is_far_longer_than_a_replica_takes_to_lease_its_slot_again() -> None:
    assert LEFT_AFTER_S >= 10 * LEASE_CHECK_S
