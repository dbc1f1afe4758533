"""Logs are one JSON object per line with the fields Cloud Logging reads."""

from __future__ import annotations

import json
import logging

import pytest

from lockwise.core import log as lwlog


def test_records_are_json_lines_with_severity_message_and_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    lwlog.configure("unit-test")
    logger = logging.getLogger("lockwise.unit")
    token = lwlog.request_id_var.set("rid-42")
    try:
        lwlog.event(logger, "door opened", level=logging.WARNING, lock_id="L1", score=0.91)
    finally:
        lwlog.request_id_var.reset(token)
    logger.info("plain %s", "message")
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert lines[0]["severity"] == "WARNING"
    assert lines[0]["message"] == "door opened"
    assert lines[0]["request_id"] == "rid-42"
    assert lines[0]["lock_id"] == "L1" and lines[0]["score"] == 0.91
    assert lines[0]["component"] == "unit-test"
    assert lines[1]["severity"] == "INFO" and lines[1]["message"] == "plain message"
    assert "request_id" not in lines[1]
    logging.getLogger().handlers.clear()


def test_a_record_is_one_line_whatever_line_ends_its_values_hold(capsys: pytest.CaptureFixture[str]) -> None:
    """Attack run 75: a path or an error holding U+0085, U+2028 or U+2029 was written as it was, and a reader that
    ends lines on them (Python's ``str.splitlines``) read 18 lines of 12 broken records out of 8."""
    lwlog.configure("unit-test")
    logger = logging.getLogger("lockwise.unit")
    odd = "a\u2028b\u0085c\u2029d\re\nf é"
    lwlog.event(logger, "request", path=f"/devices/{odd}", error=odd)
    out = capsys.readouterr().out
    logging.getLogger().handlers.clear()
    [line] = out.splitlines()
    record = json.loads(line)
    assert record["path"] == f"/devices/{odd}" and record["error"] == odd
