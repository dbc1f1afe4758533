"""What Google's APIs (Firebase Auth, Firestore, the token keys) answer when they answer badly: slowly, a byte at a
time within each socket read's timeout, or with JSON nested past the parser's depth. Each is the API being
unavailable (a 503 for a request, a retry for the mirror), within about its timeout, never a 500, a hang or a write
set aside for good (attack run 92). Local servers answer; no services needed."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from lockwise.core import accounts, errors, firestore, google_api, id_tokens
from lockwise.core.auth import User

#: nested past the JSON parser's depth
DEEP = b"[" * 100_000


class Trickle:
    """A server that answers 200 with a body of ``size`` bytes, one every ``every_s``."""

    def __init__(self, size: int, every_s: float) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.size, self.every_s = size, every_s
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                con, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(con,), daemon=True).start()

    def _answer(self, con: socket.socket) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {self.size}\r\n\r\n"
        try:
            con.recv(65536)
            con.sendall(head.encode())
            for _ in range(self.size):
                time.sleep(self.every_s)
                con.sendall(b" ")
        except OSError:
            pass
        finally:
            con.close()


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    server = Trickle(size=40, every_s=0.3)  # 12 s in all, each byte well within a 1 s read timeout
    try:
        yield server
    finally:
        server.sock.close()


def test_a_trickled_answer_is_unavailable_within_about_its_timeout(trickle: Trickle) -> None:
    """A trickled ``accounts:lookup`` held an invitation listing 12 s against a 1 s timeout (and the relay's upkeep
    behind it); a Firestore read held a request's flush the same way."""
    api = google_api.GoogleApi(
        "Firebase Auth", trickle.host, authorize=google_api.emulator_owner, tls=None, timeout_s=1
    )
    toolkit = accounts.IdentityToolkit("demo-x", trickle.host, authorize=google_api.emulator_owner, tls=None)
    toolkit._api = api  # noqa: SLF001 - its timeout shortened from 5 s, for the test's length
    started = time.monotonic()
    with pytest.raises(errors.Unavailable):
        accounts.with_current_address(User("someone", "a@example.com", True, {"iat": 1}), lambda: toolkit)
    client = firestore.Client("demo-x", trickle.host, authorize=google_api.emulator_owner, timeout_s=1.0)
    with pytest.raises(firestore.FirestoreError):
        client.versions(["locks/x"])
    assert time.monotonic() - started < 9.0  # two calls, each at most twice its timeout (before: 12 s each)


def test_trickled_token_keys_hold_one_verification_not_each_in_turn(
    trickle: Trickle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys' fetch ran under the lock every verification waits on, and its pause after a failure counted from
    the fetch's start, long past when the next waiter got the lock: 3 verifications took 12, 24 and 36 s."""
    monkeypatch.setattr(id_tokens, "FETCH_TIMEOUT_S", 1.0)
    keys = id_tokens.GoogleKeys(url=f"http://{trickle.host}/certs")
    took: list[float] = []

    def verify_one() -> None:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable):
            keys.key_for("k1")
        took.append(time.monotonic() - started)

    threads = [threading.Thread(target=verify_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(took) == 3 and max(took) < 8.0, took


def test_answers_nested_past_the_parsers_depth_are_the_api_unavailable() -> None:
    """A RecursionError escaped as a 500 from an address check and an operator's, failed every relay upkeep, and
    made each verification fetch the token keys again (no pause) without the stale keys' grace."""
    toolkit = accounts.IdentityToolkit("demo-x", "127.0.0.1:9", authorize=google_api.emulator_owner, tls=None)
    toolkit._api.call = lambda method, target, body=None: (200, DEEP)  # type: ignore[method-assign]  # noqa: SLF001
    with pytest.raises(accounts.DirectoryError):
        toolkit.lookup(["someone"])
    with pytest.raises(errors.Unavailable):
        accounts.with_current_address(User("someone", "a@example.com", True, {"iat": 1}), lambda: toolkit)
    fetched: list[str] = []

    def fetch(url: str) -> tuple[bytes, int]:
        fetched.append(url)
        return DEEP, 3600

    keys = id_tokens.GoogleKeys(fetch=fetch, clock=lambda: 1000.0)
    for _ in range(3):
        with pytest.raises(errors.Unavailable):
            keys.key_for("k1")
    assert len(fetched) == 1  # paced
    client = firestore.Client("demo-x", "127.0.0.1:9", authorize=google_api.emulator_owner)
    client._api.call = lambda method, target, body=None: (200, DEEP)  # type: ignore[method-assign]  # noqa: SLF001
    with pytest.raises(firestore.FirestoreError):
        client.versions(["locks/x"])


@pytest.mark.parametrize(
    "answer",
    [
        [{"missing": ["x"]}],
        [{"found": {"name": {"a": 1}, "updateTime": "x"}}],
        [{"found": {"name": "n", "updateTime": 5}}],
        ["not an object"],
    ],
)
def test_a_batch_read_of_another_shape_is_firestore_unavailable_not_a_refusal(answer: list[object]) -> None:
    """Items of another shape raised a TypeError, which the mirror took for Firestore refusing its writes: every row
    of the batch was set aside for good, a removed member's access deletion among them."""
    client = firestore.Client("demo-x", "127.0.0.1:9", authorize=google_api.emulator_owner)
    client._api.call = lambda method, target, body=None: (200, json.dumps(answer).encode())  # type: ignore[method-assign]  # noqa: SLF001, E501
    with pytest.raises(firestore.FirestoreError) as unavailable:
        client.versions(["locks/x"])
    assert not isinstance(unavailable.value, firestore.FirestoreRefused)
    listing = {"documents": answer}
    client._api.call = lambda method, target, body=None: (200, json.dumps(listing).encode())  # type: ignore[method-assign]  # noqa: SLF001, E501
    with pytest.raises(firestore.FirestoreError):
        client.list_versions("locks/x/activity", 10)
