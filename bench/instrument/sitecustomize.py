"""Bench only: trace what a function process does, for the figures that need to know where work went.

Put this folder first on PYTHONPATH and set BENCH_TRACE to a file. Every call of the Firestore
client (`shared.google.firestore.Firestore`: `get`, `commit`, `query`; `create`, `update` and
`increment` are commits), every step published (`shared.pipeline.queue.StepQueue.publish`), every
step run (`shared.pipeline.steps.Worker.run`), every webhook delivery handled
(`shared.pipeline.recovery.Recovery.delivered`), every sweep (`Recovery.sweep`) and each part of a
step (the media download, the still's check, the upload to the bucket and the object it stored,
the request to Kling, the balance breaker's look) appends one JSON line to that file with
O_APPEND, stamped with wall-clock times and the process and thread, so that lines from several
processes (both doors, create_sketch, each a forked gunicorn worker) can be put side by side. A
line costs a few microseconds.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from threading import get_ident
from typing import Any

_PATH = os.environ.get("BENCH_TRACE")


def _install(path: str) -> None:
    from shared.google.firestore import Firestore, Write
    from shared.google.storage import Storage
    from shared.novita.client import NovitaClient
    from shared.pipeline import chain
    from shared.pipeline.queue import StepQueue
    from shared.pipeline.recovery import Recovery
    from shared.pipeline.steps import Worker
    from shared.spending.breaker import BalanceBreaker

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(record: dict[str, Any]) -> None:
        os.write(fd, (json.dumps(record, default=str) + "\n").encode())

    def traced(cls: type, name: str, describe: Callable[..., dict[str, Any]]) -> None:
        """Wrap cls.name: one line per call, with `describe(self, *args, result=..., **kwargs)`."""
        original = getattr(cls, name)

        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.time()
            result, err = None, None
            try:
                result = original(self, *args, **kwargs)
                return result
            except BaseException as exc:
                err = type(exc).__name__
                raise
            finally:
                record = describe(self, *args, result=result, **kwargs)
                emit(
                    {
                        **record,
                        "t0": t0,
                        "t1": time.time(),
                        "err": err,
                        "pid": os.getpid(),
                        "tid": get_ident(),
                    }
                )

        setattr(cls, name, wrapper)

    def precondition(write: Write) -> str:
        if write.precondition == "absent":
            return "create"
        return "unconditional" if write.precondition is None else "conditional"

    traced(
        Firestore,
        "get",
        lambda self, collection, doc_id, result: {"ev": "fs", "op": "get", "coll": collection, "doc": doc_id},
    )
    traced(
        Firestore,
        "commit",
        lambda self, writes, result: {
            "ev": "fs",
            "op": "commit",
            "writes": [{"coll": w.collection, "doc": w.doc_id, "kind": precondition(w)} for w in writes],
        },
    )
    traced(
        Firestore,
        "query",
        lambda self, collection, result, **kw: {
            "ev": "fs",
            "op": "query",
            "coll": collection,
            "found": None if result is None else len(result),
        },
    )
    traced(
        StepQueue,
        "publish",
        lambda self, *steps, result: {
            "ev": "publish",
            "steps": [{"kind": s.kind.value, "sketch": s.sketch_id} for s in steps],
        },
    )
    traced(
        Worker,
        "run",
        lambda self, step, result: {
            "ev": "step",
            "kind": step.kind.value,
            "sketch": step.sketch_id,
            "outcome": None if result is None else result.value,
        },
    )
    traced(
        Storage,
        "upload",
        lambda self, bucket, name, *args, result, **kw: {"ev": "call", "fn": "upload", "object": name},
    )
    for cls, name in (
        (NovitaClient, "start_image_to_video"),
        (NovitaClient, "task_result"),
        (BalanceBreaker, "check"),
    ):
        traced(cls, name, lambda self, *args, result, name=name, **kw: {"ev": "call", "fn": name})
    for name in ("fetch_media", "inspect_still"):
        # Called by the chain under the names it imported: wrapped where it looks them up.
        original = getattr(chain, name)
        setattr(chain, name, _timed(original, name, emit))
    traced(
        Recovery,
        "delivered",
        lambda self, sketch_id, hint, result: {"ev": "delivery", "sketch": sketch_id, "outcome": result},
    )
    traced(
        Recovery,
        "sweep",
        lambda self, deadline, result: {
            "ev": "sweep",
            "report": None if result is None else result.to_json(),
        },
    )


def _timed(function: Callable[..., Any], name: str, emit: Callable[[dict[str, Any]], None]) -> Any:
    """`function` with one line per call."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            emit(
                {
                    "ev": "call",
                    "fn": name,
                    "t0": t0,
                    "t1": time.time(),
                    "err": None,
                    "pid": os.getpid(),
                    "tid": get_ident(),
                }
            )

    return wrapper


if _PATH:
    try:
        _install(_PATH)
    except Exception as exc:  # never stop the process being measured
        print(f"bench instrument: not installed: {exc!r}", flush=True)
