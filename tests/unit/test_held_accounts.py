"""``users.Held.refuse``: what a held account's own request is refused for (the integration suites drive the same
rules through the functions: ``test_gone_accounts``, ``test_devices_flows``, ``test_races``)."""

from __future__ import annotations

import datetime as dt

import pytest

from lockwise.core import errors, users
from lockwise.core.auth import User

T = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def token(signed_in: dt.datetime | None, *, address: str | None = "ana@example.com") -> User | None:
    """The caller's token, signed in at ``signed_in`` (None: no token, an account's own request with no session to
    judge), naming ``address`` verified (None: no verified address)."""
    if signed_in is None:
        return None
    when = int(signed_in.timestamp())
    return User("ana", address, address is not None, {"auth_time": when, "iat": when})


def held(**changes: object) -> users.Held:
    fields: dict[str, object] = {"gone": False, "disabled": False, "left_at": None, "sessions_since": None}
    fields.update(changes)
    return users.Held(**fields)  # type: ignore[arg-type]


def code_of(account: users.Held, signed_in: dt.datetime | None) -> str | None:
    try:
        account.refuse(token(signed_in))
    except errors.LockwiseError as e:
        return e.code
    return None


def test_an_account_in_good_standing_is_refused_nothing() -> None:
    assert code_of(held(), T) is None
    assert code_of(held(), None) is None


@pytest.mark.parametrize(
    ("changes", "code"), [({"gone": True}, "account_deleted"), ({"disabled": True}, "account_disabled")]
)
def test_a_deleted_or_disabled_account_is_refused_whatever_its_session(changes: dict[str, object], code: str) -> None:
    assert code_of(held(**changes), T) == code
    assert code_of(held(**changes), None) == code  # the account's own request with no session to judge (leaving)


def test_a_session_from_before_the_revocation_is_refused_and_one_from_after_it_is_not() -> None:
    revoked = held(sessions_since=T)
    assert code_of(revoked, T - dt.timedelta(seconds=1)) == "token_revoked"
    assert code_of(revoked, T) is None
    assert code_of(revoked, None) is None


def test_a_session_from_before_the_leaving_or_within_the_clocks_leeway_after_it_is_refused() -> None:
    left = held(left_at=T)
    leeway = dt.timedelta(seconds=users.LEFT_LEEWAY_S)
    assert code_of(left, T - dt.timedelta(minutes=5)) == "account_left"
    assert code_of(left, T + leeway) == "account_left"
    assert code_of(left, T + leeway + dt.timedelta(seconds=1)) is None  # signed in again since: the account was kept
    assert code_of(left, None) is None
    with pytest.raises(errors.Unauthenticated):  # its leaving again (``locks.leave_every_lock``): revoked, not left
        held(left_at=T, sessions_since=T).refuse(token(T - dt.timedelta(seconds=1)), left_since=False)
    held(left_at=T).refuse(token(T - dt.timedelta(minutes=5)), left_since=False)


def test_a_token_without_the_address_an_account_has_shown_verified_is_refused_leaving_too() -> None:
    verified = held(address_verified=True)
    with pytest.raises(errors.Unauthenticated) as refused:
        verified.refuse(token(T, address=None), left_since=False)
    assert refused.value.code == "token_outdated"
    verified.refuse(token(T), left_since=False)
    held().refuse(token(T, address=None))  # an address never seen verified: nothing to be outdated by
