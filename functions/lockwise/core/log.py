"""Structured JSON-line logging as Cloud Logging reads it (``severity``, ``message``, request id).

Each record is one line on stdout: ``{"severity": "INFO", "message": "...", "request_id": "...", ...}``. Extra
structured fields are passed with ``log.info("msg", extra={"fields": {...}})`` or the ``event`` helper.
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
        if isinstance(fields, dict):
            entry.update(fields)
        for key, value in vars(record).items():
            if key not in _RESERVED and key != "fields" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # every character past ASCII escaped: U+0085, U+2028 and U+2029 in a path or an error split a record in two
        # for a reader that ends lines on them as Python's ``str.splitlines`` does (attack run 75)
        return json.dumps(entry, default=str, ensure_ascii=True)


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
