"""Polling for eventual outcomes (deliveries, acks, mirror writes) with a clear failure message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infra.local.services import poll


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    value = poll(predicate, timeout)
    if not value:
        raise AssertionError(f"{what} not met within {timeout} s")
    return value
