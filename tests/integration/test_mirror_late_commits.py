"""A Firestore commit whose answer never came may still be applied later: the mirror's writes sent again with newer
ones must not be undone by it. Against PostgreSQL and the Firestore emulator, with an HTTP relay in between that
holds a commit past the client's timeout and delivers it once the rows were written again."""

from __future__ import annotations

import datetime as dt
import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any

from infra.local.firestore_sdk import sdk_client
from lockwise.core import firestore, google_api, mirror
from lockwise.core.runtime import get_runtime
from tests.conftest import PROJECT_ID
from tests.devices_world import build_world
from tests.http_stubs import StubHandler, running
from tests.integration.test_devices_live_view import rest_get
from tests.waiting import wait_for


class LateRelay(ThreadingHTTPServer):
    """Relays requests to the emulator at ``target``; the first commit is held until ``deliver()``, then sent on
    (its client has long given up): what Firestore does with a commit it took before its client's timeout."""

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Relaying)
        self.target = target
        self.holding, self._deliver, self.delivered = threading.Event(), threading.Event(), threading.Event()
        self.late_status: int | None = None
        self._held_one = False
        self._lock = threading.Lock()

    def hold(self) -> bool:
        with self._lock:
            first, self._held_one = not self._held_one, True
        return first

    def deliver(self) -> int:
        """Send the held commit on; Firestore's answer to it."""
        self._deliver.set()
        assert self.delivered.wait(30), "the held commit was not delivered"
        assert self.late_status is not None
        return self.late_status


class _Relaying(StubHandler):
    server: LateRelay
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._relay(None)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._relay(self.body())

    def _relay(self, body: bytes | None) -> None:
        held = self.command == "POST" and self.path.endswith(":commit") and self.server.hold()
        if held:
            self.server.holding.set()
            assert self.server._deliver.wait(60)
        con = http.client.HTTPConnection(self.server.target, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        con.request(self.command, self.path, body=body, headers=headers)
        resp = con.getresponse()
        data = resp.read()
        con.close()
        if held:
            self.server.late_status = resp.status
            self.server.delivered.set()
            return  # its client is gone
        self.answer(resp.status, data, content_type=resp.getheader("Content-Type"))


@contextmanager
def late_flusher(stack_env: dict[str, str]) -> Iterator[tuple[mirror.Flusher, LateRelay]]:
    """A flusher of the devices function's queue whose Firestore client (1 s timeout) goes through a ``LateRelay``."""
    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    wait_for(lambda: not any(t.name == "mirror-flush" for t in threading.enumerate()), timeout=40)
    assert rt.mirror.pending() == 0
    with running(LateRelay(stack_env["FIRESTORE_EMULATOR_HOST"])) as relay:
        client = firestore.Client(
            PROJECT_ID, f"127.0.0.1:{relay.server_port}", authorize=google_api.emulator_owner, timeout_s=1.0
        )
        try:
            yield mirror.Flusher(rt.db, lambda: client), relay
        finally:
            relay._deliver.set()
            client.close()


def stored(sdk: Any, path: str) -> dict[str, Any] | None:
    """The document's fields but the time of its last mirror write."""
    found = sdk.document(path).get().to_dict()
    return None if found is None else {k: v for k, v in found.items() if k != mirror.MIRRORED_AT}


def queue(*writes: mirror.Write) -> None:
    with get_runtime("devices").db.transaction() as con:
        mirror.enqueue_many(con, list(writes))


def test_a_commit_that_lands_after_its_rows_were_written_again_undoes_nothing(
    make_client: Any, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Seen as a flake of the Firestore-stopped test: a lock renamed ten times while Firestore did not answer
    showed a name ten renames old once it answered (a commit from the outage applied after the one that wrote the
    last name). A commit is now taken only at the versions its pass read: the late one is refused."""
    world = build_world(make_client("devices"), sign_up)
    lock = mirror.lock_doc(world.lock_id)
    sdk = sdk_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    with late_flusher(stack_env) as (flusher, relay):
        queue((lock, "merge", {"name": "Door 1"}))
        assert flusher.flush(hand_off=False, budget_s=0.1) == 0  # no answer within the client's timeout
        assert relay.holding.is_set() and flusher.failing
        queue((lock, "merge", {"name": "Door 2"}))
        flusher.retry_now()
        assert flusher.flush(hand_off=False) == 2
        assert sdk.document(lock).get().to_dict()["name"] == "Door 2"
        assert relay.deliver() >= 400, "the late commit was applied"
        assert sdk.document(lock).get().to_dict()["name"] == "Door 2"


def test_a_collections_deletion_that_lands_late_deletes_nothing_written_since(
    make_client: Any, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """A member's access documents deleted with the lock's (a deletion whose commit did not answer in time, done
    again by the next pass) and one written again after it (the lock paired again: its new owner's): the late
    deletion deleted the new document, and its owner could not read the lock's live view until the next
    membership change. Each deletion is now taken only at the version listed."""
    world = build_world(make_client("devices"), sign_up)
    access = mirror.lock_collection(world.lock_id, "access")
    owner = mirror.access_doc(world.lock_id, world.uid("owner"))
    sdk = sdk_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    assert sdk.document(owner).get().exists
    with late_flusher(stack_env) as (flusher, relay):
        queue((access, "delete_collection", None), (owner, "set", {"role": "owner"}))
        assert flusher.flush(hand_off=False, budget_s=0.1) == 0  # the deletion's commit held: no answer in time
        assert relay.holding.is_set() and flusher.failing
        flusher.retry_now()
        assert flusher.flush(hand_off=False) == 2
        assert stored(sdk, owner) == {"role": "owner"}
        assert relay.deliver() >= 400, "the late deletion was applied"
        assert stored(sdk, owner) == {"role": "owner"}


def test_a_feed_entry_already_there_is_written_again_after_one_more_read(
    make_client: Any, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """A feed entry is written as new, without a read (``exists: false``). One that is there already (a pass whose
    commit landed after its client gave up, sent again by the next) has its commit refused; the pass reads every
    document's version and commits again, and the rows beside it in the commit are written too."""
    world = build_world(make_client("devices"), sign_up)
    sdk = sdk_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    lock = mirror.lock_doc(world.lock_id)
    entry = f"{mirror.lock_collection(world.lock_id, mirror.FEED)}/report-1"
    sdk.document(entry).set({"kind": "state", "state": "locked"})
    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    wait_for(lambda: not any(t.name == "mirror-flush" for t in threading.enumerate()), timeout=40)
    queue((entry, "set", {"kind": "state", "state": "unlocked"}), (lock, "merge", {"name": "Front door"}))
    assert rt.mirror.flush(hand_off=False) == 2 and not rt.mirror.failing
    assert sdk.document(entry).get().to_dict() == {"kind": "state", "state": "unlocked"}
    assert sdk.document(lock).get().to_dict()["name"] == "Front door"


def written_back(stack_env: dict[str, str], path: str, first: dict[str, Any], late: dict[str, Any]) -> dict[str, Any]:
    """``path`` written ``first``, then ``late`` (its commit held past the client's timeout), then ``first`` again,
    the held commit delivered last: what the document holds then, but its ``mirrored_at``."""
    queue((path, "set", first))
    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    sdk = sdk_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    with late_flusher(stack_env) as (flusher, relay):
        queue((path, "set", late))
        assert flusher.flush(hand_off=False, budget_s=0.1) == 0
        assert relay.holding.is_set()
        queue((path, "set", first))
        flusher.retry_now()
        assert flusher.flush(hand_off=False) == 2
        relay.deliver()
    found = stored(sdk, path)
    assert found is not None
    return found


def test_a_late_commit_lands_on_nothing_after_a_write_that_changed_nothing(
    make_client: Any, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """Attack run 48: Firestore keeps a document's version when a write changes nothing. A lock renamed "B" (its
    commit late) and named "A" back was written "A" at the version it had, which stayed, and the late "B" was taken
    on it; so was a guest's window widened (late) and narrowed back: they read the live view in the wider window.
    Every commit now moves its documents' versions (``mirrored_at``)."""
    world = build_world(make_client("devices"), sign_up)
    lock, name = mirror.lock_doc(world.lock_id), {"name": "A", "state": "locked"}
    assert written_back(stack_env, lock, name, {"name": "B", "state": "locked"}) == name
    access, narrow = mirror.access_doc(world.lock_id, world.uid("guest_in")), {"role": "guest", "day_end_minute": 600}
    assert written_back(stack_env, access, narrow, {"role": "guest", "day_end_minute": 1440}) == narrow
    sdk = sdk_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    assert isinstance(sdk.document(access).get().to_dict()[mirror.MIRRORED_AT], dt.datetime)


def test_a_late_commit_that_made_a_members_access_document_gives_nothing_back_after_their_removal(
    make_client: Any, sign_up: Any, stack_env: dict[str, str]
) -> None:
    """A member's access document made anew (their account enabled again after a day disabled, their ended document
    gone with its TTL: no feed entry beside it, whose own ``exists: false`` would have the late commit refused), its
    commit late, written again by the next pass; then the member removed. Deleted, their document was missing again,
    as the late commit had found it, and the late commit made it: a removed member read the lock's live view until
    the next membership change. Removal now writes over it (``mirror.access_ended``): the late commit finds it there
    and is refused."""
    world = build_world(make_client("devices"), sign_up)
    host, lock, member = stack_env["FIRESTORE_EMULATOR_HOST"], world.lock_id, world.uid("member")
    access, sdk = mirror.access_doc(lock, member), sdk_client(PROJECT_ID, stack_env["FIRESTORE_EMULATOR_HOST"])
    rt = get_runtime("devices")
    rt.flush_mirror(force=True)
    theirs = stored(sdk, access)
    assert theirs is not None and rest_get(host, f"locks/{lock}", world.accounts["member"]["idToken"]) == 200
    sdk.document(access).delete()  # ended while their account was disabled, and gone with Firestore's TTL a day on
    with late_flusher(stack_env) as (flusher, relay):
        queue((access, "set", theirs))
        assert flusher.flush(hand_off=False, budget_s=0.1) == 0  # no answer within the client's timeout
        assert relay.holding.is_set() and flusher.failing
        flusher.retry_now()
        assert flusher.flush(hand_off=False) == 1
        removed = world.devices.delete(f"/devices/locks/{lock}/members/{member}", headers=world.headers("owner"))
        assert removed.status_code == 204
        rt.flush_mirror(force=True)
        assert rt.mirror.pending() == 0
        assert rest_get(host, f"locks/{lock}", world.accounts["member"]["idToken"]) == 403
        assert relay.deliver() >= 400, "the late commit made their access document again"
    assert rest_get(host, f"locks/{lock}", world.accounts["member"]["idToken"]) == 403
    assert rest_get(host, f"locks/{lock}", world.accounts["admin"]["idToken"]) == 200
