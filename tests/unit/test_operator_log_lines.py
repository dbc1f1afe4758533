"""The log lines the README tells an operator to watch or alert on are lines the code writes.

The repository defines no log-based metric, alert policy or dashboard of its own: what an operator watches is named in
the README's prose (a failed upkeep, the model's start-up lines, the broker plugin's lines). Nothing held those names
to the code, so a message reworded in a function or in ``lockwise_acl.c`` left an operator's filter matching nothing,
silently (attack run 97, a guard: none had drifted yet).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from lockwise.core import log as lwlog
from mqtt_relay.forwarder import Forwarder
from tests.http_stubs import StubHandler, serving
from tests.log_lines import begins_a_line_of, broker_formats, python_messages

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


@pytest.mark.parametrize("named", NAMED_IN_README)
def test_each_log_line_the_readme_names_is_written_by_the_code(named: str) -> None:
    assert f"`{named}`" in README, f"the README no longer names {named!r}: take it out of NAMED_IN_README"
    assert any(message.startswith(named) for message in python_messages()), f"no code logs {named!r}"


def test_each_broker_plugin_line_the_readme_names_is_written_by_the_plugin() -> None:
    """The README's ``lockwise_acl: ...`` lines (the rate at start, a relay holding the events' topic, the run) and
    the words it says to alert on are the plugin's."""
    forms = broker_formats()
    named = [n.replace("<n>", "1700000000000000") for n in re.findall(r"`(lockwise_acl: [^`]+)`", README)]
    assert len(named) >= 3
    for line in named:
        assert any(begins_a_line_of(line, form) for form in forms), f"the plugin writes no line such as {line!r}"
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
