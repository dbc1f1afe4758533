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


@pytest.mark.parametrize("char", ["a", "\x1b", '"', "é", "\u2028", "\U0001f600"])
def test_a_strings_bytes_in_a_line_are_bounded_whatever_its_characters(
    capsys: pytest.CaptureFixture[str], char: str
) -> None:
    """Bounds on what a caller sends were in characters, a line's cost is in bytes: a character past ASCII is
    written as a 6- or 12-byte escape (attack run 120). Each string of a record, its message, a field's value and
    one nested in a field, is written in ``VALUE_MAX_BYTES`` at most, its cut marked; a short one whole."""
    lwlog.configure("unit-test")
    logger = logging.getLogger("lockwise.unit")
    long = char * 5_000
    try:
        lwlog.event(logger, long, path=long, httpRequest={"requestUrl": long}, names=[long], short=char * 10)
        out = capsys.readouterr().out
    finally:
        logging.getLogger().handlers.clear()
    [line] = out.splitlines()
    record = json.loads(line)
    for value in (record["message"], record["path"], record["httpRequest"]["requestUrl"], record["names"][0]):
        assert value.startswith(char * 10) and value.endswith("...")
        assert len(json.dumps(value)) - 2 <= lwlog.VALUE_MAX_BYTES
    assert record["short"] == char * 10
    assert len(line) < 5 * lwlog.VALUE_MAX_BYTES + 500


def test_a_traceback_is_bounded_and_keeps_its_start_and_end(capsys: pytest.CaptureFixture[str]) -> None:
    """An exception's message may quote what a caller sent (attack run 120): a traceback is written in
    ``EXCEPTION_MAX_BYTES`` at most, the frames at its start and the exception's line at its end kept."""
    lwlog.configure("unit-test")
    logger = logging.getLogger("lockwise.unit")
    try:
        try:
            raise ValueError("\U0001f600" * 50_000 + " the end")
        except ValueError:
            logger.exception("it failed")
        out = capsys.readouterr().out
    finally:
        logging.getLogger().handlers.clear()
    [line] = out.splitlines()
    exception = json.loads(line)["exception"]
    assert exception.startswith("Traceback (most recent call last)") and exception.endswith(" the end")
    assert len(json.dumps(exception)) - 2 <= lwlog.EXCEPTION_MAX_BYTES


def test_a_records_fields_cannot_stand_for_the_lines_own(capsys: pytest.CaptureFixture[str]) -> None:
    """A line's ``severity``, ``message``, ``time``, request id and component are the formatter's, as are the fields
    Cloud Logging reads into the entry (``logging.googleapis.com/...``, ``timestamp``): a record's field of that name
    replaced them (attack run 120: none carries a caller's name today; the README promises operators it cannot)."""
    lwlog.configure("unit-test")
    logger = logging.getLogger("lockwise.unit")
    token = lwlog.request_id_var.set("rid-real")
    forged = {
        "severity": "DEBUG",
        "message": "unhandled error",
        "time": "2001-01-01T00:00:00Z",
        "request_id": "rid-forged",
        "component": "verify",
        "logging.googleapis.com/trace": "projects/p/traces/0123",
        "timestamp": "2001-01-01T00:00:00Z",
    }
    try:
        logger.warning("door opened", extra={"fields": {"lock_id": "L1", **forged}})
    finally:
        lwlog.request_id_var.reset(token)
        out = capsys.readouterr().out
        logging.getLogger().handlers.clear()
    [line] = out.splitlines()
    record = json.loads(line)
    assert (record["severity"], record["message"], record["request_id"]) == ("WARNING", "door opened", "rid-real")
    assert record["component"] == "unit-test" and record["time"].startswith("20") and record["time"] > "2002"
    assert "logging.googleapis.com/trace" not in record and "timestamp" not in record
    assert record["lock_id"] == "L1"
