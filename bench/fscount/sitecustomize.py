"""Bench only: count the Firestore calls a function process makes.

Put this folder first on PYTHONPATH and set BENCH_FS_LOG to a file; every call of the Firestore
client (`shared.firestore_rest.Firestore`: get, create, update, at_most) appends one JSON line
{pid, op, doc, cond, err} to that file with O_APPEND, so the count survives however the process
ends and a forked gunicorn worker shares it. The client has no transaction call, so the count of
transactions is 0 by construction.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

_PATH = os.environ.get("BENCH_FS_LOG")

# method -> (op, conditional)
_COUNTED = {
    "get": ("read", False),
    "create": ("create", True),
    "update": ("update", True),
    "at_most": ("query", False),
}


def _install(path: str) -> None:
    from shared.firestore_rest import Firestore

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def counted(name: str, op: str, conditional: bool) -> None:
        original = getattr(Firestore, name)

        @functools.wraps(original)
        def wrapper(self: Firestore, collection: str, *args: Any, **kwargs: Any) -> Any:
            err = None
            try:
                return original(self, collection, *args, **kwargs)
            except BaseException as exc:
                err = type(exc).__name__
                raise
            finally:
                doc = args[0] if op != "query" else None
                line = json.dumps({"pid": os.getpid(), "op": op, "doc": doc, "cond": conditional, "err": err})
                os.write(fd, (line + "\n").encode())

        setattr(Firestore, name, wrapper)

    for name, (op, conditional) in _COUNTED.items():
        counted(name, op, conditional)


if _PATH:
    try:
        _install(_PATH)
    except Exception as exc:  # never stop the process being measured
        print(f"bench fscount: not installed: {exc!r}", flush=True)
