"""The log lines the code writes, read from its source: the Python services' logging calls and the broker plugin's
``mosquitto_log_printf`` formats (``tests/unit/test_operator_log_lines.py``, ``tests/unit/test_monitoring.py``)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})


def logging_calls(path: Path) -> Iterator[tuple[str, str]]:
    """The level and literal message of ``path``'s logging calls: ``x.info("...")`` and the like,
    ``x.log(level, "...")`` and ``event(logger, "...")`` (``lockwise.core.log``; their level: "log", "event")."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        at = 0 if name in _LEVELS else 1 if name in ("log", "event") else None
        if at is not None and len(node.args) > at:
            message = node.args[at]
            if isinstance(message, ast.Constant) and isinstance(message.value, str):
                yield name, message.value


def python_calls() -> set[tuple[str, str]]:
    roots = [REPO / "functions" / "lockwise", REPO / "mqtt_relay", *(REPO / "functions").glob("*/main.py")]
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*.py"))]
    return {call for path in files for call in logging_calls(path)}


_CONVERSION = r"%[-.\d]*(llu|lu|s|g|d|u)"
#: what each conversion writes in the plugin's lines: a name, a topic or a path (no space), or a number
_WRITES = {"s": r"\S+", "g": r"[\d.e+-]+"}


def broker_formats() -> list[str]:
    """Each ``mosquitto_log_printf`` format of the broker's plugin, its adjacent literals joined."""
    source = (REPO / "infra" / "broker" / "lockwise_acl.c").read_text()
    calls = re.finditer(r"mosquitto_log_printf\(\s*MOSQ_LOG_\w+\s*,\s*((?:\"(?:[^\"\\]|\\.)*\"\s*)+)", source)
    return ["".join(re.findall(r"\"((?:[^\"\\]|\\.)*)\"", call.group(1))) for call in calls]


def begins_a_line_of(named: str, form: str) -> bool:
    """Whether a line ``form`` writes may begin with ``named`` (the README quotes a line's beginning)."""
    for end in range(len(form), 0, -1):
        parts = re.split(_CONVERSION, form[:end])  # literal, conversion, literal, ...
        pattern = "".join(_WRITES.get(p, r"\d+") if i % 2 else re.escape(p) for i, p in enumerate(parts))
        if re.fullmatch(pattern, named):
            return True
    return False


def python_messages() -> set[str]:
    """The literal messages of the Python services' logging calls."""
    return {message for _, message in python_calls()}
