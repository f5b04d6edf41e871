"""What the functions logged (JSON lines, one per event, with `sketch_id`), and the story of each
sketch the audit found wrong: its document, its paid calls, what the app heard, and every line the
functions wrote about it in time order, in `evidence/<sketch id>.txt` of the run's folder."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from chaos.traffic import Ask
from devstack.functions import FunctionServer

# What a line shows besides its time, door, severity and message.
SHOWN = ("task_id", "step", "stage", "outcome", "status", "attempt", "http_status", "form", "action")

Line = dict[str, Any]


def read_logs(doors: Mapping[str, FunctionServer]) -> list[Line]:
    """Every JSON line the functions wrote, each with the door that wrote it; gunicorn's own plain
    lines (a worker killed on purpose) are left out."""
    lines = []
    for door, server in doors.items():
        lines += [{**line, "door": door} for line in server.log_lines()]
    return sorted(lines, key=lambda line: str(line.get("time", "")))


def unexpected(lines: Iterable[Line]) -> list[str]:
    """Every answer 500 the functions gave: their own ("unexpected error"), or Flask's for what
    raised outside them ("Exception on / [POST]"), with what raised it."""
    found = []
    for line in lines:
        message = str(line.get("message"))
        if message == "unexpected error" or message.startswith("Exception on "):
            trace = str(line.get("stack_trace", "")).strip().splitlines()
            raised = trace[-1] if trace else "no stack trace"
            found.append(
                f"{line['door']} door at {line.get('time')}, sketch {line.get('sketch_id')}, "
                f"{line.get('action', 'request')}: {raised}"
            )
    return found


def by_sketch(lines: Iterable[Line]) -> dict[str, list[Line]]:
    grouped: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        if line.get("sketch_id"):
            grouped[str(line["sketch_id"])].append(line)
    return grouped


def write_stories(
    folder: Path,
    sketch_ids: Iterable[str],
    documents: Mapping[str, dict[str, Any]],
    joined: Mapping[tuple[str, str], list[dict[str, Any]]],
    asked: list[Ask],
    lines: Mapping[str, list[Line]],
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    asks = {ask.sketch_id: ask for ask in asked}
    written = []
    for sketch_id in sorted(sketch_ids):
        document = documents.get(sketch_id, {})
        calls = joined.get((sketch_id, "image"), []) + joined.get((sketch_id, "video"), [])
        ask = asks.get(sketch_id)
        story = [
            f"sketch {sketch_id}",
            "",
            "document:",
            json.dumps(document, indent=2, default=str, sort_keys=True),
            "",
            "paid calls (the simulator's ledger):",
            *(json.dumps(call, default=str) for call in calls),
            "",
            f"the app heard: {ask.answers if ask else 'nothing (not one of its sketches)'}",
            "",
            "log lines:",
            *(_shown(line) for line in lines.get(sketch_id, [])),
        ]
        path = folder / f"{sketch_id}.txt"
        path.write_text("\n".join(story) + "\n")
        written.append(path)
    return written


def _shown(line: Line) -> str:
    extra = " ".join(f"{key}={line[key]}" for key in SHOWN if line.get(key) is not None)
    head = f"{line.get('time')} {line['door']:<7} {line.get('severity', ''):<7}"
    return f"{head} {line.get('message')} {extra}".rstrip()
