"""What a function instance does in the worker gunicorn forks from it: functions-framework loads ``main.py`` in its
master, which then forks the one worker that serves. Thread pools and sockets do not cross a fork, so what needs
them is made in the worker as it boots."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any


def in_each_child(method: Callable[[], Any]) -> None:
    """Call the bound ``method`` in every child this process forks from now on, for as long as its object lives
    (held weakly: the hook keeps nothing alive). Only ``os.fork()`` runs it; ``subprocess`` does not fork Python."""
    ref = weakref.WeakMethod(method)
    os.register_at_fork(after_in_child=lambda: _call(ref))


def _call(ref: weakref.WeakMethod[Callable[[], Any]]) -> None:
    bound = ref()
    if bound is not None:
        bound()
