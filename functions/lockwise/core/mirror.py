"""The Firestore mirror of what the app reads live, fed through a queue in PostgreSQL.

A change and its mirror writes commit together (``enqueue`` in the same transaction); ``flush`` writes them to
Firestore afterwards, oldest first, up to ``MAX_BATCH_WRITES`` in one commit, and deletes them once Firestore took
them. Flushes of several instances run side by side on different rows; a document's writes still land in the order
they were queued (a row waits while an older one of its document is being written elsewhere). When Firestore is
down the rows stay queued and a later flush (next request, or the relay's periodic flush) writes them: the view
converges and a Firestore outage never blocks or undoes a PostgreSQL commit.

Documents: ``locks/{lock_id}`` (state, battery, online, firmware, last_seen, name),
``locks/{lock_id}/activity/{entry_id}`` (commands, voice attempts without biometric data, membership changes),
``locks/{lock_id}/access/{uid}`` (a member's expiry and guest window, for the security rules only),
``users/{uid}`` (voice enrollment status only). Each of those but the feed's entries carries ``mirrored_at``, the
time of the commit that last wrote it (``_write``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

from lockwise.core import firestore, firestore_json, inputs
from lockwise.core.db import Connection, Database, clock

log = logging.getLogger("lockwise.core.mirror")

Op = Literal["merge", "replace_fields", "set", "delete", "delete_collection"]
#: writes per Firestore commit (its limit is 500)
MAX_BATCH_WRITES = 500
#: a request's own flush hands the rest to a background one after this long
FLUSH_BUDGET_S = 2.0
#: a background flush stops starting new commits after this long (an instance's CPU may be throttled once it has
#: answered: the relay's periodic flush writes what is left)
BACKGROUND_BUDGET_S = 30.0
BACKOFF_S = 5.0
#: documents one pass deletes of the collections whose deletion is queued (a deleted lock's feed, its members' access
#: documents), however many they are: a larger deletion takes several passes, its row queued until the collection is
#: found empty, while every other row is written between them; a request's own flush deletes none (``flush``)
#: (attack run: one pass deleted a whole feed, 30,000 entries in 38 s, and no other lock's view changed meanwhile;
#: one of 700,000, a busy lock's year, would have outlasted the 15 minutes a pass's transaction then had and started
#: again for ever; a pass now sits idle in its transaction a few Firestore calls at most, within the connections' 60 s)
DELETED_PER_PASS = 1000
#: a background flush whose rows wait behind another instance's older writes to the same documents tries again after
HELD_BACK_RETRY_S = 0.1
#: claims per pass past rows held back (each one statement and a read of the rows other flushes hold)
CLAIMS_PER_PASS = 4
#: commits of one group a pass tries while Firestore refuses them for a document's version (``_write``)
CONFLICT_TRIES = 3
#: the collection of a lock's activity feed
FEED = "activity"
#: the field each mirror write of a lock, access or user document sets to its commit's time (``_write``)
MIRRORED_AT = "mirrored_at"


#: one queued Firestore write: document path, operation, data
Write = tuple[str, Op, dict[str, Any] | None]


def enqueue(con: Connection, doc_path: str, op: Op, data: dict[str, Any] | None = None) -> None:
    enqueue_many(con, [(doc_path, op, data)])


def enqueue_many(con: Connection, writes: Sequence[Write]) -> None:
    """Queue ``writes`` in one statement; they are written to Firestore in this order. A write whose path is not
    made of ids (``doc``: a uid recorded before they were checked, such as ``V/``, whose documents would be another
    user's) is left out and logged, and holds up nothing else: raising made every membership change at a lock with
    such a member, and every clean-up of a deleted account sharing a lock with one, a 500 (attack run)."""
    taken = [all(inputs.is_document_id(part) for part in write[0].split("/")) for write in writes]
    left_out = [write[0] for write, ok in zip(writes, taken, strict=True) if not ok and write[0]]
    if left_out:  # "" is ``doc``'s, which logged its ids
        log.error("mirror writes left out: not a path of ids", extra={"fields": {"paths": left_out[:10]}})
    writes = [write for write, ok in zip(writes, taken, strict=True) if ok]
    if not writes:
        return
    con.run(
        "INSERT INTO firestore_outbox (doc_path, op, data)"
        " SELECT p, o, d FROM unnest(CAST(:p AS text[]), CAST(:o AS text[]), CAST(CAST(:d AS text[]) AS jsonb[]))"
        " WITH ORDINALITY AS w(p, o, d, n) ORDER BY n",
        p=[w[0] for w in writes],
        o=[w[1] for w in writes],
        d=[json.dumps(w[2] or {}, default=str) for w in writes],
    )


def doc(*ids: str) -> str:
    """The path of the document or collection named by ``ids`` (``doc("users", uid)``), or "" when one of them is
    not an id (``inputs.is_document_id``): a uid ``org/team/carol`` made ``users/org/team/carol``, each part an id,
    a document nobody's; ``enqueue_many`` leaves such a write out."""
    if all(inputs.is_document_id(part) for part in ids):
        return "/".join(ids)
    log.error("a mirror path with an id that is not one", extra={"fields": {"ids": list(ids)}})
    return ""


def lock_doc(lock_id: str) -> str:
    return doc("locks", lock_id)


def user_doc(uid: str) -> str:
    """What the app reads of a user itself (their enrollment status)."""
    return doc("users", uid)


def standing(uid: str, *, ended: bool, sessions_since_s: int | None, address_verified: bool) -> Write:
    """The account's standing as ``lockwise.core.accounts`` last found it, which the rules read for ``users/{uid}``:
    ``ended`` (found disabled or deleted), when its sessions were last revoked (``validSince``), and whether its
    address was seen verified (``lockwise.core.users.address_verified``: then a token naming none reads nothing,
    as the API answers it 401 token_outdated; the maker's token saw ``voice_enrolled`` flip at the owner's takeover:
    attack run 107). The user's own document was read by its uid alone: a revoked session and a disabled account
    read it for their token's hour (attack run 81). A document of its own, written whole: the user's is written
    whole by enrollment and erasure."""
    data = {"ended": ended, "sessions_since_s": sessions_since_s, "address_verified": address_verified}
    return standing_doc(uid), "set", data


def standing_doc(uid: str) -> str:
    return doc("standing", uid)


def lock_collection(lock_id: str, name: str) -> str:
    """One of the lock's collections (``activity``, ``access``): deleted with the lock."""
    return doc("locks", lock_id, name)


def access_doc(lock_id: str, uid: str) -> str:
    """A member's access to the lock, read by the security rules only (``lockwise.devices.members.mirror_access``)."""
    return doc("locks", lock_id, "access", uid)


#: how long a former member's access document stays, letting nothing be read, before Firestore deletes it (its
#: ``purge_at``: a TTL policy on the ``access`` collection group, ``infra/firestore.indexes.json``)
ENDED_ACCESS_KEPT = dt.timedelta(days=1)


def access_ended(lock_id: str, uid: str, now: dt.datetime) -> Write:
    """A former member's access document, to queue with ``enqueue_many``: written over their access, not deleted,
    so that a commit still in flight that made it (their joining, whose answer never came) finds it there and is
    refused (``_write``: a missing document is written only where it is still missing). Deleted, a late commit
    that created it landed after the deletion and gave a removed member the lock's live view again, until the next
    membership change: no version tells "never there" from "there no more". It lets nothing be read (the rules'
    ``mayRead``: expired at the epoch; no role), and Firestore deletes it after ``ENDED_ACCESS_KEPT``, long after
    any commit in flight has landed or failed."""
    purge_at = firestore_json.timestamp(now + ENDED_ACCESS_KEPT)
    return access_doc(lock_id, uid), "set", {"role": "", "expires_ms": 0, "ended": True, "purge_at": purge_at}


#: feed entries every member but a guest reads: what the lock reports of itself (its document shows the same; a guest
#: reads it there, now, not the household's comings and goings over the feed's 90 days: attack run 47)
EVERYONE_KINDS = frozenset({"state", "online", "offline"})
#: the fields of an entry that name people: an entry is read by the lock's owner and admins and by the people it names
#: (``about``), so a guest does not learn who else comes and goes, who invited whom (the API lists members to admins)
PEOPLE_FIELDS = ("actor_uid", "target_uid", "member_uid", "invited_by")


#: how long an entry stays in a lock's feed: Firestore deletes it once its ``expires_at`` has passed (a TTL policy on
#: the ``activity`` collection group, ``infra/firestore.indexes.json``, within a day or so of that time). A feed grew
#: without end: a lock may list ~57,600 reports and refused attempts a day (attack run), all kept, read by nobody
#: past the app's last screens, and deleted in one go with the lock (``DELETED_PER_PASS``). The attempts log and the
#: audit log in PostgreSQL keep their own time.
FEED_KEPT = dt.timedelta(days=90)


def activity_entry(lock_id: str, kind: str, at: dt.datetime, *, entry_id: str | None = None, **fields: Any) -> Write:
    """A new entry of the lock's activity feed (never biometric data), to queue with ``enqueue_many``; its
    ``audience`` and ``about`` say who reads it (``infra/firestore.rules``), its ``expires_at`` when Firestore
    deletes it (``FEED_KEPT``). ``entry_id``: the document's id when the same event may come again and must stay
    one entry (a lock's report, by its own time); a random one if not. ``at``: when, on the database's clock or an
    instance's set by it (``lockwise.core.db_clock``, within a round trip's half): each instance's entries of one
    lock sort in one order (on their own clocks, an ack was listed before its command when the instance that took
    it ran a second behind the one that made it)."""
    about = sorted({uid for name in PEOPLE_FIELDS if isinstance(uid := fields.get(name), str)})
    audience = "everyone" if kind in EVERYONE_KINDS else "admins"
    expires = firestore_json.timestamp(at + FEED_KEPT)
    # "at" to the millisecond: entries of one second (a command, its ack) sort in the order they happened
    data = {
        "kind": kind,
        "at": firestore_json.iso_ms(at),
        **fields,
        "audience": audience,
        "about": about,
        "expires_at": expires,
    }
    return doc("locks", lock_id, FEED, entry_id or str(uuid.uuid4())), "set", data


def activity(con: Connection, lock_id: str, kind: str, *, at: dt.datetime | None = None, **fields: Any) -> None:
    """Add an entry to the lock's activity feed (never biometric data), made ``at`` (the database's clock, read now
    when not given)."""
    enqueue_many(con, [activity_entry(lock_id, kind, clock(con) if at is None else at, **fields)])


#: a write that can never be taken: Firestore refused it (400), or it could not even be made into one
REFUSED = (firestore.FirestoreRefused, TypeError, ValueError)


class _Deleted(NamedTuple):
    """What a pass did of a collection's deletion (``Flusher._delete``)."""

    written: int  # rows taken off the queue: its own, once the collection was found empty
    stopped: bool  # Firestore failed: the pass stops, its rows stay queued in order
    left: bool  # documents may be left: the row stays queued, and writes into the collection wait behind it
    deleted: int  # documents deleted


class Flusher:
    """Writes queued rows to Firestore; after a failure it waits ``BACKOFF_S`` before trying again."""

    def __init__(self, db: Database, make_client: Callable[[], firestore.Client]) -> None:
        self.db = db
        self._make_client = make_client
        self._client: firestore.Client | None = None
        self._retry_at = 0.0
        self._failing = False  # Firestore's last answer was a failure (not a refusal), or none came
        self._lock = threading.Lock()
        self._wanted = threading.Event()  # rows were queued since the last pass began
        self._making = threading.Lock()  # one client made, by one thread

    def client(self) -> firestore.Client:
        """The Firestore client, made on first use (a failed request closes its own connection: the client stays), by
        one thread: a health report's probe and a flush both made one (attack run 96), each looking up the
        credentials, the one not kept holding its connections until collected."""
        client = self._client
        if client is None:
            with self._making:
                if self._client is None:
                    self._client = self._make_client()
                client = self._client
        return client

    def retry_now(self) -> None:
        self._retry_at = 0.0

    @property
    def failing(self) -> bool:
        """Whether Firestore's last answer to this instance was a failure (it was away, or did not answer in time),
        not yet followed by one that was not: whoever does not want to wait for it leaves the writes to
        ``flush_soon``."""
        return self._failing

    def flush(
        self,
        limit: int = MAX_BATCH_WRITES,
        budget_s: float = FLUSH_BUDGET_S,
        *,
        hand_off: bool = True,
        deletes: bool = True,
    ) -> int:
        """Write queued rows, ``limit`` per commit, until none are left; return how many were written. Never raises
        for Firestore errors. A call while another thread is flushing returns at once and hands its rows to that
        thread, which makes one more pass for them. Once ``budget_s`` has passed no new pass starts, and with
        ``hand_off`` a background flush (``flush_soon``) takes over the rest: rows queued during a flood are written
        as soon as Firestore takes them, not at the relay's next periodic flush (measured: a relay benchmark's last
        reports of a flood waited 6-10 s in the queue, most of such a run's time). Without ``deletes`` (a request's
        own flush) a collection's deletion is left to a background flush, which this one starts: a request whose
        flush found a long feed's deletion queued first paid for a part of it (``DELETED_PER_PASS``: seconds)."""
        written = 0
        deadline = time.monotonic() + budget_s
        self._wanted.set()
        while self._wanted.is_set() and time.monotonic() >= self._retry_at:
            if time.monotonic() >= deadline:
                if hand_off:
                    self.flush_soon()
                return written
            if not self._lock.acquire(blocking=False):
                return written  # the thread holding the lock checks _wanted after its pass
            try:
                self._wanted.clear()
                passed, held_back, unfinished = self._flush(limit, DELETED_PER_PASS if deletes else 0)
                written += passed
                if held_back or (unfinished and deletes) or passed >= limit:
                    self._wanted.set()
            finally:
                self._lock.release()
            if unfinished and not deletes:
                self.flush_soon()  # the deletion, in the background (the relay's periodic flush also does it)
            if held_back:  # another instance is writing older rows of the same documents: theirs go first
                if hand_off:
                    self.flush_soon()  # a request does not wait for them
                    return written
                time.sleep(HELD_BACK_RETRY_S)
        return written

    def flush_soon(self) -> None:
        """Flush in a background thread, for up to ``BACKGROUND_BUDGET_S`` (rows stay queued in PostgreSQL until
        written, so an instance throttled after its response loses nothing)."""
        kwargs = {"budget_s": BACKGROUND_BUDGET_S, "hand_off": False}
        threading.Thread(target=self.flush, kwargs=kwargs, name="mirror-flush", daemon=True).start()

    def _flush(self, limit: int, to_delete: int) -> tuple[int, int, bool]:
        """One pass: claim up to ``limit`` rows and write them, deleting about ``to_delete`` documents of the
        collections whose deletion is queued, whichever their number; return how many rows were written, how many
        were held back behind another flush's older rows of the same documents, and whether a collection's deletion
        was left for another pass."""
        written = 0
        unfinished: list[str] = []  # collections whose deletion this pass did not finish (or begin)
        with self.db.transaction() as con:
            rows, held = self._claim(con, limit)
            if not rows:
                return 0, len(held), False
            try:
                client = self.client()
            except Exception as exc:  # noqa: BLE001 - no client, nothing written; rows stay queued
                self._failed(con, rows[0][0], exc)
                return 0, len(held), False
            for group in _groups(rows):
                # a write into a collection still being deleted waits (queued) for the deletion, as across flushes
                group = [row for row in group if not _inside(str(row[1]), unfinished)]
                if not group:
                    continue
                if group[0][2] == "delete_collection":
                    step = self._delete(con, client, group[0], to_delete)
                    done, stopped, to_delete = step.written, step.stopped, to_delete - step.deleted
                    if step.left:
                        unfinished.append(str(group[0][1]))
                else:
                    done, stopped = self._settle(con, client, group)
                written += done
                if stopped:
                    break
        return written, len(held), bool(unfinished)

    def _claim(self, con: Connection, limit: int) -> tuple[list[list[Any]], set[int]]:
        """Up to ``limit`` rows this pass may write, oldest first, and the ids of those it claimed but holds back.
        Rows held back do not count: it claims further, up to ``CLAIMS_PER_PASS`` times, so that other documents'
        rows behind them are written (attack run: 500 rows of one document behind another instance's slow flush
        filled every pass, and no other lock's view changed meanwhile)."""
        claimed: list[list[Any]] = []
        held: set[int] = set()
        for _ in range(CLAIMS_PER_PASS):
            more = con.run(
                "SELECT id, doc_path, op, data FROM firestore_outbox WHERE refused_at IS NULL"
                " AND NOT (id = ANY(:mine)) ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED",
                mine=[row[0] for row in claimed],
                n=limit - (len(claimed) - len(held)),
            )
            if not more:
                break
            claimed = sorted(claimed + more, key=lambda row: int(row[0]))
            held = _held_back(claimed, _claimed_elsewhere(con, claimed))
            if not held or len(claimed) - len(held) >= limit:
                break
        return [row for row in claimed if row[0] not in held], held

    def _settle(self, con: Connection, client: firestore.Client, group: list[list[Any]]) -> tuple[int, bool]:
        """Write ``group`` in one commit and take its rows off the queue; if Firestore refuses it, write its halves the
        same way, down to the rows it refuses alone, which are set aside (``refused_at``): one bad row never holds up
        every lock's view (attack run: a uid Firestore refuses as a document name froze the mirror), and finding it
        costs about two commits per halving. Returns how many were written, and whether another error (Firestore
        away: keep the order, retry later) stopped it."""
        try:
            _write(client, group)
        except REFUSED as exc:
            self._failing = False  # it answered
            if len(group) == 1:
                self._set_aside(con, group[0], exc)
                return 0, False
            written = 0
            for half in (group[: len(group) // 2], group[len(group) // 2 :]):
                done, stopped = self._settle(con, client, half)
                written += done
                if stopped:
                    return written, True
            return written, False
        except Exception as exc:  # noqa: BLE001 - Firestore errors come in many types; keep order, retry later
            self._failed(con, group[0][0], exc)
            return 0, True
        self._failing = False
        con.run("DELETE FROM firestore_outbox WHERE id = ANY(:ids)", ids=[row[0] for row in group])
        return len(group), False

    def _delete(self, con: Connection, client: firestore.Client, row: list[Any], most: int) -> _Deleted:
        """Some of a collection's deletion, about ``most`` documents (none: it only keeps its place). Its row is taken
        off the queue once the collection is found empty (or set aside if Firestore refuses it); otherwise a later
        pass deletes further."""
        if most <= 0:
            return _Deleted(0, False, True, 0)
        try:
            deleted, finished = _delete_some(client, str(row[1]), most)
        except REFUSED as exc:
            self._failing = False  # it answered
            self._set_aside(con, row, exc)
            return _Deleted(0, False, False, 0)
        except Exception as exc:  # noqa: BLE001 - Firestore errors come in many types; keep order, retry later
            self._failed(con, row[0], exc)
            return _Deleted(0, True, False, 0)
        self._failing = False
        if not finished:
            return _Deleted(0, False, True, deleted)
        con.run("DELETE FROM firestore_outbox WHERE id = :i", i=row[0])
        return _Deleted(1, False, False, deleted)

    def _set_aside(self, con: Connection, row: list[Any], exc: Exception) -> None:
        """A row Firestore refuses on its own: kept for an operator, never tried again."""
        con.run(
            "UPDATE firestore_outbox SET refused_at = now(), attempts = attempts + 1, last_error = :e WHERE id = :i",
            i=row[0],
            e=f"{type(exc).__name__}: {exc}"[:500],
        )
        log.error("firestore refused a mirror write; set aside", extra={"fields": {"doc_path": row[1]}})

    def _failed(self, con: Connection, row_id: int, exc: Exception) -> None:
        self._retry_at = time.monotonic() + BACKOFF_S
        self._failing = True
        con.run(
            "UPDATE firestore_outbox SET attempts = attempts + 1, last_error = :e WHERE id = :i",
            i=row_id,
            e=f"{type(exc).__name__}: {exc}"[:500],
        )
        log.warning("firestore mirror write failed; queued for retry", extra={"fields": {"error": type(exc).__name__}})

    def pending(self) -> int:
        with self.db.connection() as con:
            return int(con.run("SELECT count(*) FROM firestore_outbox WHERE refused_at IS NULL")[0][0])


def _claimed_elsewhere(con: Connection, rows: list[list[Any]]) -> list[tuple[int, str, str]]:
    """The queued rows older than the newest of ``rows`` that this flush did not claim: another instance's flush holds
    them (``SKIP LOCKED`` passed over them), or their transaction committed after this one's began."""
    ids = [row[0] for row in rows]
    found = con.run(
        "SELECT id, doc_path, op FROM firestore_outbox WHERE id < :top AND refused_at IS NULL AND NOT (id = ANY(:ids))"
        " ORDER BY id",
        top=max(ids),
        ids=ids,
    )
    return [(int(i), str(path), str(op)) for i, path, op in found]


def _held_back(rows: list[list[Any]], elsewhere: list[tuple[int, str, str]]) -> set[int]:
    """The ids of ``rows`` that must wait: an older write to the same document, or a collection's deletion that holds
    it or is held by it, is not written yet (in ``elsewhere``, or held back itself). Two instances' flushes commit to
    Firestore in either order, so writing them now could let the older land last (attack run: a removed member's
    access document deleted, then set again by a slower flush, let them read the lock's live view until the next
    membership change). Writes to other documents do not wait."""
    if not elsewhere:
        return set()
    mine = {int(row[0]) for row in rows}
    waiting_docs: set[str] = set()
    waiting_collections: list[str] = []
    held: set[int] = set()
    for row_id, path, op in sorted([(int(r[0]), str(r[1]), str(r[2])) for r in rows] + elsewhere):
        if row_id in mine:
            behind = (
                path in waiting_docs
                or _inside(path, waiting_collections)
                or (op == "delete_collection" and any(d.startswith(f"{path}/") for d in waiting_docs))
            )
            if not behind:
                continue
            held.add(row_id)
        waiting_docs.add(path)
        if op == "delete_collection":
            waiting_collections.append(path)
    return held


def _groups(rows: list[list[Any]]) -> list[list[list[Any]]]:
    """Consecutive rows in commit-sized groups, in queue order; a ``delete_collection`` row stands alone (it reads
    the collection before deleting it)."""
    groups: list[list[list[Any]]] = []
    for row in rows:
        alone = row[2] == "delete_collection"
        if alone or not groups or len(groups[-1]) >= MAX_BATCH_WRITES or groups[-1][0][2] == "delete_collection":
            groups.append([row])
        else:
            groups[-1].append(row)
    return groups


def _write(client: firestore.Client, group: list[list[Any]]) -> None:
    """One commit for the group (Firestore applies a commit's writes in order, all or none), each document's first
    write taken only at the version this pass read it at (``firestore_json.at_version``).

    A commit whose answer never came (the client's timeout) may still be applied later, after the commit that sent
    its rows again with newer ones: it undid them (seen: a lock's name back to one ten renames old, until the next
    rename; an access document deleted, then set again by the late commit, would let a removed member read the
    lock's live view). Conditioned on the version read, a commit that lands after another one changed its
    documents is refused. Every commit moves the version of each document it writes (``MIRRORED_AT``, the commit's
    time): a write that changed nothing (a lock renamed and named back, a guest's window widened and narrowed back)
    kept it, and the late commit conditioned on it was taken (attack run 48). A feed entry (a new id each) is
    written as new without a read; a pass whose commit is refused reads every document's version again, its
    entries' too, and commits again (``CONFLICT_TRIES``)."""
    writes = _coalesced(group)
    firsts = _first_writes(writes)
    read = [writes[i][0] for i in firsts if not _is_feed_entry(writes[i][0])]
    stamped = _stamped_writes(writes)
    for tries_left in range(CONFLICT_TRIES, 0, -1):
        versions = client.versions(read)
        rest = [_rest_write(client.name(path), op, data) for path, op, data in writes]
        for i in firsts:
            rest[i] = firestore_json.at_version(rest[i], versions.get(writes[i][0]))
        for i in stamped:
            rest[i] = firestore_json.stamped(rest[i], MIRRORED_AT)
        try:
            client.commit(rest)
            return
        except firestore.FirestoreConflict:
            if tries_left == 1:
                raise
            read = [writes[i][0] for i in firsts]


def _first_writes(writes: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
    """The index of each document's first write (a later one in the same commit meets the version it left)."""
    seen: set[str] = set()
    firsts: list[int] = []
    for i, (path, _op, _data) in enumerate(writes):
        if path not in seen:
            seen.add(path)
            firsts.append(i)
    return firsts


#: writes that leave ``mirrored_at`` as it is: a deletion, and the lock document's emptied maps, written again on
#: every membership change (``members.mirror_access``): stamped, they told every reader of the lock document when
#: others came and went, and at each edge of another guest's window (attack run 49); a write of its own rows is
#: stamped when sent again, so a late commit still finds the version moved
UNSTAMPED_OPS = frozenset({"delete", "replace_fields"})


def _stamped_writes(writes: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
    """The index of each lock, access or user document's last write that sets ``MIRRORED_AT``."""
    last = {path: i for i, (path, op, _data) in enumerate(writes) if op not in UNSTAMPED_OPS}
    return sorted(i for path, i in last.items() if not _is_feed_entry(path))


def _is_feed_entry(path: str) -> bool:
    """An entry of a lock's activity feed: written once under a new id (``activity_entry``)."""
    parts = path.split("/")
    return len(parts) == 4 and parts[0] == "locks" and parts[2] == FEED


def _coalesced(group: list[list[Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The group's writes, with the flat ``merge`` writes to one document since its last other write combined into
    the first (later values win): what the document holds after the commit is the same, in fewer writes (a lock
    reporting its state 50 times in a batch is one lock document write and 50 feed entries). Writes to different
    documents are independent within one atomic commit, so only each document's own order matters."""
    writes: list[tuple[str, str, dict[str, Any]]] = []
    open_merge: dict[str, int] = {}  # document -> index of its merge that later flat merges fold into
    for _row_id, raw_path, raw_op, raw in group:
        path, op = str(raw_path), str(raw_op)
        data = raw if isinstance(raw, dict) else json.loads(raw)
        flat = op == "merge" and not any(isinstance(v, dict) for v in data.values())
        if flat and path in open_merge:
            index = open_merge[path]
            writes[index] = (path, op, {**writes[index][2], **data})
            continue
        open_merge.pop(path, None)
        if flat:
            open_merge[path] = len(writes)
        writes.append((path, op, data))
    return writes


def _delete_some(client: firestore.Client, path: str, most: int) -> tuple[int, bool]:
    """Delete about ``most`` documents of the collection at ``path``, a page at a time (Firestore may list fewer
    than asked while more are left): how many were deleted, and whether it was then found empty."""
    deleted = 0
    while deleted < most:
        listed = client.list_versions(path, min(MAX_BATCH_WRITES, most - deleted))
        if not listed:
            return deleted, True
        # each at the version listed: a deletion that lands late never deletes what was written since
        client.commit([firestore_json.at_version(firestore_json.delete_write(n), v) for n, v in listed])
        deleted += len(listed)
    return deleted, False


def _inside(path: str, collections: list[str]) -> bool:
    return any(path == c or path.startswith(f"{c}/") for c in collections)


def _rest_write(name: str, op: str, data: dict[str, Any]) -> dict[str, Any]:
    if op == "delete":
        return firestore_json.delete_write(name)
    if op == "set":
        return firestore_json.set_write(name, data)
    if op == "replace_fields":  # these top-level fields whole (a map loses the keys it no longer has)
        return firestore_json.replace_fields_write(name, data)
    return firestore_json.merge_write(name, data)
