"""The deployment a database belongs to: the Firebase project whose accounts its rows name (migration 0080).

The migration job binds the database to its ``LOCKWISE_PROJECT_ID`` on its first run (``bind``) and refuses to
migrate one bound to another; every function checks the binding on each new connection (``check``, through
``Database``'s ``on_connect``) and serves nothing while it names another project (503 ``wrong_deployment``). A
database not bound yet (the job of this release has not run) is served as before.

Nothing bound a database to its deployment (attack run 116): a staging copy whose ``DATABASE_URL`` named production's
database, a local stack pointed at it, or a backup restored into another deployment, took that deployment's
Firebase ID tokens for the database's accounts, and its relay's flush asked its own Firebase Auth about every
account, found none, and ended every member's place and erased every voiceprint of the other deployment."""

from __future__ import annotations

import logging

from lockwise.core import errors
from lockwise.core.db import Connection, Database, sqlstate

log = logging.getLogger("lockwise.core.deployment")

WRONG_DEPLOYMENT = "wrong_deployment"
UNDEFINED_TABLE = "42P01"


class WrongDeployment(errors.Unavailable):
    """The database belongs to another deployment. 503: the service is misconfigured, not the caller."""

    def __init__(self, bound: str, serving: str) -> None:
        # the projects are named in the log, not to the caller
        super().__init__(
            "this service's database belongs to another deployment (another Firebase project): it serves nothing"
            " until DATABASE_URL or LOCKWISE_PROJECT_ID is put right",
            code=WRONG_DEPLOYMENT,
            retry_after_s=60,
        )
        self.bound, self.serving = bound, serving


def bound_project(con: Connection) -> str | None:
    """The project the database is bound to; None when it is not (or has no ``deployment`` table yet)."""
    try:
        rows = con.run("SELECT project_id FROM deployment")
    except Exception as exc:
        if sqlstate(exc) == UNDEFINED_TABLE:
            return None
        raise
    return str(rows[0][0]) if rows else None


def check(con: Connection, project_id: str) -> None:
    """``WrongDeployment`` when the database is bound to a project other than ``project_id``. Outside a
    transaction (a new connection's first statement): a missing table's error ends nothing."""
    bound = bound_project(con)
    if bound is not None and bound != project_id:
        log.error(
            "the database belongs to another deployment: serving nothing",
            extra={"fields": {"database_project": bound, "project": project_id}},
        )
        raise WrongDeployment(bound, project_id)


def bind(con: Connection, project_id: str) -> None:
    """Bind the database to ``project_id`` unless it is bound already (``WrongDeployment`` when to another)."""
    con.run("INSERT INTO deployment (project_id) VALUES (:p) ON CONFLICT DO NOTHING", p=project_id)
    check(con, project_id)


def database(url: str, project_id: str, pool_size: int) -> Database:
    """A pool whose every new connection finds the database is ``project_id``'s (``check``): what every function
    instance and the relay serve from."""
    return Database(url, pool_size=pool_size, on_connect=lambda con: check(con, project_id))
