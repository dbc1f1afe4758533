"""The log lines the README tells an operator to watch or alert on are lines the code writes.

The repository defines no log-based metric, alert policy or dashboard of its own: what an operator watches is named in
the README's prose (a failed upkeep, the model's start-up lines, the broker plugin's lines). Nothing held those names
to the code, so a message reworded in a function or in ``lockwise_acl.c`` left an operator's filter matching nothing,
silently (attack run 97, a guard: none had drifted yet).
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockwise.core import log as lwlog
from mqtt_relay.forwarder import Forwarder
from tests.http_stubs import StubHandler, serving

REPO = Path(__file__).resolve().parents[2]
README = " ".join((REPO / "README.md").read_text().split())

#: the Python services' log lines the README names (``message`` of the JSON line starts with each)
NAMED_IN_README = (
    "devices upkeep failed",
    "ecapa model loaded",
    "ecapa onnx model found",
    "ecapa onnx session ready",
    "ge2e model loaded",
)

_LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})


def _messages(path: Path) -> Iterator[str]:
    """The literal messages of ``path``'s logging calls: ``x.info("...")`` and the like, ``x.log(level, "...")``
    and ``event(logger, "...")`` (``lockwise.core.log``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        at = 0 if name in _LEVELS else 1 if name in ("log", "event") else None
        if at is not None and len(node.args) > at:
            message = node.args[at]
            if isinstance(message, ast.Constant) and isinstance(message.value, str):
                yield message.value


def _python_messages() -> set[str]:
    roots = [REPO / "functions" / "lockwise", REPO / "mqtt_relay", *(REPO / "functions").glob("*/main.py")]
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*.py"))]
    return {message for path in files for message in _messages(path)}


_CONVERSION = r"%[-.\d]*(llu|lu|s|g|d|u)"
#: what each conversion writes in the plugin's lines: a name, a topic or a path (no space), or a number
_WRITES = {"s": r"\S+", "g": r"[\d.e+-]+"}


def _broker_formats() -> list[str]:
    """Each ``mosquitto_log_printf`` format of the broker's plugin, its adjacent literals joined."""
    source = (REPO / "infra" / "broker" / "lockwise_acl.c").read_text()
    calls = re.finditer(r"mosquitto_log_printf\(\s*MOSQ_LOG_\w+\s*,\s*((?:\"(?:[^\"\\]|\\.)*\"\s*)+)", source)
    return ["".join(re.findall(r"\"((?:[^\"\\]|\\.)*)\"", call.group(1))) for call in calls]


def _begins_a_line_of(named: str, form: str) -> bool:
    """Whether a line ``form`` writes may begin with ``named`` (the README quotes a line's beginning)."""
    for end in range(len(form), 0, -1):
        parts = re.split(_CONVERSION, form[:end])  # literal, conversion, literal, ...
        pattern = "".join(_WRITES.get(p, r"\d+") if i % 2 else re.escape(p) for i, p in enumerate(parts))
        if re.fullmatch(pattern, named):
            return True
    return False


@pytest.mark.parametrize("named", NAMED_IN_README)
def test_each_log_line_the_readme_names_is_written_by_the_code(named: str) -> None:
    assert f"`{named}`" in README, f"the README no longer names {named!r}: take it out of NAMED_IN_README"
    assert any(message.startswith(named) for message in _python_messages()), f"no code logs {named!r}"


def test_each_broker_plugin_line_the_readme_names_is_written_by_the_plugin() -> None:
    """The README's ``lockwise_acl: ...`` lines (the rate at start, a relay holding the events' topic, the run) and
    the words it says to alert on are the plugin's."""
    forms = _broker_formats()
    named = [n.replace("<n>", "1700000000000000") for n in re.findall(r"`(lockwise_acl: [^`]+)`", README)]
    assert len(named) >= 3
    for line in named:
        assert any(_begins_a_line_of(line, form) for form in forms), f"the plugin writes no line such as {line!r}"
    for words in ("publishes faster than", "holding", "cannot keep the run"):
        assert f"`{words}`" in README
        assert any(words in form for form in forms), f"no line of the plugin says {words!r}"


def test_a_failed_upkeep_is_a_warning_with_the_functions_status_and_code(capsys: pytest.CaptureFixture[str]) -> None:
    """The README: "A failed upkeep is logged (`devices upkeep failed`, with the function's status and error code)",
    read here as Cloud Logging reads it, a JSON line through the relay's formatter."""

    class Handler(StubHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.body()
            self.answer(503, {"error": {"code": "database_unavailable", "message": "the database is not available"}})

    lwlog.configure("relay")
    try:
        with serving(Handler) as url:
            Forwarder(url, "token", timeout_s=5).flush_mirror()
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    (failed,) = [line for line in lines if line["message"].startswith("devices upkeep failed")]
    assert failed["severity"] == "WARNING" and failed["component"] == "relay"
    assert failed["error"] == "HTTP 503 database_unavailable"
