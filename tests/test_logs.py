"""Structured logs: the formatter's Cloud Logging fields, and what a whole sketch writes."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import copy_context
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import API_KEY, PROJECT, WEBHOOK_SECRET, Stack

from shared.core import logs
from shared.core.tokens import sweep_token

TRACE_HEADER = "105445aa7843bc8bf206b12000100000/1;o=1"
TRACE = f"projects/{PROJECT}/traces/105445aa7843bc8bf206b12000100000"
STATUSES = {"image_pending", "image_complete", "video_pending", "complete"}


def _record(
    msg: str = "hello %s",
    args: tuple[Any, ...] = ("world",),
    level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    logger = logging.getLogger("test.logs")
    return logger.makeRecord(logger.name, level, __file__, 1, msg, args, exc_info, extra=extra)


def _format(record: logging.LogRecord, header: str | None = None) -> dict[str, Any]:
    """The formatted line, parsed, with `header` bound in a context of its own."""

    def run() -> str:
        logs.bind_trace(header, PROJECT)
        return logs.CloudJsonFormatter().format(record)

    line = copy_context().run(run)
    assert "\n" not in line
    return json.loads(line)


def test_severity_message_and_extra_fields() -> None:
    fields = {"sketch_id": "s1", "task_id": "t1", "status": "complete", "duration_ms": 12.5}
    entry = _format(_record(extra=fields))
    assert entry["severity"] == "INFO"
    assert entry["message"] == "hello world"
    assert entry["logger"] == "test.logs"
    assert entry["time"].endswith("+00:00")
    assert {k: entry[k] for k in fields} == fields
    assert "logging.googleapis.com/trace" not in entry


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.WARNING, "WARNING"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
        (25, "DEFAULT"),
    ],
)
def test_severity_is_one_cloud_logging_knows(level: int, severity: str) -> None:
    assert _format(_record(level=level))["severity"] == severity


def test_trace_from_x_cloud_trace_context() -> None:
    entry = _format(_record(), TRACE_HEADER)
    assert entry["logging.googleapis.com/trace"] == TRACE
    assert entry["logging.googleapis.com/spanId"] == "0000000000000001"
    assert entry["logging.googleapis.com/trace_sampled"] is True


@pytest.mark.parametrize("header", [None, "", "not-a-trace", "105445aa/1;o=1", "zz" * 16 + "/1"])
def test_no_trace_without_a_valid_header(header: str | None) -> None:
    assert not any(k.startswith("logging.googleapis.com/") for k in _format(_record(), header))


def test_trace_id_alone_is_enough() -> None:
    entry = _format(_record(), "105445aa7843bc8bf206b12000100000")
    assert entry["logging.googleapis.com/trace"] == TRACE
    assert "logging.googleapis.com/spanId" not in entry


def test_extra_cannot_override_the_standard_fields() -> None:
    entry = _format(_record(extra={"severity": "EMERGENCY", "logger": "x"}), TRACE_HEADER)
    assert (entry["severity"], entry["logger"]) == ("INFO", "test.logs")


def test_structured_extra_values_stay_json() -> None:
    entry = _format(_record(extra={"items": [1, "a"], "counts": {"a": 1}, "obj": object()}))
    assert (entry["items"], entry["counts"]) == ([1, "a"], {"a": 1})
    assert entry["obj"].startswith("<object")


def test_values_json_cannot_carry_still_give_one_json_line() -> None:
    entry = _format(_record(extra={"nan": float("nan"), "ok": 3, "ms": 1.5}))
    assert (entry["nan"], entry["ok"], entry["ms"]) == ("nan", 3, 1.5)


def test_exception_goes_in_stack_trace() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        entry = _format(_record("failed", (), logging.ERROR, exc_info=sys.exc_info()))
    assert entry["message"] == "failed"
    assert "RuntimeError: boom" in entry["stack_trace"]


def test_long_values_are_cut_with_a_note_of_how_much() -> None:
    entry = _format(_record("status %s", ("S" * 100_000,), extra={"task_status": "T" * 100_000}))

    assert len(entry["message"]) < logs.MAX_MESSAGE + 50 and "more characters" in entry["message"]
    assert len(entry["task_status"]) < logs.MAX_FIELD + 50 and entry["task_status"].startswith("TTT")


def test_multiline_message_stays_one_line() -> None:
    assert _format(_record("a\nb", ()))["message"] == "a\nb"


# ------------------------------------------------------------------------------ integration


def _entries(path: Path) -> list[dict[str, Any]]:
    """Every non-empty line of `path`, each of which must be a JSON object with severity and message."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line[:300]!r}")
        where = f"{path.name}:{number}: {line[:300]!r}"
        assert isinstance(entry, dict), where
        assert isinstance(entry.get("severity"), str) and "message" in entry, where
        entries.append(entry)
    return entries


def test_a_whole_sketch_logs_json_lines_with_its_status_changes_and_no_secrets(stack: Stack) -> None:
    response = stack.post_sketch(
        {"prompt": "a heron reading a newspaper"}, headers={"X-Cloud-Trace-Context": TRACE_HEADER}
    )
    assert response.status_code == 202
    sketch_id = response.json()["id"]
    done = stack.wait_for_status(sketch_id, "complete")
    create_log = stack.create.log_path
    webhook_logs = [stack.webhook.log_path, stack.steps.log_path]

    # The processes write unbuffered, but the last line may follow the Firestore write by a moment.
    deadline = time.monotonic() + 5
    while True:
        entries = _entries(create_log) + [e for log in webhook_logs for e in _entries(log)]
        mine = [e for e in entries if e.get("sketch_id") == sketch_id]
        statuses = {e.get("status") for e in mine}
        if statuses >= STATUSES or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    assert statuses >= STATUSES, [(e["message"], e.get("status")) for e in mine]
    task_ids = {e.get("task_id") for e in mine}
    assert {done.image_task_id, done.video_task_id} <= task_ids

    trace = f"projects/{stack.project}/traces/105445aa7843bc8bf206b12000100000"
    created = [e for e in _entries(create_log) if e.get("sketch_id") == sketch_id]
    assert created and all(e.get("logging.googleapis.com/trace") == trace for e in created)
    # The text-to-image call to Novita, timed, within the traced request.
    novita_calls = [
        e
        for e in _entries(create_log)
        if e.get("logging.googleapis.com/trace") == trace and "duration_ms" in e
    ]
    assert novita_calls, "no line with duration_ms for the Novita call of the traced request"

    text = "".join(log.read_text(encoding="utf-8") for log in (create_log, *webhook_logs))
    secrets = {API_KEY, WEBHOOK_SECRET, sweep_token(WEBHOOK_SECRET), "token="}
    # Every webhook token the functions handed Novita, as Novita received it.
    urls = [entry["webhook_url"] for entry in stack.simulator.ledger()["paid"] if entry["webhook_url"]]
    secrets |= {parse_qs(urlsplit(url).query)["token"][0] for url in urls}
    assert len(urls) == 2
    leaked = sorted(s for s in secrets if s in text)
    assert not leaked, f"the captured logs contain {len(leaked)} secret(s), e.g. {leaked[0][:6]}..."
