"""Accounts deleted outside the app, ended on each relay flush: found by ``lockwise.core.accounts``, each then leaves
every lock it does not own (``locks.leave_every_lock``, as ``DELETE /devices/me`` does) and its voice data is erased
(``erasure.forget_voice``, as ``DELETE /embed/enrollment`` does), in one transaction. Accounts found disabled (or
enabled again) keep their memberships, and a deleted one the locks it owns; the live view of their locks is mirrored
again (``members.mirror_access`` leaves a disabled or deleted member out)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

from lockwise.core import accounts, erasure, log, mirror
from lockwise.core.config import Settings
from lockwise.core.db import Database
from lockwise.devices import locks, members

logger = logging.getLogger(__name__)

#: accounts found deleted whose memberships are ended per flush, at most (each in its own transaction), and how long
#: a flush goes on ending them: an account in many locks takes ~22 statements a lock, and 20 of them, each in
#: hundreds, held every later step of the relay's upkeep (attack run 93); the rest wait for the next flush
ENDED_PER_FLUSH = 20
END_S = 5.0


def check(db: Database, directory: Callable[[], accounts.Directory], settings: Settings) -> None:
    """Ask Firebase Auth (``directory()``) about the users due a check and mark what it says (``accounts.sweep``);
    Firebase Auth out of reach, or no credentials for it, marks nobody and holds up nothing else."""
    if settings.account_check_batch > 0:
        _sweep(db, directory, settings)


def end(db: Database, now: Callable[[], dt.datetime]) -> int:
    """End the accounts found deleted (by ``check``, now or before: a failure is taken up again by the next flush).
    Returns how many accounts were ended."""
    with db.connection() as con:
        gone = accounts.to_end(con, ENDED_PER_FLUSH)
    deadline = time.monotonic() + END_S
    ended = 0
    for uid in gone:
        try:
            with db.transaction() as con:
                if locks.leave_every_lock(con, uid, now(), account_gone=True) is None:
                    continue  # found again by another flush's sweep meanwhile: a live account, left as it is
                erasure.forget_voice(con, uid, "account_gone")  # biometric data kept for nobody
                # nor a document of the app's for nobody: the erasure's ``voice_enrolled: false`` made one for an
                # account that had none and kept it for good (attack run 46)
                mirror.enqueue_many(
                    con, [(mirror.user_doc(uid), "delete", None), (mirror.standing_doc(uid), "delete", None)]
                )
                accounts.ended(con, uid)
            ended += 1
        except Exception:  # one account's failure (the database busy with its lock) holds up none of the others
            logger.exception("a deleted account's memberships were not ended", extra={"fields": {"user": uid}})
            with contextlib.suppress(Exception), db.transaction() as con:
                accounts.tried(con, uid)
        if time.monotonic() >= deadline:  # (after one: each flush ends one at least)
            break
    return ended


#: lookups one flush makes while each comes back full (users due a check beyond its batch), within ``SWEEP_S``:
#: one a flush checked at most 36,000 accounts an hour, so past that many users an account deleted in Firebase Auth
#: kept its memberships and its voice for longer than its recheck period, a day at a million (attack run 54)
SWEEPS_PER_FLUSH = 10
SWEEP_S = 2.0


def _sweep(db: Database, directory: Callable[[], accounts.Directory], settings: Settings) -> None:
    """Lookups while the last came back full, within ``SWEEP_S``; the users whose rows other requests held are
    passed over for the rest of the flush (they stay due: the next flush looks them up). A lookup of only held users
    had counted them checked, and the flush looked the same users up again, up to 10 times, each on the project's
    Auth quota."""
    deadline = time.monotonic() + SWEEP_S
    held: set[str] = set()
    for _ in range(SWEEPS_PER_FLUSH):
        found = _sweep_once(db, directory, settings, held)
        held.update(found.held)
        if found.looked_up < min(settings.account_check_batch, accounts.LOOKUP_MAX) or time.monotonic() >= deadline:
            return


def _sweep_once(
    db: Database, directory: Callable[[], accounts.Directory], settings: Settings, passing_over: set[str]
) -> accounts.Sweep:
    """One lookup of the users due a check, but ``passing_over`` (none marked when Firebase Auth did not answer)."""
    try:
        found = accounts.sweep(
            db,
            directory(),
            batch=settings.account_check_batch,
            recheck_s=settings.account_recheck_s,
            standing_changed=members.mirror_access_soon,
            passing_over=passing_over,
        )
    except accounts.DirectoryError as exc:
        log.event(logger, "accounts not checked", level=logging.WARNING, error=str(exc))
        return accounts.Sweep([], [])
    if found.gone:
        log.event(logger, "accounts found deleted", level=logging.WARNING, users=found.gone)
    if found.back:
        log.event(logger, "accounts found again", level=logging.WARNING, users=found.back)
    if found.disabled:
        log.event(logger, "accounts found disabled or enabled again", level=logging.WARNING, users=found.disabled)
    return found
