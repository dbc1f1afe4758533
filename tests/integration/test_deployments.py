"""One database, one deployment (``lockwise.core.deployment``, migration 0080): a lock maker runs staging beside
production, developers the local stack, and each reads its database from a ``DATABASE_URL`` someone copied.

Attack run 116 pointed a staging copy (its own Firebase project) at production's database: its relay's flush asked
staging's Firebase Auth about production's accounts, found none, and marked every one gone (the next flushes end
every member's place and erase every voiceprint), its health said 200, and staging's migration job migrated
production's database unasked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.local import services, stack
from lockwise.core import accounts, errors, migrate
from lockwise.core import log as lwlog
from lockwise.core.config import Settings
from lockwise.core.runtime import Runtime
from lockwise.devices import gone_accounts
from tests.devices_world import World
from tests.integration.test_gone_accounts import users_row

STAGING = "demo-lockwise-staging"


@pytest.fixture
def productions_job_ran(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Production's migration job has run on the database (the session's, for the project ``stack_env`` names)."""
    monkeypatch.setattr(lwlog, "configure", lambda *_args, **_kwargs: None)  # the job's stdout logging: not here
    assert migrate.main([]) == 0


def staging(stack_env: dict[str, str]) -> Runtime:
    """A devices function of staging (its own Firebase project) whose ``DATABASE_URL`` names production's database."""
    return Runtime(Settings.from_env({**stack_env, "LOCKWISE_PROJECT_ID": STAGING}, component="devices"))


def test_a_staging_copy_pointed_at_productions_database_marks_no_account_gone_and_says_why(
    world: World, stack_env: dict[str, str], productions_job_ran: None
) -> None:
    copy = staging(stack_env)
    directory = lambda: accounts.directory_for(STAGING, stack_env["FIREBASE_AUTH_EMULATOR_HOST"])  # noqa: E731
    try:
        with pytest.raises(errors.Unavailable) as refused:
            gone_accounts.check(copy.db, directory, copy.settings)  # the relay's flush, its first step
        assert refused.value.code == "wrong_deployment"
        assert [users_row(world.uid(name))[1] for name in ("owner", "member")] == [False, False]  # nobody gone
        with pytest.raises(errors.Unavailable) as health:
            copy.check_database()  # its health is 503, naming the problem to its operator
        assert health.value.code == "wrong_deployment"
    finally:
        copy.db.close()


def test_a_migration_job_pointed_at_another_deployments_database_does_nothing(
    stack_env: dict[str, str], productions_job_ran: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCKWISE_PROJECT_ID", STAGING)
    assert migrate.main([]) == 4  # migrate.WRONG_DEPLOYMENT_EXIT: nothing done
    assert migrate.main(["--check"]) == 4  # the deploy's check before new code


def test_a_database_bound_to_its_deployment_serves_it(
    clients: dict[str, Any], world: World, stack_env: dict[str, str], productions_job_ran: None
) -> None:
    assert clients["devices"].get("/devices/locks", headers=world.headers("owner")).status_code == 200
    assert migrate.main([]) == 0  # the job run again: the same deployment's


def test_the_local_stack_takes_no_deployments_database_for_its_own(
    world: World, stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``./dev stack`` with a deployment's ``DATABASE_URL`` left exported: it migrated that database, bound nothing
    and served it in local mode, the Auth emulator's unsigned tokens taken for its accounts."""
    started: list[Any] = []
    exported = {"DATABASE_URL": stack_env["DATABASE_URL"]}  # its accounts' rows are there (``world``)
    with pytest.raises(services.StartupFailed, match="bound to no deployment"):  # its own job has not bound it yet
        stack._database(exported, tmp_path, 0, "unused", started)
    monkeypatch.setattr(lwlog, "configure", lambda *_args, **_kwargs: None)
    assert migrate.main([]) == 0  # the deployment's job binds it
    with pytest.raises(services.StartupFailed, match="not this stack's"):
        stack._database(exported, tmp_path, 0, "unused", started)
    assert started == []
