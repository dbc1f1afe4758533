"""Which claimed mirror rows wait behind rows another flush holds (``lockwise.core.mirror._held_back``); the real
race against PostgreSQL and the Firestore emulator is in tests/integration/test_devices_live_view.py."""

from __future__ import annotations

from typing import Any

from lockwise.core.mirror import _held_back


def claimed(*rows: tuple[int, str, str]) -> list[list[Any]]:
    return [[row_id, path, op, {}] for row_id, path, op in rows]


def test_nothing_waits_when_no_older_row_is_held_elsewhere() -> None:
    assert _held_back(claimed((5, "locks/a", "merge"), (6, "users/u", "set")), []) == set()


def test_a_newer_write_of_a_document_waits_and_so_does_every_later_one_of_it() -> None:
    rows = claimed((5, "locks/a/access/u", "delete"), (6, "locks/b", "merge"), (7, "locks/a/access/u", "set"))
    assert _held_back(rows, [(3, "locks/a/access/u", "set")]) == {5, 7}


def test_an_older_row_held_elsewhere_after_ours_holds_nothing_back() -> None:
    assert _held_back(claimed((5, "locks/a", "merge")), [(9, "locks/a", "merge")]) == set()


def test_a_collections_deletion_and_its_documents_wait_for_each_other() -> None:
    feed = "locks/a/activity"
    # an entry written elsewhere holds back the deletion of its collection, and what follows it in the collection
    rows = claimed((5, feed, "delete_collection"), (6, f"{feed}/e2", "set"), (7, "locks/a", "merge"))
    assert _held_back(rows, [(2, f"{feed}/e1", "set")]) == {5, 6}
    # a deletion of the collection held elsewhere holds back every entry of it, not the lock's own document
    rows = claimed((5, f"{feed}/e3", "set"), (6, "locks/a", "merge"), (7, "locks/ab/activity/e", "set"))
    assert _held_back(rows, [(4, feed, "delete_collection")]) == {5}
