"""Polling for eventual outcomes (deliveries, acks, mirror writes) with a clear failure message, and holding a step
of the code under test until the test lets it go on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from infra.local.services import poll


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    value = poll(predicate, timeout)
    if not value:
        raise AssertionError(f"{what} not met within {timeout} s")
    return value


def held_at(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> tuple[threading.Event, threading.Event]:
    """``owner.name`` (a module's function, or a class's method) waits for the test each time it is called: the first
    event is set when it is reached, the second lets it go on (30 s at most)."""
    real = getattr(owner, name)
    reached, go = threading.Event(), threading.Event()

    def later(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        assert go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, later)
    return reached, go
