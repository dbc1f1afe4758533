"""Accounts deleted outside the app: asked of Firebase Auth, the oldest checked first, by the relay's periodic flush.

The app deletes an account through the back-end first (``DELETE /embed/enrollment``, ``DELETE /devices/me``). One
deleted another way (the Firebase console, the Admin SDK, an operator's script) was never seen: ID tokens are checked
offline, so its memberships stayed and its voice still opened doors. Each flush now looks up to
``LOCKWISE_ACCOUNT_CHECK_BATCH`` users whose last check is older than ``LOCKWISE_ACCOUNT_RECHECK_S`` in Firebase
Auth (one ``accounts:lookup`` call) and marks the ones it does not find ``account_gone_at``: the devices domain then
ends what they hold (``lockwise.devices.locks.leave_every_lock``) and no lock scores their voice again
(``lockwise.voice.voiceprints.candidates``). A lookup that fails marks nobody: only an answer that names the accounts
it found is taken as telling which are gone.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lockwise.core import audit
from lockwise.core.db import Database
from lockwise.core.firestore import Authorize, default_credentials

PRODUCTION_HOST = "identitytoolkit.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: accounts one ``accounts:lookup`` call may name (the Admin SDK's ``get_users`` limit)
LOOKUP_MAX = 100
TIMEOUT_S = 5.0
#: who the audit log names for what the sweep finds
AUDIT_ACTOR = "system:accounts"


class DirectoryError(Exception):
    """Firebase Auth did not answer which accounts exist (unreachable, refused, or an answer that is not one)."""


class Directory(Protocol):
    def existing(self, uids: Sequence[str]) -> set[str]:
        """Which of ``uids`` (at most ``LOOKUP_MAX``) name an account that exists; ``DirectoryError`` otherwise."""
        ...


class IdentityToolkit:
    """Firebase Auth's REST API (``accounts:lookup``), production's or the Auth emulator's."""

    def __init__(
        self, project_id: str, host: str, *, authorize: Authorize, tls: ssl.SSLContext | None, prefix: str = ""
    ) -> None:
        self._target = f"{prefix}/v1/projects/{urllib.parse.quote(project_id, safe='')}/accounts:lookup"
        self._host, self._authorize, self._tls = host, authorize, tls

    def existing(self, uids: Sequence[str]) -> set[str]:
        if not 0 < len(uids) <= LOOKUP_MAX:
            raise ValueError(f"look up 1 to {LOOKUP_MAX} accounts at a time, not {len(uids)}")
        headers = {"Content-Type": "application/json"}
        try:
            self._authorize(headers)
        except Exception as exc:  # noqa: BLE001 - google-auth's refresh fails in its own types
            raise DirectoryError(f"credentials could not be refreshed: {type(exc).__name__}") from exc
        con = (
            http.client.HTTPConnection(self._host, timeout=TIMEOUT_S)
            if self._tls is None
            else http.client.HTTPSConnection(self._host, timeout=TIMEOUT_S, context=self._tls)
        )
        try:
            con.request("POST", self._target, body=json.dumps({"localId": list(uids)}).encode(), headers=headers)
            resp = con.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise DirectoryError(f"Firebase Auth could not be reached: {type(exc).__name__}") from exc
        finally:
            con.close()
        if resp.status != 200:
            raise DirectoryError(f"Firebase Auth answered {resp.status}: {data[:200].decode(errors='replace')}")
        try:
            found = json.loads(data)
            users = found.get("users", [])
            named = {str(user["localId"]) for user in users}
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            raise DirectoryError("Firebase Auth answered with a body that is not a lookup's") from exc
        return named & set(uids)


def directory_for(project_id: str, auth_emulator_host: str | None) -> IdentityToolkit:
    """Production's Firebase Auth with Application Default Credentials (``DirectoryError`` without any), or the
    emulator at ``auth_emulator_host``."""
    if auth_emulator_host:

        def emulator_owner(headers: dict[str, str]) -> None:
            headers["Authorization"] = "Bearer owner"

        return IdentityToolkit(
            project_id, auth_emulator_host, authorize=emulator_owner, tls=None, prefix="/identitytoolkit.googleapis.com"
        )
    tls = ssl.create_default_context()
    try:
        authorize = default_credentials(tls, scope=SCOPE, host=PRODUCTION_HOST)
    except Exception as exc:  # noqa: BLE001 - google-auth finds no credentials in its own types
        raise DirectoryError(f"no credentials for Firebase Auth: {type(exc).__name__}") from exc
    return IdentityToolkit(project_id, PRODUCTION_HOST, authorize=authorize, tls=tls)


@dataclass(frozen=True)
class Sweep:
    checked: int
    gone: list[str]  # marked gone by this sweep


def sweep(db: Database, directory: Directory, *, batch: int, recheck_s: int) -> Sweep:
    """Check up to ``batch`` users due a check (never checked, or last checked ``recheck_s`` ago); mark the ones
    Firebase Auth does not know gone. ``DirectoryError`` when it does not answer (nothing is marked)."""
    if batch <= 0:
        return Sweep(0, [])
    with db.connection() as con:
        due = [
            str(row[0])
            for row in con.run(
                "SELECT uid FROM users WHERE account_gone_at IS NULL AND (account_checked_at IS NULL"
                " OR account_checked_at <= now() - make_interval(secs => :r)) ORDER BY account_checked_at NULLS FIRST"
                " LIMIT :n",
                r=recheck_s,
                n=min(batch, LOOKUP_MAX),
            )
        ]
    if not due:
        return Sweep(0, [])
    existing = directory.existing(due)  # outside any transaction: a slow answer holds no row
    with db.transaction() as con:
        con.run("UPDATE users SET account_checked_at = now() WHERE uid = ANY(:u)", u=due)
        marked = con.run(
            "UPDATE users SET account_gone_at = now() WHERE uid = ANY(:g) AND account_gone_at IS NULL RETURNING uid",
            g=[uid for uid in due if uid not in existing],
        )
        gone = sorted(str(row[0]) for row in marked)
        for uid in gone:
            audit.record(con, AUDIT_ACTOR, "user.account_gone", "ok", target=uid)
    return Sweep(len(due), gone)
