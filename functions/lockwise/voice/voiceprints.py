"""Voiceprints in PostgreSQL: store (replacing), read, and the candidates allowed at a lock right now (their deletion,
with every score and fingerprint of the voice: ``lockwise.core.erasure``).

A voiceprint row holds the normalised mean embedding and the sample embeddings (float32 little-endian), tagged with
the ``model_id`` of the encoder that made them. Scores are only ever computed between embeddings of the same model:
a voiceprint of another model is reported as needing re-enrollment, never compared.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from lockwise.core import mirror
from lockwise.core.db import Connection, rows_as_dicts
from lockwise.devices.members import Membership, active_sql
from lockwise.voice import scoring


@dataclass(frozen=True)
class Candidates:
    """The voiceprints (of the served model) of a lock's active members, and which of them may open it now. Those
    who may not (a guest outside their window, an account Firebase Auth disabled) still keep their voice from a
    like one at the door (``lockwise.voice.first_come``): a member's copy of a guest's voice let her in outside her
    window (attack run 24)."""

    uids: list[str]
    prints: scoring.Matrix  # (k, dim)
    stale_uids: list[str]  # allowed now, but enrolled with another model: must re-enroll
    #: which of two like voices at the lock is scored (``lockwise.voice.first_come``): the lower of
    #: (not the lock's owner, when the voiceprint came to the lock, uid)
    precedence: list[tuple[bool, dt.datetime, str]]
    allowed: list[bool]  # may open the door now (role, window, an account Firebase Auth has and has not disabled)
    memberships: list[Membership]  # each one's (an unlock ends with its window: ``Membership.allowed_until``)


def store(
    con: Connection,
    uid: str,
    model_id: str,
    samples: scoring.Matrix,
    samples_id: bytes,
    *,
    address_verified: bool,
) -> scoring.Vector:
    """Replace the user's voiceprint with one made from ``samples`` ``(n, dim)``, the embeddings of the enrollment
    samples whose identity is ``samples_id`` (``lockwise.voice.enrollment.samples_identity``); returns the
    voiceprint. ``address_verified``: the enrolling token carried a verified address; a voiceprint stored without
    one is dropped once the account's address is verified (``lockwise.core.users.upsert``: attack run 73)."""
    vp = scoring.voiceprint(samples)
    embedding = scoring.to_bytes(vp)
    ((stored_at,),) = con.run(
        # stamped when stored, not when the transaction began: of two enrollments that took turns at a lock, the
        # one stored second is the later (``first_come``), though it may have begun first
        "INSERT INTO voiceprints (user_uid, model_id, dim, embedding, sample_count, sample_embeddings, created_at,"
        " samples_sha256, address_unverified) VALUES (:u, :m, :d, :e, :n, :s, clock_timestamp(), :h, :a)"
        " ON CONFLICT (user_uid) DO UPDATE SET"
        " model_id = EXCLUDED.model_id, dim = EXCLUDED.dim, embedding = EXCLUDED.embedding,"
        " sample_count = EXCLUDED.sample_count, sample_embeddings = EXCLUDED.sample_embeddings,"
        " created_at = EXCLUDED.created_at, samples_sha256 = EXCLUDED.samples_sha256,"
        " address_unverified = EXCLUDED.address_unverified RETURNING created_at",
        u=uid,
        m=model_id,
        d=int(samples.shape[1]),
        e=embedding,
        n=int(samples.shape[0]),
        s=scoring.to_bytes(scoring.normalise(samples)),
        h=_sealed(samples_id, embedding),
        a=not address_verified,
    )
    mirror.enqueue(
        con,
        mirror.user_doc(uid),
        "set",
        {"voice_enrolled": True, "samples": int(samples.shape[0]), "enrolled_at": stored_at.isoformat()},
    )
    return vp


def made_from(con: Connection, uid: str, model_id: str, samples_id: bytes) -> scoring.Matrix | None:
    """The (normalised) sample embeddings of ``uid``'s voiceprint of ``model_id`` if it is the one made from the
    samples ``samples_id``, else None: the same samples sent again (``lockwise.voice.enrollment``). The samples'
    identity is kept sealed with the voiceprint it made, so a voiceprint changed since by anything but an enrollment
    of other samples is not taken for theirs."""
    rows = con.run(
        "SELECT embedding, sample_embeddings, dim, samples_sha256 FROM voiceprints"
        " WHERE user_uid = :u AND model_id = :m",
        u=uid,
        m=model_id,
    )
    if not rows or rows[0][3] is None or bytes(rows[0][3]) != _sealed(samples_id, bytes(rows[0][0])):
        return None
    return scoring.from_bytes(bytes(rows[0][1]), int(rows[0][2]))


def _sealed(samples_id: bytes, embedding: bytes) -> bytes:
    """What a voiceprint keeps of the samples it was made from: their identity, bound to the voiceprint's bytes."""
    return hashlib.sha256(samples_id + embedding).digest()


def enrolled_at(con: Connection, uid: str) -> dt.datetime | None:
    """When ``uid``'s voice was last enrolled (None: it is not)."""
    rows = con.run("SELECT created_at FROM voiceprints WHERE user_uid = :u", u=uid)
    return rows[0][0] if rows else None


def status(con: Connection, uid: str, current_model_id: str) -> dict[str, Any]:
    rows = rows_as_dicts(con, "SELECT model_id, sample_count, created_at FROM voiceprints WHERE user_uid = :u", u=uid)
    if not rows:
        answer: dict[str, Any] = {"enrolled": False, "needs_reenrollment": False, "current_model_id": current_model_id}
        # why the voice the member may remember enrolling is gone (a voice enrolled before the account's address was
        # verified is dropped then, and the member was told only ``enrolled: false``)
        erased = con.run(
            "SELECT reason, forgotten_at FROM voice_erasures WHERE user_uid = :u AND reason IS NOT NULL", u=uid
        )
        if erased:
            answer["forgotten"] = {"reason": erased[0][0], "at": erased[0][1].isoformat()}
        return answer
    row = rows[0]
    return {
        "enrolled": True,
        "model_id": row["model_id"],
        "current_model_id": current_model_id,
        "needs_reenrollment": row["model_id"] != current_model_id,
        "samples": row["sample_count"],
        "enrolled_at": row["created_at"].isoformat(),
    }


#: when the voiceprint ``{v}`` came to the lock of the membership ``{m}``: the later of the two
#: (``lockwise.voice.first_come``)
_ARRIVED = "GREATEST({m}.created_at, {v}.created_at)"
#: ``Candidates.precedence`` in SQL (false sorts first; uids in code point order, as Python compares them)
_PRECEDENCE_COLUMNS = "{m}.role <> 'owner', " + _ARRIVED + ', {m}.user_uid COLLATE "C"'
_PRECEDENCE = "(" + _PRECEDENCE_COLUMNS + ")"

#: whose voiceprint counts at a lock at all (``{}``: the membership's alias): not an account Firebase Auth no longer
#: has (``lockwise.core.accounts``): the same person, signed up again, would yield to their own old account's voice.
#: One it disabled opens no door (``Candidates.allowed``) but keeps its voice from a copy
_COUNTED_ACCOUNT = " JOIN users u ON u.uid = {}.user_uid AND u.account_gone_at IS NULL"


def candidates(con: Connection, lock_id: str, model_id: str, dim: int, now: dt.datetime) -> Candidates:
    """The voiceprints of ``lock_id``'s members at ``now`` (not revoked or expired), each marked as allowed to open
    it or not (role, window, an account Firebase Auth still has and has not disabled)."""
    rows = rows_as_dicts(
        con,
        "SELECT m.lock_id::text AS lock_id, m.user_uid, m.role, m.valid_from, m.valid_until, m.weekdays,"
        " m.day_start_minute, m.day_end_minute, m.timezone, m.expires_at, m.revoked_at,"
        " v.model_id AS vp_model, v.dim AS vp_dim, v.embedding AS vp_embedding, "
        + _ARRIVED.format(m="m", v="v")
        + " AS vp_arrived, NOT u.account_disabled AS vp_scored"
        " FROM lock_members m JOIN voiceprints v ON v.user_uid = m.user_uid"
        + _COUNTED_ACCOUNT.format("m")
        + " WHERE m.lock_id = CAST(:l AS uuid) AND "
        + active_sql("m")  # the decision's clock, as below
        # nor a voice enrolled without a verified address on an account whose address has been verified since
        # (``lockwise.core.users.address_verified``: attack run 73)
        + " AND NOT (v.address_unverified AND u.address_verified_at IS NOT NULL)"
        + " ORDER BY m.user_uid"
        # held until the decision commits: deleting this voice data waits for it (``erasure.forget_voice``);
        # re-enrolling (an UPDATE of no key) does not
        " FOR KEY SHARE OF v",
        l=lock_id,
        now=now,
    )
    uids: list[str] = []
    vectors: list[scoring.Vector] = []
    stale: list[str] = []
    precedence: list[tuple[bool, dt.datetime, str]] = []
    allowed: list[bool] = []
    memberships: list[Membership] = []
    for row in rows:
        vp_model, vp_dim, vp_embedding = row.pop("vp_model"), row.pop("vp_dim"), row.pop("vp_embedding")
        vp_arrived, vp_scored = row.pop("vp_arrived"), row.pop("vp_scored")
        membership = Membership(**row)
        may = bool(vp_scored) and membership.may_operate(now)
        # another model's, or one no cosine can be taken with (NaN or no direction: written past enrollment, which
        # makes none; its NaN scores, stored for a say-again, made every such attempt a 500 nothing counted): to
        # enroll again, scored as nobody's
        vector = scoring.from_bytes(bytes(vp_embedding), dim) if vp_model == model_id and vp_dim == dim else None
        if vector is None or scoring.unusable_rows(vector):
            if may:
                stale.append(row["user_uid"])
            continue
        uids.append(row["user_uid"])
        vectors.append(vector[0])
        precedence.append((row["role"] != "owner", vp_arrived, row["user_uid"]))
        allowed.append(may)
        memberships.append(membership)
    prints = np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)
    return Candidates(uids, prints, stale, precedence, allowed, memberships)


@dataclass(frozen=True)
class CameBefore:
    """A user's voiceprint and, at each lock they belong to, the voiceprints that go before theirs there (in the
    order they go)."""

    mine: scoring.Vector | None  # None: no voiceprint of the model
    at_locks: dict[str, tuple[float | None, scoring.Matrix]]  # lock id -> (its voice threshold, their voiceprints)


def came_before(con: Connection, uid: str, model_id: str, dim: int, now: dt.datetime) -> CameBefore:
    """At each lock ``uid`` holds an active membership of at ``now``, the voiceprints (of ``model_id``) of co-members
    holding one too that go before ``uid``'s there (``Candidates.precedence``; as at the door, whether or not they
    may open it now)."""
    own = con.run(
        "SELECT embedding FROM voiceprints WHERE user_uid = :u AND model_id = :m AND dim = :d", u=uid, m=model_id, d=dim
    )
    if not own:
        return CameBefore(None, {})
    rows = con.run(
        "SELECT mine.lock_id::text, l.voice_threshold, v.embedding"
        " FROM lock_members mine"
        " JOIN voiceprints own ON own.user_uid = mine.user_uid AND own.model_id = :m AND own.dim = :d"
        " JOIN locks l ON l.id = mine.lock_id"
        " JOIN lock_members theirs ON theirs.lock_id = mine.lock_id AND theirs.user_uid <> mine.user_uid"
        " JOIN voiceprints v ON v.user_uid = theirs.user_uid AND v.model_id = :m AND v.dim = :d"
        + _COUNTED_ACCOUNT.format("theirs")
        + " WHERE mine.user_uid = :u AND "
        + active_sql("mine")
        + " AND "
        + active_sql("theirs")
        + " AND "
        + _PRECEDENCE.format(m="theirs", v="v")
        + " < "
        + _PRECEDENCE.format(m="mine", v="own")
        + " ORDER BY 1, "
        + _PRECEDENCE_COLUMNS.format(m="theirs", v="v"),
        u=uid,
        m=model_id,
        d=dim,
        now=now,
    )
    grouped: dict[str, tuple[float | None, list[bytes]]] = {}
    for lock_id, threshold, theirs in rows:
        grouped.setdefault(lock_id, (None if threshold is None else float(threshold), []))[1].append(bytes(theirs))
    return CameBefore(
        scoring.from_bytes(bytes(own[0][0]), dim)[0],
        {lock: (threshold, scoring.from_bytes(b"".join(prints), dim)) for lock, (threshold, prints) in grouped.items()},
    )
