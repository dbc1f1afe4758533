"""How queued mirror rows become Firestore commits: grouping and coalescing, checked against a model of Firestore's
document semantics (the integration tests write the same rows to the real emulator)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockwise.core import mirror

pytestmark = pytest.mark.usefixtures("no_lazy_speechbrain_modules")


def apply_rows(docs: dict[str, dict[str, Any]], writes: list[tuple[str, str, dict[str, Any]]]) -> None:
    """What Firestore does with these writes, in order (merge is a deep merge of maps)."""

    def deep(into: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        out = dict(into)
        for key, value in data.items():
            prior = out.get(key)
            out[key] = deep(prior if isinstance(prior, dict) else {}, value) if isinstance(value, dict) else value
        return out

    for path, op, data in writes:
        if op == "delete":
            docs.pop(path, None)
        elif op == "set":
            docs[path] = dict(data)
        elif op == "replace_fields":
            docs[path] = {**docs.get(path, {}), **data}
        else:
            docs[path] = deep(docs.get(path, {}), data)


def rows_of(writes: list[tuple[str, str, dict[str, Any]]]) -> list[list[Any]]:
    return [[i, path, op, data] for i, (path, op, data) in enumerate(writes, start=1)]


def test_a_state_flood_is_one_lock_document_write_and_every_feed_entry() -> None:
    writes = []
    for i in range(50):
        writes.append(("locks/a", "merge", {"state": "locked" if i % 2 else "unlocked", "battery_pct": i}))
        writes.append((f"locks/a/activity/{i}", "set", {"kind": "state"}))
    coalesced = mirror._coalesced(rows_of(writes))
    assert len(coalesced) == 51
    assert coalesced[0] == ("locks/a", "merge", {"state": "locked", "battery_pct": 49})


def test_a_merge_is_not_folded_across_another_write_to_the_same_document() -> None:
    writes: list[tuple[str, str, dict[str, Any]]] = [
        ("locks/a", "merge", {"state": "locked"}),
        ("locks/a", "delete", {}),
        ("locks/a", "merge", {"battery_pct": 3}),
        ("locks/a", "merge", {"access": {"u1": "member"}}),
        ("locks/a", "merge", {"online": True}),
        ("locks/a", "merge", {"online": False}),  # folds into the one before it, and only that
    ]
    assert [w[2] for w in mirror._coalesced(rows_of(writes))] == [
        {"state": "locked"},
        {},
        {"battery_pct": 3},
        {"access": {"u1": "member"}},
        {"online": False},
    ]


paths = st.sampled_from(["locks/a", "locks/b", "users/u"])
ops = st.sampled_from(["merge", "set", "delete", "replace_fields"])
values = st.one_of(st.integers(0, 3), st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 3), max_size=2))
datas = st.dictionaries(st.sampled_from(["state", "online", "access", "n"]), values, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(paths, ops, datas), max_size=30))
def test_coalescing_leaves_every_document_as_the_writes_in_order_would(
    writes: list[tuple[str, str, dict[str, Any]]],
) -> None:
    plain: dict[str, dict[str, Any]] = {}
    apply_rows(plain, writes)
    folded: dict[str, dict[str, Any]] = {}
    apply_rows(folded, mirror._coalesced(rows_of(writes)))
    assert folded == plain


def test_groups_keep_queue_order_and_commit_size_and_put_collection_deletes_alone() -> None:
    rows = rows_of(
        [("locks/a", "merge", {"n": i}) for i in range(mirror.MAX_BATCH_WRITES + 3)]
        + [("locks/a/activity", "delete_collection", {}), ("locks/b", "set", {})]
    )
    groups = mirror._groups(rows)
    assert [len(g) for g in groups] == [mirror.MAX_BATCH_WRITES, 3, 1, 1]
    assert [row[0] for row in itertools.chain.from_iterable(groups)] == [row[0] for row in rows]


def test_the_firestore_client_is_made_once_by_threads_asking_together() -> None:
    """Attack run 96: a health report's Firestore probe and a flush (or two flushes: a request's and a background
    one) asked for the client at once, and each made one (each looking up the credentials; the one not kept held its
    connections until collected)."""
    made: list[object] = []

    def make_client() -> Any:
        time.sleep(0.2)  # the credentials looked up (Application Default Credentials: the metadata server)
        made.append(object())
        return made[-1]

    flusher = mirror.Flusher(None, make_client)  # type: ignore[arg-type]  # no database: only the client is asked
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(flusher.client())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(made) == 1 and got == made * 4
