"""Bench only: count the Firestore calls a function process makes.

Put this folder first on PYTHONPATH and set BENCH_FS_LOG to a file; every outermost call of the
Firestore client API (document get/create/set/update/delete, queries, aggregations, batch reads,
batch and transaction commits) appends one JSON line {pid, op, doc, cond, err} to that file with
O_APPEND, so the count survives however the process ends and a forked gunicorn worker shares it.
Nested calls (update -> WriteBatch.commit) are counted once, at the outermost one.
"""

from __future__ import annotations

import functools
import json
import os
import threading

_PATH = os.environ.get("BENCH_FS_LOG")


def _install(path: str) -> None:
    from google.cloud.firestore_v1 import aggregation, batch, client, document, query, transaction

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    depth = threading.local()

    def log(op: str, doc: str | None, cond: bool, err: str | None) -> None:
        line = json.dumps({"pid": os.getpid(), "op": op, "doc": doc, "cond": cond, "err": err})
        os.write(fd, (line + "\n").encode())

    def counted(cls: type, name: str, op: str, conditional=lambda args, kwargs: False) -> None:  # noqa: ANN001
        original = getattr(cls, name)

        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            outer = getattr(depth, "n", 0) == 0
            depth.n = getattr(depth, "n", 0) + 1
            err = None
            try:
                return original(self, *args, **kwargs)
            except BaseException as exc:
                err = type(exc).__name__
                raise
            finally:
                depth.n -= 1
                if outer:
                    doc = getattr(self, "id", None) if isinstance(self, document.DocumentReference) else None
                    log(op, doc, bool(conditional(args, kwargs)), err)

        setattr(cls, name, wrapper)

    def has_option(args: tuple, kwargs: dict) -> bool:  # update(field_updates, option=None, ...)
        return kwargs.get("option") is not None or (len(args) > 1 and args[1] is not None)

    doc = document.DocumentReference
    counted(doc, "get", "read")
    counted(doc, "create", "create", lambda a, k: True)  # create = write if absent
    counted(doc, "set", "set")
    counted(doc, "update", "update", has_option)
    counted(doc, "delete", "delete", has_option)
    counted(query.Query, "stream", "query")
    counted(query.Query, "get", "query")
    counted(aggregation.AggregationQuery, "get", "aggregation")
    counted(aggregation.AggregationQuery, "stream", "aggregation")
    counted(client.Client, "get_all", "batch_read")
    counted(batch.WriteBatch, "commit", "batch_commit")
    counted(transaction.Transaction, "_commit", "transaction")


if _PATH:
    try:
        _install(_PATH)
    except Exception as exc:  # never stop the process being measured
        print(f"bench fscount: not installed: {exc!r}", flush=True)
