"""Structured JSON logs, one object per line, with the request id and task id when known.

Log calls never pass idNums, names, images or tokens; `RedactingFilter` is the safety net for
anything that slips through (e.g. a library logging a URL with a token).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)

_PATTERNS = [
    (re.compile(r"flt_[0-9A-Za-z]{20,}"), "flt_[REDACTED]"),
    (re.compile(r"whsec_[0-9A-Za-z+/=]{10,}"), "whsec_[REDACTED]"),
    (re.compile(r"(?<![0-9])\d{17}[\dXx](?![0-9])"), "[IDNUM]"),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^\s'\",]+"), r"\1[REDACTED]"),
]


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        tid = getattr(record, "task_id", None) or task_id_var.get()
        if rid:
            entry["request_id"] = rid
        if tid:
            entry["task_id"] = tid
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
