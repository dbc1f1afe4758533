"""After the database is restored to an earlier point: what the restore took back, done again.

Restored to an hour ago (Cloud SQL's point-in-time recovery, a nightly dump), the database had forgotten that hour's
revocations while Firebase Auth, Firestore, the broker and the locks had not: a replaced device was the lock again
and its certificate went off the revocation list the broker reloads, a removed or paused member unlocked again, a
withdrawn invitation could be accepted, a lock handed on was its former owner's, an erased voice opened doors
(attack runs 83 and 84).

Every such change writes a journal entry to Firestore in its own transaction (migration 0071: ``journal/{key}``,
kept 35 days) and keeps the entry's key in ``journal_entries``. ``do_again``, called by an operator once the restored
database serves (``POST /devices/operator/restored``), fences the locks' signed requests dated before it (their
nonces may be among those taken back) and makes every account checked before it due a check with Firebase Auth
(``lockwise.core.accounts``); then, each step taking up where the run before stopped (``database_restores``):
it takes the accounts' standing as Firestore has it (``standing/{uid}``: one disabled or signed out everywhere since
the restore point is so at once, not at its recheck), does again, oldest first, each journal entry whose key the
database does not keep (exactly the ones committed after the restore point: each in its own transaction with its
key, so none is done twice), and checks every access document of the live view against the memberships.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lockwise.core import audit, erasure, firestore, inputs, mirror, retention
from lockwise.core.db import Connection, Database
from lockwise.devices import commands, door_decisions, lock_auth, locks, members, transfer_offers

#: the journal's collection in Firestore (written by migration 0071's ``journal()``, read by the back-end only)
JOURNAL = "journal"
#: documents read a page
PAGE = 300
#: what ``mirrored_access`` is told each access document found in Firestore holds: no member's access is this, so
#: ``members.mirror_access`` writes every current member's again and ends every other's
FOUND_IN_FIRESTORE = {"found_after_restore": True}
#: how long one run works before it answers (the rest: the next run)
BUDGET_S = 20.0
#: who the audit log and the feed name for what a run does again
ACTOR = "system:restore"
#: what a lock's feed says ended an offer done again
OFFER_ENDED = "ended_before_restore"
#: the journal is read whole, from this long before the first run (the entries the database keeps are passed over in
#: a statement a page): read from an hour before the newest key the restored database kept, any change made after
#: it served again (a lock's renewal) moved the start past every entry lost with an older restore point (attack run
#: 85)
JOURNAL_READ_BACK = dt.timedelta(days=36)
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
    accounts_to_check: int = 0
    standing: int = 0
    read: int = 0
    redone: dict[str, int] = field(default_factory=dict)
    unchanged: int = 0
    unreadable: int = 0
    access_mirrored: int = 0
    access_deleted: int = 0
    done: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "fenced_at": self.fenced_at.isoformat(),
            "accounts_to_check": self.accounts_to_check,
            "standing": self.standing,
            "journal": {
                "read": self.read,
                "redone": dict(sorted(self.redone.items())),
                "unchanged": self.unchanged,
                "unreadable": self.unreadable,
            },
            "access": {"mirrored": self.access_mirrored, "deleted": self.access_deleted},
            "more": not self.done,
        }


def do_again(db: Database, client: firestore.Client, operator: str, budget_s: float = BUDGET_S) -> Report:
    """One run of the restore's work, within ``budget_s`` (``Report.done``: nothing is left; else run again). The
    first after a done one fences anew. Audited as ``operator``'s."""
    deadline = time.monotonic() + budget_s
    with db.transaction() as con:
        fenced_at = _open(con)
        ((accounts,),) = con.run("SELECT count(*) FROM users WHERE account_checked_at < :f", f=fenced_at)
    report = Report(fenced_at, accounts_to_check=int(accounts))
    if _standing(db, client, report, deadline) and _journal(db, client, report, deadline):
        report.done = _access(db, client, report, deadline)
    with db.transaction() as con:
        if report.done:
            con.run("UPDATE database_restores SET done_at = clock_timestamp() WHERE fenced_at = :f", f=fenced_at)
        audit.record(con, operator, "restore.run", "ok", details=report.public())
    return report


def refuse_changes(db: Database, pending: bool) -> None:
    """503 ``restore_in_progress`` while the work is not done (or the deployment says a restore is pending, before
    the first run): a member removed since the restore point could accept an invitation withdrawn since, take a
    transfer offer withdrawn since, or have a pause made now undone by the run (attack run 85)."""
    if pending:
        raise lock_auth.restored_pending()
    with db.connection() as con:
        if con.run("SELECT 1 FROM database_restores WHERE done_at IS NULL LIMIT 1"):
            raise lock_auth.restored_pending()


def _open(con: Connection) -> dt.datetime:
    """The restore under way, or a new one fenced now: a lock's signed request dated before it is refused from here
    (``lock_auth.authenticate``), and every account checked before it is due a check (``accounts``)."""
    con.run("LOCK TABLE database_restores IN SHARE ROW EXCLUSIVE MODE")  # two first runs at once make one
    found = con.run("SELECT fenced_at FROM database_restores WHERE done_at IS NULL")
    if found:
        return found[0][0]  # type: ignore[no-any-return]
    ((fenced_at,),) = con.run(
        "INSERT INTO database_restores (fenced_at, journal_from) SELECT now,"
        " to_char((now - CAST(:back AS interval)) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        " FROM clock_timestamp() AS now RETURNING fenced_at",
        back=f"{int(JOURNAL_READ_BACK.total_seconds())} seconds",
    )
    return fenced_at  # type: ignore[no-any-return]


def _cursor(db: Database, name: str) -> Any:
    with db.connection() as con:
        return con.run(f"SELECT {name} FROM database_restores WHERE done_at IS NULL")[0][0]  # noqa: S608 (a name)


def _advance(con: Connection, name: str, value: str) -> None:
    con.run(f"UPDATE database_restores SET {name} = :v WHERE done_at IS NULL", v=value)  # noqa: S608 (a name)


def _standing(db: Database, client: firestore.Client, report: Report, deadline: float) -> bool:
    """Each account's standing as the back-end last found it before the restore (``mirror.standing``) taken into the
    database: ended (disabled or deleted: taken as disabled, which the next check tells apart) and its sessions'
    revocation. True once every document is taken."""
    after = _cursor(db, "standing_after")
    while True:  # a page at least each run, so that each makes headway
        docs = client.query("standing", PAGE, after=_after(after))
        with db.transaction() as con:
            for name, fields in docs:
                uid = name.rsplit("/", 1)[-1]
                since = fields.get("sessions_since_s")
                report.standing += len(
                    con.run(
                        "UPDATE users SET account_disabled = account_disabled OR :ended,"
                        " tokens_valid_since = CASE WHEN CAST(:s AS bigint) IS NULL THEN tokens_valid_since"
                        " ELSE greatest(tokens_valid_since, to_timestamp(CAST(:s AS bigint))) END"
                        " WHERE uid = :u AND account_gone_at IS NULL AND ((:ended AND NOT account_disabled)"
                        " OR (CAST(:s AS bigint) IS NOT NULL AND tokens_valid_since IS DISTINCT FROM"
                        " greatest(tokens_valid_since, to_timestamp(CAST(:s AS bigint))))) RETURNING 1",
                        u=uid,
                        ended=fields.get("ended") is True,
                        s=since if isinstance(since, int) and not isinstance(since, bool) else None,
                    )
                )
            if docs:
                after = docs[-1][0]
                _advance(con, "standing_after", after)
        if len(docs) < PAGE:
            return True
        if time.monotonic() > deadline:
            return False


def _journal(db: Database, client: firestore.Client, report: Report, deadline: float) -> bool:
    """Each journal entry from ``journal_from`` on, oldest first, done again unless the database keeps its key. True
    once the last is done. An entry at least each run, so that each makes headway."""
    with db.connection() as con:
        ((start, after),) = con.run("SELECT journal_from, journal_after FROM database_restores WHERE done_at IS NULL")
    cursor: tuple[str, str] | None = None
    if after is not None:
        at, name = json.loads(after)
        cursor = (str(at), str(name))
    first = True
    while True:
        docs = client.query(JOURNAL, PAGE, order_by="at", start=start, after=cursor)
        report.read += len(docs)
        kept = _kept(db, [name.rsplit("/", 1)[-1] for name, _ in docs])  # passed over without a transaction each
        for name, body in docs:
            key = name.rsplit("/", 1)[-1]
            if key not in kept:
                if not first and time.monotonic() > deadline:
                    break
                first = False
                entry = _entry(key, body)
                with db.transaction() as con:
                    if entry is None:
                        report.unreadable += 1
                    elif _claim(con, entry):
                        _redo_counted(con, entry, report)
            cursor = (str(body.get("at")), name)
        else:
            if cursor is not None:
                with db.transaction() as con:
                    _advance(con, "journal_after", json.dumps(cursor))
            if len(docs) < PAGE:
                return True
            continue
        with db.transaction() as con:  # cut by the budget: the next run takes up from the last entry done
            _advance(con, "journal_after", json.dumps(cursor))
        return False


def _redo_counted(con: Connection, entry: Entry, report: Report) -> None:
    try:
        done = redo(con, entry)
    except ValueError:  # a field it needs is missing (none of its changes made: each reads its fields first)
        report.unreadable += 1
        return
    if done:
        report.redone[entry.kind] = report.redone.get(entry.kind, 0) + 1
    else:
        report.unchanged += 1


def _access(db: Database, client: firestore.Client, report: Report, deadline: float) -> bool:
    """Each access document Firestore has checked against the memberships the database has: the mirror ends only
    the ones its record names, and the restored record did not name those written after the restore point (a
    member who joined then read the live view for good: attack run 83). A lock's documents are written again and
    every other member's ended; a lock the database does not have (made after the restore point) has its documents
    deleted. True once every document is checked."""
    after = _cursor(db, "access_after")
    while True:  # a page at least each run
        names = [n for n, _ in client.query("access", PAGE, group=True, names_only=True, after=_after(after))]
        found: dict[str, set[str]] = {}
        for name in names:
            parts = name.split("/documents/", 1)[-1].split("/")
            if len(parts) == 4 and parts[0] == "locks" and parts[2] == "access":
                if inputs.canonical_uuid(parts[1]) == parts[1]:
                    found.setdefault(parts[1], set()).add(parts[3])
        for lock_id, uids in sorted(found.items()):
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
        if names:
            after = names[-1]
            with db.transaction() as con:
                _advance(con, "access_after", after)
        if len(names) < PAGE:
            return True
        if time.monotonic() > deadline:
            return False


def _after(name: str | None) -> tuple[str | None, str] | None:
    return None if name is None else (None, name)


def _kept(db: Database, keys: list[str]) -> set[str]:
    """Those of ``keys`` the database keeps: committed before the restore point, or done again since."""
    uuids = [k for k in keys if inputs.canonical_uuid(k) == k]
    with db.connection() as con:
        rows = con.run("SELECT key::text FROM journal_entries WHERE key = ANY(CAST(:k AS uuid[]))", k=uuids)
    return {str(row[0]) for row in rows}


def _entry(key: str, body: dict[str, Any]) -> Entry | None:
    kind, at = body.get("kind"), body.get("at")
    if inputs.canonical_uuid(key) != key or kind not in REDO or not isinstance(at, str):
        return None
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        return None
    return Entry(key, kind, when if when.tzinfo else when.replace(tzinfo=dt.UTC), body)


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


def redo(con: Connection, entry: Entry) -> bool:
    """Do ``entry`` again; False when the database already shows it (or nothing is left to do it to)."""
    done = REDO[entry.kind](con, entry)
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


def _credential_revoked(con: Connection, entry: Entry) -> bool:
    """The credential revoked again (its device refused, told to pair again), and each of its certificates listed
    again as the server lists one (until a day past its end: a shorter list is one the broker host keeps out): one
    issued after the restore point is unknown to the database and goes on the list from the entry."""
    listed = 0
    certificates = entry.body.get("certificates")
    for cert in certificates if isinstance(certificates, list) else []:
        serial, not_after = (cert.get("serial"), cert.get("not_after")) if isinstance(cert, dict) else (None, None)
        if not (_is_serial(serial) and isinstance(not_after, str)):
            continue
        listed += len(
            con.run(
                "INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)"
                " SELECT :s, :at, CAST(:n AS timestamptz)"
                " WHERE CAST(:n AS timestamptz) > now() - make_interval(days => :d)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                s=serial,
                at=entry.at,
                n=not_after,
                d=retention.EXPIRED_REVOCATIONS_LISTED_DAYS,  # as the server lists one
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


def _membership_ended(con: Connection, entry: Entry) -> bool:
    """The membership ended again, as its removal ends one (its invitations, the offer naming it, its unsent
    commands, its access in the live view). An owner's ends with the lock's deletion or hand-over, done on their own
    entries."""
    lock_id, uid = entry.lock_id(), entry.text("uid")
    target = members.get(con, lock_id, uid, for_update=True)
    if target is None or target.revoked_at is not None or target.role == "owner":
        return False
    if _changed_since(con, lock_id, uid, entry.at):
        return False
    locks.revoke_member(con, lock_id, target, target, entry.at, by=ACTOR, reason="restored")
    return True


def _changed_since(con: Connection, lock_id: str, uid: str, at: dt.datetime) -> bool:
    """The membership was changed again after ``at`` in this database (served as restored before the run came to
    the entry: attack run 85): the later change stands."""
    return bool(
        con.run(
            # what changes the membership itself: its terms, its end, its joining again (not what the member did to
            # others: a removed admin's invitation sent meanwhile kept their removal from being done again)
            "SELECT 1 FROM audit_log WHERE lock_id = CAST(:l AS uuid) AND at > :at AND actor <> :restore"
            " AND ((target = :u AND action IN ('member.update', 'member.revoke'))"
            " OR (actor = :a AND action = 'member.accept_invitation')) LIMIT 1",
            l=lock_id,
            u=uid,
            a=audit.user_actor(uid),
            at=at,
            restore=ACTOR,
        )
    )


#: a membership's terms, as migration 0071's ``journal_terms`` writes them
TERMS = ("valid_from", "valid_until", "weekdays", "day_start_minute", "day_end_minute", "timezone", "expires_at")
_TIMES = frozenset({"valid_from", "valid_until", "expires_at"})


def _membership_changed(con: Connection, entry: Entry) -> bool:
    """The membership's role and terms set again to what they were changed to: a demotion, a narrower window, a
    pause (an expiry in the past) after the restore point were taken back. An owner's go with the lock's
    hand-over."""
    lock_id, uid, role = entry.lock_id(), entry.text("uid"), entry.text("role")
    terms = entry.body.get("terms")
    if role not in members.RANK or role == "owner" or not isinstance(terms, dict) or set(terms) != set(TERMS):
        raise ValueError(f"{entry.kind} entry {entry.key} has no terms")
    values = {name: _time(terms[name]) if name in _TIMES else terms[name] for name in TERMS}
    target = members.get(con, lock_id, uid, for_update=True)
    if target is None or target.revoked_at is not None or target.role == "owner":
        return False
    if target.role == role and all(getattr(target, name) == values[name] for name in TERMS):
        return False
    if _changed_since(con, lock_id, uid, entry.at):
        return False
    door_decisions.wait_for(con, lock_id)  # one deciding on the access it had opens the door before this
    members.set_terms(con, lock_id, uid, role, values)
    commands.withdraw_unsent(con, lock_id, uid)  # sent under the access they had
    mirror.activity(con, lock_id, "member_updated", target_uid=uid, role=role, reason="restored")
    members.mirror_access(con, lock_id)
    return True


def _time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a time that is not a string")
    return dt.datetime.fromisoformat(value)


def _lock_deleted(con: Connection, entry: Entry) -> bool:
    lock_id, owner_uid = entry.lock_id(), entry.text("owner_uid")
    if not con.run("SELECT 1 FROM locks WHERE id = CAST(:l AS uuid) FOR UPDATE", l=lock_id):
        return False
    locks.delete(con, lock_id, owner_uid, actor=ACTOR)
    return True


def _owner_changed(con: Connection, entry: Entry) -> bool:
    """The lock handed to its new owner again, when the database still has it with the one before. One who joined
    after the restore point (their membership taken back with it) is made a member first, as they were: the lock
    left with its former owner was theirs again, who could then open the door of the one they sold it to (attack
    run 84)."""
    lock_id, from_uid, to_uid = entry.lock_id(), entry.text("from_uid"), entry.text("to_uid")
    owner = con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid) FOR UPDATE", l=lock_id)
    if not owner or owner[0][0] != from_uid:
        return False
    taker = members.get(con, lock_id, to_uid, for_update=True)
    if taker is None or taker.revoked_at is not None:
        con.run("INSERT INTO users (uid) VALUES (:u) ON CONFLICT DO NOTHING", u=to_uid)  # checked at the next sweep
        con.run(
            "INSERT INTO lock_members (lock_id, user_uid, role, created_at) VALUES (CAST(:l AS uuid), :u, 'admin', :at)"
            " ON CONFLICT (lock_id, user_uid) DO UPDATE SET role = 'admin', revoked_at = NULL, expires_at = NULL,"
            " valid_from = NULL, valid_until = NULL, weekdays = NULL, day_start_minute = NULL, day_end_minute = NULL",
            l=lock_id,
            u=to_uid,
            at=entry.at,
        )
    # the limit was met when it was done
    locks.hand_over(con, lock_id, from_uid, to_uid, None, actor=ACTOR, reason="restored")
    return True


def _invitation_closed(con: Connection, entry: Entry) -> bool:
    """The invitation answered again; one accepted since (served as restored before the run came to it: attack run
    85) has the membership it made ended."""
    invitation = inputs.canonical_uuid(entry.body.get("invitation_id"))
    if invitation is None:
        raise ValueError(f"{entry.kind} entry {entry.key} names no invitation")
    if con.run(
        "UPDATE invitations SET closed_at = :at WHERE id = CAST(:i AS uuid) AND closed_at IS NULL"
        " AND accepted_at IS NULL RETURNING 1",
        i=invitation,
        at=entry.at,
    ):
        return True
    taken = con.run(
        "SELECT lock_id::text, accepted_by FROM invitations WHERE id = CAST(:i AS uuid) AND accepted_at > :at"
        " AND accepted_by IS NOT NULL",
        i=invitation,
        at=entry.at,
    )
    return bool(taken) and _end(con, str(taken[0][0]), str(taken[0][1]))


def _end(con: Connection, lock_id: str, uid: str) -> bool:
    """End ``uid``'s membership of the lock now, as its removal does; False when there is none to end (or it is the
    owner's, which ends with the lock's deletion or hand-over)."""
    target = members.get(con, lock_id, uid, for_update=True)
    if target is None or target.revoked_at is not None or target.role == "owner":
        return False
    ((now,),) = con.run("SELECT clock_timestamp()")
    locks.revoke_member(con, lock_id, target, target, now, by=ACTOR, reason="restored")
    return True


def _offer_closed(con: Connection, entry: Entry) -> bool:
    """The offer ended again; one taken since it was withdrawn (served as restored before the run came to it: attack
    run 85) has its lock handed back."""
    lock_id, offered_at = entry.lock_id(), entry.text("offered_at")
    if transfer_offers.end_offered(con, lock_id, offered_at, OFFER_ENDED) > 0:
        return True
    from_uid, to_uid = entry.body.get("from_uid"), entry.body.get("to_uid")
    if not (isinstance(from_uid, str) and isinstance(to_uid, str)):
        return False
    owner = con.run("SELECT owner_uid FROM locks WHERE id = CAST(:l AS uuid) FOR UPDATE", l=lock_id)
    taken = con.run(
        "SELECT 1 FROM audit_log WHERE lock_id = CAST(:l AS uuid) AND action = 'lock.transfer' AND target = :t"
        " AND at > :at LIMIT 1",
        l=lock_id,
        t=to_uid,
        at=entry.at,
    )
    giver = members.get(con, lock_id, from_uid, for_update=True)
    if not (owner and owner[0][0] == to_uid and taken and giver is not None and giver.revoked_at is None):
        return False
    locks.hand_over(con, lock_id, to_uid, from_uid, None, actor=ACTOR, reason="restored")
    return True


def _voice_erased(con: Connection, entry: Entry) -> bool:
    uid = entry.text("uid")
    if not con.run("SELECT 1 FROM voiceprints WHERE user_uid = :u AND created_at < :at LIMIT 1", u=uid, at=entry.at):
        return False
    reason = entry.body.get("reason")
    erasure.forget_voice(con, uid, reason if reason in ("address_verified", "account_gone") else "requested")
    return True


def _is_serial(value: Any) -> bool:
    """A certificate serial as the database keeps one (lower-case hex, 40 digits at most)."""
    return isinstance(value, str) and 0 < len(value) <= 40 and set(value) <= _SERIAL_CHARS


def _certificate_issued(con: Connection, entry: Entry) -> bool:
    """The certificate kept beside its credential again, so that revoking the credential lists it (one renewed after
    the restore point stayed valid through the next re-pairing: attack run 84); listed at once when its credential
    is revoked already or unknown (revoked since the database served again, or paired after the restore point: its
    device pairs again), for a revocation's listing has passed it by (attack run 85)."""
    credential, serial, not_after = entry.body.get("credential_id"), entry.text("serial"), entry.text("not_after")
    if inputs.canonical_uuid(credential) is None or not _is_serial(serial):
        raise ValueError(f"{entry.kind} entry {entry.key} names no certificate")
    kept = con.run(
        "INSERT INTO lock_certificates (serial, credential_id, expires_at)"
        " SELECT :s, CAST(:c AS uuid), CAST(:n AS timestamptz) WHERE CAST(:n AS timestamptz) > now()"
        " ON CONFLICT DO NOTHING RETURNING 1",
        s=serial,
        c=credential,
        n=not_after,
    )
    listed = con.run(
        "INSERT INTO revoked_lock_certificates (serial, revoked_at, not_after)"
        " SELECT :s, coalesce((SELECT revoked_at FROM lock_credentials WHERE id = CAST(:c AS uuid)),"
        " clock_timestamp()), CAST(:n AS timestamptz) WHERE CAST(:n AS timestamptz) > now() - make_interval(days => :d)"
        " AND NOT EXISTS (SELECT 1 FROM lock_credentials WHERE id = CAST(:c AS uuid) AND revoked_at IS NULL)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        s=serial,
        c=credential,
        n=not_after,
        d=retention.EXPIRED_REVOCATIONS_LISTED_DAYS,  # as the server lists one
    )
    return bool(kept or listed)


REDO: dict[str, Callable[[Connection, Entry], bool]] = {
    "credential_revoked": _credential_revoked,
    "membership_ended": _membership_ended,
    "membership_changed": _membership_changed,
    "lock_deleted": _lock_deleted,
    "owner_changed": _owner_changed,
    "invitation_closed": _invitation_closed,
    "offer_closed": _offer_closed,
    "voice_erased": _voice_erased,
    "certificate_issued": _certificate_issued,
}
