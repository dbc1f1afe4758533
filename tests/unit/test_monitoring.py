"""The log-based metrics operators alert on (``infra.monitoring``) count lines the code writes: each metric's message
is a logging call's (at its severity or above) or the broker plugin's, and the fields its labels and values are read
from are in a real request line. A message reworded, or logged a level lower, left a metric counting nothing."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra import monitoring
from lockwise.core import log as lwlog
from tests.log_lines import broker_formats, python_calls
from tests.unit.test_http import call, make_api

_SEVERITY = {"DEFAULT": 0, "DEBUG": 100, "INFO": 200, "WARNING": 400, "ERROR": 500, "CRITICAL": 600}
#: a logging call's severity (``event`` and ``log`` name theirs as an argument: counted only by DEFAULT and INFO)
_CALL_SEVERITY = {"debug": 100, "info": 200, "event": 200, "log": 200, "warning": 400, "error": 500}
_CALL_SEVERITY |= {"exception": 500, "critical": 600}

PYTHON = [m for m in monitoring.METRICS if not m.broker]
BROKER = [m for m in monitoring.METRICS if m.broker]


@pytest.mark.parametrize("metric", PYTHON, ids=lambda m: m.name)
def test_each_metric_counts_a_line_the_code_writes_at_its_severity(metric: monitoring.Metric) -> None:
    pattern = re.compile(metric.message_pattern())
    levels = [_CALL_SEVERITY[level] for level, message in python_calls() if pattern.search(message)]
    assert levels, f"{metric.name}: no code logs a line matching {pattern.pattern!r}"
    assert max(levels) >= _SEVERITY[metric.severity], f"{metric.name}: logged below {metric.severity}"


#: a lock's identity, as its certificate names it (the plugin's ``%.64s`` of a lock)
LOCK = "3f6c1d2e-8b4a-4c1e-9a57-0d2b9f4e7a11"
#: the shapes a broker line takes where a metric reads it: the time mosquitto puts first (its own log file, the local
#: stack's), a syslog line (the legacy logging agent's textPayload and the Ops Agent's message; RFC 3164 and RFC 3339
#: times), and the message alone
SYSLOG_SHAPES = (
    "{}",
    "1796679893: {}",
    "Dec  7 21:44:34 lockwise-broker mosquitto[812]: {}",
    "2026-12-07T21:44:34.118204+00:00 lockwise-broker mosquitto[812]: 1796679893: {}",
)


def _written(form: str) -> str:
    """A line the plugin's ``form`` writes, a lock named in it."""
    line = re.sub(r"%\.64s", LOCK, form)
    line = re.sub(r"%[-.\d]*s", "locks/+/state", line)
    line = re.sub(r"%[-.\d]*g", "20", line)
    return re.sub(r"%[-.\d]*(llu|lu|d|u)", "7", line)


def _counts(metric: monitoring.Metric, text: str) -> bool:
    """Whether ``metric``'s filter counts a syslog line of ``text`` (its ``textPayload`` clause: ``=~`` a regular
    expression, ``:`` holding the text)."""
    found = re.search(r'textPayload(=~|:)"((?:[^"\\]|\\.)*)"', metric.log_filter())
    assert found, metric.log_filter()
    value = re.sub(r"\\(.)", r"\1", found.group(2))
    return bool(re.search(value, text)) if found.group(1) == "=~" else value in text


@pytest.mark.parametrize("metric", BROKER, ids=lambda m: m.name)
def test_each_broker_metric_counts_a_line_the_plugin_writes(metric: monitoring.Metric) -> None:
    lines = [_written(form) for form in broker_formats()]
    assert any(_counts(metric, line) for line in lines), f"the plugin writes no line {metric.name} counts"
    for shape in SYSLOG_SHAPES:  # wherever the agent puts it
        assert any(_counts(metric, shape.format(line)) for line in lines), (metric.name, shape)


#: lines a caller chose the text of: a paired lock's subscription to a topic it may not have, a will to one (both
#: quoted by the plugin's refusal), and another program's line on a VM of the project (sshd names the user tried)
FORGED = (
    "mosquitto[812]: 1796679893: lockwise_acl: refused {lock}'s subscription to x/{text} (and 0 more since)",
    "mosquitto[812]: lockwise_acl: refused {lock}'s last will to {text}: a lock's will is its offline on its status",
    "Dec  7 21:44:34 lockwise-broker sshd[4242]: Invalid user {text} from 203.0.113.9 port 50022",
    "Dec  7 21:44:34 lockwise-broker sshd[4242]: Invalid user mosquitto[1]: {text} from 203.0.113.9 port 50022",
    "Invalid user {text} from 203.0.113.9 port 50022",
)


@pytest.mark.parametrize("metric", BROKER, ids=lambda m: m.name)
def test_a_broker_metric_counts_no_line_whose_message_a_caller_wrote(metric: monitoring.Metric) -> None:
    """The metrics counted every line holding their message anywhere, on any VM of the project: a paired lock that
    subscribed to a topic named ``x lockwise_acl: holding`` raised the broker's holding alert (the plugin's refusal
    quotes the topic), and an ``ssh 'lockwise_acl: broker run 1'@`` anyone a broker restart (attack run 120)."""
    genuine = next(line for line in map(_written, broker_formats()) if _counts(metric, line))
    for forged in FORGED:
        line = forged.format(lock=LOCK, text=genuine)
        assert not _counts(metric, line), (metric.name, line)


def test_the_request_metrics_read_fields_a_real_request_line_has(capsys: pytest.CaptureFixture[str]) -> None:
    """The request line as Cloud Logging reads it (``jsonPayload``): the labels' fields and the latency, a number;
    a refused request's error is on its one line (attack run 130; its own ``request failed`` line before)."""
    lwlog.configure("unit-test")
    try:
        call(make_api(), "GET", "/unit/items/missing")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    for metric in (m for m in PYTHON if m.message == "request"):
        counted = [line for line in lines if re.search(metric.message_pattern(), line["message"])]
        assert [line["message"] for line in counted] == ["request"], lines  # one request, one line counted
        (line,) = counted
        for _, field in metric.labels:
            assert isinstance(line.get(field), str | int), (metric.name, field, line)
        if metric.value_field:
            assert isinstance(line.get(metric.value_field), int | float), (metric.name, line)


def test_the_metrics_render_as_log_metrics(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infra.monitoring", "--out", str(tmp_path)], check=True, capture_output=True, text=True
    )
    assert len(out.stdout.split()) == len(monitoring.METRICS)
    for metric in monitoring.METRICS:
        rendered = json.loads((tmp_path / f"{metric.name}.json").read_text())
        assert rendered["name"] == metric.name and rendered["filter"] == metric.log_filter()
        assert set(rendered["labelExtractors"]) == {label["key"] for label in rendered["metricDescriptor"]["labels"]}
        assert ("valueExtractor" in rendered) == (rendered["metricDescriptor"]["valueType"] == "DISTRIBUTION")


def test_the_deploy_creates_each_metric_or_updates_it_where_it_exists(tmp_path: Path) -> None:
    """``infra.deploy monitoring``: rendered, then one create-or-update per metric, its name and file passed to the
    shell as arguments (run here against a stand-in ``gcloud`` that knows one metric already)."""
    from tests.unit.test_deploy import dry_run

    commands = dry_run("monitoring")
    assert commands[0][1:3] == ["-m", "infra.monitoring"]
    assert [c[4] for c in commands[1:]] == [m.name for m in monitoring.METRICS]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$3" != update ] || [ "$4" = lockwise_requests ]\n')
    gcloud.chmod(0o755)
    for command in commands[1:3]:
        subprocess.run(command, check=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    made = [line.split()[2:4] for line in calls.read_text().splitlines()]
    assert made == [
        ["update", "lockwise_requests"],
        ["update", "lockwise_request_latency"],
        ["create", "lockwise_request_latency"],
    ]
