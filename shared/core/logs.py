"""Structured logs in Cloud Logging's JSON format: one line per event on stdout.

Fields passed in `extra` (sketch_id, task_id, status, duration_ms, ...) become JSON fields; the
trace of the request being served comes from `X-Cloud-Trace-Context` (`TRACE_ID/SPAN_ID;o=1`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"
SAMPLED_KEY = "logging.googleapis.com/trace_sampled"

_trace: ContextVar[dict[str, Any] | None] = ContextVar("trace", default=None)
_sketch: ContextVar[str | None] = ContextVar("sketch_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_SEVERITIES = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
_TRACE_CONTEXT = re.compile(r"^([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=([01]))?$")
# Whatever a request carried into a message or a field is cut to this: a line stays readable, and
# nobody can fill the logs with a 100 KB status.
MAX_MESSAGE = 2000
MAX_FIELD = 500


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else f"{value[:limit]}… ({len(value) - limit} more characters)"


class CloudJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname in _SEVERITIES else "DEFAULT",
            "message": _cut(record.getMessage(), MAX_MESSAGE),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
            **(_trace.get() or {}),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                # `extra` cannot override severity, message or trace.
                entry.setdefault(key, _cut(value, MAX_FIELD) if isinstance(value, str) else value)
        sketch_id = _sketch.get()
        if sketch_id is not None:
            entry.setdefault("sketch_id", sketch_id)
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        try:
            return json.dumps(entry, ensure_ascii=False, allow_nan=False, default=str)
        except (TypeError, ValueError):  # e.g. NaN, or a dict with tuple keys, in `extra`
            return json.dumps({k: _plain(v) for k, v in entry.items()}, ensure_ascii=False)


def _plain(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)


def configure() -> None:
    """Send the application's logs to stdout as JSON lines (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudJsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudJsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Python warnings would otherwise be printed to stderr as plain text.
    logging.captureWarnings(True)
    # httpx logs each request URL at INFO, and webhook URLs carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def trace_fields(header: str | None, project: str) -> dict[str, Any]:
    """Cloud Logging's trace fields for an `X-Cloud-Trace-Context` header; {} when it is unusable."""
    match = _TRACE_CONTEXT.match((header or "").strip())
    if not match:
        return {}
    trace_id, span, sampled = match.groups()
    fields: dict[str, Any] = {TRACE_KEY: f"projects/{project}/traces/{trace_id.lower()}"}
    if span and 0 < int(span) < 2**64:
        fields[SPAN_KEY] = f"{int(span):016x}"  # the header's span id is decimal, the field hex
    if sampled is not None:
        fields[SAMPLED_KEY] = sampled == "1"
    return fields


def bind_trace(header: str | None, project: str) -> None:
    """Start a request's log context: its Cloud Trace id (from `X-Cloud-Trace-Context`), no sketch yet."""
    _trace.set(trace_fields(header, project))
    _sketch.set(None)


def bind_sketch(sketch_id: str) -> None:
    """Name the sketch the following log lines are about, unless a line names another."""
    _sketch.set(sketch_id)
