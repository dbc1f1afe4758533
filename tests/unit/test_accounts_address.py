"""Which address an accept may use: the one Firebase Auth has now (a fake directory beside the real one, which
``tests/integration/test_devices_flows.py`` asks through the Auth emulator)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lockwise.core import accounts, errors
from lockwise.core.auth import User


class Directory:
    def __init__(self, address: str | None, *, down: bool = False) -> None:
        self.address, self.down, self.asked = address, down, 0

    def lookup(self, uids: Sequence[str]) -> dict[str, accounts.Account]:
        raise AssertionError("not asked here")

    def verified_email(self, uid: str) -> str | None:
        self.asked += 1
        if self.down:
            raise accounts.DirectoryError("Firebase Auth could not be reached: ConnectionRefusedError")
        return self.address


def test_a_token_keeps_its_address_only_while_the_account_has_it() -> None:
    user = User("u1", "a@example.com", True)
    assert accounts.with_current_address(user, lambda: Directory("a@example.com")) == user
    moved = accounts.with_current_address(user, lambda: Directory("b@example.com"))
    assert (moved.uid, moved.email, moved.email_verified) == ("u1", None, False)
    assert accounts.with_current_address(user, lambda: Directory(None)).email is None  # unverified now, or gone


def test_no_address_to_confirm_asks_nobody_and_an_unreachable_directory_is_a_503() -> None:
    quiet = Directory("a@example.com", down=True)
    unverified = User("u1", "a@example.com", False)
    assert accounts.with_current_address(unverified, lambda: quiet) == unverified and quiet.asked == 0
    with pytest.raises(errors.Unavailable) as refused:
        accounts.with_current_address(User("u1", "a@example.com", True), lambda: quiet)
    assert refused.value.code == "accounts_unavailable"

    def no_credentials() -> accounts.Directory:
        raise accounts.DirectoryError("no Application Default Credentials")

    with pytest.raises(errors.Unavailable) as refused:  # making the directory fails the same way, not a 500
        accounts.with_current_address(User("u1", "a@example.com", True), no_credentials)
    assert refused.value.code == "accounts_unavailable"


def test_a_users_listings_ask_firebase_auth_so_many_times_a_minute() -> None:
    """Each listing of invitations asked Firebase Auth for the caller's address, without limit (attack run 26: 25
    listings, 25 lookups of the project's quota). At most ``per_minute`` a user a minute now, then 429."""
    directory = Directory("a@example.com")
    paced = accounts.PacedAddresses(lambda: directory, per_minute=3)
    user, other = User("u1", "a@example.com", True), User("u2", "a@example.com", True)
    assert [paced(user) for _ in range(3)] == [user] * 3 and directory.asked == 3
    with pytest.raises(errors.RateLimited) as refused:
        paced(user)
    assert refused.value.code == "invitations_listed_too_often" and 1 <= refused.value.retry_after_s <= 61
    assert directory.asked == 3
    assert paced(other) == other and directory.asked == 4  # another user's own share


def test_a_listings_later_pages_take_its_first_pages_confirmation_a_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each page of a listing asked Firebase Auth and counted: seven pages of invitations to the caller's address
    (anyone may invite any address) were a 429 at the seventh, and the web console showed nothing (attack run 63).
    A later page (``continuing``) takes what the listing's first page found for ``LISTING_CONFIRMED_S``, counting
    nothing; a new listing asks again, and a later page past that time asks and counts too."""
    clock = [1000.0]
    monkeypatch.setattr("lockwise.core.accounts.time.monotonic", lambda: clock[0])
    directory = Directory("a@example.com")
    paced = accounts.PacedAddresses(lambda: directory, per_minute=2)
    user = User("u1", "a@example.com", True)
    assert paced(user) == user and directory.asked == 1
    assert [paced(user, continuing=True) for _ in range(10)] == [user] * 10 and directory.asked == 1
    directory.address = "b@example.com"  # the account moves to another address
    assert paced(user).email is None and directory.asked == 2  # a new listing asks again
    assert paced(user, continuing=True).email is None and directory.asked == 2  # its pages take what it found
    clock[0] += accounts.LISTING_CONFIRMED_S + 1
    with pytest.raises(errors.RateLimited):  # past the moment a later page asks, and is counted
        paced(user, continuing=True)
    clock[0] += 60
    assert paced(user, continuing=True).email is None and directory.asked == 3


def test_users_whose_listings_no_page_can_take_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an instance keeps of each user who listed invitations (the first page's finding, with the token's whole
    claims, and the user's pace) stayed until ``LISTED_USERS_MAX`` users had listed, for the instance's life (attack
    run 114: ~2 MB for 1,000 users). A user's is dropped once no later page can take it and their pace counts none
    of their listings (a minute), as others list."""
    clock = [1000.0]
    monkeypatch.setattr("lockwise.core.accounts.time.monotonic", lambda: clock[0])
    directory = Directory("a@example.com")
    paced = accounts.PacedAddresses(lambda: directory)
    for i in range(1000):
        paced(User(f"u{i}", "a@example.com", True))
        clock[0] += 0.01
    assert paced.remembered == (1000, 1000)
    clock[0] += accounts.LISTING_CONFIRMED_S
    paced(User("later", "a@example.com", True))
    assert paced.remembered == (1, 1001)  # the findings of 30 s ago go; the paces stay their minute
    clock[0] += 60 - accounts.LISTING_CONFIRMED_S
    paced(User("last", "a@example.com", True))
    assert paced.remembered == (1, 2)
    assert paced(User("u0", "a@example.com", True)).uid == "u0" and paced.remembered == (2, 3)


@pytest.mark.parametrize(
    ("stored", "claims"),
    [
        (None, {}),
        ('{"lockwise_operator": true}', {"lockwise_operator": True}),
        ('{"a": ' * 3000 + "1" + "}" * 3000, None),  # past the parser's depth (attack run 77: a 500)
        ("[1]", None),
        ("not json", None),
    ],
)
def test_custom_claims_are_a_json_object_or_firebase_auth_is_taken_not_to_have_answered(
    stored: str | None, claims: dict[str, object] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    toolkit = accounts.IdentityToolkit("p", "localhost:1", authorize=lambda headers: None, tls=None)
    user: dict[str, object] = {"localId": "u1"}
    if stored is not None:
        user["customAttributes"] = stored
    monkeypatch.setattr(toolkit, "_users", lambda uids: {"u1": user})
    if claims is None:
        with pytest.raises(accounts.DirectoryError):
            toolkit.custom_claims("u1")
    else:
        assert toolkit.custom_claims("u1") == accounts.Claimed(claims)


@pytest.mark.parametrize(
    ("valid_since", "created_at", "revoked"),
    [
        ("1700000001", "1700000000999", None),  # the emulator read its clock again as the second turned
        ("1700000000", "1700000000000", None),
        ("1700000000", "1700000000999", None),
        ("1700000001", "1700000000000", 1700000001),  # a second after: a revocation
        ("1700000001", "1700000000900", 1700000001),  # 0.1-1.1 s after (attack run 87: the next second was let by)
        ("1700000002", "1700000000999", 1700000002),
        ("1700000005", "2000000000000", 1700000005),  # a creation time moved later (an import, the Admin API)
        ("1700000005", None, 1700000005),  # no creation time told: taken as it is
        ("1700000005", "soon", 1700000005),
        (None, "1700000000000", None),
        ("-1", "1700000000000", None),
        ("1" * 12, "1700000000000", None),
    ],
)
def test_a_validsince_within_the_second_after_the_account_was_made_revokes_nothing(
    valid_since: str | None, created_at: str | None, revoked: int | None
) -> None:
    assert accounts.revoked_since(valid_since, created_at) == revoked
