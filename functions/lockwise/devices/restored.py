"""After the database is restored to an earlier point: what the restore took back, done again.

Restored to an hour ago (Cloud SQL's point-in-time recovery, a nightly dump), the database had forgotten that hour's
revocations while Firebase Auth, Firestore, the broker and the locks had not: a replaced device was the lock again
and its certificate went off the revocation list the broker reloads, a removed member unlocked again, a withdrawn
invitation could be accepted, a lock handed on was its former owner's, an erased voice opened doors (attack run 83).

Every such change writes a journal entry to Firestore in its own transaction (migration 0071: ``journal/{key}``,
kept 35 days) and keeps the entry's key in ``journal_entries``. ``run``, called by an operator once the restored
database serves (``POST /devices/operator/restored``), fences the locks' signed requests dated before it (their
nonces may be among those taken back), has every account checked again with Firebase Auth at the next sweeps, and
does again each entry Firestore has whose key the database does not: exactly the ones committed after the restore
point. Each is done in its own transaction with its key, so a run cut short is run again and takes up where it was.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lockwise.core import audit, erasure, firestore, inputs
from lockwise.core.db import Connection, Database
from lockwise.devices import locks, members, transfer_offers

#: the journal's collection in Firestore (written by migration 0071's ``journal()``, read by the back-end only)
JOURNAL = "journal"
#: documents read a page
PAGE = 300
#: access documents' names read a page
ACCESS_PAGE = 500
#: what ``mirrored_access`` is told each access document found in Firestore holds: no member's access is this, so
#: ``members.mirror_access`` writes every current member's again and ends every other's
FOUND_IN_FIRESTORE = {"found_after_restore": True}
#: how long one run does entries again before it answers (the rest: the next run)
BUDGET_S = 20.0
#: who the audit log and the feed name for what a run does again
ACTOR = "system:restore"
#: what a lock's feed says ended an offer done again
OFFER_ENDED = "ended_before_restore"

_SERIAL_CHARS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str
    at: dt.datetime
    body: dict[str, Any]

    def text(self, name: str) -> str:
        value = self.body.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{self.kind} entry {self.key} has no {name}")
        return value

    def lock_id(self) -> str:
        lock_id = inputs.canonical_uuid(self.body.get("lock_id"))
        if lock_id is None:
            raise ValueError(f"{self.kind} entry {self.key} has no lock id")
        return lock_id


@dataclass
class Report:
    fenced_at: dt.datetime
    accounts_to_check: int
    read: int = 0
    redone: dict[str, int] = field(default_factory=dict)
    unchanged: int = 0
    unreadable: int = 0
    left: int = 0
    #: locks whose hand-over to a new owner could not be done again (that owner is no member in the database)
    hand_over: list[str] = field(default_factory=list)
    #: locks whose access documents were written again, locks the database does not have whose documents went, and
    #: locks left for the next run
    access_mirrored: int = 0
    access_deleted: int = 0
    access_left: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "fenced_at": self.fenced_at.isoformat(),
            "accounts_to_check": self.accounts_to_check,
            "journal": {
                "read": self.read,
                "redone": dict(sorted(self.redone.items())),
                "unchanged": self.unchanged,
                "unreadable": self.unreadable,
                "left": self.left,
            },
            "hand_over": sorted(set(self.hand_over)),
            "access": {"mirrored": self.access_mirrored, "deleted": self.access_deleted, "left": self.access_left},
        }


def run(db: Database, client: firestore.Client, now: Callable[[], dt.datetime], budget_s: float = BUDGET_S) -> Report:
    """Fence, have every account checked again, and do again the journal's entries the database lacks, oldest first,
    within ``budget_s`` (``Report.left`` says how many wait for the next run)."""
    with db.transaction() as con:
        report = Report(fence(con), _recheck_accounts(con))
    entries, report.unreadable = _entries(client, now())
    report.read = len(entries)
    deadline = time.monotonic() + budget_s
    for i, entry in enumerate(_missing(db, entries)):
        if time.monotonic() > deadline:
            report.left = len(entries) - i
            break
        with db.transaction() as con:
            if not _claim(con, entry):  # another run did it meanwhile
                continue
            try:
                done = redo(con, entry, report.hand_over)
            except ValueError:  # a field it needs is missing (none of its changes made: each reads its fields first)
                report.unreadable += 1
                continue
        if done:
            report.redone[entry.kind] = report.redone.get(entry.kind, 0) + 1
        else:
            report.unchanged += 1
    if not report.left:
        _mirror_access_again(db, client, report, deadline)
    return report


def _mirror_access_again(db: Database, client: firestore.Client, report: Report, deadline: float) -> None:
    """Each access document Firestore has checked against the memberships the database has: the mirror ends only
    the ones its record names, and the restored record did not name those written after the restore point (a
    member who joined then read the live view for good, one made owner then read the whole feed: attack run 83).
    Every lock's documents are written again and every other member's ended; a lock the database does not have
    (made after the restore point) has its documents deleted."""
    found = _access_documents(client)
    for i, (lock_id, uids) in enumerate(sorted(found.items())):
        if time.monotonic() > deadline:
            report.access_left = len(found) - i
            return
        with db.transaction() as con:
            if not con.run("SELECT 1 FROM locks WHERE id = CAST(:l AS uuid)", l=lock_id):
                locks.delete_mirrored(con, lock_id)
                report.access_deleted += 1
                continue
            con.run(
                "INSERT INTO mirrored_access (lock_id, user_uid, access)"
                " SELECT CAST(:l AS uuid), u, CAST(:a AS jsonb) FROM unnest(CAST(:u AS text[])) AS u"
                " ON CONFLICT (lock_id, user_uid) DO UPDATE SET access = EXCLUDED.access",
                l=lock_id,
                u=sorted(uids),
                a=json.dumps(FOUND_IN_FIRESTORE),
            )
            members.mirror_access(con, lock_id)
            report.access_mirrored += 1


def _access_documents(client: firestore.Client) -> dict[str, set[str]]:
    """Every access document in Firestore (``locks/{lock}/access/{uid}``): the uids by lock id."""
    found: dict[str, set[str]] = {}
    after: str | None = None
    while True:
        names = client.group_names("access", ACCESS_PAGE, after)
        for name in names:
            parts = name.split("/documents/", 1)[-1].split("/")
            if len(parts) == 4 and parts[0] == "locks" and parts[2] == "access":
                if inputs.canonical_uuid(parts[1]) == parts[1]:
                    found.setdefault(parts[1], set()).add(parts[3])
        if len(names) < ACCESS_PAGE:
            return found
        after = names[-1]


def fence(con: Connection) -> dt.datetime:
    """A lock's signed request dated before now is refused from here (``lock_auth.authenticate``)."""
    ((at,),) = con.run("INSERT INTO database_restores (fenced_at) VALUES (clock_timestamp()) RETURNING fenced_at")
    return at  # type: ignore[no-any-return]


def _recheck_accounts(con: Connection) -> int:
    """Every account asked of Firebase Auth again at the next sweeps (``lockwise.core.accounts``): one deleted,
    disabled or signed out everywhere after the restore point is found so then, not at its hourly recheck."""
    return len(con.run("UPDATE users SET account_checked_at = NULL WHERE account_checked_at IS NOT NULL RETURNING 1"))


def _entries(client: firestore.Client, now: dt.datetime) -> tuple[list[Entry], int]:
    """The journal's entries not yet expired (Firestore's TTL deletes them up to a day late), oldest first, and how
    many could not be read."""
    entries: list[Entry] = []
    unreadable = 0
    for key, body in _documents(client):
        entry = _entry(key, body)
        if entry is None:
            unreadable += 1
        elif _expires(body) > now:
            entries.append(entry)
    return sorted(entries, key=lambda e: (e.at, e.key)), unreadable


def _documents(client: firestore.Client) -> Iterator[tuple[str, dict[str, Any]]]:
    token: str | None = None
    while True:
        docs, token = client.list_documents(JOURNAL, PAGE, token)
        yield from docs
        if token is None:
            return


def _entry(key: str, body: dict[str, Any]) -> Entry | None:
    kind, at = body.get("kind"), body.get("at")
    if inputs.canonical_uuid(key) != key or kind not in REDO or not isinstance(at, str):
        return None
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        return None
    return Entry(key, kind, when if when.tzinfo else when.replace(tzinfo=dt.UTC), body)


def _expires(body: dict[str, Any]) -> dt.datetime:
    value = body.get("expires_at")
    try:
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else dt.datetime.max.replace(tzinfo=dt.UTC)
    except ValueError:
        return dt.datetime.max.replace(tzinfo=dt.UTC)


def _missing(db: Database, entries: list[Entry]) -> list[Entry]:
    """The entries whose keys the database does not keep: committed after the restore point."""
    kept: set[str] = set()
    with db.connection() as con:
        for start in range(0, len(entries), 1000):
            keys = [e.key for e in entries[start : start + 1000]]
            kept |= {
                str(row[0])
                for row in con.run("SELECT key::text FROM journal_entries WHERE key = ANY(CAST(:k AS uuid[]))", k=keys)
            }
    return [e for e in entries if e.key not in kept]


def _claim(con: Connection, entry: Entry) -> bool:
    """Keep the entry's key (it is done with this transaction), unless another run has."""
    return bool(
        con.run(
            "INSERT INTO journal_entries (key, at, expires_at)"
            " VALUES (CAST(:k AS uuid), CAST(:at AS timestamptz), CAST(:at AS timestamptz) + interval '37 days')"
            " ON CONFLICT DO NOTHING RETURNING 1",
            k=entry.key,
            at=entry.at,
        )
    )


def redo(con: Connection, entry: Entry, hand_over_left: list[str]) -> bool:
    """Do ``entry`` again; False when the database already shows it (or nothing is left to do it to). A lock whose
    hand-over cannot be done again is added to ``hand_over_left``."""
    done = REDO[entry.kind](con, entry, hand_over_left)
    if done:
        lock_id = inputs.canonical_uuid(entry.body.get("lock_id"))
        target = entry.body.get("uid") or entry.body.get("to_uid")
        audit.record(
            con,
            ACTOR,
            f"restore.{entry.kind}",
            "ok",
            lock_id=lock_id,
            target=target if isinstance(target, str) else None,
            details={"journal_key": entry.key, "at": entry.at.isoformat()},
        )
    return done


def _credential_revoked(con: Connection, entry: Entry, _left: list[str]) -> bool:
    """The credential revoked again (its device refused, told to pair again), and each of its certificates listed
    again: one issued after the restore point is unknown to the database and goes on the list from the entry."""
    listed = 0
    certificates = entry.body.get("certificates")
    for cert in certificates if isinstance(certificates, list) else []:
        serial, not_after = (cert.get("serial"), cert.get("not_after")) if isinstance(cert, dict) else (None, None)
        if not (isinstance(serial, str) and 0 < len(serial) <= 40 and set(serial) <= _SERIAL_CHARS):
            continue
        if not isinstance(not_after, str):
            continue
        listed += len(
            con.run(
                "INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)"
                " SELECT :s, :at, CAST(:n AS timestamptz) WHERE CAST(:n AS timestamptz) > now()"
                " ON CONFLICT DO NOTHING RETURNING 1",
                s=serial,
                at=entry.at,
                n=not_after,
            )
        )
    credential = inputs.canonical_uuid(entry.body.get("credential_id"))
    revoked = credential is not None and bool(
        con.run(
            "UPDATE lock_credentials SET revoked_at = :at WHERE id = CAST(:c AS uuid) AND revoked_at IS NULL"
            " RETURNING 1",
            c=credential,
            at=entry.at,
        )
    )
    return revoked or listed > 0


def _membership_ended(con: Connection, entry: Entry, _left: list[str]) -> bool:
    """The membership ended again, as its removal ends one (its invitations, the offer naming it, its unsent
    commands, its access in the live view). An owner's ends with the lock's deletion or hand-over, done on their own
    entries."""
    lock_id, uid = entry.lock_id(), entry.text("uid")
    target = members.get(con, lock_id, uid, for_update=True)
    if target is None or target.revoked_at is not None or target.role == "owner":
        return False
    locks.revoke_member(con, lock_id, target, target, entry.at, by=ACTOR, reason="restored")
    return True


def _lock_deleted(con: Connection, entry: Entry, _left: list[str]) -> bool:
    lock_id, owner_uid = entry.lock_id(), entry.text("owner_uid")
    if not con.run("SELECT 1 FROM locks WHERE id = CAST(:l AS uuid) FOR UPDATE", l=lock_id):
        return False
    locks.delete(con, lock_id, owner_uid, actor=ACTOR)
    return True


def _owner_changed(con: Connection, entry: Entry, hand_over_left: list[str]) -> bool:
    """The lock handed to its new owner again, when the database still has it with the one before and the new
    owner as a member; otherwise (they joined after the restore point) it is listed for an operator
    (``Report.hand_over``): its former owner keeps it until then."""
    lock_id, from_uid, to_uid = entry.lock_id(), entry.text("from_uid"), entry.text("to_uid")
    owner = con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid) FOR UPDATE", l=lock_id)
    if not owner or owner[0][0] != from_uid:
        return False
    taker = members.get(con, lock_id, to_uid, for_update=True)
    if taker is None or taker.revoked_at is not None:
        hand_over_left.append(lock_id)
        return False
    locks.hand_over(con, lock_id, from_uid, to_uid, None, actor=ACTOR)  # the limit was met when it was done
    return True


def _invitation_closed(con: Connection, entry: Entry, _left: list[str]) -> bool:
    invitation = inputs.canonical_uuid(entry.body.get("invitation_id"))
    return invitation is not None and bool(
        con.run(
            "UPDATE invitations SET closed_at = :at WHERE id = CAST(:i AS uuid) AND closed_at IS NULL"
            " AND accepted_at IS NULL RETURNING 1",
            i=invitation,
            at=entry.at,
        )
    )


def _offer_closed(con: Connection, entry: Entry, _left: list[str]) -> bool:
    return transfer_offers.end_offered(con, entry.lock_id(), entry.text("offered_at"), OFFER_ENDED) > 0


def _voice_erased(con: Connection, entry: Entry, _left: list[str]) -> bool:
    uid = entry.text("uid")
    if not con.run("SELECT 1 FROM voiceprints WHERE user_uid = :u AND created_at < :at LIMIT 1", u=uid, at=entry.at):
        return False
    reason = entry.body.get("reason")
    erasure.forget_voice(con, uid, reason if reason in ("address_verified", "account_gone") else "requested")
    return True


REDO: dict[str, Callable[[Connection, Entry, list[str]], bool]] = {
    "credential_revoked": _credential_revoked,
    "membership_ended": _membership_ended,
    "lock_deleted": _lock_deleted,
    "owner_changed": _owner_changed,
    "invitation_closed": _invitation_closed,
    "offer_closed": _offer_closed,
    "voice_erased": _voice_erased,
}
