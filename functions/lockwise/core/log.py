"""Structured JSON-line logging as Cloud Logging reads it (``severity``, ``message``, request id).

Each record is one line on stdout: ``{"severity": "INFO", "message": "...", "request_id": "...", ...}``. Extra
structured fields are passed with ``log.info("msg", extra={"fields": {...}})`` or the ``event`` helper.

Each string a line holds (its message, a field's value, a value nested in one) takes at most ``VALUE_MAX_BYTES`` of the
line as written, escapes counted, and a traceback at most ``EXCEPTION_MAX_BYTES``: what a caller sends (a path, a
name an error quotes) was bounded in characters, and a character past ASCII is written as a 6- or 12-byte escape, so
an unauthenticated 405 for a path of emoji wrote 19 KB of log (attack run 120).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("lockwise_request_id", default=None)

_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

#: the most bytes one string of a record is written as (escaped), its cut marked by ``CUT``: an error message of
#: ``lockwise.core.errors.MESSAGE_MAX`` (1,000) ASCII characters is written whole
VALUE_MAX_BYTES = 1_200
#: a traceback's most, its start and end kept (an exception's message may quote what a caller sent)
EXCEPTION_MAX_BYTES = 16_000
CUT = "..."


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; never raises on odd values."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _severity(record.levelno),
            "message": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "component": self.component,
            "logger": record.name,
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
            entry["logging.googleapis.com/labels"] = {"request_id": request_id}
        fields = getattr(record, "fields", None)
        given = dict(fields) if isinstance(fields, dict) else {}
        given.update((k, v) for k, v in vars(record).items() if k not in _RESERVED and k != "fields" and k[:1] != "_")
        # the line's own fields, and those Cloud Logging reads into the entry, are the formatter's alone
        entry.update((k, v) for k, v in given.items() if not _owned(str(k)))
        entry = _bounded(entry, VALUE_MAX_BYTES)
        if record.exc_info:
            entry["exception"] = _cut_middle(self.formatException(record.exc_info), EXCEPTION_MAX_BYTES)
        # every character past ASCII escaped: U+0085, U+2028 and U+2029 in a path or an error split a record in two
        # for a reader that ends lines on them as Python's ``str.splitlines`` does (attack run 75)
        return json.dumps(entry, default=str, ensure_ascii=True)


#: the fields of a line that are the formatter's: its own, and those Cloud Logging reads into the entry rather than
#: its payload (a field of that name from a record is left out)
_OWN = frozenset({"severity", "message", "time", "component", "logger", "request_id", "exception"})
_READ_BY_LOGGING = ("logging.googleapis.com/", "timestamp")


def _owned(key: str) -> bool:
    return key in _OWN or key.startswith(_READ_BY_LOGGING)


def _escaped_len(text: str) -> int:
    """The bytes ``text`` takes inside a JSON string written with ``ensure_ascii`` (the quotes not counted)."""
    return len(json.dumps(text)) - 2


def _cut(text: str, most: int) -> str:
    """``text`` whole if written in ``most`` bytes or fewer, else its longest start that is, with ``CUT``."""
    if len(text) <= most // 12 or _escaped_len(text) <= most:
        return text
    room, end = most - len(CUT), 0
    for char in text:
        room -= _escaped_len(char)
        if room < 0:
            break
        end += 1
    return text[:end] + CUT


def _cut_middle(text: str, most: int) -> str:
    """``text`` whole if written in ``most`` bytes or fewer, else its start and end, each in half of them."""
    if len(text) <= most // 12 or _escaped_len(text) <= most:
        return text
    half = (most - len(CUT)) // 2
    start = _cut(text, half + len(CUT))[: -len(CUT)]
    end = _cut(text[::-1], half + len(CUT))[: -len(CUT)][::-1]
    return start + CUT + end


def _bounded(value: Any, most: int) -> Any:
    """``value`` with every string in it (nested in dicts, lists and tuples too, and what is written as its ``str``)
    cut to ``most`` bytes as written."""
    if isinstance(value, str):
        return _cut(value, most)
    if isinstance(value, dict):
        return {key: _bounded(item, most) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bounded(item, most) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _cut(str(value), most)


def _severity(levelno: int) -> str:
    if levelno >= logging.CRITICAL:
        return "CRITICAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG"


#: a repeated anomaly a caller can cause (a lock's oversized messages, its flood, its will's runs) is logged at its
#: first occurrence and every this many after, its count in the line: one line each wrote ~0.5 GB of Cloud Logging a
#: day for one lock (attack runs 110, 120)
REPEATS_LOGGED_EVERY = 1000


def logged_repeat(count: int) -> bool:
    """Whether the ``count``th (from 1) of a repeated anomaly is logged (``REPEATS_LOGGED_EVERY``)."""
    return count % REPEATS_LOGGED_EVERY == 1


def configure(component: str, level: str = "INFO") -> None:
    """Send every log record of this process to stdout as JSON lines. Safe to call more than once."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_lockwise", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(component))
    handler._lockwise = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def event(logger: logging.Logger, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``message`` with structured ``fields`` (values must be JSON-friendly or str()-able)."""
    logger.log(level, message, extra={"fields": fields})
