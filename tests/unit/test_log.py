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
